#pragma once
// Device-generic IWAE ops (iwae_ops.cpp): checks, the (outer, K, inner) view and allocation;
// each device registers them with its kernels through register_iwae_ops<kernels>
// (iwae_cpu.cpp, iwae_cuda.cu). Schemas are in pynotes.cpp.
#include <ATen/core/Tensor.h>

#include <tuple>

#include "iwae/iwae_kernels.h"

namespace pynotes {

at::Tensor iwae_bound_impl(const at::Tensor& log_w, int64_t dim, bool keepdim,
                           const IwaeKernels& kernels);
at::Tensor iwae_bound_backward_impl(const at::Tensor& grad, const at::Tensor& log_w,
                                    const at::Tensor& bound, int64_t dim, bool keepdim,
                                    const IwaeKernels& kernels);
std::tuple<at::Tensor, at::Tensor, at::Tensor> importance_weights_impl(
    const at::Tensor& log_w, int64_t dim, const IwaeKernels& kernels);

template <const IwaeKernels& (*kernels)()>
struct IwaeOps {
  static at::Tensor bound(const at::Tensor& log_w, int64_t dim, bool keepdim) {
    return iwae_bound_impl(log_w, dim, keepdim, kernels());
  }
  static at::Tensor bound_backward(const at::Tensor& grad, const at::Tensor& log_w,
                                   const at::Tensor& bound, int64_t dim, bool keepdim) {
    return iwae_bound_backward_impl(grad, log_w, bound, dim, keepdim, kernels());
  }
  static std::tuple<at::Tensor, at::Tensor, at::Tensor> weights(const at::Tensor& log_w,
                                                                int64_t dim) {
    return importance_weights_impl(log_w, dim, kernels());
  }
};

template <const IwaeKernels& (*kernels)(), typename Library>
void register_iwae_ops(Library& m) {
  m.impl("iwae_bound", &IwaeOps<kernels>::bound);
  m.impl("iwae_bound_backward", &IwaeOps<kernels>::bound_backward);
  m.impl("importance_weights", &IwaeOps<kernels>::weights);
}

}  // namespace pynotes
