// Every pynotes operator schema, in one place, and the C++ API (ops.h) that calls them.
// Kernels register per dispatch key next to their code: <op>/<op>_cpu.cpp (CPU),
// <op>/<op>_cuda.cu (CUDA), <op>/<op>_autograd.cpp (Autograd); fake kernels for torch.compile
// are in pynotes/ops/*.py.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include "ops.h"

TORCH_LIBRARY(pynotes, m) {
  const std::vector<at::Tag> tags = {at::Tag::pt2_compliant_tag};
  m.def(
      "group_norm(Tensor input, int num_groups, Tensor? weight=None, Tensor? bias=None, "
      "float eps=1e-05, bool silu=False) -> (Tensor, Tensor, Tensor)",
      tags);
  m.def(
      "group_norm_backward(Tensor grad_output, Tensor input, Tensor mean, Tensor rstd, "
      "int num_groups, Tensor? weight, Tensor? bias, bool silu) -> (Tensor, Tensor, Tensor)",
      tags);
}

namespace pynotes {

std::tuple<at::Tensor, at::Tensor, at::Tensor> group_norm(
    const at::Tensor& input, int64_t num_groups, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, double eps, bool silu) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("pynotes::group_norm", "")
                             .typed<decltype(group_norm)>();
  return op.call(input, num_groups, weight, bias, eps, silu);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> group_norm_backward(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& mean,
    const at::Tensor& rstd, int64_t num_groups, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, bool silu) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("pynotes::group_norm_backward", "")
                             .typed<decltype(group_norm_backward)>();
  return op.call(grad_output, input, mean, rstd, num_groups, weight, bias, silu);
}

}  // namespace pynotes
