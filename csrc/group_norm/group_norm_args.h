#pragma once
// Argument checks, layout choice and output allocation shared by the CPU and CUDA group norm:
// each device's op is "prepare, launch its kernel on raw pointers, return".
#include <ATen/core/Tensor.h>

#include <optional>

namespace pynotes {

struct GroupNormProblem {
  int64_t N = 0, C = 0, HxW = 0, G = 0;
  // The kernels read (N, C, *) contiguous, or channels-last: (N, *, C) contiguous in memory.
  // Inputs in neither layout are copied to the contiguous one.
  bool channels_last = false;
  at::Tensor x;       // the input in that layout
  at::Tensor weight;  // contiguous (C), or undefined
  at::Tensor bias;    // contiguous (C), or undefined
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
  at::Tensor dweight, dbias;  // (C), x's dtype
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

}  // namespace pynotes
