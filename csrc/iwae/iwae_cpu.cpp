// CPU IWAE ops: the device-generic ops (iwae_ops.cpp) with the per-ISA kernels.
#include <torch/library.h>

#include "iwae/iwae_ops.h"

namespace pynotes {
namespace {

const IwaeKernels& cpu_kernels() {
  static const IwaeKernels kernels{PYNOTES_CPU_KERNEL(iwae_forward_cpu_kernel),
                                   PYNOTES_CPU_KERNEL(iwae_backward_cpu_kernel)};
  return kernels;
}

}  // namespace

TORCH_LIBRARY_IMPL(pynotes, CPU, m) { register_iwae_ops<cpu_kernels>(m); }

}  // namespace pynotes
