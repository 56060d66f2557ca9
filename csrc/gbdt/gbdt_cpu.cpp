// CPU gradient-boosting ops: the device-generic ops (gbdt_ops.cpp) with the per-ISA kernels.
#include <torch/library.h>

#include "gbdt/gbdt_ops.h"

namespace pynotes {
namespace {

const GbdtKernels& cpu_kernels() {
  static const GbdtKernels kernels{
      PYNOTES_CPU_KERNEL(gbdt_bin_cpu_kernel), PYNOTES_CPU_KERNEL(gbdt_histogram_cpu_kernel),
      PYNOTES_CPU_KERNEL(gbdt_best_splits_cpu_kernel),
      PYNOTES_CPU_KERNEL(gbdt_advance_cpu_kernel), PYNOTES_CPU_KERNEL(gbdt_predict_cpu_kernel),
      PYNOTES_CPU_KERNEL(gbdt_grow_tree_cpu_kernel)};
  return kernels;
}

}  // namespace

GbdtTree gbdt_grow_tree_distributed_cpu(const at::Tensor& bins, const at::Tensor& grad,
                                       const at::Tensor& hess,
                                       const std::optional<at::Tensor>& feature_mask,
                                       int64_t max_depth, int64_t num_bins, double reg_lambda,
                                       double gamma, double min_child_weight,
                                       int64_t quantize_bins, int64_t seed,
                                       const std::optional<at::Tensor>& categorical,
                                       const GbdtCollective& collective, int64_t processes,
                                       int64_t rank, int64_t row_offset) {
  TORCH_CHECK(bins.is_cpu(), "gbdt_grow_tree_distributed: bins must be on the CPU, got ",
              bins.device());
  TORCH_CHECK_VALUE(processes >= 1 && rank >= 0 && rank < processes && row_offset >= 0,
                    "gbdt_grow_tree_distributed: processes must be >= 1, rank in [0, processes) "
                    "and row_offset >= 0, got ", processes, ", ", rank, " and ", row_offset);
  return gbdt_grow_tree_impl(bins, grad, hess, feature_mask, max_depth, num_bins, reg_lambda,
                             gamma, min_child_weight, quantize_bins, seed, categorical,
                             cpu_kernels(), &collective, processes, rank, row_offset);
}

void gbdt_release_grower_buffers_cpu() {
  PYNOTES_CPU_KERNEL(gbdt_release_grower_buffers_cpu_kernel)();
}

TORCH_LIBRARY_IMPL(pynotes, CPU, m) { register_gbdt_ops<cpu_kernels>(m); }

}  // namespace pynotes
