// CUDA IWAE ops: the device-generic ops (iwae_ops.cpp) with the kernels below. A slice
// (outer, inner) is reduced over K with a running (max, sum) in at::opmath_type (float for
// float16/bfloat16): one thread per slice when the slices run along the contiguous inner dim
// (neighbouring threads read neighbouring values), a warp per slice when K is the contiguous
// last dim (lanes stride over K and merge their pairs with shuffles, in a fixed order).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <torch/library.h>

#include <algorithm>

#include "common/cuda_utils.cuh"
#include "iwae/iwae.h"
#include "iwae/iwae_ops.h"

namespace pynotes {
namespace {

constexpr int kThreads = 256;

unsigned blocks_for(int64_t n) { return cuda::grid_blocks(n, kThreads); }

// Folds x into the running pair: one exp per value.
template <typename A>
__device__ void fold(A x, A& max, A& sum) {
  if (x > max) {
    sum = sum * std::exp(max - x) + A(1);  // max - x is -inf for the first finite x: exp = 0
    max = x;
  } else if (x != x || max != max) {
    max = max != max ? max : x;  // NaN sticks
    sum = A(1);
  } else if (x > -std::numeric_limits<A>::infinity()) {
    sum += std::exp(x - max);
  }
}

template <typename A>
__device__ void merge(A other_max, A other_sum, A& max, A& sum) {
  if (other_max != other_max || max != max) {
    max = other_max != other_max ? other_max : max;
    return;
  }
  const A m = other_max > max ? other_max : max;
  const A shift = iwae::safe_shift(m);
  sum = sum * std::exp(max - shift) + other_sum * std::exp(other_max - shift);
  max = m;
}

// lse of a finished pair (NaN stays NaN; +inf seen with +inf gives NaN through inf - inf).
template <typename A>
__device__ A lse_of(A max, A sum) {
  if (max != max) return max;
  if (max == std::numeric_limits<A>::infinity()) return sum != sum ? sum : max - max;
  return iwae::finish(max, sum);
}

template <typename T>
__device__ void write_outputs(const IwaeForward& a, int64_t slice, int64_t o, int64_t i,
                              at::opmath_type<T> lse, int lane, int lanes) {
  using A = at::opmath_type<T>;
  const T* x = static_cast<const T*>(a.log_w) + o * a.K * a.inner + i;
  if (lane == 0) {
    if (a.bound) static_cast<T*>(a.bound)[slice] = T(lse - std::log(A(a.K)));
    if (a.lse) static_cast<A*>(a.lse)[slice] = lse;
  }
  if (!a.weights) return;
  T* w = static_cast<T*>(a.weights) + o * a.K * a.inner + i;
  A squares = 0;
  for (int64_t k = lane; k < a.K; k += lanes) {
    const A value = iwae::weight(A(x[k * a.inner]), lse);
    w[k * a.inner] = T(value);
    squares += value * value;
  }
  for (int offset = lanes / 2; offset > 0; offset /= 2) {
    squares += __shfl_xor_sync(0xffffffffu, squares, offset);
  }
  if (lane == 0) static_cast<T*>(a.ess)[slice] = T(squares == A(0) ? A(0) : A(1) / squares);
}

template <typename T>
__global__ void forward_inner_kernel(IwaeForward a) {
  using A = at::opmath_type<T>;
  PYNOTES_GRID_STRIDE_LOOP(slice, a.outer * a.inner) {
    const int64_t o = slice / a.inner, i = slice % a.inner;
    const T* x = static_cast<const T*>(a.log_w) + o * a.K * a.inner + i;
    A max = -std::numeric_limits<A>::infinity(), sum = 0;
    for (int64_t k = 0; k < a.K; ++k) fold(A(x[k * a.inner]), max, sum);
    write_outputs<T>(a, slice, o, i, lse_of(max, sum), 0, 1);
  }
}

template <typename T>
__global__ void forward_last_kernel(IwaeForward a) {
  using A = at::opmath_type<T>;
  const int lane = threadIdx.x % cuda::kWarpSize;
  const int64_t warps = int64_t(gridDim.x) * blockDim.x / cuda::kWarpSize;
  for (int64_t o = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) / cuda::kWarpSize;
       o < a.outer; o += warps) {
    const T* x = static_cast<const T*>(a.log_w) + o * a.K;
    A max = -std::numeric_limits<A>::infinity(), sum = 0;
    for (int64_t k = lane; k < a.K; k += cuda::kWarpSize) fold(A(x[k]), max, sum);
    for (int offset = cuda::kWarpSize / 2; offset > 0; offset /= 2) {
      merge(__shfl_xor_sync(0xffffffffu, max, offset), __shfl_xor_sync(0xffffffffu, sum, offset),
            max, sum);
    }
    // Every lane uses lane 0's value (the merges may round differently per lane).
    const A lse = __shfl_sync(0xffffffffu, lse_of(max, sum), 0);
    write_outputs<T>(a, o, o, 0, lse, lane, cuda::kWarpSize);
  }
}

template <typename T>
__global__ void backward_kernel(IwaeBackward a) {
  using A = at::opmath_type<T>;
  const int64_t n = a.outer * a.K * a.inner;
  PYNOTES_GRID_STRIDE_LOOP(idx, n) {
    const int64_t i = idx % a.inner, o = idx / (a.K * a.inner);
    const int64_t slice = o * a.inner + i;
    const A lse = a.lse ? static_cast<const A*>(a.lse)[slice]
                        : A(static_cast<const T*>(a.bound)[slice]) + std::log(A(a.K));
    const A w = iwae::weight(A(static_cast<const T*>(a.log_w)[idx]), lse);
    static_cast<T*>(a.grad_log_w)[idx] =
        T(w == A(0) ? A(0) : w * A(static_cast<const T*>(a.grad_bound)[slice]));
  }
}

void forward_cuda(const IwaeForward& a) {
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.dtype, "iwae_forward", [&] {
    if (a.inner == 1) {
      forward_last_kernel<scalar_t>
          <<<blocks_for(a.outer * cuda::kWarpSize), kThreads, 0, stream>>>(a);
    } else {
      forward_inner_kernel<scalar_t><<<blocks_for(a.outer * a.inner), kThreads, 0, stream>>>(a);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void backward_cuda(const IwaeBackward& a) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.dtype, "iwae_backward", [&] {
    backward_kernel<scalar_t><<<blocks_for(a.outer * a.K * a.inner), kThreads, 0,
                                at::cuda::getCurrentCUDAStream()>>>(a);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

const IwaeKernels& cuda_kernels() {
  static const IwaeKernels kernels{&forward_cuda, &backward_cuda};
  return kernels;
}

}  // namespace

TORCH_LIBRARY_IMPL(pynotes, CUDA, m) { register_iwae_ops<cuda_kernels>(m); }

}  // namespace pynotes
