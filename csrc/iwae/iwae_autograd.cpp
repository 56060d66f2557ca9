// Autograd for iwae_bound and importance_weights (the Autograd key). d bound / d log_w is the
// normalized weights: iwae_bound's backward recomputes them in one pass from log_w and the
// bound (its own op); importance_weights has them already and multiplies. The weights and the
// effective sample size carry no gradient. The backwards are not differentiable
// (check_not_double_backward).
#include <ATen/ops/mul.h>
#include <ATen/ops/zeros_like.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include "common/checks.h"
#include "ops.h"

namespace pynotes {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

class IwaeBoundFunction : public torch::autograd::Function<IwaeBoundFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& log_w, int64_t dim,
                            bool keepdim) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    at::Tensor bound = pynotes::iwae_bound(log_w, dim, keepdim);
    ctx->save_for_backward({log_w, bound});
    ctx->saved_data["dim"] = dim;
    ctx->saved_data["keepdim"] = keepdim;
    return bound;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    check_not_double_backward("iwae_bound");
    const auto saved = ctx->get_saved_variables();
    return {pynotes::iwae_bound_backward(grads[0], saved[0], saved[1],
                                         ctx->saved_data["dim"].toInt(),
                                         ctx->saved_data["keepdim"].toBool()),
            at::Tensor(), at::Tensor()};
  }
};

class ImportanceWeightsFunction : public torch::autograd::Function<ImportanceWeightsFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& log_w, int64_t dim) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [bound, weights, ess] = pynotes::importance_weights(log_w, dim);
    ctx->save_for_backward({weights});
    ctx->saved_data["dim"] = dim < 0 ? dim + log_w.dim() : dim;
    ctx->mark_non_differentiable({weights, ess});
    return {bound, weights, ess};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    check_not_double_backward("importance_weights");
    const at::Tensor weights = ctx->get_saved_variables()[0];
    const at::Tensor grad = grads[0].defined() ? grads[0] : at::zeros_like(weights.select(
        ctx->saved_data["dim"].toInt(), 0));
    return {at::mul(weights, grad.unsqueeze(ctx->saved_data["dim"].toInt())), at::Tensor()};
  }
};

at::Tensor iwae_bound_autograd(const at::Tensor& log_w, int64_t dim, bool keepdim) {
  return IwaeBoundFunction::apply(log_w, dim, keepdim);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> importance_weights_autograd(
    const at::Tensor& log_w, int64_t dim) {
  auto out = ImportanceWeightsFunction::apply(log_w, dim);
  return {out[0], out[1], out[2]};
}

}  // namespace

TORCH_LIBRARY_IMPL(pynotes, Autograd, m) {
  m.impl("iwae_bound", &iwae_bound_autograd);
  m.impl("importance_weights", &importance_weights_autograd);
}

}  // namespace pynotes
