// The ops that are not differentiable (the GBDT ops, the graph builders): at the Autograd key
// they run below autograd, and refuse (with grad mode on) an input that requires a gradient
// when they return floating-point values, which autograd would otherwise treat as constants.
// Integer outputs (bins, node indices, CSR structure) have no gradient to lose: those pass.
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/grad_mode.h>
#include <torch/library.h>

#include <string>

namespace pynotes {
namespace {

void not_differentiable(const c10::OperatorHandle& op, c10::DispatchKeySet keys,
                        torch::jit::Stack* stack) {
  const auto& arguments = op.schema().arguments();
  std::string needs_grad;  // the first argument that requires a gradient, if any
  if (at::GradMode::is_enabled()) {
    const auto first = stack->size() - arguments.size();
    for (size_t i = 0; i < arguments.size() && needs_grad.empty(); ++i) {
      const c10::IValue& value = (*stack)[first + i];
      if (value.isTensor() && value.toTensor().requires_grad()) needs_grad = arguments[i].name();
    }
  }
  {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    op.redispatchBoxed(keys & c10::after_ADInplaceOrView_keyset, stack);
  }
  if (needs_grad.empty()) return;
  const auto returns = op.schema().returns().size();
  for (size_t i = stack->size() - returns; i < stack->size(); ++i) {
    const c10::IValue& value = (*stack)[i];
    TORCH_CHECK(!value.isTensor() || !value.toTensor().is_floating_point(), op.schema().name(),
                " is not differentiable, but its argument ", needs_grad,
                " requires grad; pass it detached (.detach())");
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(pynotes, Autograd, m) {
  for (const char* name : {"gbdt_bin", "gbdt_histogram", "gbdt_best_splits", "gbdt_advance",
                           "gbdt_predict", "gbdt_grow_tree", "graph_csr", "graph_values"}) {
    m.impl(name, torch::CppFunction::makeFromBoxedFunction<&not_differentiable>());
  }
}

}  // namespace pynotes
