#include "group_norm/group_norm_args.h"

#include <ATen/OpMathType.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>

#include <cmath>
#include <vector>

#include "common/checks.h"

namespace pynotes {
namespace {

at::ScalarType stats_dtype(at::ScalarType dtype) {
  return dtype == at::kDouble ? at::kDouble : at::kFloat;
}

// (N, C, *) stored as (N, *, C): channels_last / channels_last_3d and their analogues for any
// rank. Tensors that are also plainly contiguous (C == 1 or one spatial element) count as NCHW.
bool is_channels_last_like(const at::Tensor& x) {
  if (x.dim() < 3 || x.is_contiguous()) return false;
  std::vector<int64_t> order(x.dim());
  order[0] = 0;
  for (int64_t d = 1; d + 1 < x.dim(); ++d) order[d] = d + 1;
  order[x.dim() - 1] = 1;
  return x.permute(order).is_contiguous();
}

GroupNormProblem check_problem(const at::Tensor& input, int64_t num_groups,
                               const std::optional<at::Tensor>& weight,
                               const std::optional<at::Tensor>& bias) {
  check_floating(input, "group_norm: input");
  TORCH_CHECK_VALUE(input.dim() >= 2,
                    "group_norm: input must have shape (N, C, *) with at least 2 dimensions, "
                    "got shape ", input.sizes());
  GroupNormProblem p;
  p.N = input.size(0);
  p.C = input.size(1);
  p.HxW = 1;
  for (int64_t d = 2; d < input.dim(); ++d) p.HxW *= input.size(d);
  p.G = num_groups;
  TORCH_CHECK_VALUE(num_groups > 0, "group_norm: num_groups must be positive, got ", num_groups);
  TORCH_CHECK_VALUE(p.C % num_groups == 0, "group_norm: num_groups (", num_groups,
                    ") must divide the number of channels input.size(1) (", p.C, ")");
  const at::ScalarType opmath = at::toOpMathType(input.scalar_type());
  p.weight_dtype = p.bias_dtype = input.scalar_type();
  for (const auto* param : {&weight, &bias}) {
    if (!has_tensor(*param)) continue;
    const at::Tensor& t = **param;
    const char* name = param == &weight ? "group_norm: weight" : "group_norm: bias";
    check_device(t, name, input, "input");
    TORCH_CHECK_TYPE(t.scalar_type() == input.scalar_type() || t.scalar_type() == opmath, name,
                     " must have the dtype of input (", input.scalar_type(), ")",
                     opmath != input.scalar_type() ? " or float32" : "", ", got ",
                     t.scalar_type());
    TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == p.C, name, " must have shape (", p.C,
                      ",), got ", t.sizes());
    (param == &weight ? p.weight_dtype : p.bias_dtype) = t.scalar_type();
    (param == &weight ? p.weight : p.bias) = t.to(opmath).contiguous();
  }
  p.channels_last = is_channels_last_like(input);
  p.x = p.channels_last ? input : input.contiguous();
  return p;
}

void check_stats(const at::Tensor& t, const char* name, const GroupNormProblem& p) {
  check_device(t, name, p.x, "input");
  TORCH_CHECK_TYPE(t.scalar_type() == stats_dtype(p.x.scalar_type()), "group_norm_backward: ",
                   name, " must have dtype ", stats_dtype(p.x.scalar_type()), ", got ",
                   t.scalar_type());
  TORCH_CHECK_VALUE(t.dim() == 2 && t.size(0) == p.N && t.size(1) == p.G,
                    "group_norm_backward: ", name, " must have shape (", p.N, ", ", p.G,
                    "), got ", t.sizes());
}

}  // namespace

GroupNormForward prepare_group_norm_forward(const at::Tensor& input, int64_t num_groups,
                                            const std::optional<at::Tensor>& weight,
                                            const std::optional<at::Tensor>& bias, double eps) {
  GroupNormForward f{check_problem(input, num_groups, weight, bias)};
  TORCH_CHECK_VALUE(eps >= 0, "group_norm: eps must be non-negative, got ", eps);
  f.y = at::empty_like(f.x);  // x is dense, so its strides (its memory format) carry over
  const auto stats_options = input.options().dtype(stats_dtype(input.scalar_type()));
  f.mean = at::empty({f.N, f.G}, stats_options);
  f.rstd = at::empty({f.N, f.G}, stats_options);
  if (f.x.numel() == 0) {
    f.mean.zero_();
    f.rstd.fill_(1.0 / std::sqrt(eps));
  }
  return f;
}

GroupNormBackward prepare_group_norm_backward(const at::Tensor& grad_output,
                                              const at::Tensor& input, const at::Tensor& mean,
                                              const at::Tensor& rstd, int64_t num_groups,
                                              const std::optional<at::Tensor>& weight,
                                              const std::optional<at::Tensor>& bias) {
  GroupNormBackward b{check_problem(input, num_groups, weight, bias)};
  check_like(grad_output, "group_norm_backward: grad_output", input, "input");
  TORCH_CHECK_VALUE(grad_output.sizes() == input.sizes(),
                    "group_norm_backward: grad_output must have the shape of input (",
                    input.sizes(), "), got ", grad_output.sizes());
  check_stats(mean, "mean", b);
  check_stats(rstd, "rstd", b);
  b.mean = mean.contiguous();
  b.rstd = rstd.contiguous();
  b.dy = grad_output.strides() == b.x.strides() ? grad_output
                                                 : at::empty_like(b.x).copy_(grad_output);
  b.dx = at::empty_like(b.x);
  const auto param_options = input.options().dtype(at::toOpMathType(input.scalar_type()));
  b.dweight = at::empty({b.C}, param_options);
  b.dbias = at::empty({b.C}, param_options);
  if (b.x.numel() == 0) {
    b.dweight.zero_();
    b.dbias.zero_();
  }
  return b;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_outputs(const GroupNormBackward& b) {
  return {b.dx, b.dweight.to(b.weight_dtype), b.dbias.to(b.bias_dtype)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> group_norm_impl(
    const at::Tensor& input, int64_t num_groups, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, double eps, bool silu, const GroupNormKernels& k) {
  GroupNormForward f = prepare_group_norm_forward(input, num_groups, weight, bias, eps);
  if (f.x.numel() > 0) k.forward(f, eps, silu);
  return {f.y, f.mean, f.rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> group_norm_backward_impl(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& mean,
    const at::Tensor& rstd, int64_t num_groups, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, bool silu, const GroupNormKernels& k) {
  GroupNormBackward b =
      prepare_group_norm_backward(grad_output, input, mean, rstd, num_groups, weight, bias);
  if (b.x.numel() > 0) k.backward(b, silu);
  return backward_outputs(b);
}

}  // namespace pynotes
