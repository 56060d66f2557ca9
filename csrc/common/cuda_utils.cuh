#pragma once
// Small CUDA helpers shared by the kernels: block reductions and vector loads.
#include <c10/macros/Macros.h>

#include <cstdint>

namespace pynotes {
namespace cuda {

constexpr int kWarpSize = 32;

C10_HOST_DEVICE inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Blocks of `threads` for a grid-stride loop over n items: one per `threads` items, capped at
// 2^16 (the loop covers the rest). 0 for n = 0: launch nothing then.
inline unsigned grid_blocks(int64_t n, int threads) {
  const int64_t blocks = ceil_div(n, threads);
  return static_cast<unsigned>(blocks < (int64_t(1) << 16) ? blocks : int64_t(1) << 16);
}

// for (i = this thread's first item; i < n; i += all threads in the grid), 64-bit.
#define PYNOTES_GRID_STRIDE_LOOP(i, n)                                         \
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < (n); \
       i += int64_t(gridDim.x) * blockDim.x)

// Reduces `v` over the whole (1-, 2- or 3-D) block with op(a, b) and shfl_down(v, delta); the
// result is valid in thread 0. Uses static shared memory: call it once per kernel.
template <typename V, typename Op, typename Shfl>
__device__ V block_reduce(V v, const Op& op, const Shfl& shfl_down, const V& identity) {
  __shared__ V partial[kWarpSize];
  const int tid = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  const int lane = tid % kWarpSize, warp = tid / kWarpSize;
  const int warps = (blockDim.x * blockDim.y * blockDim.z + kWarpSize - 1) / kWarpSize;
  for (int d = kWarpSize / 2; d > 0; d /= 2) v = op(v, shfl_down(v, d));
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < warps ? partial[lane] : identity;
    for (int d = kWarpSize / 2; d > 0; d /= 2) v = op(v, shfl_down(v, d));
  }
  return v;
}

template <typename T>
__device__ __forceinline__ T shfl_down(T v, int delta) {
  return __shfl_down_sync(0xffffffffu, v, delta);
}

// kN elements loaded or stored in one instruction.
template <typename T, int kN>
struct alignas(sizeof(T) * kN) Pack {
  T v[kN];
};

template <int kN, typename T>
inline bool is_aligned(const T* p) {
  return reinterpret_cast<uintptr_t>(p) % (sizeof(T) * kN) == 0;
}

}  // namespace cuda
}  // namespace pynotes
