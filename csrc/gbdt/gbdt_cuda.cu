// CUDA gradient-boosting ops: the device-generic ops (gbdt_ops.cpp) with the kernels below;
// formulas in gbdt.h.
//
// Histograms are bit-reproducible: gradients and hessians are rounded to 64-bit fixed point
// (a scale per call from their largest magnitude, keeping the sums inside 2^62), and integer
// sums do not depend on the order of the additions. Rows are grouped by slot; a block sums
// one slot's share of rows over kChunk features in shared memory, then adds its cells to the
// global histogram (integer atomics), which is converted to float64 at the end.
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/abs.h>
#include <ATen/ops/cumsum.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/max.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "common/cuda_utils.cuh"
#include "gbdt/gbdt.h"
#include "gbdt/gbdt_ops.h"

namespace pynotes {
namespace {

constexpr int kThreads = 256;
constexpr int kChunk = 8;            // features per histogram block (32 KB of shared memory)
constexpr int64_t kRowsPerPart = 4096;

unsigned blocks_for(int64_t n) { return cuda::grid_blocks(n, kThreads); }

template <typename T>
__global__ void bin_kernel(GbdtBin a) {
  const T* x = static_cast<const T*>(a.x);
  const T* cuts = static_cast<const T*>(a.cuts);
  PYNOTES_GRID_STRIDE_LOOP(i, a.rows * a.features) {
    const int64_t f = i % a.features;
    a.out[i] = gbdt::bin_of(x[i], cuts + f * a.max_cuts, a.max_cuts, a.missing_bin);
  }
}

// slot[r] = slot_of_node[node[r]]; count[s] = rows in slot s.
__global__ void slot_kernel(GbdtHistogram a, int32_t* slot, int32_t* count) {
  PYNOTES_GRID_STRIDE_LOOP(r, a.rows) {
    const int32_t s = a.slot_of_node[a.node[r]];
    slot[r] = s;
    if (s >= 0) atomicAdd(count + s, 1);
  }
}

// Rows grouped by slot (any order within a slot: the integer sums do not depend on it).
__global__ void group_kernel(int64_t rows, const int32_t* slot, int64_t* cursor,
                             int32_t* order) {
  PYNOTES_GRID_STRIDE_LOOP(r, rows) {
    const int32_t s = slot[r];
    if (s >= 0) {
      const auto at = atomicAdd(reinterpret_cast<unsigned long long*>(cursor + s), 1ull);
      order[at] = static_cast<int32_t>(r);
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    histogram_kernel(GbdtHistogram a, const int32_t* order, const int64_t* offsets,
                     double scale, unsigned long long* hist) {
  __shared__ unsigned long long cells[kChunk * 256 * 2];
  const int64_t F = a.features, B = a.num_bins, s = blockIdx.z;
  const int64_t f0 = int64_t(blockIdx.y) * kChunk;
  const int64_t nf = F - f0 < kChunk ? F - f0 : kChunk;
  for (int64_t i = threadIdx.x; i < nf * B * 2; i += blockDim.x) cells[i] = 0;
  __syncthreads();
  const int64_t begin = offsets[s], end = offsets[s + 1];
  const int64_t per_part = cuda::ceil_div(end - begin, gridDim.x);
  const int64_t part_begin = begin + blockIdx.x * per_part;
  const int64_t part_end = part_begin + per_part < end ? part_begin + per_part : end;
  const T* grad = static_cast<const T*>(a.grad);
  const T* hess = static_cast<const T*>(a.hess);
  for (int64_t i = part_begin + threadIdx.x; i < part_end; i += blockDim.x) {
    const int64_t r = order[i];
    const auto g = static_cast<unsigned long long>(llrint(double(grad[r]) * scale));
    const auto h = static_cast<unsigned long long>(llrint(double(hess[r]) * scale));
    const uint8_t* row = a.bins + r * F + f0;
    for (int64_t f = 0; f < nf; ++f) {
      unsigned long long* cell = cells + (f * B + row[f]) * 2;
      atomicAdd(cell, g);
      atomicAdd(cell + 1, h);
    }
  }
  __syncthreads();
  unsigned long long* out = hist + (s * F + f0) * B * 2;
  for (int64_t i = threadIdx.x; i < nf * B * 2; i += blockDim.x) {
    if (cells[i] != 0) atomicAdd(out + i, cells[i]);
  }
}

__global__ void fixed_to_double_kernel(int64_t n, const long long* fixed, double inverse_scale,
                                       double* out) {
  PYNOTES_GRID_STRIDE_LOOP(i, n) { out[i] = double(fixed[i]) * inverse_scale; }
}

template <typename T>
void histogram_typed(const GbdtHistogram& a) {
  const auto stream = at::cuda::getCurrentCUDAStream();
  const auto device = at::Device(at::kCUDA, c10::cuda::current_device());
  const auto opts = at::TensorOptions().device(device);
  const int64_t S = a.num_slots, F = a.features, B = a.num_bins;
  at::Tensor slot = at::empty({a.rows}, opts.dtype(at::kInt));
  at::Tensor count = at::zeros({S}, opts.dtype(at::kInt));
  slot_kernel<<<blocks_for(a.rows), kThreads, 0, stream>>>(a, slot.mutable_data_ptr<int32_t>(),
                                                           count.mutable_data_ptr<int32_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  at::Tensor offsets = at::zeros({S + 1}, opts.dtype(at::kLong));
  offsets.narrow(0, 1, S).copy_(at::cumsum(count, 0));
  at::Tensor cursor = offsets.narrow(0, 0, S).clone();
  const int64_t active = offsets[S].item<int64_t>();
  at::Tensor order = at::empty({std::max<int64_t>(active, 1)}, opts.dtype(at::kInt));
  group_kernel<<<blocks_for(a.rows), kThreads, 0, stream>>>(
      a.rows, slot.const_data_ptr<int32_t>(), cursor.mutable_data_ptr<int64_t>(),
      order.mutable_data_ptr<int32_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  // Fixed point: every partial sum stays below 2^62 in magnitude.
  const auto dtype = opts.dtype(c10::CppTypeToScalarType<T>::value);
  const at::Tensor g = at::from_blob(const_cast<void*>(a.grad), {a.rows}, dtype);
  const at::Tensor h = at::from_blob(const_cast<void*>(a.hess), {a.rows}, dtype);
  const double largest = std::max(at::abs(g).max().item<double>(),
                                  at::abs(h).max().item<double>());
  const double total = largest * double(std::max<int64_t>(active, 1));
  TORCH_CHECK_VALUE(std::isfinite(total), "gbdt_histogram: grad and hess must be finite");
  const int exponent = total > 0 ? 62 - static_cast<int>(std::ceil(std::log2(total))) : 0;
  const double scale = std::ldexp(1.0, std::clamp(exponent, -1000, 1000));
  at::Tensor fixed = at::zeros({S * F * B * 2}, opts.dtype(at::kLong));
  if (active > 0) {
    TORCH_CHECK(cuda::ceil_div(F, kChunk) <= 65535, "gbdt_histogram: CUDA supports up to ",
                65535 * kChunk, " features");
    const int64_t parts = std::clamp<int64_t>(cuda::ceil_div(active, S * kRowsPerPart), 1, 1024);
    const dim3 grid(static_cast<unsigned>(parts), static_cast<unsigned>(cuda::ceil_div(F, kChunk)),
                    static_cast<unsigned>(S));
    histogram_kernel<T><<<grid, kThreads, 0, stream>>>(
        a, order.const_data_ptr<int32_t>(), offsets.const_data_ptr<int64_t>(), scale,
        reinterpret_cast<unsigned long long*>(fixed.mutable_data_ptr<int64_t>()));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  fixed_to_double_kernel<<<blocks_for(S * F * B * 2), kThreads, 0, stream>>>(
      S * F * B * 2, reinterpret_cast<const long long*>(fixed.const_data_ptr<int64_t>()),
      1.0 / scale, a.hist);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void histogram_cuda(const GbdtHistogram& a) {
  TORCH_CHECK(a.num_bins <= 256 && a.num_slots <= 65535,
              "gbdt_histogram: CUDA supports up to 256 bins and 65535 slots");
  if (a.dtype == at::kDouble) histogram_typed<double>(a); else histogram_typed<float>(a);
}

// Per (slot, feature) the best split; then per slot the best feature, in feature order.
__global__ void split_per_feature_kernel(GbdtBestSplits a, gbdt::Split* per_feature) {
  PYNOTES_GRID_STRIDE_LOOP(i, a.num_slots * a.features) {
    per_feature[i] = gbdt::best_split_of_item(a, i);
  }
}

__global__ void split_per_slot_kernel(GbdtBestSplits a, const gbdt::Split* per_feature) {
  PYNOTES_GRID_STRIDE_LOOP(s, a.num_slots) { gbdt::write_best_split(a, per_feature, s); }
}

void best_splits_cuda(const GbdtBestSplits& a) {
  const auto stream = at::cuda::getCurrentCUDAStream();
  const int64_t n = a.num_slots * a.features;
  at::Tensor per_feature = at::empty(
      {std::max<int64_t>(n, 1) * int64_t(sizeof(gbdt::Split))},
      at::TensorOptions().device(at::kCUDA, c10::cuda::current_device()).dtype(at::kByte));
  auto* splits = reinterpret_cast<gbdt::Split*>(per_feature.mutable_data_ptr<uint8_t>());
  if (n > 0) {
    split_per_feature_kernel<<<blocks_for(n), kThreads, 0, stream>>>(a, splits);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  split_per_slot_kernel<<<blocks_for(a.num_slots), kThreads, 0, stream>>>(a, splits);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

__global__ void advance_kernel(GbdtAdvance a) {
  PYNOTES_GRID_STRIDE_LOOP(r, a.rows) {
    const int32_t n = gbdt::advance_row(a, r);
    atomicAdd(reinterpret_cast<unsigned long long*>(a.count + n), 1ull);
  }
}

void advance_cuda(const GbdtAdvance& a) {
  advance_kernel<<<blocks_for(a.rows), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(a);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename X, typename Th>
__global__ void predict_kernel(GbdtPredict a) {
  const X* x = static_cast<const X*>(a.x);
  const Th* threshold = static_cast<const Th*>(a.threshold);
  PYNOTES_GRID_STRIDE_LOOP(r, a.rows) {
    const X* row = x + r * a.features;
    double* out = a.out + r * a.num_groups;
    for (int64_t t = 0; t < a.trees; ++t) {
      const int64_t base = t * a.nodes;
      const int64_t leaf = gbdt::leaf_of(
          row, a.feature + base, threshold + base, a.default_left + base, a.nodes, a.missing_bin,
          a.categorical, a.cat_left ? a.cat_left + base * gbdt::kCategoryWords : nullptr);
      out[a.group[t]] += a.value[base + leaf];
    }
  }
}

void predict_cuda(const GbdtPredict& a) {
  const auto stream = at::cuda::getCurrentCUDAStream();
  if (a.dtype == at::kByte) {
    predict_kernel<uint8_t, int32_t><<<blocks_for(a.rows), kThreads, 0, stream>>>(a);
  } else if (a.dtype == at::kDouble) {
    predict_kernel<double, double><<<blocks_for(a.rows), kThreads, 0, stream>>>(a);
  } else {
    predict_kernel<float, float><<<blocks_for(a.rows), kThreads, 0, stream>>>(a);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void bin_cuda(const GbdtBin& a) {
  const auto stream = at::cuda::getCurrentCUDAStream();
  const unsigned blocks = blocks_for(a.rows * a.features);
  if (a.dtype == at::kDouble) bin_kernel<double><<<blocks, kThreads, 0, stream>>>(a);
  else bin_kernel<float><<<blocks, kThreads, 0, stream>>>(a);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

const GbdtKernels& cuda_kernels() {
  static const GbdtKernels kernels{&bin_cuda, &histogram_cuda, &best_splits_cuda, &advance_cuda,
                                   &predict_cuda};
  return kernels;
}

}  // namespace

TORCH_LIBRARY_IMPL(pynotes, CUDA, m) { register_gbdt_ops<cuda_kernels>(m); }

}  // namespace pynotes
