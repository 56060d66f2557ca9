// CUDA group norm. Same layouts and formulas (group_norm.h) as the CPU kernels.
// Forward: group moments (Welford, one read of x, split over several blocks per group when
// N*G is small so every SM has work) -> per-group mean/rstd -> elementwise normalize.
// Backward: per-(n, c) sums of dy and dy*(x - mean) -> per-group input-gradient coefficients
// -> elementwise input gradient, and the weight/bias gradients from the same sums.
// Loads and stores are 4-wide where sizes and alignment allow.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>

#include "common/cuda_utils.cuh"
#include "group_norm/group_norm.h"
#include "group_norm/group_norm_args.h"

namespace pynotes {
namespace {

namespace gn = group_norm;
using cuda::ceil_div;
using cuda::Pack;

constexpr int kThreads = 256;
constexpr int kVec = 4;

// Sizes, and where things lie in memory, for either layout.
struct Geometry {
  int64_t N, C, HxW, G, Cg, D;
  bool channels_last;

  // Offset of group ng's first element; element j of the group lies at run(j / run_length)
  // * run_stride + j % run_length from it: NCHW groups are one contiguous run, channels-last
  // groups are HxW runs of C/G channels, C apart.
  __host__ __device__ int64_t group_base(int64_t ng) const {
    return channels_last ? (ng / G) * HxW * C + (ng % G) * Cg : ng * D;
  }
  __host__ __device__ int64_t run_length() const { return channels_last ? Cg : D; }
  __host__ __device__ int64_t run_stride() const { return channels_last ? C : D; }
  __device__ int64_t group_offset(int64_t j) const {
    const int64_t run = run_length();
    return (j / run) * run_stride() + j % run;
  }
  // (n, c) of the element at memory index i.
  __device__ void locate(int64_t i, int64_t& n, int64_t& c) const {
    if (channels_last) {
      c = i % C;
      n = i / (HxW * C);
    } else {
      const int64_t nc = i / HxW;
      n = nc / C;
      c = nc % C;
    }
  }
};

struct Sigmoid {
  template <typename S>
  __device__ S operator()(S y) const {
    return S(1) / (S(1) + std::exp(-y));
  }
};

template <typename S>
struct Sums {
  S dy, dy_xc;  // sum dy, sum dy * (x - mean)
};

template <typename S>
__device__ gn::Moments<S> shfl_down(const gn::Moments<S>& m, int d) {
  return {cuda::shfl_down(m.count, d), cuda::shfl_down(m.mean, d), cuda::shfl_down(m.m2, d)};
}
template <typename S>
__device__ Sums<S> shfl_down(const Sums<S>& s, int d) {
  return {cuda::shfl_down(s.dy, d), cuda::shfl_down(s.dy_xc, d)};
}
struct MergeMoments {
  template <typename S>
  __device__ gn::Moments<S> operator()(const gn::Moments<S>& a, const gn::Moments<S>& b) const {
    return gn::merge(a, b);
  }
};
struct AddSums {
  template <typename S>
  __device__ Sums<S> operator()(const Sums<S>& a, const Sums<S>& b) const {
    return {a.dy + b.dy, a.dy_xc + b.dy_xc};
  }
};
struct ShflDown {
  template <typename V>
  __device__ V operator()(const V& v, int d) const {
    return shfl_down(v, d);
  }
};

// Per-channel affine of (n, c): scale = rstd * weight_c, shift = bias_c (weight and bias in
// the opmath type S, as the statistics).
template <typename T, typename S>
struct ChannelAffine {
  const S* mean;
  const S* rstd;
  const S* weight;
  const S* bias;
  int64_t G, Cg;
  __device__ void get(int64_t n, int64_t c, S& m, S& scale, S& shift) const {
    const int64_t ng = n * G + c / Cg;
    m = mean[ng];
    scale = weight ? rstd[ng] * weight[c] : rstd[ng];
    shift = bias ? bias[c] : S(0);
  }
};

// ---------------------------------------------------------------------------- forward ---

// Block (ng, split) reduces elements [split * chunk, (split + 1) * chunk) of group ng.
template <typename T, typename S>
__global__ void __launch_bounds__(kThreads)
    group_moments_kernel(const T* __restrict__ x, Geometry geo, int64_t chunk, bool vectorized,
                         gn::Moments<S>* __restrict__ partial) {
  const int64_t ng = blockIdx.x;
  const int64_t lo = blockIdx.y * chunk, hi = std::min(geo.D, lo + chunk);
  const T* xg = x + geo.group_base(ng);
  gn::Moments<S> m{0, 0, 0};
  if (vectorized) {  // chunk, run length and stride are multiples of kVec
    for (int64_t j = lo + threadIdx.x * kVec; j < hi; j += int64_t(blockDim.x) * kVec) {
      const auto pack = *reinterpret_cast<const Pack<T, kVec>*>(xg + geo.group_offset(j));
#pragma unroll
      for (int k = 0; k < kVec; ++k) gn::welford_add(m, static_cast<S>(pack.v[k]));
    }
  } else {
    for (int64_t j = lo + threadIdx.x; j < hi; j += blockDim.x)
      gn::welford_add(m, static_cast<S>(xg[geo.group_offset(j)]));
  }
  m = cuda::block_reduce(m, MergeMoments{}, ShflDown{}, gn::Moments<S>{0, 0, 0});
  if (threadIdx.x == 0) partial[ng * gridDim.y + blockIdx.y] = m;
}

template <typename S>
__global__ void group_stats_kernel(const gn::Moments<S>* __restrict__ partial, int64_t groups,
                                   int64_t splits, S eps, S* __restrict__ mean,
                                   S* __restrict__ rstd) {
  for (int64_t ng = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; ng < groups;
       ng += int64_t(gridDim.x) * blockDim.x) {
    gn::Moments<S> m{0, 0, 0};
    for (int64_t s = 0; s < splits; ++s) m = gn::merge(m, partial[ng * splits + s]);
    mean[ng] = m.mean;
    rstd[ng] = gn::rstd_of(m, eps);
  }
}

// out[i] = op(i, a[i], b[i]) over all elements, kVec at a time when `vectorized`.
template <typename T, typename Op>
__global__ void __launch_bounds__(kThreads)
    elementwise_kernel(const T* __restrict__ a, const T* __restrict__ b, T* __restrict__ out,
                       int64_t numel, bool vectorized, Op op) {
  const int64_t step = int64_t(gridDim.x) * blockDim.x;
  int64_t p = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (vectorized) {
    for (; p * kVec < numel; p += step) {
      const auto va = reinterpret_cast<const Pack<T, kVec>*>(a)[p];
      const auto vb = reinterpret_cast<const Pack<T, kVec>*>(b)[p];
      Pack<T, kVec> vo;
#pragma unroll
      for (int k = 0; k < kVec; ++k) vo.v[k] = op(p * kVec + k, va.v[k], vb.v[k]);
      reinterpret_cast<Pack<T, kVec>*>(out)[p] = vo;
    }
  } else {
    for (; p < numel; p += step) out[p] = op(p, a[p], b[p]);
  }
}

template <typename T, typename S, bool kSilu>
struct NormalizeOp {  // a = b = x
  Geometry geo;
  ChannelAffine<T, S> affine;
  __device__ T operator()(int64_t i, T x, T) const {
    int64_t n, c;
    geo.locate(i, n, c);
    S mean, scale, shift;
    affine.get(n, c, mean, scale, shift);
    return static_cast<T>(
        gn::activate<kSilu>(gn::normalize(static_cast<S>(x), mean, scale, shift), Sigmoid{}));
  }
};

template <typename T, typename Op>
void launch_elementwise(const T* a, const T* b, T* out, int64_t numel, const Op& op) {
  const bool vectorized = numel % kVec == 0 && cuda::is_aligned<kVec>(a) &&
                          cuda::is_aligned<kVec>(b) && cuda::is_aligned<kVec>(out);
  const int64_t items = vectorized ? numel / kVec : numel;
  const int64_t max_blocks = int64_t(at::cuda::getCurrentDeviceProperties()->multiProcessorCount) * 16;
  const int64_t blocks = std::max<int64_t>(1, std::min(ceil_div(items, kThreads), max_blocks));
  elementwise_kernel<<<blocks, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(a, b, out, numel,
                                                                               vectorized, op);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

Geometry geometry_of(const GroupNormProblem& p) {
  return {p.N, p.C, p.HxW, p.G, p.C / p.G, p.C / p.G * p.HxW, p.channels_last};
}

template <typename F>
void with_silu(bool silu, const F& f) {
  if (silu) {
    f(std::true_type{});
  } else {
    f(std::false_type{});
  }
}

void forward_cuda(const GroupNormForward& f, double eps, bool silu) {
  const c10::cuda::CUDAGuard device_guard(f.x.device());
  const Geometry geo = geometry_of(f);
  const int64_t groups = f.N * f.G;
  TORCH_CHECK(groups <= std::numeric_limits<int32_t>::max(), "group_norm: CUDA kernels take at "
              "most 2^31 - 1 (sample, group) pairs, got N * num_groups = ", groups);
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  // Several blocks per group when there are too few groups to fill the GPU.
  int64_t splits = std::clamp<int64_t>(ceil_div(4 * sms, groups), 1,
                                       std::max<int64_t>(1, geo.D / (kThreads * kVec * 4)));
  splits = std::min<int64_t>(splits, 65535);
  const int64_t chunk = ceil_div(ceil_div(geo.D, splits), kVec) * kVec;
  splits = ceil_div(geo.D, chunk);
  const auto stream = at::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, f.x.scalar_type(), "group_norm_cuda",
                                  [&] {
    using T = scalar_t;
    using S = at::opmath_type<T>;
    const T* x = f.x.const_data_ptr<T>();
    const bool vectorized = geo.run_length() % kVec == 0 && geo.run_stride() % kVec == 0 &&
                            cuda::is_aligned<kVec>(x);
    at::Tensor partial = at::empty({int64_t(groups * splits * sizeof(gn::Moments<S>))},
                                   f.x.options().dtype(at::kByte));
    auto* partial_ptr = reinterpret_cast<gn::Moments<S>*>(partial.mutable_data_ptr());
    group_moments_kernel<T, S><<<dim3(groups, splits), kThreads, 0, stream>>>(
        x, geo, chunk, vectorized, partial_ptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    group_stats_kernel<S><<<std::min<int64_t>(ceil_div(groups, kThreads), 65535), kThreads, 0,
                            stream>>>(partial_ptr, groups, splits, static_cast<S>(eps),
                                      f.mean.mutable_data_ptr<S>(), f.rstd.mutable_data_ptr<S>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const ChannelAffine<T, S> affine{
        f.mean.const_data_ptr<S>(), f.rstd.const_data_ptr<S>(),
        f.weight.defined() ? f.weight.const_data_ptr<S>() : nullptr,
        f.bias.defined() ? f.bias.const_data_ptr<S>() : nullptr, geo.G, geo.Cg};
    with_silu(silu, [&](auto silu_tag) {
      launch_elementwise(x, x, f.y.mutable_data_ptr<T>(), f.x.numel(),
                         NormalizeOp<T, S, decltype(silu_tag)::value>{geo, affine});
    });
  });
}

// --------------------------------------------------------------------------- backward ---

// NCHW: block (nc, split) sums spatial elements [split * chunk, ...) of row nc.
template <typename T, typename S, bool kSilu>
__global__ void __launch_bounds__(kThreads)
    channel_sums_nchw_kernel(const T* __restrict__ dz, const T* __restrict__ x, Geometry geo,
                             ChannelAffine<T, S> affine, int64_t chunk, bool vectorized,
                             Sums<S>* __restrict__ partial) {
  const int64_t nc = blockIdx.x;
  const int64_t lo = blockIdx.y * chunk, hi = std::min(geo.HxW, lo + chunk);
  S mean, scale, shift;
  affine.get(nc / geo.C, nc % geo.C, mean, scale, shift);
  const T* dz_row = dz + nc * geo.HxW;
  const T* x_row = x + nc * geo.HxW;
  Sums<S> s{0, 0};
  auto add = [&](T dz_v, T x_v) {
    const S xv = static_cast<S>(x_v);
    const S dy = gn::pre_activation_grad<kSilu>(static_cast<S>(dz_v), xv, mean, scale, shift,
                                                Sigmoid{});
    s.dy += dy;
    s.dy_xc += dy * (xv - mean);
  };
  if (vectorized) {
    for (int64_t j = lo + threadIdx.x * kVec; j < hi; j += int64_t(blockDim.x) * kVec) {
      const auto vd = *reinterpret_cast<const Pack<T, kVec>*>(dz_row + j);
      const auto vx = *reinterpret_cast<const Pack<T, kVec>*>(x_row + j);
#pragma unroll
      for (int k = 0; k < kVec; ++k) add(vd.v[k], vx.v[k]);
    }
  } else {
    for (int64_t j = lo + threadIdx.x; j < hi; j += blockDim.x) add(dz_row[j], x_row[j]);
  }
  s = cuda::block_reduce(s, AddSums{}, ShflDown{}, Sums<S>{0, 0});
  if (threadIdx.x == 0) partial[nc * gridDim.y + blockIdx.y] = s;
}

// Channels-last: block (n * channel tiles, split) with 32 x kRows threads; thread x owns one
// channel (coalesced across the warp) and walks rows y, y + kRows, ... of the split.
constexpr int kTileChannels = 32, kRows = 8;

template <typename T, typename S, bool kSilu>
__global__ void __launch_bounds__(kTileChannels * kRows)
    channel_sums_channels_last_kernel(const T* __restrict__ dz, const T* __restrict__ x,
                                      Geometry geo, ChannelAffine<T, S> affine, int64_t chunk,
                                      Sums<S>* __restrict__ partial) {
  __shared__ Sums<S> tile[kRows][kTileChannels + 1];
  const int64_t tiles = ceil_div(geo.C, kTileChannels);
  const int64_t n = blockIdx.x / tiles;
  const int64_t c = (blockIdx.x % tiles) * kTileChannels + threadIdx.x;
  const int64_t lo = blockIdx.y * chunk, hi = std::min(geo.HxW, lo + chunk);
  Sums<S> s{0, 0};
  if (c < geo.C) {
    S mean, scale, shift;
    affine.get(n, c, mean, scale, shift);
    for (int64_t r = lo + threadIdx.y; r < hi; r += kRows) {
      const int64_t i = (n * geo.HxW + r) * geo.C + c;
      const S xv = static_cast<S>(x[i]);
      const S dy = gn::pre_activation_grad<kSilu>(static_cast<S>(dz[i]), xv, mean, scale, shift,
                                                  Sigmoid{});
      s.dy += dy;
      s.dy_xc += dy * (xv - mean);
    }
  }
  tile[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && c < geo.C) {
    for (int r = 1; r < kRows; ++r) s = AddSums{}(s, tile[r][threadIdx.x]);
    partial[(n * geo.C + c) * gridDim.y + blockIdx.y] = s;
  }
}

// Per (n, g): totals per (n, c) (kept for the weight gradient) and the input-gradient
// coefficients of the group.
template <typename T, typename S>
__global__ void input_grad_coefs_kernel(const Sums<S>* __restrict__ partial, int64_t splits,
                                        Geometry geo, const S* __restrict__ rstd,
                                        const S* __restrict__ weight, Sums<S>* __restrict__ totals,
                                        gn::InputGradCoefs<S>* __restrict__ coefs) {
  for (int64_t ng = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; ng < geo.N * geo.G;
       ng += int64_t(gridDim.x) * blockDim.x) {
    const int64_t n = ng / geo.G, c0 = (ng % geo.G) * geo.Cg;
    S gdy = 0, gdy_xhat = 0;
    for (int64_t c = c0; c < c0 + geo.Cg; ++c) {
      Sums<S> t{0, 0};
      for (int64_t s = 0; s < splits; ++s) t = AddSums{}(t, partial[(n * geo.C + c) * splits + s]);
      totals[n * geo.C + c] = t;
      const S w = weight ? weight[c] : S(1);
      gdy += w * t.dy;
      gdy_xhat += w * rstd[ng] * t.dy_xc;
    }
    coefs[ng] = gn::input_grad_coefs(rstd[ng], static_cast<S>(geo.D), gdy, gdy_xhat);
  }
}

template <typename S>
__global__ void param_grads_kernel(const Sums<S>* __restrict__ totals, const S* __restrict__ rstd,
                                   Geometry geo, S* __restrict__ dweight, S* __restrict__ dbias) {
  for (int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; c < geo.C;
       c += int64_t(gridDim.x) * blockDim.x) {
    S dw = 0, db = 0;
    for (int64_t n = 0; n < geo.N; ++n) {
      const Sums<S> t = totals[n * geo.C + c];
      dw += rstd[n * geo.G + c / geo.Cg] * t.dy_xc;
      db += t.dy;
    }
    dweight[c] = dw;
    dbias[c] = db;
  }
}

template <typename T, typename S, bool kSilu>
struct InputGradOp {  // a = dz, b = x
  Geometry geo;
  ChannelAffine<T, S> affine;
  const gn::InputGradCoefs<S>* coefs;
  __device__ T operator()(int64_t i, T dz, T x) const {
    int64_t n, c;
    geo.locate(i, n, c);
    S mean, scale, shift;
    affine.get(n, c, mean, scale, shift);
    const S xv = static_cast<S>(x);
    const S dy = gn::pre_activation_grad<kSilu>(static_cast<S>(dz), xv, mean, scale, shift,
                                                Sigmoid{});
    const auto& k = coefs[n * geo.G + c / geo.Cg];
    return static_cast<T>(gn::input_grad(dy, xv, mean, scale, k.xc_coef, k.bias_coef));
  }
};

void backward_cuda(const GroupNormBackward& b, bool silu) {
  const c10::cuda::CUDAGuard device_guard(b.x.device());
  const Geometry geo = geometry_of(b);
  const int64_t rows = b.N * b.C;
  TORCH_CHECK(rows <= std::numeric_limits<int32_t>::max(), "group_norm_backward: CUDA kernels "
              "take at most 2^31 - 1 (sample, channel) pairs, got N * C = ", rows);
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const auto stream = at::cuda::getCurrentCUDAStream();
  const int64_t blocks_per_split =
      b.channels_last ? b.N * ceil_div(b.C, kTileChannels) : rows;
  // A split should still give each thread several elements: 4 per thread of a block.
  const int64_t per_split = b.channels_last ? kRows * 4 : kThreads * 4;
  int64_t splits = std::clamp<int64_t>(ceil_div(4 * sms, blocks_per_split), 1,
                                       std::max<int64_t>(1, b.HxW / per_split));
  splits = std::min<int64_t>(splits, 65535);
  const int64_t chunk = ceil_div(ceil_div(b.HxW, splits), kVec) * kVec;
  splits = ceil_div(b.HxW, chunk);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, b.x.scalar_type(),
                                  "group_norm_backward_cuda", [&] {
    using T = scalar_t;
    using S = at::opmath_type<T>;
    const T* dz = b.dy.const_data_ptr<T>();
    const T* x = b.x.const_data_ptr<T>();
    const S* rstd_ptr = b.rstd.const_data_ptr<S>();
    const S* weight_ptr = b.weight.defined() ? b.weight.const_data_ptr<S>() : nullptr;
    const ChannelAffine<T, S> affine{b.mean.const_data_ptr<S>(), rstd_ptr, weight_ptr,
                                     b.bias.defined() ? b.bias.const_data_ptr<S>() : nullptr,
                                     geo.G, geo.Cg};
    const auto bytes = [&](int64_t count, size_t size) {
      return at::empty({int64_t(count * size)}, b.x.options().dtype(at::kByte));
    };
    at::Tensor partial = bytes(rows * splits, sizeof(Sums<S>));
    at::Tensor totals = bytes(rows, sizeof(Sums<S>));
    at::Tensor coefs = bytes(b.N * b.G, sizeof(gn::InputGradCoefs<S>));
    auto* partial_ptr = reinterpret_cast<Sums<S>*>(partial.mutable_data_ptr());
    auto* totals_ptr = reinterpret_cast<Sums<S>*>(totals.mutable_data_ptr());
    auto* coefs_ptr = reinterpret_cast<gn::InputGradCoefs<S>*>(coefs.mutable_data_ptr());

    with_silu(silu, [&](auto silu_tag) {
      constexpr bool kSilu = decltype(silu_tag)::value;
      if (b.channels_last) {
        channel_sums_channels_last_kernel<T, S, kSilu>
            <<<dim3(blocks_per_split, splits), dim3(kTileChannels, kRows), 0, stream>>>(
                dz, x, geo, affine, chunk, partial_ptr);
      } else {
        const bool vectorized = b.HxW % kVec == 0 && cuda::is_aligned<kVec>(dz) &&
                                cuda::is_aligned<kVec>(x);
        channel_sums_nchw_kernel<T, S, kSilu><<<dim3(rows, splits), kThreads, 0, stream>>>(
            dz, x, geo, affine, chunk, vectorized, partial_ptr);
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      input_grad_coefs_kernel<T, S>
          <<<std::min<int64_t>(ceil_div(b.N * b.G, kThreads), 65535), kThreads, 0, stream>>>(
              partial_ptr, splits, geo, rstd_ptr, weight_ptr, totals_ptr, coefs_ptr);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      launch_elementwise(dz, x, b.dx.mutable_data_ptr<T>(), b.x.numel(),
                         InputGradOp<T, S, kSilu>{geo, affine, coefs_ptr});
    });
    param_grads_kernel<S>
        <<<std::min<int64_t>(ceil_div(b.C, kThreads), 65535), kThreads, 0, stream>>>(
            totals_ptr, rstd_ptr, geo, b.dweight.mutable_data_ptr<S>(),
            b.dbias.mutable_data_ptr<S>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

const GroupNormKernels& cuda_kernels() {
  static const GroupNormKernels kernels{&forward_cuda, &backward_cuda};
  return kernels;
}

}  // namespace

TORCH_LIBRARY_IMPL(pynotes, CUDA, m) { register_group_norm_ops<cuda_kernels>(m); }

}  // namespace pynotes
