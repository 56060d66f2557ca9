// CUDA GCN ops: the device-generic ops (gcn_ops.cpp) with the sparse kernels below.
//
// SpMM: a group of kLanes lanes (4..32, a power of two, within one warp) owns one row and
// kLanes * kVec consecutive features of it (blockIdx.y picks which); each lane holds kVec
// features in float accumulators. The group loads kLanes entries (column, value) at once,
// coalesced, and passes them round with shuffles; each lane then reads its kVec features of
// the source row with one 16-byte load where alignment allows. Each output element is summed
// by one lane in CSR order: no atomics, the same bits every run.
//
// SDDMM (the weight gradient): a group per row; per entry the lanes split the dot product
// over the features and combine it with an xor-shuffle tree (a fixed order again).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <torch/library.h>

#include "common/cuda_utils.cuh"
#include "gcn/gcn_ops.h"

namespace pynotes {
namespace {

constexpr int kThreads = 256;

// The shuffle mask of this thread's group of kLanes lanes.
template <int kLanes>
__device__ unsigned group_mask() {
  constexpr unsigned kGroup = kLanes >= 32 ? 0xffffffffu : (1u << (kLanes % 32)) - 1u;
  return kGroup << ((threadIdx.x % cuda::kWarpSize) / kLanes * kLanes);
}

template <typename T, typename I, int kLanes, int kVec>
__global__ void __launch_bounds__(kThreads) spmm_kernel(CsrSpmm args) {
  using A = at::opmath_type<T>;
  using P = cuda::Pack<T, kVec>;
  const int64_t row = int64_t(blockIdx.x) * (kThreads / kLanes) + threadIdx.x / kLanes;
  if (row >= args.a.rows) return;  // the whole group leaves together
  const int lane = threadIdx.x % kLanes;
  const unsigned mask = group_mask<kLanes>();
  const int64_t F = args.features;
  const int64_t j = (int64_t(blockIdx.y) * kLanes + lane) * kVec;
  const bool active = j < F;
  const I* col = static_cast<const I*>(args.a.col);
  const A* weight = static_cast<const A*>(args.a.weight);
  const A* scale = static_cast<const A*>(args.a.scale);
  const T* x = static_cast<const T*>(args.x);

  A acc[kVec];
#pragma unroll
  for (int v = 0; v < kVec; ++v) acc[v] = A(0);
  const int64_t begin = args.a.rowptr[row], end = args.a.rowptr[row + 1];
  for (int64_t base = begin; base < end; base += kLanes) {
    I c = 0;  // shuffled in its own width (int32 columns: one shuffle)
    A f = A(0);
    if (base + lane < end) {
      c = col[base + lane];
      f = weight ? weight[base + lane] : A(1);
      if (scale) f *= scale[c];
    }
    const int n = static_cast<int>(end - base < kLanes ? end - base : kLanes);
    for (int k = 0; k < n; ++k) {
      const int64_t ck = __shfl_sync(mask, c, k, kLanes);
      const A fk = __shfl_sync(mask, f, k, kLanes);
      if (active) {
        const P p = *reinterpret_cast<const P*>(x + ck * F + j);
#pragma unroll
        for (int v = 0; v < kVec; ++v) acc[v] += fk * A(p.v[v]);
      }
    }
  }
  if (active) {
    const A s = scale ? scale[row] : A(1);
    P out;
#pragma unroll
    for (int v = 0; v < kVec; ++v) out.v[v] = T(acc[v] * s);
    *reinterpret_cast<P*>(static_cast<T*>(args.out) + row * F + j) = out;
  }
}

template <typename T, typename I, int kLanes>
__global__ void __launch_bounds__(kThreads) sddmm_kernel(CsrSddmm args) {
  using A = at::opmath_type<T>;
  const int64_t row = int64_t(blockIdx.x) * (kThreads / kLanes) + threadIdx.x / kLanes;
  if (row >= args.a.rows) return;
  const int lane = threadIdx.x % kLanes;
  const unsigned mask = group_mask<kLanes>();
  const int64_t F = args.features;
  const I* col = static_cast<const I*>(args.a.col);
  const A* scale = static_cast<const A*>(args.a.scale);
  const T* g = static_cast<const T*>(args.grad_out) + row * F;
  const T* x = static_cast<const T*>(args.x);
  A* out = static_cast<A*>(args.out);
  const A row_scale = scale ? scale[row] : A(1);
  const int64_t begin = args.a.rowptr[row], end = args.a.rowptr[row + 1];
  for (int64_t e = begin; e < end; ++e) {
    const int64_t c = col[e];
    A d = A(0);
    for (int64_t j = lane; j < F; j += kLanes) d += A(g[j]) * A(x[c * F + j]);
#pragma unroll
    for (int offset = kLanes / 2; offset > 0; offset /= 2) {
      d += __shfl_xor_sync(mask, d, offset, kLanes);
    }
    if (lane == 0) out[e] = scale ? d * row_scale * scale[c] : d;
  }
}

// Lanes per row: the fewest (at least 4) whose kVec-wide loads cover the features, at most 32.
int lanes_for(int64_t features, int vec) {
  int lanes = 4;
  while (lanes < cuda::kWarpSize && int64_t(lanes) * vec < features) lanes *= 2;
  return lanes;
}

dim3 grid_for(int64_t rows, int lanes, int64_t feature_blocks) {
  TORCH_CHECK(feature_blocks <= 65535, "gcn_propagate: too many features for one launch");
  TORCH_CHECK(cuda::ceil_div(rows, kThreads / lanes) < (int64_t(1) << 31),
              "gcn_propagate: too many nodes for one launch");
  return dim3(static_cast<unsigned>(cuda::ceil_div(rows, kThreads / lanes)),
              static_cast<unsigned>(feature_blocks));
}

template <typename T, typename I, int kVec>
void launch_spmm(const CsrSpmm& a) {
  const int lanes = lanes_for(a.features, kVec);
  const dim3 grid = grid_for(a.a.rows, lanes, cuda::ceil_div(a.features, int64_t(lanes) * kVec));
  const auto stream = at::cuda::getCurrentCUDAStream();
  switch (lanes) {
    case 4: spmm_kernel<T, I, 4, kVec><<<grid, kThreads, 0, stream>>>(a); break;
    case 8: spmm_kernel<T, I, 8, kVec><<<grid, kThreads, 0, stream>>>(a); break;
    case 16: spmm_kernel<T, I, 16, kVec><<<grid, kThreads, 0, stream>>>(a); break;
    default: spmm_kernel<T, I, 32, kVec><<<grid, kThreads, 0, stream>>>(a); break;
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename Fn>
void dispatch(c10::ScalarType dtype, c10::ScalarType index_dtype, const Fn& fn) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "gcn_propagate", [&] {
    if (index_dtype == at::kInt) fn(scalar_t(), int32_t());
    else fn(scalar_t(), int64_t());
  });
}

// 16-byte loads when every source row and output row is 16-byte aligned, else scalar ones.
template <typename T, typename I>
void launch_spmm_aligned(const CsrSpmm& a) {
  constexpr int kPack = 16 / sizeof(T);
  const bool packed = a.features % kPack == 0 &&
                      cuda::is_aligned<kPack>(static_cast<const T*>(a.x)) &&
                      cuda::is_aligned<kPack>(static_cast<const T*>(a.out));
  if (packed) launch_spmm<T, I, kPack>(a);
  else launch_spmm<T, I, 1>(a);
}

void spmm_cuda(const CsrSpmm& a) {
  dispatch(a.dtype, a.a.index_dtype, [&](auto t, auto i) {
    launch_spmm_aligned<decltype(t), decltype(i)>(a);
  });
}

void sddmm_cuda(const CsrSddmm& a) {
  dispatch(a.dtype, a.a.index_dtype, [&](auto t, auto i) {
    using T = decltype(t);
    using I = decltype(i);
    const auto stream = at::cuda::getCurrentCUDAStream();
    if (a.features <= 8) {
      sddmm_kernel<T, I, 8><<<grid_for(a.a.rows, 8, 1), kThreads, 0, stream>>>(a);
    } else {
      sddmm_kernel<T, I, 32><<<grid_for(a.a.rows, 32, 1), kThreads, 0, stream>>>(a);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

const GcnKernels& cuda_kernels() {
  static const GcnKernels kernels{&spmm_cuda, &sddmm_cuda};
  return kernels;
}

}  // namespace

TORCH_LIBRARY_IMPL(pynotes, CUDA, m) { register_gcn_ops<cuda_kernels>(m); }

}  // namespace pynotes
