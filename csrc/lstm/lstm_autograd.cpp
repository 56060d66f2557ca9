// Autograd for lstm_cell and lstm_layer at the dispatcher (the Autograd key), so C++ users can
// train too and torch.compile sees forward and backward as ops. The layer runs its inference
// op (no saved tensors) unless a gradient is needed. The backwards are not differentiable
// (check_not_double_backward).
#include <ATen/core/grad_mode.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include "common/checks.h"
#include "ops.h"

namespace pynotes {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using OptTensor = std::optional<at::Tensor>;

at::Tensor if_needed(bool needed, const at::Tensor& grad) { return needed ? grad : at::Tensor(); }

class LstmCellFunction : public torch::autograd::Function<LstmCellFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& input,
                               const at::Tensor& hx, const at::Tensor& cx,
                               const at::Tensor& w_ih, const at::Tensor& w_hh,
                               const OptTensor& b_ih, const OptTensor& b_hh) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [hy, cy, workspace] = pynotes::lstm_cell(input, hx, cx, w_ih, w_hh, b_ih, b_hh);
    ctx->save_for_backward({input, hx, cx, w_ih, w_hh, workspace});
    // Which gradients to compute, by argument (absent optionals have no needs_input_grad slot).
    ctx->saved_data["b_ih"] = requires_grad(b_ih);
    ctx->saved_data["b_hh"] = requires_grad(b_hh);
    ctx->mark_non_differentiable({workspace});
    return {hy, cy, workspace};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    check_not_double_backward("lstm_cell");
    const auto saved = ctx->get_saved_variables();
    const bool grad_b_ih = ctx->saved_data["b_ih"].toBool();
    const bool grad_b_hh = ctx->saved_data["b_hh"].toBool();
    const std::array<bool, 4> mask = {ctx->needs_input_grad(0), ctx->needs_input_grad(1),
                                      ctx->needs_input_grad(3) || ctx->needs_input_grad(4),
                                      grad_b_ih || grad_b_hh};
    auto [d_input, d_hx, d_cx, d_w_ih, d_w_hh, d_bias] = pynotes::lstm_cell_backward(
        optional_tensor(grads[0]), optional_tensor(grads[1]), saved[5], saved[0], saved[1],
        saved[2], saved[3], saved[4], mask);
    return {d_input, d_hx, if_needed(ctx->needs_input_grad(2), d_cx),
            if_needed(ctx->needs_input_grad(3), d_w_ih),
            if_needed(ctx->needs_input_grad(4), d_w_hh), if_needed(grad_b_ih, d_bias),
            if_needed(grad_b_hh, d_bias)};
  }
};

class LstmLayerFunction : public torch::autograd::Function<LstmLayerFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& input,
                               const at::Tensor& hx, const at::Tensor& cx,
                               const at::Tensor& w_ih, const at::Tensor& w_hh,
                               const OptTensor& b_ih, const OptTensor& b_hh,
                               const OptTensor& w_hr, const OptTensor& batch_sizes,
                               bool reverse) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [output, hy, cy, gates, c_prev, h_prev, r] = pynotes::lstm_layer_train(
        input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, reverse);
    ctx->save_for_backward({input, hx, w_ih, w_hh, w_hr.value_or(at::Tensor()),
                            batch_sizes.value_or(at::Tensor()), gates, c_prev, h_prev, r});
    ctx->saved_data["reverse"] = reverse;
    ctx->saved_data["grad_input"] = input.requires_grad();
    ctx->saved_data["grad_hx"] = hx.requires_grad();
    ctx->saved_data["grad_cx"] = cx.requires_grad();
    ctx->saved_data["grad_w_ih"] = w_ih.requires_grad();
    ctx->saved_data["grad_w_hh"] = w_hh.requires_grad();
    ctx->saved_data["grad_b_ih"] = requires_grad(b_ih);
    ctx->saved_data["grad_b_hh"] = requires_grad(b_hh);
    ctx->saved_data["grad_w_hr"] = requires_grad(w_hr);
    return {output, hy, cy};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    check_not_double_backward("lstm_layer");
    const auto saved = ctx->get_saved_variables();
    const auto flag = [&](const char* name) { return ctx->saved_data[name].toBool(); };
    const std::array<bool, 3> mask = {
        flag("grad_input"), flag("grad_w_ih") || flag("grad_w_hh") || flag("grad_w_hr"),
        flag("grad_b_ih") || flag("grad_b_hh")};
    auto [d_input, d_hx, d_cx, d_w_ih, d_w_hh, d_bias, d_w_hr] = pynotes::lstm_layer_backward(
        optional_tensor(grads[0]), optional_tensor(grads[1]), optional_tensor(grads[2]), saved[0],
        saved[1], saved[2], saved[3], optional_tensor(saved[4]), optional_tensor(saved[5]),
        flag("reverse"), saved[6],
        saved[7], saved[8], saved[9], mask);
    return {if_needed(flag("grad_input"), d_input), if_needed(flag("grad_hx"), d_hx),
            if_needed(flag("grad_cx"), d_cx), if_needed(flag("grad_w_ih"), d_w_ih),
            if_needed(flag("grad_w_hh"), d_w_hh), if_needed(flag("grad_b_ih"), d_bias),
            if_needed(flag("grad_b_hh"), d_bias), if_needed(flag("grad_w_hr"), d_w_hr),
            at::Tensor(), at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> lstm_cell_autograd(
    const at::Tensor& input, const at::Tensor& hx, const at::Tensor& cx, const at::Tensor& w_ih,
    const at::Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh) {
  auto out = LstmCellFunction::apply(input, hx, cx, w_ih, w_hh, b_ih, b_hh);
  return {out[0], out[1], out[2]};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> lstm_layer_autograd(
    const at::Tensor& input, const at::Tensor& hx, const at::Tensor& cx, const at::Tensor& w_ih,
    const at::Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh, const OptTensor& w_hr,
    const OptTensor& batch_sizes, bool reverse) {
  const bool needs_grad =
      at::GradMode::is_enabled() &&
      (input.requires_grad() || hx.requires_grad() || cx.requires_grad() ||
       w_ih.requires_grad() || w_hh.requires_grad() || requires_grad(b_ih) ||
       requires_grad(b_hh) || requires_grad(w_hr));
  if (!needs_grad) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return pynotes::lstm_layer(input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes,
                               reverse);
  }
  auto out = LstmLayerFunction::apply(input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes,
                                      reverse);
  return {out[0], out[1], out[2]};
}

}  // namespace

TORCH_LIBRARY_IMPL(pynotes, Autograd, m) {
  m.impl("lstm_cell", &lstm_cell_autograd);
  m.impl("lstm_layer", &lstm_layer_autograd);
}

}  // namespace pynotes
