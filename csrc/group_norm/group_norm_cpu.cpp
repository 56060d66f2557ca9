// CPU group norm ops: checks and allocation (group_norm_args), then the per-ISA kernel.
#include <torch/library.h>

#include <tuple>

#include "group_norm/group_norm_args.h"
#include "group_norm/group_norm_cpu_kernel.h"

namespace pynotes {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> group_norm_cpu(
    const at::Tensor& input, int64_t num_groups, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, double eps, bool silu) {
  GroupNormForward f = prepare_group_norm_forward(input, num_groups, weight, bias, eps);
  if (f.x.numel() > 0) {
    const GroupNormCpuForwardArgs args{
        f.x.scalar_type(), f.channels_last, silu, f.N, f.C, f.HxW, f.G, eps,
        f.x.const_data_ptr(),
        f.weight.defined() ? f.weight.const_data_ptr() : nullptr,
        f.bias.defined() ? f.bias.const_data_ptr() : nullptr,
        f.y.mutable_data_ptr(), f.mean.mutable_data_ptr(), f.rstd.mutable_data_ptr()};
    PYNOTES_CPU_KERNEL(group_norm_forward_cpu_kernel)(args);
  }
  return {f.y, f.mean, f.rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> group_norm_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& mean,
    const at::Tensor& rstd, int64_t num_groups, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, bool silu) {
  GroupNormBackward b =
      prepare_group_norm_backward(grad_output, input, mean, rstd, num_groups, weight, bias);
  if (b.x.numel() > 0) {
    const GroupNormCpuBackwardArgs args{
        b.x.scalar_type(), b.channels_last, silu, b.N, b.C, b.HxW, b.G,
        b.dy.const_data_ptr(), b.x.const_data_ptr(), b.mean.const_data_ptr(),
        b.rstd.const_data_ptr(),
        b.weight.defined() ? b.weight.const_data_ptr() : nullptr,
        b.bias.defined() ? b.bias.const_data_ptr() : nullptr,
        b.dx.mutable_data_ptr(), b.dweight.mutable_data_ptr(), b.dbias.mutable_data_ptr()};
    PYNOTES_CPU_KERNEL(group_norm_backward_cpu_kernel)(args);
  }
  return backward_outputs(b);
}

}  // namespace

TORCH_LIBRARY_IMPL(pynotes, CPU, m) {
  m.impl("group_norm", &group_norm_cpu);
  m.impl("group_norm_backward", &group_norm_backward_cpu);
}

}  // namespace pynotes
