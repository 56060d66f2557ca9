// CUDA LSTM ops: the device-generic ops (lstm_ops.cpp: cuBLAS products, time loop) with the
// step kernels below. One thread per (row, hidden unit) reads the unit's four gates; math in
// at::opmath_type (float for Half/BFloat16), the same formulas as the CPU (lstm.h).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <torch/library.h>

#include <algorithm>

#include "common/cuda_utils.cuh"
#include "lstm/lstm.h"
#include "lstm/lstm_ops.h"

namespace pynotes {
namespace {

constexpr int kThreads = 256;

struct Sigmoid {
  template <typename A>
  __device__ A operator()(A x) const {
    return A(1) / (A(1) + std::exp(-x));
  }
};

struct Tanh {
  template <typename A>
  __device__ A operator()(A x) const {
    return std::tanh(x);
  }
};

template <typename T, typename A>
__device__ lstm::Gates<A> load_gates(const T* p, int64_t hidden) {
  return {A(p[0]), A(p[hidden]), A(p[2 * hidden]), A(p[3 * hidden])};
}

template <typename T, typename A>
__device__ void store_gates(T* p, int64_t hidden, const lstm::Gates<A>& g) {
  p[0] = T(g.i);
  p[hidden] = T(g.f);
  p[2 * hidden] = T(g.g);
  p[3 * hidden] = T(g.o);
}

unsigned blocks_for(int64_t n) { return cuda::grid_blocks(n, kThreads); }

template <typename T>
__global__ void __launch_bounds__(kThreads) step_forward_kernel(LstmStepForward a) {
  using A = at::opmath_type<T>;
  const int64_t H = a.hidden, total = a.rows * H;
  PYNOTES_GRID_STRIDE_LOOP(idx, total) {
    const int64_t row = idx / H, j = idx - row * H;
    T* z = static_cast<T*>(a.gates) + row * 4 * H + j;
    lstm::Gates<A> pre = load_gates<T, A>(z, H);
    if (a.bias) {
      const lstm::Gates<A> b = load_gates<A, A>(static_cast<const A*>(a.bias) + j, H);
      pre = {pre.i + b.i, pre.f + b.f, pre.g + b.g, pre.o + b.o};
    }
    const lstm::Gates<A> act = lstm::activate(pre, Sigmoid{}, Tanh{});
    const A c = static_cast<const A*>(a.c)[idx];
    const A c_next = lstm::next_cell(act, c);
    const T h_next = T(lstm::next_hidden(act, c_next, Tanh{}));
    store_gates(z, H, act);
    if (a.c_saved) static_cast<A*>(a.c_saved)[idx] = c;
    static_cast<A*>(a.c_next)[idx] = c_next;
    static_cast<T*>(a.h_next)[idx] = h_next;
    if (a.h_next_copy) static_cast<T*>(a.h_next_copy)[idx] = h_next;
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) step_backward_kernel(LstmStepBackward a) {
  using A = at::opmath_type<T>;
  const int64_t H = a.hidden, total = a.rows * H;
  PYNOTES_GRID_STRIDE_LOOP(idx, total) {
    const int64_t row = idx / H, j = idx - row * H;
    A dh = a.dh ? A(static_cast<const T*>(a.dh)[idx]) : A(0);
    if (a.dh_extra) dh += A(static_cast<const T*>(a.dh_extra)[idx]);
    const A dc_next = a.dc_next ? static_cast<const A*>(a.dc_next)[idx] : A(0);
    const lstm::Gates<A> act =
        load_gates<T, A>(static_cast<const T*>(a.gates) + row * 4 * H + j, H);
    lstm::Gates<A> dz;
    const A dc = lstm::cell_backward(act, static_cast<const A*>(a.c)[idx], dh, dc_next, Tanh{},
                                     dz);
    store_gates(static_cast<T*>(a.dgates) + row * 4 * H + j, H, dz);
    static_cast<A*>(a.dc)[idx] = dc;
  }
}

void step_forward_cuda(const LstmStepForward& a) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.dtype, "lstm_step_forward", [&] {
    step_forward_kernel<scalar_t><<<blocks_for(a.rows * a.hidden), kThreads, 0,
                                    at::cuda::getCurrentCUDAStream()>>>(a);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void step_backward_cuda(const LstmStepBackward& a) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.dtype, "lstm_step_backward", [&] {
    step_backward_kernel<scalar_t><<<blocks_for(a.rows * a.hidden), kThreads, 0,
                                     at::cuda::getCurrentCUDAStream()>>>(a);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

const LstmStepKernels& cuda_kernels() {
  static const LstmStepKernels kernels{&step_forward_cuda, &step_backward_cuda};
  return kernels;
}

}  // namespace

TORCH_LIBRARY_IMPL(pynotes, CUDA, m) { register_lstm_ops<cuda_kernels>(m); }

}  // namespace pynotes
