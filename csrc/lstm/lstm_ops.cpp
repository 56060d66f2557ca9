// Device-generic LSTM ops: checks, matrix products (common/matmul.h) and the time loop; the
// pointwise step is the device's kernel (lstm_step.h).
//
// Layer layout: the input is (T, B, I) time-major, or packed (N, I) with CPU int64
// batch_sizes (T) as in torch.nn.utils.rnn.PackedSequence: step t holds rows
// [offset_t, offset_t + batch_sizes[t]) and its sequences are the first batch_sizes[t] of the
// batch (lengths sorted, longest first). Running states h (B, P) and c (B, H) are updated in
// their first batch_sizes[t] rows, so a sequence that has ended keeps its final state, and in
// reverse a sequence that has not started yet still holds hx / cx.
//
// Forward: gates = X W_ih^T for all steps at once; per step gates_t += h W_hh^T, then the
// fused step (biases, activations, c and h); with a projection (P < H) h = r W_hr^T after it.
// Training also saves per step the h and c the step started from (h_prev, c_prev) and r.
// Backward (haste's scheme): per step, in reverse, the fused step backward writes dgates_t
// and the recurrent gradient dh = dgates_t W_hh; after the loop the input and weight
// gradients are single large products over all steps: dX = dG W_ih, dW_ih = dG^T X,
// dW_hh = dG^T h_prev, dW_hr = dH^T r, dbias = column sums of dG.
#include "lstm/lstm_ops.h"

#include <ATen/Context.h>
#include <ATen/OpMathType.h>
#include <ATen/ops/add.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mkldnn_rnn_layer.h>
#include <ATen/ops/zeros.h>
#include <c10/core/DeviceGuard.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "common/calibration.h"
#include "common/checks.h"
#include "common/matmul.h"

