#pragma once
// The device-generic group norm ops (group_norm_args.cpp): argument checks, layout choice and
// output allocation shared by the CPU and CUDA; each device registers them with its launchers
// through register_group_norm_ops<kernels> (group_norm_cpu.cpp, group_norm_cuda.cu), as the
// other families do. Schemas are in pynotes.cpp.
#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

namespace pynotes {

struct GroupNormProblem {
  int64_t N = 0, C = 0, HxW = 0, G = 0;
  // The kernels read (N, C, *) contiguous, or channels-last: (N, *, C) contiguous in memory.
  // Inputs in neither layout are copied to the contiguous one.
  bool channels_last = false;
  at::Tensor x;       // the input in that layout
  // Contiguous (C) in the opmath type of x (float for Half/BFloat16: the kernels read them as
  // they read the statistics), or undefined. The callers' dtypes: x's, or float32 for
  // Half/BFloat16 input (the mixed precision autocast produces, as ATen accepts).
  at::Tensor weight, bias;
  at::ScalarType weight_dtype, bias_dtype;
};

struct GroupNormForward : GroupNormProblem {
  at::Tensor y;     // like x (same strides)
  at::Tensor mean;  // (N, G), float (double for double inputs)
  at::Tensor rstd;  // (N, G)
};

struct GroupNormBackward : GroupNormProblem {
  at::Tensor dy;    // grad_output in x's layout
  at::Tensor mean;  // contiguous (N, G)
  at::Tensor rstd;  // contiguous (N, G)
  at::Tensor dx;    // like x
  at::Tensor dweight, dbias;  // (C), in the opmath type of x
};

// Checks the arguments and allocates the outputs. For zero-size inputs the outputs are already
// final (mean 0, rstd 1/sqrt(eps), zero weight gradients): callers launch only if x.numel() > 0.
GroupNormForward prepare_group_norm_forward(const at::Tensor& input, int64_t num_groups,
                                            const std::optional<at::Tensor>& weight,
                                            const std::optional<at::Tensor>& bias, double eps);
GroupNormBackward prepare_group_norm_backward(const at::Tensor& grad_output,
                                              const at::Tensor& input, const at::Tensor& mean,
                                              const at::Tensor& rstd, int64_t num_groups,
                                              const std::optional<at::Tensor>& weight,
                                              const std::optional<at::Tensor>& bias);

// (dx, dweight, dbias) with the weight and bias gradients in the dtypes of weight and bias.
std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_outputs(const GroupNormBackward& b);

// One device's launchers, run on prepared tensors of at least one element.
struct GroupNormKernels {
  void (*forward)(const GroupNormForward& f, double eps, bool silu);
  void (*backward)(const GroupNormBackward& b, bool silu);
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> group_norm_impl(
    const at::Tensor& input, int64_t num_groups, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, double eps, bool silu, const GroupNormKernels& k);
std::tuple<at::Tensor, at::Tensor, at::Tensor> group_norm_backward_impl(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& mean,
    const at::Tensor& rstd, int64_t num_groups, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, bool silu, const GroupNormKernels& k);

template <const GroupNormKernels& (*kernels)()>
struct GroupNormOps {
  static std::tuple<at::Tensor, at::Tensor, at::Tensor> forward(
      const at::Tensor& input, int64_t num_groups, const std::optional<at::Tensor>& weight,
      const std::optional<at::Tensor>& bias, double eps, bool silu) {
    return group_norm_impl(input, num_groups, weight, bias, eps, silu, kernels());
  }
  static std::tuple<at::Tensor, at::Tensor, at::Tensor> backward(
      const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& mean,
      const at::Tensor& rstd, int64_t num_groups, const std::optional<at::Tensor>& weight,
      const std::optional<at::Tensor>& bias, bool silu) {
    return group_norm_backward_impl(grad_output, input, mean, rstd, num_groups, weight, bias,
                                    silu, kernels());
  }
};

template <const GroupNormKernels& (*kernels)(), typename Library>
void register_group_norm_ops(Library& m) {
  m.impl("group_norm", &GroupNormOps<kernels>::forward);
  m.impl("group_norm_backward", &GroupNormOps<kernels>::backward);
}

}  // namespace pynotes
