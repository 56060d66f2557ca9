#pragma once
// The fused pointwise part of one LSTM step (everything after the matrix products, lstm.h),
// for `rows` sequences, on raw pointers. The CPU (per-ISA) and CUDA kernels implement it;
// lstm_ops.cpp runs the products and the loop over time and calls it. All matrices are
// row-major and contiguous: gates (rows, 4 * hidden), everything else (rows, hidden). Cell
// states and the bias are at::opmath_type (float for Half/BFloat16); the rest is `dtype`.
#include <c10/core/ScalarType.h>

#include <cstdint>

#include "common/cpu_dispatch.h"

namespace pynotes {

struct LstmStepForward {
  c10::ScalarType dtype;
  int64_t rows, hidden;
  void* gates;         // in: pre-activations without bias; out: the activated gates
  const void* bias;    // (4 * hidden), b_ih + b_hh, or nullptr
  const void* c;       // cell state in
  void* c_next;        // cell state out; may be c
  void* c_saved;       // a copy of c for the backward, or nullptr
  void* h_next;        // hidden state out
  void* h_next_copy;   // a second destination for it, or nullptr
};

struct LstmStepBackward {
  c10::ScalarType dtype;
  int64_t rows, hidden;
  const void* gates;     // activated gates saved by the forward
  const void* c;         // the cell state the step started from
  const void* dh;        // gradient of h_next, or nullptr (zero)
  const void* dh_extra;  // a second term of it (the recurrent part), or nullptr
  const void* dc_next;   // gradient reaching c_next from later steps, or nullptr (zero)
  void* dc;              // out: gradient of c; may be dc_next
  void* dgates;          // out: gradients of the pre-activations; may be gates
};

using LstmStepForwardFn = void (*)(const LstmStepForward&);
using LstmStepBackwardFn = void (*)(const LstmStepBackward&);

// One device's step kernels.
struct LstmStepKernels {
  LstmStepForwardFn forward;
  LstmStepBackwardFn backward;
};

PYNOTES_DECLARE_CPU_KERNEL(void lstm_step_forward_cpu_kernel(const LstmStepForward&))
PYNOTES_DECLARE_CPU_KERNEL(void lstm_step_backward_cpu_kernel(const LstmStepBackward&))

}  // namespace pynotes
