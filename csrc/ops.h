#pragma once
// The C++ API of pynotes: each function calls its operator through the PyTorch dispatcher, so
// it runs the CPU or CUDA kernel for the inputs' device and records autograd where registered.
// Schemas (argument meanings, defaults) are in pynotes.cpp.
#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

namespace pynotes {

// Group norm over (N, C, *): returns (output, mean, rstd); mean and rstd are (N, num_groups),
// float32 (float64 for float64 input). silu=true applies SiLU to the output in the same kernel.
std::tuple<at::Tensor, at::Tensor, at::Tensor> group_norm(
    const at::Tensor& input, int64_t num_groups,
    const std::optional<at::Tensor>& weight = std::nullopt,
    const std::optional<at::Tensor>& bias = std::nullopt, double eps = 1e-5, bool silu = false);

// Gradients (input, weight, bias) of group_norm from its saved mean and rstd. The weight and
// bias gradients are computed also when weight / bias are absent (as if all ones / zeros).
std::tuple<at::Tensor, at::Tensor, at::Tensor> group_norm_backward(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& mean,
    const at::Tensor& rstd, int64_t num_groups, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, bool silu);

}  // namespace pynotes
