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

TORCH_LIBRARY_IMPL(pynotes, CPU, m) { register_gbdt_ops<cpu_kernels>(m); }

}  // namespace pynotes
