// CPU GCN ops: the device-generic ops (gcn_ops.cpp) with the per-ISA sparse kernels.
#include <torch/library.h>

#include "gcn/gcn_ops.h"

namespace pynotes {
namespace {

const GcnKernels& cpu_kernels() {
  static const GcnKernels kernels{PYNOTES_CPU_KERNEL(csr_spmm_cpu_kernel),
                                  PYNOTES_CPU_KERNEL(csr_sddmm_cpu_kernel)};
  return kernels;
}

}  // namespace

TORCH_LIBRARY_IMPL(pynotes, CPU, m) { register_gcn_ops<cpu_kernels>(m); }

}  // namespace pynotes
