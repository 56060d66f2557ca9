// CPU LSTM ops: the device-generic ops (lstm_ops.cpp) with the per-ISA step kernels.
#include <torch/library.h>

#include "lstm/lstm_ops.h"

namespace pynotes {
namespace {

const LstmStepKernels& cpu_kernels() {
  static const LstmStepKernels kernels{PYNOTES_CPU_KERNEL(lstm_step_forward_cpu_kernel),
                                       PYNOTES_CPU_KERNEL(lstm_step_backward_cpu_kernel),
                                       PYNOTES_CPU_KERNEL(lstm_engine_forward_cpu_kernel),
                                       PYNOTES_CPU_KERNEL(lstm_engine_backward_cpu_kernel),
                                       PYNOTES_CPU_KERNEL(lstm_cell_forward_cpu_kernel)};
  return kernels;
}

}  // namespace

TORCH_LIBRARY_IMPL(pynotes, CPU, m) { register_lstm_ops<cpu_kernels>(m); }

}  // namespace pynotes
