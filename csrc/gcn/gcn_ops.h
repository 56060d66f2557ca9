#pragma once
// Device-generic GCN propagation ops (gcn_ops.cpp): argument checks, output allocation and the
// transposed product of the backward. Each device registers them with its sparse kernels
// (gcn_kernels.h) through register_gcn_ops<kernels> (gcn_cpu.cpp, gcn_cuda.cu). Schemas are
// in pynotes.cpp.
#include <ATen/core/Tensor.h>

#include <array>
#include <optional>
#include <tuple>

#include "gcn/gcn_kernels.h"

namespace pynotes {

at::Tensor gcn_propagate_impl(const at::Tensor& x, const at::Tensor& rowptr,
                              const at::Tensor& col, const std::optional<at::Tensor>& weight,
                              const std::optional<at::Tensor>& scale, const at::Tensor& rowptr_t,
                              const at::Tensor& col_t, const at::Tensor& perm_t,
                              const GcnKernels& kernels);

std::tuple<at::Tensor, at::Tensor> gcn_propagate_backward_impl(
    const at::Tensor& grad_output, const std::optional<at::Tensor>& x, const at::Tensor& rowptr,
    const at::Tensor& col, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& scale, const at::Tensor& rowptr_t, const at::Tensor& col_t,
    const at::Tensor& perm_t, std::array<bool, 2> output_mask, const GcnKernels& kernels);

template <const GcnKernels& (*kernels)()>
struct GcnOps {
  static at::Tensor propagate(const at::Tensor& x, const at::Tensor& rowptr,
                              const at::Tensor& col, const std::optional<at::Tensor>& weight,
                              const std::optional<at::Tensor>& scale,
                              const at::Tensor& rowptr_t, const at::Tensor& col_t,
                              const at::Tensor& perm_t) {
    return gcn_propagate_impl(x, rowptr, col, weight, scale, rowptr_t, col_t, perm_t,
                              kernels());
  }
  static std::tuple<at::Tensor, at::Tensor> propagate_backward(
      const at::Tensor& grad_output, const std::optional<at::Tensor>& x,
      const at::Tensor& rowptr, const at::Tensor& col, const std::optional<at::Tensor>& weight,
      const std::optional<at::Tensor>& scale, const at::Tensor& rowptr_t,
      const at::Tensor& col_t, const at::Tensor& perm_t, std::array<bool, 2> output_mask) {
    return gcn_propagate_backward_impl(grad_output, x, rowptr, col, weight, scale, rowptr_t,
                                       col_t, perm_t, output_mask, kernels());
  }
};

// Registers the GCN ops of a device (inside TORCH_LIBRARY_IMPL).
template <const GcnKernels& (*kernels)(), typename Library>
void register_gcn_ops(Library& m) {
  m.impl("gcn_propagate", &GcnOps<kernels>::propagate);
  m.impl("gcn_propagate_backward", &GcnOps<kernels>::propagate_backward);
}

}  // namespace pynotes
