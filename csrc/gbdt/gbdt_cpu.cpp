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

void gbdt_boost_step_cpu(const at::Tensor& margin, const std::optional<at::Tensor>& value,
                         const std::optional<at::Tensor>& leaf, const at::Tensor& y,
                         const std::optional<at::Tensor>& weight, const at::Tensor& grad,
                         const at::Tensor& hess, const std::string& loss) {
  const int64_t rows = margin.numel();
  const auto check = [rows](const at::Tensor& t, at::ScalarType dtype, const char* name) {
    TORCH_CHECK(t.is_cpu() && t.scalar_type() == dtype && t.dim() == 1 && t.numel() == rows &&
                    t.is_contiguous(),
                "gbdt_boost_step: ", name, " must be a contiguous 1-D ", dtype,
                " CPU tensor of ", rows, " elements (margin's), got ", t.scalar_type(), " ",
                t.sizes(), " on ", t.device());
  };
  check(margin, at::kDouble, "margin");
  check(y, at::kFloat, "y");
  check(grad, at::kFloat, "grad");
  check(hess, at::kFloat, "hess");
  if (weight) check(*weight, at::kFloat, "weight");
  TORCH_CHECK(value.has_value() == leaf.has_value(),
              "gbdt_boost_step: value and leaf come together (a tree's), or neither");
  if (leaf) check(*leaf, at::kInt, "leaf");
  TORCH_CHECK(!value || (value->is_cpu() && value->scalar_type() == at::kFloat &&
                         value->dim() == 1 && value->numel() > 0 && value->is_contiguous()),
              "gbdt_boost_step: value must be a contiguous non-empty 1-D float CPU tensor");
  TORCH_CHECK_VALUE(loss == "squared_error" || loss == "logistic",
                    "gbdt_boost_step: loss must be 'squared_error' or 'logistic', got '", loss,
                    "'");
  bool leaf_in_range = true;
  const GbdtBoostStep args{
      rows, value ? value->numel() : 0,
      loss == "logistic" ? GbdtBoostStep::kLogistic : GbdtBoostStep::kSquaredError,
      margin.data_ptr<double>(), leaf ? leaf->data_ptr<int32_t>() : nullptr,
      value ? value->data_ptr<float>() : nullptr, y.data_ptr<float>(),
      weight ? weight->data_ptr<float>() : nullptr, grad.data_ptr<float>(),
      hess.data_ptr<float>(), &leaf_in_range};
  PYNOTES_CPU_KERNEL(gbdt_boost_step_cpu_kernel)(args);
  TORCH_CHECK_INDEX(leaf_in_range, "gbdt_boost_step: leaf must hold node indices in [0, ",
                    args.nodes, "): value's size");
}

void gbdt_release_grower_buffers_cpu() {
  PYNOTES_CPU_KERNEL(gbdt_release_grower_buffers_cpu_kernel)();
}

TORCH_LIBRARY_IMPL(pynotes, CPU, m) { register_gbdt_ops<cpu_kernels>(m); }

}  // namespace pynotes
