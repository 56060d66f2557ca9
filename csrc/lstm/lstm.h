#pragma once
// LSTM cell math shared by the CPU and CUDA kernels (PyTorch's gate order i, f, g, o). Each
// function is a template so the CPU kernels run it on at::vec::Vectorized lanes and the CUDA
// kernels on scalars: the CPU tests check the very formulas the GPU runs.
//
// Forward, from the gate pre-activations z (both matrix products and both biases summed):
//   i, f, o = sigmoid(z_i, z_f, z_o),  g = tanh(z_g)
//   c' = f * c + i * g,  h' = o * tanh(c')
// Backward, given dh' and dc' (the gradient reaching c' from the next step), with t = tanh(c'):
//   dc = dc' + dh' * o * (1 - t^2)              (total gradient of c')
//   dz_o = dh' * t * o (1 - o),  dz_i = dc * g * i (1 - i),  dz_g = dc * i * (1 - g^2),
//   dz_f = dc * c * f (1 - f),   grad of c = dc * f.
// The forward keeps the activated gates; the backward recomputes c' from them and c, so a
// sequence saves one cell state per step rather than two.
#include <c10/macros/Macros.h>

namespace pynotes {
namespace lstm {

template <typename T>
struct Gates {
  T i, f, g, o;
};

// Activates the pre-activations. Sigmoid and Tanh are the backend's (SIMD or CUDA math).
template <typename T, typename Sigmoid, typename Tanh>
C10_HOST_DEVICE inline Gates<T> activate(const Gates<T>& z, const Sigmoid& sigmoid,
                                         const Tanh& tanh) {
  return {sigmoid(z.i), sigmoid(z.f), tanh(z.g), sigmoid(z.o)};
}

template <typename T>
C10_HOST_DEVICE inline T next_cell(const Gates<T>& a, T c) {
  return a.f * c + a.i * a.g;
}

template <typename T, typename Tanh>
C10_HOST_DEVICE inline T next_hidden(const Gates<T>& a, T c_next, const Tanh& tanh) {
  return a.o * tanh(c_next);
}

// Gradients of the pre-activations, written into `dz`; returns the gradient of c.
template <typename T, typename Tanh>
C10_HOST_DEVICE inline T cell_backward(const Gates<T>& a, T c, T dh_next, T dc_next,
                                       const Tanh& tanh, Gates<T>& dz) {
  const T one(1);
  const T t = tanh(next_cell(a, c));
  const T dc = dc_next + dh_next * a.o * (one - t * t);
  dz.o = dh_next * t * a.o * (one - a.o);
  dz.i = dc * a.g * a.i * (one - a.i);
  dz.g = dc * a.i * (one - a.g * a.g);
  dz.f = dc * c * a.f * (one - a.f);
  return dc * a.f;
}

}  // namespace lstm
}  // namespace pynotes
