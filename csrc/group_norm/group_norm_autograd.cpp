// Autograd for group_norm at the dispatcher (the Autograd key), so C++ users can train too and
// torch.compile sees the forward and the backward as two ops. Its backward is not
// differentiable (check_not_double_backward).
#include <torch/autograd.h>
#include <torch/library.h>

#include "common/checks.h"
#include "ops.h"

namespace pynotes {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

class GroupNormFunction : public torch::autograd::Function<GroupNormFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& input, int64_t num_groups,
                               const std::optional<at::Tensor>& weight,
                               const std::optional<at::Tensor>& bias, double eps, bool silu) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [y, mean, rstd] = pynotes::group_norm(input, num_groups, weight, bias, eps, silu);
    ctx->save_for_backward({input, mean, rstd, weight.value_or(at::Tensor()),
                            silu ? bias.value_or(at::Tensor()) : at::Tensor()});
    ctx->saved_data["num_groups"] = num_groups;
    ctx->saved_data["silu"] = silu;
    ctx->saved_data["has_bias"] = has_tensor(bias);
    ctx->mark_non_differentiable({mean, rstd});
    return {y, mean, rstd};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& weight = saved[3];
    const at::Tensor& bias = saved[4];
    check_not_double_backward("group_norm");
    if (!grads[0].defined()) return {at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(),
                                     at::Tensor(), at::Tensor()};
    auto [dx, dweight, dbias] = pynotes::group_norm_backward(
        grads[0], saved[0], saved[1], saved[2], ctx->saved_data["num_groups"].toInt(),
        weight.defined() ? std::optional<at::Tensor>(weight) : std::nullopt,
        bias.defined() ? std::optional<at::Tensor>(bias) : std::nullopt,
        ctx->saved_data["silu"].toBool());
    // A gradient for an input that does not require one is dropped by autograd.
    return {dx, at::Tensor(), weight.defined() ? dweight : at::Tensor(),
            ctx->saved_data["has_bias"].toBool() ? dbias : at::Tensor(), at::Tensor(),
            at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> group_norm_autograd(
    const at::Tensor& input, int64_t num_groups, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, double eps, bool silu) {
  auto out = GroupNormFunction::apply(input, num_groups, weight, bias, eps, silu);
  return {out[0], out[1], out[2]};
}

}  // namespace

TORCH_LIBRARY_IMPL(pynotes, Autograd, m) { m.impl("group_norm", &group_norm_autograd); }

}  // namespace pynotes