namespace pynotes {
namespace {

// "(3, 4)", "(16,)": shapes as Python prints them (the reference's messages match ours).
std::string shape_str(c10::IntArrayRef sizes) {
  std::string s = "(";
  for (size_t i = 0; i < sizes.size(); ++i) s += (i ? ", " : "") + std::to_string(sizes[i]);
  return s + (sizes.size() == 1 ? ",)" : ")");
}

void check_shape(const at::Tensor& t, const char* op, const char* name,
                 c10::IntArrayRef expected, const char* meaning) {
  TORCH_CHECK_VALUE(t.sizes() == expected, op, ": ", name, " must have shape ", meaning, " = ",
                    shape_str(expected), ", got ", shape_str(t.sizes()));
}

// Sizes fixed by the weights: I inputs, H hidden units, P outputs (P = H without projection).
struct LstmSizes {
  int64_t I, H, P;
};

LstmSizes check_weights(const char* op, const at::Tensor& input, const at::Tensor& w_ih,
                        const at::Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh,
                        const OptTensor& w_hr) {
  check_floating(input, "input");
  check_like(w_ih, "w_ih", input, "input");
  check_like(w_hh, "w_hh", input, "input");
  TORCH_CHECK_VALUE(w_ih.dim() == 2 && w_ih.size(0) > 0 && w_ih.size(0) % 4 == 0, op,
                    ": w_ih must have shape (4 * hidden_size, input_size), got ",
                    shape_str(w_ih.sizes()));
  const int64_t H = w_ih.size(0) / 4, I = w_ih.size(1);
  TORCH_CHECK_VALUE(input.size(-1) == I, op, ": input has ", input.size(-1),
                    " features but w_ih ", shape_str(w_ih.sizes()), " expects input_size = ", I);
  int64_t P = H;
  if (has_tensor(w_hr)) {
    check_like(*w_hr, "w_hr", input, "input");
    TORCH_CHECK_VALUE(w_hr->dim() == 2 && w_hr->size(0) > 0 && w_hr->size(1) == H, op,
                      ": w_hr must have shape (proj_size, hidden_size = ", H, "), got ",
                      shape_str(w_hr->sizes()));
    P = w_hr->size(0);
  }
  check_shape(w_hh, op, "w_hh", {4 * H, P},
              has_tensor(w_hr) ? "(4 * hidden_size, proj_size)" : "(4 * hidden_size, hidden_size)");
  for (const auto* b : {&b_ih, &b_hh}) {
    if (!has_tensor(*b)) continue;
    const char* name = b == &b_ih ? "b_ih" : "b_hh";
    check_like(**b, name, input, "input");
    check_shape(**b, op, name, {4 * H}, "(4 * hidden_size)");
  }
  return {I, H, P};
}

void check_states(const char* op, const at::Tensor& input, const at::Tensor& hx,
                  const at::Tensor& cx, int64_t B, const LstmSizes& s) {
  check_like(hx, "hx", input, "input");
  check_like(cx, "cx", input, "input");
  check_shape(hx, op, "hx", {B, s.P}, s.P == s.H ? "(batch, hidden_size)" : "(batch, proj_size)");
  check_shape(cx, op, "cx", {B, s.H}, "(batch, hidden_size)");
}

// b_ih + b_hh in the step kernels' accumulation type, or undefined without biases.
at::Tensor combined_bias(const OptTensor& b_ih, const OptTensor& b_hh) {
  at::Tensor bias;
  for (const auto* b : {&b_ih, &b_hh}) {
    if (!has_tensor(*b)) continue;
    const at::Tensor t = (*b)->to(at::toOpMathType((*b)->scalar_type()));
    bias = bias.defined() ? at::add(bias, t) : t.contiguous();
  }
  return bias;
}

// A contiguous copy of an optional state gradient in opts' dtype, or zeros when absent.
at::Tensor state_copy(const OptTensor& t, c10::IntArrayRef sizes, const at::TensorOptions& opts) {
  if (!has_tensor(t)) return at::zeros(sizes, opts);
  return t->to(opts.dtype(), /*non_blocking=*/false, /*copy=*/true, at::MemoryFormat::Contiguous);
}

const void* data_or_null(const at::Tensor& t) { return t.defined() ? t.const_data_ptr() : nullptr; }

// The time steps of a layer input: rows and first row of each in the (N, *) layout.
struct Steps {
  int64_t batch = 0, total = 0;
  std::vector<int64_t> rows, offset;
};

Steps steps_of(const char* op, const at::Tensor& input, const OptTensor& batch_sizes) {
  Steps s;
  if (!has_tensor(batch_sizes)) {
    TORCH_CHECK_VALUE(input.dim() == 3, op, ": input must be 3-D (seq_len, batch, input_size), "
                      "or 2-D packed data with batch_sizes, got ", input.dim(), "-D");
    s.batch = input.size(1);
    for (int64_t t = 0; t < input.size(0); ++t) {
      s.rows.push_back(s.batch);
      s.offset.push_back(t * s.batch);
    }
    s.total = input.size(0) * s.batch;
    return s;
  }
  const at::Tensor& bs = *batch_sizes;
  TORCH_CHECK_VALUE(input.dim() == 2, op, ": with batch_sizes, input must be 2-D packed data "
                    "(sum(batch_sizes), input_size), got ", input.dim(), "-D");
  TORCH_CHECK_VALUE(bs.dim() == 1 && bs.scalar_type() == at::kLong && bs.is_cpu(), op,
                    ": batch_sizes must be a 1-D int64 CPU tensor, got ", bs.dim(), "-D ",
                    bs.scalar_type(), " on ", bs.device());
  const at::Tensor sizes = bs.contiguous();
  const int64_t* b = sizes.const_data_ptr<int64_t>();
  for (int64_t t = 0; t < sizes.numel(); ++t) {
    TORCH_CHECK_VALUE(b[t] > 0 && (t == 0 || b[t] <= b[t - 1]), op,
                      ": batch_sizes must be positive and non-increasing (sequences sorted "
                      "longest first, as pack_padded_sequence makes them), got ", bs);
    s.rows.push_back(b[t]);
    s.offset.push_back(s.total);
    s.total += b[t];
  }
  s.batch = s.rows.empty() ? 0 : s.rows[0];
  TORCH_CHECK_VALUE(input.size(0) == s.total, op, ": packed input has ", input.size(0),
                    " rows but batch_sizes sum to ", s.total);
  return s;
}

// A layer's recurrent paths: per-step products and step kernels; the device's recurrent engine
// (lstm_step.h), making the input projection itself where it can (float32, float64), before
// the steps or in each step, or after one matrix product made it, and at batch 1 reading w_hh
// as stored; or, for inference on CPU, torch's own oneDNN RNN layer (what torch.nn.LSTM runs
// there).
enum LayerPath : int {
  kProducts = 0,
  kEngine = 1,
  kOnednnRnn = 2,
  kEngineAfterMatmul = 3,
  kEngineInputPerStep = 4,
  kEngineWhhRows = 5
};

bool is_engine(int path) {
  return path == kEngine || path == kEngineAfterMatmul || path == kEngineInputPerStep ||
         path == kEngineWhhRows;
}

// Whether the engine can make a layer's input projection itself (it reads the rows as stored).
bool engine_projects_itself(c10::ScalarType dtype) {
  return dtype == at::kFloat || dtype == at::kDouble;
}

// The layer's forward and backward with the recurrent path chosen: path = -1 lets choose_path
// (backward_on_engine) choose.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
layer_forward(const at::Tensor& input, const at::Tensor& hx, const at::Tensor& cx,
              const at::Tensor& w_ih, const at::Tensor& w_hh, const OptTensor& b_ih,
              const OptTensor& b_hh, const OptTensor& w_hr, const OptTensor& batch_sizes,
              bool reverse, bool train, const LstmStepKernels& kernels, int path);

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
layer_backward(const OptTensor& grad_output, const OptTensor& grad_hy, const OptTensor& grad_cy,
               const at::Tensor& input, const at::Tensor& hx, const at::Tensor& w_ih,
               const at::Tensor& w_hh, const OptTensor& w_hr, const OptTensor& batch_sizes,
               bool reverse, const at::Tensor& gates, const at::Tensor& c_prev,
               const at::Tensor& h_prev, const at::Tensor& r, std::array<bool, 3> output_mask,
               const LstmStepKernels& kernels, int path);

struct EngineShapeClass {
  c10::ScalarType dtype;
  int64_t batch, hidden;  // rounded up to powers of two
  int threads;
  bool train;  // a training forward (saving what the backward needs), or inference
  bool operator<(const EngineShapeClass& o) const {
    return std::tie(dtype, batch, hidden, threads, train) <
           std::tie(o.dtype, o.batch, o.hidden, o.threads, o.train);
  }
};

ChoiceTable<EngineShapeClass, LstmEngineChoice>& engine_choices() {
  static ChoiceTable<EngineShapeClass, LstmEngineChoice> table;
  return table;
}

ChoiceTable<EngineShapeClass, LstmBackwardChoice>& backward_choices() {
  static ChoiceTable<EngineShapeClass, LstmBackwardChoice> table;
  return table;
}

ChoiceTable<EngineShapeClass, LstmOnednnRnnCost>& onednn_rnn_costs() {
  static ChoiceTable<EngineShapeClass, LstmOnednnRnnCost> table;
  return table;
}

// An inference layer by torch's oneDNN RNN layer (at::mkldnn_rnn_layer, one layer and
// direction): output (T, B, H), h_n, c_n. Absent biases are zeros, as torch passes them.
Tensor3 onednn_rnn_layer(const at::Tensor& input, const at::Tensor& hx, const at::Tensor& cx,
                         const at::Tensor& w_ih, const at::Tensor& w_hh, const OptTensor& b_ih,
                         const OptTensor& b_hh, bool reverse) {
  auto bias_or_zeros = [&](const OptTensor& b) {
    return has_tensor(b) ? b->contiguous() : at::zeros({w_ih.size(0)}, w_ih.options());
  };
  auto [output, hy, cy, workspace] = at::mkldnn_rnn_layer(
      input.contiguous(), w_ih.contiguous(), w_hh.contiguous(), bias_or_zeros(b_ih),
      bias_or_zeros(b_hh), hx.contiguous(), cx.contiguous(), reverse, /*batch_sizes=*/{}, /*mode: LSTM=*/2,
      w_hh.size(1), /*num_layers=*/1, /*has_biases=*/true, /*bidirectional=*/false,
      /*batch_first=*/false, /*train=*/false);
  return {output, hy, cy};
}

// What a layer path is timed on: its forward at inference or in training, or its backward.
enum class Timed { kInference, kTraining, kBackward };

// Seconds of a layer of `steps` steps at this batch and hidden size on one path (best of
// min_runs to 16 runs after a warm-up, as many as 20 ms allow), on synthetic inputs.
double time_layer_path(const LstmStepKernels& kernels, const at::TensorOptions& opts,
                       int64_t steps, int64_t batch, int64_t hidden, LayerPath path,
                       Timed timed, int min_runs) {
  const at::Tensor x = at::zeros({steps, batch, hidden}, opts);
  const at::Tensor h0 = at::zeros({batch, hidden}, opts), c0 = at::zeros({batch, hidden}, opts);
  // (Two weights, as a layer has: one tensor for both halves what the paths read, which at
  // hidden 512 and up decides what stays in the cache.)
  const at::Tensor w_ih = at::zeros({4 * hidden, hidden}, opts);
  const at::Tensor w_hh = at::zeros({4 * hidden, hidden}, opts);
  const at::Tensor bias = at::zeros({4 * hidden}, opts);
  if (timed != Timed::kBackward) {
    return best_seconds_within(0.02, min_runs, 16, [&] {
      layer_forward(x, h0, c0, w_ih, w_hh, bias, bias, std::nullopt, std::nullopt, false,
                    timed == Timed::kTraining, kernels, path);
    });
  }
  const auto saved = layer_forward(x, h0, c0, w_ih, w_hh, bias, bias, std::nullopt,
                                   std::nullopt, false, true, kernels, kProducts);
  return best_seconds_within(0.02, min_runs, 16, [&] {
    layer_backward(x, std::nullopt, std::nullopt, x, h0, w_ih, w_hh, std::nullopt, std::nullopt,
                   false, std::get<3>(saved), std::get<4>(saved), std::get<5>(saved),
                   std::get<6>(saved), {false, false, false}, kernels, path);
  });
}

// A path's cost as fixed + per-step seconds, from layers of 4 steps and of `steps` (the first
// call's length, 16 to 64: the engine packs W_hh once per call, and the forms that write all
// steps' gates before the steps slow down per step once that buffer outgrows the cache, which
// 16 steps hid at batch 64, hidden 512 on a Xeon), or 4 and 8 steps where the 4 steps took
// more than 10 ms: there the steps outweigh any fixed cost, and at batch 256, hidden 1024 on
// a Xeon the first call took 8.8 s against 0.7 s for the next with 4 and 16. (Best of at
// least 3 runs of the short layer and 2 of the long one, each after a warm-up.)
LstmPathCost measure_path(const LstmStepKernels& kernels, const at::TensorOptions& opts,
                          int64_t batch, int64_t hidden, LayerPath path, Timed timed,
                          int64_t steps = 16) {
  const double short_s = time_layer_path(kernels, opts, 4, batch, hidden, path, timed, 3);
  const int64_t long_steps = short_s > 0.01 ? 8 : std::clamp<int64_t>(steps, 16, 64);
  const double long_s =
      time_layer_path(kernels, opts, long_steps, batch, hidden, path, timed, 2);
  const double per_step = std::max(0.0, (long_s - short_s) / (long_steps - 4));
  return {std::max(0.0, short_s - 4 * per_step), per_step};
}

// Which path a layer takes. Engine or per-step products, without a projection, is whichever
// is faster on this machine: which one is depends on the CPU (the engine won up to batch 32 on
// a Xeon with AMX and on an AMD EPYC, and also at batch 64 on the Xeon; bfloat16 products on
// AMX tiles outrun it from batch x hidden ~4096), so the first layer of each shape class
// (dtype, batch and hidden rounded up to powers of two, threads) times both on synthetic
// sequences (measure_path: fixed and per-step cost of each path) and keeps both costs for the
// process; each call then takes the cheaper path for its length. Training forwards are
// classes of their own, timed saving what the backward needs (at batch 256, hidden 256 on a
// Xeon the engine's forward that won inference by 1.07-1.15x took 54 ms in training against the
// products' 50); their backward is chosen on its own (backward_on_engine). An inference
// layer on CPU over a dense sequence without projection may also take
// torch's oneDNN RNN layer: its cost is measured the same way at the first such call of the
// class (lstm_onednn_rnn_costs), and it runs where it is the cheapest of the three. On a Xeon
// with AMX that is bfloat16 from batch 32 (ours ran at 0.55-0.72x of it there); in float32
// from batch 32 the three were within a few % of each other.
// Where the engine can make the input projection itself (float32, float64), it is also timed
// after one matrix product made it instead (oneDNN's or MKL's GEMM, more efficient than the
// engine's micro-kernel over many rows, while at batch 1 the engine's own projection was
// faster), and making it inside each step's products (no gates buffer written before the steps
// and read back: at batch 256, hidden 256 on a Xeon, 0.79x torch's RNN after the GEMM and
// 1.07-1.15x per step). At batch 1 in float32 on CPU the engine is also timed reading w_hh as
// stored, with no packed copy: on a Xeon, T = 50, that halved the fixed cost at hidden 256
// (37 to 19 us) and cut it from 245 to 65 us at hidden 512, whose copy and rows outgrew the
// L2, while each step ran 5-18 % slower at hidden 64-512 with w_hh in L2 (faster at 1024).
// PYNOTES_LSTM_ENGINE=0, 1, after-matmul, input-per-step, w-hh-rows or onednn forces the
// products, the engine (projecting itself where it can), the engine after the product, with
// the product in each step, reading w_hh as stored, or torch's RNN where it can run (else
// the products); the tests run each.
int choose_path(const LstmStepKernels& kernels, bool project, bool onednn_rnn_ok, bool train,
                const at::Tensor& input, int64_t steps, int64_t batch, int64_t hidden) {
  const bool engine_ok = kernels.engine_forward != nullptr && !project;
  if (const char* forced = std::getenv("PYNOTES_LSTM_ENGINE"); forced && forced[0] != '\0') {
    if (std::strcmp(forced, "onednn") == 0) return onednn_rnn_ok ? kOnednnRnn : kProducts;
    if (std::strcmp(forced, "after-matmul") == 0) return engine_ok ? kEngineAfterMatmul : kProducts;
    if (std::strcmp(forced, "input-per-step") == 0) {
      return engine_ok ? kEngineInputPerStep : kProducts;
    }
    if (std::strcmp(forced, "w-hh-rows") == 0) return engine_ok ? kEngineWhhRows : kProducts;
    TORCH_CHECK(std::strcmp(forced, "0") == 0 || std::strcmp(forced, "1") == 0,
                "PYNOTES_LSTM_ENGINE must be '0', '1', 'after-matmul', 'input-per-step', "
                "'w-hh-rows' or 'onednn', got '", forced, "'");
    return forced[0] == '1' && engine_ok ? kEngine : kProducts;
  }
  const EngineShapeClass key{input.scalar_type(), round_up_pow2(batch), round_up_pow2(hidden),
                             at::get_num_threads(), train};
  const Timed timed = train ? Timed::kTraining : Timed::kInference;
  LstmPathCost best{0, 0};
  int path = kProducts;
  if (engine_ok) {
    std::optional<LstmEngineChoice> choice = engine_choices().find(key);
    if (!choice) {
      const auto opts = input.options();
      LstmEngineChoice c{key.dtype, key.batch, key.hidden, key.threads, train,
                         measure_path(kernels, opts, batch, hidden, kEngine, timed, steps),
                         measure_path(kernels, opts, batch, hidden, kProducts, timed, steps)};
      if (engine_projects_itself(input.scalar_type())) {
        c.engine_after_matmul =
            measure_path(kernels, opts, batch, hidden, kEngineAfterMatmul, timed, steps);
        c.engine_input_per_step =
            measure_path(kernels, opts, batch, hidden, kEngineInputPerStep, timed, steps);
      }
      if (input.is_cpu() && input.scalar_type() == at::kFloat && batch == 1) {
        c.engine_w_hh_rows =
            measure_path(kernels, opts, batch, hidden, kEngineWhhRows, timed, steps);
      }
      choice = engine_choices().insert(key, c);
    }
    switch (choice->engine_form_for(steps)) {
      case LstmEngineForm::kAfterMatmul: path = kEngineAfterMatmul; break;
      case LstmEngineForm::kPerStep: path = kEngineInputPerStep; break;
      case LstmEngineForm::kWhhRows: path = kEngineWhhRows; break;
      default: path = kEngine;
    }
    if (!choice->engine_for(steps)) path = kProducts;
    best = path == kProducts ? choice->products : choice->engine_cost(steps);
  }
  if (!engine_ok || !onednn_rnn_ok) return path;  // (the CPU, which has oneDNN, has an engine)
  std::optional<LstmOnednnRnnCost> rnn = onednn_rnn_costs().find(key);
  if (!rnn) {
    LstmOnednnRnnCost cost{key.dtype, key.batch, key.hidden, key.threads, std::nullopt};
    try {
      cost.rnn =
          measure_path(kernels, input.options(), batch, hidden, kOnednnRnn, timed, steps);
    } catch (const std::exception&) {  // oneDNN cannot run the dtype on this CPU (dnnl::error)
    }
    rnn = onednn_rnn_costs().insert(key, cost);
  }
  return rnn->rnn && rnn->rnn->seconds(steps) < best.seconds(steps) ? kOnednnRnn : path;
}

// Whether a training layer's backward runs on the engine or by per-step products, by their
// backward's cost (LstmBackwardChoice::engine_for), measured at the first backward of a shape
// class (choose_path's classes) on 4- and 16-step synthetic layers; PYNOTES_LSTM_ENGINE forces
// what it forces the forward to.
bool backward_on_engine(const LstmStepKernels& kernels, bool project, const at::Tensor& input,
                        int64_t steps, int64_t batch, int64_t hidden) {
  if (const char* forced = std::getenv("PYNOTES_LSTM_ENGINE"); forced && forced[0] != '\0') {
    return is_engine(choose_path(kernels, project, false, true, input, steps, batch, hidden));
  }
  if (kernels.engine_backward == nullptr || project) return false;
  const EngineShapeClass key{input.scalar_type(), round_up_pow2(batch), round_up_pow2(hidden),
                             at::get_num_threads(), true};
  std::optional<LstmBackwardChoice> choice = backward_choices().find(key);
  if (!choice) {
    const auto opts = input.options();
    choice = backward_choices().insert(
        key, {key.dtype, key.batch, key.hidden, key.threads,
              measure_path(kernels, opts, batch, hidden, kEngine, Timed::kBackward),
              measure_path(kernels, opts, batch, hidden, kProducts, Timed::kBackward)});
  }
  return choice->engine_for(steps);
}

// Whether torch's oneDNN RNN layer can run this layer: inference on CPU, a dense
// (T, B, input) sequence, no projection, a floating dtype oneDNN has.
bool onednn_rnn_possible(const at::Tensor& input, bool project, const OptTensor& batch_sizes,
                         bool train) {
  const auto dtype = input.scalar_type();
  return !train && !project && !has_tensor(batch_sizes) && input.is_cpu() &&
         input.dim() == 3 && (dtype == at::kFloat || at::isReducedFloatingType(dtype)) &&
         at::hasMKLDNN() && at::globalContext().userEnabledMkldnn();
}

// (N, width) as the caller's layout: (T, B, width) for time-major input, else packed.
at::Tensor as_layer_layout(const at::Tensor& t, const at::Tensor& input) {
  if (input.dim() == 3) return t.view({input.size(0), input.size(1), t.size(1)});
  return t;
}

// The cell as two products (common/matmul.h) and the step kernel. bias: b_ih + b_hh in the
// accumulation type, or undefined.
Tensor3 cell_forward_products(const at::Tensor& input, const at::Tensor& hx,
                              const at::Tensor& cx, const at::Tensor& w_ih,
                              const at::Tensor& w_hh, const at::Tensor& bias,
                              const LstmStepKernels& kernels) {
  const int64_t B = input.size(0), H = w_hh.size(1);
  const auto opts = input.options();
  const auto acc_opts = opts.dtype(at::toOpMathType(input.scalar_type()));
  at::Tensor gates = at::empty({B, 4 * H}, opts);
  matmul_into(gates, input, w_ih.t(), false);
  matmul_into(gates, hx, w_hh.t(), true);
  const at::Tensor c = cx.to(acc_opts.dtype()).contiguous();
  at::Tensor c_next = at::empty({B, H}, acc_opts);
  at::Tensor hy = at::empty({B, H}, opts);
  if (B > 0) {
    kernels.forward({input.scalar_type(), B, H, gates.mutable_data_ptr(), data_or_null(bias),
                     c.const_data_ptr(), c_next.mutable_data_ptr(), nullptr,
                     hy.mutable_data_ptr(), nullptr});
  }
  return {hy, c_next.to(input.scalar_type()), gates};
}

// The cell as one kernel with its products (kernels.cell_forward: float32 and float64, CPU).
Tensor3 cell_forward_fused(const at::Tensor& input, const at::Tensor& hx, const at::Tensor& cx,
                           const at::Tensor& w_ih, const at::Tensor& w_hh, const at::Tensor& bias,
                           const LstmStepKernels& kernels) {
  const int64_t B = input.size(0), I = input.size(1), H = w_hh.size(1);
  const auto opts = input.options();
  const at::Tensor x = input.contiguous(), h = hx.contiguous(), c = cx.contiguous();
  const at::Tensor wi = w_ih.contiguous(), wh = w_hh.contiguous();
  at::Tensor gates = at::empty({B, 4 * H}, opts);
  at::Tensor c_next = at::empty({B, H}, opts), hy = at::empty({B, H}, opts);
  if (B > 0) {
    kernels.cell_forward({input.scalar_type(), B, I, H, x.const_data_ptr(), h.const_data_ptr(),
                          wi.const_data_ptr(), wh.const_data_ptr(), data_or_null(bias),
                          c.const_data_ptr(), gates.mutable_data_ptr(),
                          c_next.mutable_data_ptr(), hy.mutable_data_ptr()});
  }
  return {hy, c_next, gates};
}

struct CellShapeClass {
  c10::ScalarType dtype;
  int64_t batch, input, hidden;  // rounded up to powers of two
  int threads;
  bool operator<(const CellShapeClass& o) const {
    return std::tie(dtype, batch, input, hidden, threads) <
           std::tie(o.dtype, o.batch, o.input, o.hidden, o.threads);
  }
};

ChoiceTable<CellShapeClass, LstmCellChoice>& cell_choices() {
  static ChoiceTable<CellShapeClass, LstmCellChoice> table;
  return table;
}

// Whether the cell runs fused. The fused kernel reads each weight row once per 4 rows of the
// batch and needs no products' calls, which wins at small batches; how far depends on the CPU,
// so the first cell of each shape class (dtype; batch, input and hidden sizes rounded up to
// powers of two; threads) times both forms on synthetic inputs and keeps the faster for the
// process. Up to batch 64 only: beyond, a GEMM's blocking over many rows is the right tool.
// PYNOTES_LSTM_CELL=fused or products forces either (fused where it can run).
bool cell_fused(const LstmStepKernels& kernels, const at::Tensor& input, int64_t I, int64_t H) {
  const int64_t B = input.size(0);
  const bool possible = kernels.cell_forward != nullptr &&
                        (input.scalar_type() == at::kFloat || input.scalar_type() == at::kDouble);
  if (const char* forced = std::getenv("PYNOTES_LSTM_CELL"); forced && forced[0] != '\0') {
    TORCH_CHECK(std::strcmp(forced, "fused") == 0 || std::strcmp(forced, "products") == 0,
                "PYNOTES_LSTM_CELL must be 'fused' or 'products', got '", forced, "'");
    return possible && std::strcmp(forced, "fused") == 0;
  }
  if (!possible || B == 0 || B > 64) return false;
  const CellShapeClass key{input.scalar_type(), round_up_pow2(B), round_up_pow2(I),
                           round_up_pow2(H), at::get_num_threads()};
  std::optional<LstmCellChoice> choice = cell_choices().find(key);
  if (!choice) {
    const auto opts = input.options();
    const at::Tensor x = at::zeros({B, I}, opts), h = at::zeros({B, H}, opts);
    const at::Tensor w_ih = at::zeros({4 * H, I}, opts), w_hh = at::zeros({4 * H, H}, opts);
    const at::Tensor bias = at::zeros({4 * H}, opts);
    LstmCellChoice c{key.dtype, key.batch, key.input, key.hidden, key.threads, 1e300, 1e300};
    for (int round = 0; round < 2; ++round) {  // alternating, so neither runs first only
      c.fused_seconds = std::min(c.fused_seconds, best_seconds_within(0.002, 3, 32, [&] {
        cell_forward_fused(x, h, h, w_ih, w_hh, bias, kernels);
      }));
      c.products_seconds = std::min(c.products_seconds, best_seconds_within(0.002, 3, 32, [&] {
        cell_forward_products(x, h, h, w_ih, w_hh, bias, kernels);
      }));
    }
    choice = cell_choices().insert(key, c);
  }
  return choice->fused();
}

}  // namespace

Tensor3 lstm_cell_impl(const at::Tensor& input, const at::Tensor& hx, const at::Tensor& cx,
                       const at::Tensor& w_ih, const at::Tensor& w_hh, const OptTensor& b_ih,
                       const OptTensor& b_hh, const LstmStepKernels& kernels) {
  constexpr const char* op = "lstm_cell";
  TORCH_CHECK_VALUE(input.dim() == 2, op, ": input must be 2-D (batch, input_size), got ",
                    input.dim(), "-D");
  const LstmSizes s = check_weights(op, input, w_ih, w_hh, b_ih, b_hh, std::nullopt);
  check_states(op, input, hx, cx, input.size(0), s);
  const c10::OptionalDeviceGuard device_guard(input.device());
  const at::Tensor bias = combined_bias(b_ih, b_hh);
  return cell_fused(kernels, input, s.I, s.H)
             ? cell_forward_fused(input, hx, cx, w_ih, w_hh, bias, kernels)
             : cell_forward_products(input, hx, cx, w_ih, w_hh, bias, kernels);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
lstm_cell_backward_impl(const OptTensor& grad_hy, const OptTensor& grad_cy,
                        const at::Tensor& workspace, const at::Tensor& input,
                        const at::Tensor& hx, const at::Tensor& cx, const at::Tensor& w_ih,
                        const at::Tensor& w_hh, std::array<bool, 4> output_mask,
                        const LstmStepKernels& kernels) {
  constexpr const char* op = "lstm_cell_backward";
  const LstmSizes s = check_weights(op, input, w_ih, w_hh, std::nullopt, std::nullopt,
                                    std::nullopt);
  const int64_t B = input.size(0), H = s.H;
  check_states(op, input, hx, cx, B, s);
  check_like(workspace, "workspace", input, "input");
  check_shape(workspace, op, "workspace", {B, 4 * H}, "(batch, 4 * hidden_size)");
  for (const auto* g : {&grad_hy, &grad_cy}) {
    if (!has_tensor(*g)) continue;
    const char* name = g == &grad_hy ? "grad_hy" : "grad_cy";
    check_like(**g, name, input, "input");
    check_shape(**g, op, name, {B, H}, "(batch, hidden_size)");
  }
  const c10::OptionalDeviceGuard device_guard(input.device());
  const auto opts = input.options();
  const auto acc = at::toOpMathType(input.scalar_type());

  const at::Tensor gates = workspace.contiguous();
  const at::Tensor c = cx.to(acc).contiguous();
  const at::Tensor dh = has_tensor(grad_hy) ? grad_hy->contiguous() : at::Tensor();
  const at::Tensor dc_next = has_tensor(grad_cy) ? grad_cy->to(acc).contiguous() : at::Tensor();
  at::Tensor dgates = at::empty({B, 4 * H}, opts);
  at::Tensor dc = at::empty({B, H}, opts.dtype(acc));
  if (B > 0) {
    kernels.backward({input.scalar_type(), B, H, gates.const_data_ptr(), c.const_data_ptr(),
                      data_or_null(dh), nullptr, data_or_null(dc_next), dc.mutable_data_ptr(),
                      dgates.mutable_data_ptr()});
  }
  at::Tensor d_input, d_hx, d_w_ih, d_w_hh, d_bias;
  if (output_mask[0]) d_input = matrix_product(dgates, w_ih);
  if (output_mask[1]) d_hx = matrix_product(dgates, w_hh);
  if (output_mask[2]) {
    d_w_ih = matrix_product(dgates.t(), input);
    d_w_hh = matrix_product(dgates.t(), hx);
  }
  if (output_mask[3]) d_bias = sum_over_rows(dgates);
  return {d_input, d_hx, dc.to(input.scalar_type()), d_w_ih, d_w_hh, d_bias};
}

std::vector<LstmEngineChoice> lstm_engine_choices() {
  return engine_choices().all();
}

std::vector<LstmBackwardChoice> lstm_backward_choices() { return backward_choices().all(); }

std::vector<LstmOnednnRnnCost> lstm_onednn_rnn_costs() {
  return onednn_rnn_costs().all();
}

std::vector<LstmCellChoice> lstm_cell_choices() {
  return cell_choices().all();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
lstm_layer_impl(const at::Tensor& input, const at::Tensor& hx, const at::Tensor& cx,
                const at::Tensor& w_ih, const at::Tensor& w_hh, const OptTensor& b_ih,
                const OptTensor& b_hh, const OptTensor& w_hr, const OptTensor& batch_sizes,
                bool reverse, bool train, const LstmStepKernels& kernels) {
  return layer_forward(input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, reverse, train,
                       kernels, -1);
}

namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
layer_forward(const at::Tensor& input, const at::Tensor& hx, const at::Tensor& cx,
              const at::Tensor& w_ih, const at::Tensor& w_hh, const OptTensor& b_ih,
              const OptTensor& b_hh, const OptTensor& w_hr, const OptTensor& batch_sizes,
              bool reverse, bool train, const LstmStepKernels& kernels, int path) {
  constexpr const char* op = "lstm_layer";
  const Steps steps = steps_of(op, input, batch_sizes);
  const LstmSizes s = check_weights(op, input, w_ih, w_hh, b_ih, b_hh, w_hr);
  check_states(op, input, hx, cx, steps.batch, s);
  const int64_t N = steps.total, B = steps.batch, H = s.H, P = s.P;
  const bool project = has_tensor(w_hr);
  const c10::OptionalDeviceGuard device_guard(input.device());
  const auto opts = input.options();
  const auto acc_opts = opts.dtype(at::toOpMathType(input.scalar_type()));
  const int64_t T = static_cast<int64_t>(steps.rows.size());
  const bool onednn_rnn_ok = onednn_rnn_possible(input, project, batch_sizes, train) && N > 0;
  const bool path_chosen_here = path < 0;
  if (path_chosen_here) {
    path = choose_path(kernels, project, onednn_rnn_ok, train, input, T, B, H);
  }
  if (path == kOnednnRnn && onednn_rnn_ok) {
    try {
      auto [out, h_n, c_n] = onednn_rnn_layer(input, hx, cx, w_ih, w_hh, b_ih, b_hh, reverse);
      return {out, h_n, c_n, at::empty({0, 4 * H}, opts), at::empty({0, H}, acc_opts),
              at::empty({0, P}, opts), at::empty({0, H}, opts)};
    } catch (const std::exception&) {  // oneDNN has no primitive for this dtype on this CPU
      if (!path_chosen_here) throw;  // a measurement of this path (choose_path) learns from it
      path = kProducts;
    }
  }

  const at::Tensor x = input.reshape({N, s.I});
  const at::Tensor w_hh_t = w_hh.t(), w_hr_t = project ? w_hr->t() : at::Tensor();
  const at::Tensor bias = combined_bias(b_ih, b_hh);
  const bool engine_projects =
      (path == kEngine || path == kEngineInputPerStep || path == kEngineWhhRows) && s.I > 0 &&
      engine_projects_itself(input.scalar_type());
  const bool input_per_step = engine_projects && path == kEngineInputPerStep;
  // At inference the per-step products make the input projection a chunk of steps at a time,
  // just before the chunk's steps, into one buffer of ~4 MB. (A buffer of all steps' gates ran
  // a step 15-38 % slower at T50 than at T16 on a Xeon, B256 H256-512, under glibc's defaults:
  // it outgrew the cache, and from 32 MB glibc maps it fresh each call, a page fault per 4 KB.
  // Training keeps all the gates for the backward: there one product is 1-6 % faster.)
  const bool chunked = !train && !is_engine(path) && input.is_cpu();
  const int64_t chunk_steps =
      chunked ? std::max<int64_t>(1, (int64_t{4} << 20) /
                                         std::max<int64_t>(1, B * 4 * H * input.element_size()))
              : T;
  // (Inference with the projection made per step has no use for gates.)
  at::Tensor gates = at::empty(
      {input_per_step && !train ? 0 : (chunked ? std::min(T, chunk_steps) * B : N), 4 * H},
      opts);
  if (!engine_projects && !chunked) matmul_into(gates, x, w_ih.t(), false);
  at::Tensor h = hx.clone(at::MemoryFormat::Contiguous);
  at::Tensor c = cx.to(acc_opts.dtype(), false, true, at::MemoryFormat::Contiguous);
  at::Tensor output = at::empty({N, P}, opts);
  at::Tensor c_prev = at::empty({train ? N : 0, H}, acc_opts);
  at::Tensor h_prev = at::empty({train ? N : 0, P}, opts);
  if (is_engine(path)) {
    const at::Tensor w = w_hh.contiguous(), h0 = hx.contiguous();
    const at::Tensor x_rows = engine_projects ? x.contiguous() : at::Tensor();
    const at::Tensor w_in = engine_projects ? w_ih.contiguous() : at::Tensor();
    at::Tensor h_n = at::empty({B, H}, opts), c_n = at::empty({B, H}, acc_opts);
    LstmEngineForward args{input.scalar_type(), T, B, H, steps.rows.data(),
                           steps.offset.data(), reverse, gates.mutable_data_ptr(),
                           data_or_null(bias), w.const_data_ptr(), data_or_null(x_rows),
                           data_or_null(w_in), s.I, h0.const_data_ptr(),
                           c.const_data_ptr(), output.mutable_data_ptr(),
                           h_n.mutable_data_ptr(), c_n.mutable_data_ptr(), train,
                           train ? c_prev.mutable_data_ptr() : nullptr,
                           train ? h_prev.mutable_data_ptr() : nullptr};
    args.input_per_step = input_per_step;
    args.w_hh_rows = path == kEngineWhhRows;
    kernels.engine_forward(args);
    return {as_layer_layout(output, input), h_n, c_n.to(input.scalar_type()),
            train ? gates : at::empty({0, 4 * H}, opts), c_prev, h_prev,
            at::empty({0, H}, opts)};
  }
  // Projection inputs r = o * tanh(c): saved per step for training, else one step's worth.
  at::Tensor r = at::empty({project ? (train ? N : B) : 0, H}, opts);
  // W_hh packed once for the steps' products (a single step would only pay for the packing).
  const RepeatedMatmul recurrent(w_hh_t, T > 1 ? B : 0);

  int64_t chunk_row = 0;  // the row of x that gates' first row is the projection of
  for (int64_t k = 0; k < T; ++k) {
    const int64_t t = reverse ? T - 1 - k : k, n = steps.rows[t], o = steps.offset[t];
    if (chunked && k % chunk_steps == 0) {
      const int64_t last = std::min(T, k + chunk_steps) - 1;
      const int64_t t_first = reverse ? T - 1 - last : k, t_last = reverse ? t : last;
      const int64_t rows = steps.offset[t_last] + steps.rows[t_last] - steps.offset[t_first];
      chunk_row = steps.offset[t_first];
      at::Tensor chunk_gates = gates.narrow(0, 0, rows);
      matmul_into(chunk_gates, x.narrow(0, chunk_row, rows), w_ih.t(), false);
    }
    if (n == 0) continue;
    at::Tensor g = gates.narrow(0, o - chunk_row, n);
    at::Tensor h_in = h.narrow(0, 0, n);
    if (train) {
      at::Tensor saved = h_prev.narrow(0, o, n);
      saved.copy_(h_in);
      h_in = saved;
    }
    recurrent.into(g, h_in, true);
    at::Tensor h_out = project ? r.narrow(0, train ? o : 0, n) : output.narrow(0, o, n);
    kernels.forward({input.scalar_type(), n, H, g.mutable_data_ptr(), data_or_null(bias),
                     c.const_data_ptr(), c.mutable_data_ptr(),
                     train ? c_prev.narrow(0, o, n).mutable_data_ptr() : nullptr,
                     h_out.mutable_data_ptr(), project ? nullptr : h.mutable_data_ptr()});
    if (project) {
      at::Tensor out_t = output.narrow(0, o, n);
      matmul_into(out_t, h_out, w_hr_t, false);
      h.narrow(0, 0, n).copy_(out_t);
    }
  }
  if (!train) gates = at::empty({0, 4 * H}, opts);
  if (!train) r = at::empty({0, H}, opts);
  return {as_layer_layout(output, input), h, c.to(input.scalar_type()), gates, c_prev, h_prev,
          r};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
lstm_layer_backward_impl(const OptTensor& grad_output, const OptTensor& grad_hy,
                         const OptTensor& grad_cy, const at::Tensor& input,
                         const at::Tensor& hx, const at::Tensor& w_ih,
                         const at::Tensor& w_hh, const OptTensor& w_hr,
                         const OptTensor& batch_sizes, bool reverse, const at::Tensor& gates,
                         const at::Tensor& c_prev, const at::Tensor& h_prev,
                         const at::Tensor& r, std::array<bool, 3> output_mask,
                         const LstmStepKernels& kernels) {
  return layer_backward(grad_output, grad_hy, grad_cy, input, hx, w_ih, w_hh, w_hr, batch_sizes,
                        reverse, gates, c_prev, h_prev, r, output_mask, kernels, -1);
}

namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
layer_backward(const OptTensor& grad_output, const OptTensor& grad_hy, const OptTensor& grad_cy,
               const at::Tensor& input, const at::Tensor& hx, const at::Tensor& w_ih,
               const at::Tensor& w_hh, const OptTensor& w_hr, const OptTensor& batch_sizes,
               bool reverse, const at::Tensor& gates, const at::Tensor& c_prev,
               const at::Tensor& h_prev, const at::Tensor& r, std::array<bool, 3> output_mask,
               const LstmStepKernels& kernels, int path) {
  constexpr const char* op = "lstm_layer_backward";
  const Steps steps = steps_of(op, input, batch_sizes);
  const LstmSizes s = check_weights(op, input, w_ih, w_hh, std::nullopt, std::nullopt, w_hr);
  const int64_t N = steps.total, B = steps.batch, H = s.H, P = s.P;
  const bool project = has_tensor(w_hr);
  check_like(hx, "hx", input, "input");
  check_shape(hx, op, "hx", {B, P}, "(batch, hidden size of h)");
  const c10::OptionalDeviceGuard device_guard(input.device());
  const auto opts = input.options();
  const auto acc_opts = opts.dtype(at::toOpMathType(input.scalar_type()));
  check_shape(gates, op, "gates", {N, 4 * H}, "(rows, 4 * hidden_size)");
  check_shape(c_prev, op, "c_prev", {N, H}, "(rows, hidden_size)");
  check_shape(h_prev, op, "h_prev", {N, P}, "(rows, hidden size of h)");
  check_shape(r, op, "r", {project ? N : 0, H}, "(rows or 0 without w_hr, hidden_size)");
  TORCH_CHECK_VALUE(c_prev.scalar_type() == acc_opts.dtype(), op, ": c_prev must be ",
                    acc_opts.dtype(), ", got ", c_prev.scalar_type());
  for (const auto* t : {&gates, &h_prev, &r}) check_like(*t, "saved tensor", input, "input");
  if (has_tensor(grad_output)) {
    check_like(*grad_output, "grad_output", input, "input");
    check_shape(grad_output->reshape({-1, P}), op, "grad_output (as rows)", {N, P},
                "(rows, hidden size of h)");
  }

  const at::Tensor dout =
      has_tensor(grad_output) ? grad_output->reshape({N, P}).contiguous() : at::Tensor();
  at::Tensor dh = state_copy(grad_hy, {B, P}, opts);    // the recurrent gradient
  at::Tensor dc = state_copy(grad_cy, {B, H}, acc_opts);        // gradient of the running c
  check_shape(dh, op, "grad_hy", {B, P}, "(batch, hidden size of h)");
  check_shape(dc, op, "grad_cy", {B, H}, "(batch, hidden_size)");
  const at::Tensor g_saved = gates.contiguous(), c_saved = c_prev.contiguous();
  at::Tensor dgates = at::empty({N, 4 * H}, opts);
  at::Tensor dh_all = at::empty({project ? N : 0, P}, opts);  // total dL/dh per step
  at::Tensor dr = at::empty({project ? B : 0, H}, opts);

  const int64_t T = static_cast<int64_t>(steps.rows.size());
  const bool engine = path < 0 ? backward_on_engine(kernels, project, input, T, B, H)
                               : is_engine(path);
  if (engine) {
    const at::Tensor w = w_hh.contiguous();
    kernels.engine_backward({input.scalar_type(), T, B, H, steps.rows.data(),
                             steps.offset.data(), reverse, g_saved.const_data_ptr(),
                             c_saved.const_data_ptr(), w.const_data_ptr(), data_or_null(dout),
                             dgates.mutable_data_ptr(), dh.mutable_data_ptr(),
                             dc.mutable_data_ptr()});
  }
  const RepeatedMatmul recurrent(w_hh, engine || T == 1 ? 0 : B);  // as in the forward
  for (int64_t k = engine ? -1 : T - 1; k >= 0; --k) {
    const int64_t t = reverse ? T - 1 - k : k, n = steps.rows[t], o = steps.offset[t];
    if (n == 0) continue;
    at::Tensor dh_n = dh.narrow(0, 0, n);
    const void* step_dh = dout.defined() ? dout.narrow(0, o, n).const_data_ptr() : nullptr;
    const void* step_dh_extra = dh_n.const_data_ptr();
    if (project) {
      at::Tensor dh_t = dh_all.narrow(0, o, n);
      if (dout.defined()) {
        at::add_out(dh_t, dout.narrow(0, o, n), dh_n);
      } else {
        dh_t.copy_(dh_n);
      }
      at::Tensor dr_n = dr.narrow(0, 0, n);
      matmul_into(dr_n, dh_t, *w_hr, false);
      step_dh = dr_n.const_data_ptr();
      step_dh_extra = nullptr;
    }
    at::Tensor dg = dgates.narrow(0, o, n);
    kernels.backward({input.scalar_type(), n, H, g_saved.narrow(0, o, n).const_data_ptr(),
                      c_saved.narrow(0, o, n).const_data_ptr(), step_dh, step_dh_extra,
                      dc.const_data_ptr(), dc.mutable_data_ptr(), dg.mutable_data_ptr()});
    recurrent.into(dh_n, dg, false);
  }

  at::Tensor d_input, d_w_ih, d_w_hh, d_bias, d_w_hr;
  if (output_mask[0]) d_input = as_layer_layout(matrix_product(dgates, w_ih), input);
  if (output_mask[1]) {
    d_w_ih = matrix_product(dgates.t(), input.reshape({N, s.I}));
    d_w_hh = matrix_product(dgates.t(), h_prev);
    if (project) d_w_hr = matrix_product(dh_all.t(), r);
  }
  if (output_mask[2]) d_bias = sum_over_rows(dgates);
  return {d_input, dh, dc.to(input.scalar_type()), d_w_ih, d_w_hh, d_bias, d_w_hr};
}

}  // namespace

}  // namespace pynotes
