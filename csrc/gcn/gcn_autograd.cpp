// Autograd for gcn_propagate at the dispatcher (the Autograd key): gradients for x and for the
// per-entry weights; the backward is the op gcn_propagate_backward. scale (D^-1/2 computed
// from the graph) is a constant: fold learned per-edge factors into weight instead. The
// backward is not differentiable (check_not_double_backward).
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

class GcnPropagateFunction : public torch::autograd::Function<GcnPropagateFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& rowptr,
                            const at::Tensor& col, const OptTensor& weight,
                            const OptTensor& scale, const at::Tensor& rowptr_t,
                            const at::Tensor& col_t, const at::Tensor& perm_t) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    at::Tensor out =
        pynotes::gcn_propagate(x, rowptr, col, weight, scale, rowptr_t, col_t, perm_t);
    const bool grad_weight = requires_grad(weight);
    // x is needed only for the weight gradient.
    ctx->save_for_backward({grad_weight ? x : at::Tensor(), rowptr, col,
                            weight.value_or(at::Tensor()), scale.value_or(at::Tensor()),
                            rowptr_t, col_t, perm_t});
    ctx->saved_data["grad_x"] = x.requires_grad();
    ctx->saved_data["grad_weight"] = grad_weight;
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    check_not_double_backward("gcn_propagate");
    const auto s = ctx->get_saved_variables();
    const bool grad_x = ctx->saved_data["grad_x"].toBool();
    const bool grad_weight = ctx->saved_data["grad_weight"].toBool();
    auto [dx, dweight] = pynotes::gcn_propagate_backward(
        grads[0], optional_tensor(s[0]), s[1], s[2], optional_tensor(s[3]),
        optional_tensor(s[4]), s[5], s[6], s[7],
        {grad_x, grad_weight});
    return {dx, at::Tensor(), at::Tensor(), dweight, at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor()};
  }
};

at::Tensor gcn_propagate_autograd(const at::Tensor& x, const at::Tensor& rowptr,
                                  const at::Tensor& col, const OptTensor& weight,
                                  const OptTensor& scale, const at::Tensor& rowptr_t,
                                  const at::Tensor& col_t, const at::Tensor& perm_t) {
  TORCH_CHECK_VALUE(!requires_grad(scale) || !at::GradMode::is_enabled(),
                    "gcn_propagate: scale must not require grad (it is the constant D^-1/2; "
                    "put learned factors in weight)");
  return GcnPropagateFunction::apply(x, rowptr, col, weight, scale, rowptr_t, col_t, perm_t);
}

}  // namespace

TORCH_LIBRARY_IMPL(pynotes, Autograd, m) { m.impl("gcn_propagate", &gcn_propagate_autograd); }

}  // namespace pynotes
