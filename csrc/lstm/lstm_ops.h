#pragma once
// Device-generic LSTM ops (lstm_ops.cpp): argument checks, the matrix products in ATen's BLAS
// and the loop over time steps. Each device registers them with its pointwise step kernels
// through LstmOps<kernels> (lstm_cpu.cpp, lstm_cuda.cu). Schemas are in pynotes.cpp.
#include <ATen/core/Tensor.h>

#include <algorithm>
#include <array>
#include <optional>
#include <tuple>
#include <vector>

#include "lstm/lstm_step.h"

namespace pynotes {

using OptTensor = std::optional<at::Tensor>;
using Tensor3 = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

Tensor3 lstm_cell_impl(const at::Tensor& input, const at::Tensor& hx, const at::Tensor& cx,
                       const at::Tensor& w_ih, const at::Tensor& w_hh, const OptTensor& b_ih,
                       const OptTensor& b_hh, const LstmStepKernels& kernels);

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
lstm_cell_backward_impl(const OptTensor& grad_hy, const OptTensor& grad_cy,
                        const at::Tensor& workspace, const at::Tensor& input,
                        const at::Tensor& hx, const at::Tensor& cx, const at::Tensor& w_ih,
                        const at::Tensor& w_hh, std::array<bool, 4> output_mask,
                        const LstmStepKernels& kernels);

// The layer's forward; with `train`, also what its backward needs (else those are empty).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
lstm_layer_impl(const at::Tensor& input, const at::Tensor& hx, const at::Tensor& cx,
                const at::Tensor& w_ih, const at::Tensor& w_hh, const OptTensor& b_ih,
                const OptTensor& b_hh, const OptTensor& w_hr, const OptTensor& batch_sizes,
                bool reverse, bool train, const LstmStepKernels& kernels);

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
lstm_layer_backward_impl(const OptTensor& grad_output, const OptTensor& grad_hy,
                         const OptTensor& grad_cy, const at::Tensor& input,
                         const at::Tensor& hx, const at::Tensor& w_ih,
                         const at::Tensor& w_hh, const OptTensor& w_hr,
                         const OptTensor& batch_sizes, bool reverse, const at::Tensor& gates,
                         const at::Tensor& c_prev, const at::Tensor& h_prev,
                         const at::Tensor& r, std::array<bool, 3> output_mask,
                         const LstmStepKernels& kernels);

// The measured cost of an LSTM layer path (lstm_ops.cpp, use_engine): seconds per call and per
// time step.
struct LstmPathCost {
  double fixed_seconds, step_seconds;
  double seconds(int64_t steps) const { return fixed_seconds + steps * step_seconds; }
};

// How the recurrent engine runs a layer: where it gets the input projection x w_ih^T (made by
// itself before the steps, by one matrix product before the steps, or by itself in each step's
// products), and at batch 1, with the projection before the steps, reading w_hh as stored
// instead of packed (LstmEngineForward::w_hh_rows).
enum class LstmEngineForm { kBeforeSteps, kAfterMatmul, kPerStep, kWhhRows };

// The costs of the recurrent engine and of per-step products measured so far for a shape
// class (dtype, batch and hidden rounded up to powers of two, threads; training forwards,
// which save what the backward needs, apart from inference).
struct LstmEngineChoice {
  c10::ScalarType dtype;
  int64_t batch, hidden;
  int threads;
  bool train;
  LstmPathCost engine, products;
  // Where the engine can make the input projection itself (float32, float64), `engine` makes
  // it before the steps, and these are the engine after one matrix product made it and with
  // it made in each step; elsewhere nullopt (the engine's cost is after the product already).
  // engine_w_hh_rows: as `engine`, w_hh read as stored, for float32 at batch 1 on CPU.
  std::optional<LstmPathCost> engine_after_matmul, engine_input_per_step, engine_w_hh_rows;
  LstmEngineForm engine_form_for(int64_t steps) const {
    LstmEngineForm form = LstmEngineForm::kBeforeSteps;
    double best = engine.seconds(steps);
    for (auto [cost, which] : {std::pair(engine_after_matmul, LstmEngineForm::kAfterMatmul),
                               std::pair(engine_input_per_step, LstmEngineForm::kPerStep),
                               std::pair(engine_w_hh_rows, LstmEngineForm::kWhhRows)}) {
      if (cost && cost->seconds(steps) < best) {
        best = cost->seconds(steps);
        form = which;
      }
    }
    return form;
  }
  LstmPathCost engine_cost(int64_t steps) const {
    switch (engine_form_for(steps)) {
      case LstmEngineForm::kAfterMatmul: return *engine_after_matmul;
      case LstmEngineForm::kPerStep: return *engine_input_per_step;
      case LstmEngineForm::kWhhRows: return *engine_w_hh_rows;
      default: return engine;
    }
  }
  bool engine_for(int64_t steps) const {
    return engine_cost(steps).seconds(steps) <= products.seconds(steps);
  }
};
std::vector<LstmEngineChoice> lstm_engine_choices();

// The shortest sequence (up to 4096 steps) that a choice runs on the engine, or -1 when none
// does.
template <typename Choice>
int64_t engine_from_steps(const Choice& choice) {
  for (int64_t t = 1; t <= 4096; ++t) {
    if (choice.engine_for(t)) return t;
  }
  return -1;
}

// The costs of a layer's backward through time on the engine and by per-step products (the
// weight gradients, the same on both, left out), measured so far for a shape class (the same
// classes). A training layer's backward takes the engine unless the products measure more than
// 10 % cheaper, whatever its forward took (the tensors the forward saves are the same on every
// path). The margin is this measurement's error seen in training: at batch 8, hidden 256 on a
// Xeon the products' backward measured 2-10 % cheaper a step and training ran 3-6 % slower on
// it; at batch 256 they measured 26 % cheaper and training ran 3 % faster.
struct LstmBackwardChoice {
  c10::ScalarType dtype;
  int64_t batch, hidden;
  int threads;
  LstmPathCost engine, products;
  bool engine_for(int64_t steps) const {
    return engine.seconds(steps) <= 1.1 * products.seconds(steps);
  }
};
std::vector<LstmBackwardChoice> lstm_backward_choices();

// The cost of torch's oneDNN RNN layer for inference, measured so far for a shape class (the
// same classes), or nullopt where it could not run.
struct LstmOnednnRnnCost {
  c10::ScalarType dtype;
  int64_t batch, hidden;
  int threads;
  std::optional<LstmPathCost> rnn;
};
std::vector<LstmOnednnRnnCost> lstm_onednn_rnn_costs();

// How the cell ran per shape class (dtype; batch, input and hidden rounded up to powers of
// two; threads), measured so far: one fused kernel, or two products and the step kernel.
struct LstmCellChoice {
  c10::ScalarType dtype;
  int64_t batch, input, hidden;
  int threads;
  double fused_seconds, products_seconds;
  bool fused() const { return fused_seconds <= products_seconds; }
};
std::vector<LstmCellChoice> lstm_cell_choices();

// The ops of one device, as plain functions for TORCH_LIBRARY_IMPL.
template <const LstmStepKernels& (*kernels)()>
struct LstmOps {
  static Tensor3 cell(const at::Tensor& input, const at::Tensor& hx, const at::Tensor& cx,
                      const at::Tensor& w_ih, const at::Tensor& w_hh, const OptTensor& b_ih,
                      const OptTensor& b_hh) {
    return lstm_cell_impl(input, hx, cx, w_ih, w_hh, b_ih, b_hh, kernels());
  }
  static auto cell_backward(const OptTensor& grad_hy, const OptTensor& grad_cy,
                            const at::Tensor& workspace, const at::Tensor& input,
                            const at::Tensor& hx, const at::Tensor& cx, const at::Tensor& w_ih,
                            const at::Tensor& w_hh, std::array<bool, 4> output_mask) {
    return lstm_cell_backward_impl(grad_hy, grad_cy, workspace, input, hx, cx, w_ih, w_hh,
                                   output_mask, kernels());
  }
  static Tensor3 layer(const at::Tensor& input, const at::Tensor& hx, const at::Tensor& cx,
                       const at::Tensor& w_ih, const at::Tensor& w_hh, const OptTensor& b_ih,
                       const OptTensor& b_hh, const OptTensor& w_hr,
                       const OptTensor& batch_sizes, bool reverse) {
    auto out = lstm_layer_impl(input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes,
                               reverse, /*train=*/false, kernels());
    return {std::get<0>(out), std::get<1>(out), std::get<2>(out)};
  }
  static auto layer_train(const at::Tensor& input, const at::Tensor& hx, const at::Tensor& cx,
                          const at::Tensor& w_ih, const at::Tensor& w_hh, const OptTensor& b_ih,
                          const OptTensor& b_hh, const OptTensor& w_hr,
                          const OptTensor& batch_sizes, bool reverse) {
    return lstm_layer_impl(input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, reverse,
                           /*train=*/true, kernels());
  }
  static auto layer_backward(const OptTensor& grad_output, const OptTensor& grad_hy,
                             const OptTensor& grad_cy, const at::Tensor& input,
                             const at::Tensor& hx, const at::Tensor& w_ih, const at::Tensor& w_hh,
                             const OptTensor& w_hr, const OptTensor& batch_sizes, bool reverse,
                             const at::Tensor& gates, const at::Tensor& c_prev,
                             const at::Tensor& h_prev, const at::Tensor& r,
                             std::array<bool, 3> output_mask) {
    return lstm_layer_backward_impl(grad_output, grad_hy, grad_cy, input, hx, w_ih, w_hh, w_hr,
                                    batch_sizes, reverse, gates, c_prev, h_prev, r,
                                    output_mask, kernels());
  }
};

// Registers the five LSTM ops of a device (inside TORCH_LIBRARY_IMPL).
template <const LstmStepKernels& (*kernels)(), typename Library>
void register_lstm_ops(Library& m) {
  using Ops = LstmOps<kernels>;
  m.impl("lstm_cell", &Ops::cell);
  m.impl("lstm_cell_backward", &Ops::cell_backward);
  m.impl("lstm_layer", &Ops::layer);
  m.impl("lstm_layer_train", &Ops::layer_train);
  m.impl("lstm_layer_backward", &Ops::layer_backward);
}

}  // namespace pynotes
