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

// One cell step with its products, for small batches (the CPU's): gates = x w_ih^T + h w_hh^T
// + bias, then the step as LstmStepForward's, in one parallel region where threads own blocks
// of hidden units and read their rows of both weights, which stay in that core's cache from
// call to call. float32 and float64; everything contiguous and row-major.
struct LstmCellForward {
  c10::ScalarType dtype;
  int64_t rows, input_size, hidden;
  const void* input;  // (rows, input_size)
  const void* hx;     // (rows, hidden)
  const void* w_ih;   // (4 * hidden, input_size)
  const void* w_hh;   // (4 * hidden, hidden)
  const void* bias;   // (4 * hidden), b_ih + b_hh, or nullptr
  const void* c;      // (rows, hidden)
  void* gates;        // out (rows, 4 * hidden): the activated gates
  void* c_next;       // out (rows, hidden)
  void* h_next;       // out (rows, hidden)
};

// A whole layer and direction in one parallel region (the CPU's recurrent engine): each
// thread owns a slice of the hidden units with its slice of w_hh packed once into its cache,
// and per step computes those units' recurrent products, gates and states, then meets the
// others at a barrier. No projection (P == H). Steps run in `order` (reverse: T - 1 down to
// 0); step t holds rows [offset[t], offset[t] + rows[t]) of the (N, *) layout, the first
// rows[t] sequences of the batch (rows non-increasing), as in lstm_ops.cpp.
struct LstmEngineForward {
  c10::ScalarType dtype;  // of gates, w_hh, h0, output, h_n, h_prev
  int64_t steps, batch, hidden;
  const int64_t* rows;     // per step
  const int64_t* offset;   // per step
  bool reverse;
  void* gates;             // (N, 4H) in: x w_ih^T, unless `input`; out: the activated gates
                           // if `train`
  const void* bias;        // (4H) opmath (b_ih + b_hh), or nullptr
  const void* w_hh;        // (4H, H), row-major
  // The input rows (N, input_size) and w_ih (4H, input_size), row-major, for the engine to
  // compute x w_ih^T itself (each thread its units, before the steps or per step, see
  // input_per_step); or nullptr when gates hold it already. float32 and float64 only.
  const void* input;
  const void* w_ih;
  int64_t input_size;
  const void* h0;          // (B, H)
  const void* c0;          // (B, H) opmath
  void* output;            // (N, H)
  void* h_n;               // (B, H)
  void* c_n;               // (B, H) opmath
  bool train;
  void* c_prev;            // (N, H) opmath, if train: c before each step
  void* h_prev;            // (N, H), if train: h before each step
  // With `input`: x_t w_ih^T is summed in each step's products, with h's (nothing is read
  // from gates, nor written at inference), instead of into gates before the steps.
  bool input_per_step = false;
  // w_hh read as stored by each step, not packed once per call: at batch 1 in float32 with
  // AVX2 or AVX-512 on CPU, without input_per_step (elsewhere it is packed all the same).
  bool w_hh_rows = false;
};

// Backward through time by the same engine: per step the threads' unit slices of dgates, a
// barrier, then each thread's columns of dh = dgates w_hh. The weight gradients are the
// caller's products after the loop.
struct LstmEngineBackward {
  c10::ScalarType dtype;   // of gates, w_hh, grad_output, dgates, dh
  int64_t steps, batch, hidden;
  const int64_t* rows;
  const int64_t* offset;
  bool reverse;
  const void* gates;       // (N, 4H) activated, saved by the forward
  const void* c_prev;      // (N, H) opmath, saved by the forward
  const void* w_hh;        // (4H, H)
  const void* grad_output; // (N, H), or nullptr (zero)
  void* dgates;            // (N, 4H) out
  void* dh;                // (B, H) in: grad of h_n (zeros for none); out: grad of h0
  void* dc;                // (B, H) opmath, in: grad of c_n; out: grad of c0
};

using LstmStepForwardFn = void (*)(const LstmStepForward&);
using LstmStepBackwardFn = void (*)(const LstmStepBackward&);
using LstmCellForwardFn = void (*)(const LstmCellForward&);
using LstmEngineForwardFn = void (*)(const LstmEngineForward&);
using LstmEngineBackwardFn = void (*)(const LstmEngineBackward&);

// One device's step kernels, its recurrent engine and its small-batch cell (nullptr where
// there is none).
struct LstmStepKernels {
  LstmStepForwardFn forward;
  LstmStepBackwardFn backward;
  LstmEngineForwardFn engine_forward = nullptr;
  LstmEngineBackwardFn engine_backward = nullptr;
  LstmCellForwardFn cell_forward = nullptr;
};

PYNOTES_DECLARE_CPU_KERNEL(void lstm_step_forward_cpu_kernel(const LstmStepForward&))
PYNOTES_DECLARE_CPU_KERNEL(void lstm_step_backward_cpu_kernel(const LstmStepBackward&))
PYNOTES_DECLARE_CPU_KERNEL(void lstm_cell_forward_cpu_kernel(const LstmCellForward&))
PYNOTES_DECLARE_CPU_KERNEL(void lstm_engine_forward_cpu_kernel(const LstmEngineForward&))
PYNOTES_DECLARE_CPU_KERNEL(void lstm_engine_backward_cpu_kernel(const LstmEngineBackward&))

}  // namespace pynotes
