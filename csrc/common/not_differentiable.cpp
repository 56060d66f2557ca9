// The ops that are not differentiable (the GBDT ops, the graph builders): at the Autograd key
// they refuse inputs that require a gradient (with grad mode on) instead of returning outputs
// that autograd would treat as constants, and otherwise run below autograd.
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/grad_mode.h>
#include <torch/library.h>

namespace pynotes {
namespace {

void not_differentiable(const c10::OperatorHandle& op, c10::DispatchKeySet keys,
                        torch::jit::Stack* stack) {
  const auto& arguments = op.schema().arguments();
  if (at::GradMode::is_enabled()) {
    const auto first = stack->size() - arguments.size();
    for (size_t i = 0; i < arguments.size(); ++i) {
      const c10::IValue& value = (*stack)[first + i];
      TORCH_CHECK(!value.isTensor() || !value.toTensor().requires_grad(), op.schema().name(),
                  " is not differentiable, but its argument ", arguments[i].name(),
                  " requires grad; pass it detached (.detach())");
    }
  }
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  op.redispatchBoxed(keys & c10::after_ADInplaceOrView_keyset, stack);
}

}  // namespace

TORCH_LIBRARY_IMPL(pynotes, Autograd, m) {
  for (const char* name : {"gbdt_bin", "gbdt_histogram", "gbdt_best_splits", "gbdt_advance",
                           "gbdt_predict", "graph_csr", "graph_values"}) {
    m.impl(name, torch::CppFunction::makeFromBoxedFunction<&not_differentiable>());
  }
}

}  // namespace pynotes
