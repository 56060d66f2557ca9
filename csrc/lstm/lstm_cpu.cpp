// CPU LSTM ops: the device-generic ops (lstm_ops.cpp) with the per-ISA step kernels.
#include <ATen/cpu/Utils.h>
#include <torch/library.h>

#include "lstm/lstm_ops.h"

namespace pynotes {
namespace {

// The engine's range, measured (benchmarks/lstm.py, on a 2-core Xeon with AMX): it wins while
// the per-step products are small; from batch 64 a GEMM per step runs nearer the FLOP peak.
// bfloat16 products on AMX tiles outrun the engine's float32 FMAs (it widens bfloat16 weights
// as it loads them) already from batch x hidden > 4096.
bool engine_preferred(c10::ScalarType dtype, int64_t batch, int64_t hidden) {
  static const bool amx_bf16 = [] {
    const auto caps = at::cpu::get_cpu_capabilities();
    const auto it = caps.find("amx_bf16");
    return it != caps.end() && it->second.isBool() && it->second.toBool();
  }();
  if (dtype == at::kBFloat16 && amx_bf16) return batch * hidden <= 4096;
  return batch <= 32;
}

const LstmStepKernels& cpu_kernels() {
  static const LstmStepKernels kernels{PYNOTES_CPU_KERNEL(lstm_step_forward_cpu_kernel),
                                       PYNOTES_CPU_KERNEL(lstm_step_backward_cpu_kernel),
                                       PYNOTES_CPU_KERNEL(lstm_engine_forward_cpu_kernel),
                                       PYNOTES_CPU_KERNEL(lstm_engine_backward_cpu_kernel),
                                       engine_preferred};
  return kernels;
}

}  // namespace

TORCH_LIBRARY_IMPL(pynotes, CPU, m) { register_lstm_ops<cpu_kernels>(m); }

}  // namespace pynotes
