// Group norm CPU kernels, compiled once per instruction set (see common/cpu_dispatch.h):
// everything here is defined in namespace pynotes::CPU_CAPABILITY.
//
// Layouts: NCHW, where a group's D = C/G * HxW elements are contiguous, and channels-last
// (N, HxW, C), where a spatial position's C channels are. Work is split into tasks so that
// both layouts use every thread whatever N and G are:
//  - NCHW with many groups: a task per (n, g) computes the moments and then normalizes while
//    the group is still in cache (one read of x from memory);
//  - NCHW with few groups: tasks over (n, c, spatial chunk) for the moments, then again for
//    the output;
//  - channels-last: tasks over (n, chunk of spatial rows), vectorized across channels; a task
//    per sample, or one sample at a time (see RowTasks).
// With SiLU, the backward keeps dy in dx between its two passes (float/double) so the exp runs
// once. Sums are taken in at::opmath_type (float for Half/BFloat16).
#include "group_norm/group_norm_cpu_kernel.h"

#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/core/CPUAllocator.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
#include <immintrin.h>
#endif

#include "common/cpu_vec.h"
#include "group_norm/group_norm.h"

namespace pynotes {
namespace CPU_CAPABILITY {
namespace {

using at::vec::Vectorized;
namespace gn = group_norm;

// Elements handled at once: the size of the float buffers Half/BFloat16 are widened into,
// small enough that a block's second pass reads L1.
constexpr int64_t kBlock = 512;
// Elements a task should touch at least (below this, scheduling costs more than it saves).
constexpr int64_t kMinTaskElements = 1 << 14;

template <typename T>
using acc_t = at::opmath_type<T>;

template <typename T>
constexpr bool kWiden = !std::is_same_v<T, acc_t<T>>;

// Reads T as acc_t: float and double pass through, Half and BFloat16 are widened per block.
template <typename T>
class BlockReader {
 public:
  const acc_t<T>* operator()(const T* p, int64_t n) {
    if constexpr (kWiden<T>) {
      at::vec::convert(p, buf_, n);
      return buf_;
    } else {
      return p;
    }
  }

 private:
  acc_t<T> buf_[kWiden<T> ? kBlock : 1];
};

// Writes acc_t results as T: compute into dest(p), then commit(p, n) narrows them into place.
template <typename T>
class BlockWriter {
 public:
  acc_t<T>* dest(T* p) {
    if constexpr (kWiden<T>) {
      return buf_;
    } else {
      return p;
    }
  }
  void commit(T* p, int64_t n) {
    if constexpr (kWiden<T>) at::vec::convert(buf_, p, n);
  }

 private:
  acc_t<T> buf_[kWiden<T> ? kBlock : 1];
};

template <typename V>
inline typename V::value_type horizontal_sum(const V& v) {
  using S = typename V::value_type;
  alignas(64) S lanes[V::size()];
  v.store(lanes);
  S sum = 0;
  for (int i = 0; i < V::size(); ++i) sum += lanes[i];
  return sum;
}

// A kernel parameter: one value for the whole block (NCHW), held in a register, or one per
// lane (channels-last), loaded next to the data.
template <bool kPerLane, typename V>
class Param {
 public:
  using S = typename V::value_type;
  explicit Param(const S* p) : p_(p), v_(kPerLane ? V(0) : V(*p)) {}
  V at(int64_t i, int64_t k) const {
    if constexpr (kPerLane) {
      return V::loadu(p_ + i, k);
    } else {
      return v_;
    }
  }

 private:
  const S* p_;
  V v_;
};

// body(i, W) for each full vector of [0, n), then body(i, n - i) for the tail: with the
// constant count, partial-load checks fold away in the main loop.
template <int64_t W, typename F>
inline void for_each_vector(int64_t n, const F& body) {
  int64_t i = 0;
  for (; i + W <= n; i += W) body(i, W);
  if (i < n) body(i, n - i);
}

// Non-temporal stores, for outputs larger than the last-level cache: written through the
// write-combining buffers, a line is not read from memory first (write-allocate), so the
// output costs one pass over memory instead of two. stream_fence() before other threads read.
template <typename V>
inline void stream_store(const V& v, typename V::value_type* p) {
  using S = typename V::value_type;
#if defined(CPU_CAPABILITY_AVX512)
  if constexpr (std::is_same_v<S, float>) _mm512_stream_ps(p, v); else _mm512_stream_pd(p, v);
#elif defined(CPU_CAPABILITY_AVX2)
  if constexpr (std::is_same_v<S, float>) _mm256_stream_ps(p, v); else _mm256_stream_pd(p, v);
#else
  v.store(p);
#endif
}

inline void stream_fence() {
#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
  _mm_sfence();
#endif
}

// out[i, i + k) = value(i, k) for each vector of [0, n), as for_each_vector. With kStream and
// out aligned to a vector, the full vectors are stored non-temporally. (Not from a partial
// head up to the next aligned address: the head's values would come from the partial-vector
// code, which may differ from the full-vector code in the last bit, as fused multiply-adds are
// formed by the compiler.)
template <bool kStream, typename V, typename F>
inline void store_each_vector(typename V::value_type* out, int64_t n, const F& value) {
  constexpr int64_t W = V::size();
  int64_t i = 0;
  if (kStream && reinterpret_cast<std::uintptr_t>(out) % sizeof(V) == 0) {
    for (; i + W <= n; i += W) stream_store(value(i, W), out + i);
  } else {
    for (; i + W <= n; i += W) value(i, W).store(out + i);
  }
  if (i < n) value(i, n - i).store(out + i, n - i);
}

// Moments of x[0:n] in one pass, by sums of x - x[0] and of its squares: shifted by a value of
// the block, the sums are of size std (not |mean|), so M2 = sum d^2 - (sum d)^2 / n keeps its
// digits even when |mean| >> std (a second pass from L1 cost ~15 % of an in-cache forward).
template <typename S>
gn::Moments<S> block_moments(const S* x, int64_t n) {
  using V = Vectorized<S>;
  constexpr int64_t W = V::size();
  const V shift(x[0]);
  V sum0(0), sum1(0), sq0(0), sq1(0);
  int64_t i = 0;
  for (; i + 2 * W <= n; i += 2 * W) {
    const V d0 = V::loadu(x + i) - shift;
    const V d1 = V::loadu(x + i + W) - shift;
    sum0 = sum0 + d0;
    sum1 = sum1 + d1;
    sq0 = at::vec::fmadd(d0, d0, sq0);
    sq1 = at::vec::fmadd(d1, d1, sq1);
  }
  for (; i < n; i += W) {
    const int64_t k = std::min(W, n - i);
    const V d = V::set(V(0), V::loadu(x + i, k) - shift, k);  // zero the lanes past n
    sum0 = sum0 + d;
    sq0 = at::vec::fmadd(d, d, sq0);
  }
  const S sum = horizontal_sum(sum0 + sum1), sq = horizontal_sum(sq0 + sq1);
  S m2 = sq - sum * (sum / S(n));
  if (m2 < S(0)) m2 = S(0);  // rounding; a NaN (an inf in x) stays NaN, as torch's does
  return {S(n), x[0] + sum / S(n), m2};
}

// The moments of each column of x (rows x C, row-major) in one pass, as block_moments does for
// a block: sums of x - x[0, c] and of their squares, four SIMD columns at a time held in
// registers while walking down `tile` rows, then the next tile; mean[c] and m2[c] out (they
// hold the sums between tiles, so each column's sums run down the rows in order, whatever the
// tile). (The channels-last forward took the mean, then M2, in two passes over its chunk.)
template <typename S>
inline void column_moments(const S* x, int64_t rows, int64_t C, int64_t tile, S* mean, S* m2) {
  using V = Vectorized<S>;
  constexpr int64_t W = V::size();
  std::fill_n(mean, C, S(0));
  std::fill_n(m2, C, S(0));
  for (int64_t r0 = 0; r0 < rows; r0 += tile) {
    const int64_t r1 = std::min(rows, r0 + tile);
    int64_t c = 0;
    for (; c + 4 * W <= C; c += 4 * W) {
      const V shift0 = V::loadu(x + c), shift1 = V::loadu(x + c + W),
              shift2 = V::loadu(x + c + 2 * W), shift3 = V::loadu(x + c + 3 * W);
      V sum0 = V::loadu(mean + c), sum1 = V::loadu(mean + c + W),
        sum2 = V::loadu(mean + c + 2 * W), sum3 = V::loadu(mean + c + 3 * W);
      V sq0 = V::loadu(m2 + c), sq1 = V::loadu(m2 + c + W), sq2 = V::loadu(m2 + c + 2 * W),
        sq3 = V::loadu(m2 + c + 3 * W);
      for (int64_t r = r0; r < r1; ++r) {
        const S* xr = x + r * C + c;
        const V d0 = V::loadu(xr) - shift0, d1 = V::loadu(xr + W) - shift1,
                d2 = V::loadu(xr + 2 * W) - shift2, d3 = V::loadu(xr + 3 * W) - shift3;
        sum0 = sum0 + d0;
        sum1 = sum1 + d1;
        sum2 = sum2 + d2;
        sum3 = sum3 + d3;
        sq0 = at::vec::fmadd(d0, d0, sq0);
        sq1 = at::vec::fmadd(d1, d1, sq1);
        sq2 = at::vec::fmadd(d2, d2, sq2);
        sq3 = at::vec::fmadd(d3, d3, sq3);
      }
      sum0.store(mean + c);
      sum1.store(mean + c + W);
      sum2.store(mean + c + 2 * W);
      sum3.store(mean + c + 3 * W);
      sq0.store(m2 + c);
      sq1.store(m2 + c + W);
      sq2.store(m2 + c + 2 * W);
      sq3.store(m2 + c + 3 * W);
    }
    for (; c < C; c += W) {
      const int64_t k = std::min(W, C - c);
      const V shift = V::loadu(x + c, k);
      V sum = V::loadu(mean + c, k), sq = V::loadu(m2 + c, k);
      for (int64_t r = r0; r < r1; ++r) {
        const V d = V::loadu(x + r * C + c, k) - shift;
        sum = sum + d;
        sq = at::vec::fmadd(d, d, sq);
      }
      sum.store(mean + c, k);
      sq.store(m2 + c, k);
    }
  }
  const V count(static_cast<S>(rows));
  for (int64_t c = 0; c < C; c += W) {
    const int64_t k = std::min(W, C - c);
    const V shift = V::loadu(x + c, k), sum = V::loadu(mean + c, k), sq = V::loadu(m2 + c, k);
    (shift + sum / count).store(mean + c, k);
    // Rounding may leave M2 below 0; a NaN (an inf in x) stays NaN, as torch's does.
    at::vec::maximum(sq - sum * (sum / count), V(0)).store(m2 + c, k);
  }
}

// out[c] = sum over rows r of f(x[r * C + c], c), for c < C: four SIMD columns at a time
// held in registers while walking down the rows (x is rows x C, row-major).
template <typename S, typename F>
inline void column_sums(const S* x, int64_t rows, int64_t C, S* out, const F& f) {
  using V = Vectorized<S>;
  constexpr int64_t W = V::size();
  int64_t c = 0;
  for (; c + 4 * W <= C; c += 4 * W) {
    V acc0(0), acc1(0), acc2(0), acc3(0);
    for (int64_t r = 0; r < rows; ++r) {
      const S* xr = x + r * C + c;
      acc0 = acc0 + f(V::loadu(xr), c, W);
      acc1 = acc1 + f(V::loadu(xr + W), c + W, W);
      acc2 = acc2 + f(V::loadu(xr + 2 * W), c + 2 * W, W);
      acc3 = acc3 + f(V::loadu(xr + 3 * W), c + 3 * W, W);
    }
    acc0.store(out + c);
    acc1.store(out + c + W);
    acc2.store(out + c + 2 * W);
    acc3.store(out + c + 3 * W);
  }
  for (; c < C; c += W) {
    const int64_t k = std::min(W, C - c);
    V acc(0);
    for (int64_t r = 0; r < rows; ++r) acc = acc + f(V::loadu(x + r * C + c, k), c, k);
    acc.store(out + c, k);
  }
}

// y[i] = normalize(x[i]) (then SiLU) for a block.
template <bool kSilu, bool kPerLane, bool kStream, typename S>
inline void normalize_block(const S* x, S* y, int64_t n, const S* mean, const S* scale,
                            const S* shift) {
  using V = Vectorized<S>;
  const Param<kPerLane, V> pmean(mean), pscale(scale), pshift(shift);
  store_each_vector<kStream, V>(y, n, [&](int64_t i, int64_t k) {
    const V out = gn::normalize(V::loadu(x + i, k), pmean.at(i, k), pscale.at(i, k),
                                pshift.at(i, k));
    return gn::activate<kSilu>(out, VecSigmoid{});
  });
}

// y = normalize(x) (then SiLU) for a channels-last chunk x (rows x C, row-major) in cache:
// kCols SIMD columns of channels at a time, their mean, scale and shift held in registers
// while walking down the rows. (Loaded next to x, as normalize_block does per lane, they are
// three loads per vector of x: the L1's load ports, not the stream of x, then bound the pass.)
// With kStream, full vectors on a vector boundary are stored non-temporally; the values are
// the same either way.
template <bool kSilu, bool kStream, typename S>
inline void normalize_columns(const S* x, S* y, int64_t rows, int64_t C, int64_t tile,
                              const S* mean, const S* scale, const S* shift) {
  using V = Vectorized<S>;
  constexpr int64_t W = V::size();
  // Columns whose parameters fit the registers with SiLU's temporaries (16 on AVX2, 32 on
  // AVX-512).
  constexpr int64_t kCols = sizeof(V) >= 64 ? 4 : 2;
  auto value = [](const V& v, const V& m, const V& a, const V& b) {
    return gn::activate<kSilu>(gn::normalize(v, m, a, b), VecSigmoid{});
  };
  auto put = [](const V& v, S* p, int64_t k) {
    if (kStream && k == W && reinterpret_cast<std::uintptr_t>(p) % sizeof(V) == 0) {
      stream_store(v, p);
    } else {
      v.store(p, k);
    }
  };
  for (int64_t r0 = 0; r0 < rows; r0 += tile) {
    const int64_t r1 = std::min(rows, r0 + tile);
    int64_t c = 0;
    for (; c + kCols * W <= C; c += kCols * W) {
      V m[kCols], a[kCols], b[kCols];
      for (int64_t j = 0; j < kCols; ++j) {
        m[j] = V::loadu(mean + c + j * W);
        a[j] = V::loadu(scale + c + j * W);
        b[j] = V::loadu(shift + c + j * W);
      }
      for (int64_t r = r0; r < r1; ++r) {
        for (int64_t j = 0; j < kCols; ++j) {
          const int64_t i = r * C + c + j * W;
          put(value(V::loadu(x + i), m[j], a[j], b[j]), y + i, W);
        }
      }
    }
    for (; c < C; c += W) {
      const int64_t k = std::min(W, C - c);
      const V m = V::loadu(mean + c, k), a = V::loadu(scale + c, k), b = V::loadu(shift + c, k);
      for (int64_t r = r0; r < r1; ++r) {
        put(value(V::loadu(x + r * C + c, k), m, a, b), y + r * C + c, k);
      }
    }
  }
}

// Adds sum dy and sum dy * (x - mean) over a block to sum_dy, sum_dy_xc: one total for the
// block, or (kPerLane) one per lane. Stores dy to dy_out unless it is null.
template <bool kSilu, bool kPerLane, typename S>
inline void grad_sums_block(const S* dz, const S* x, int64_t n, const S* mean, const S* scale,
                            const S* shift, S* sum_dy, S* sum_dy_xc, S* dy_out = nullptr) {
  using V = Vectorized<S>;
  constexpr int64_t W = V::size();
  const Param<kPerLane, V> pmean(mean), pscale(scale), pshift(shift);
  V acc_dy(0), acc_dy_xc(0);
  int64_t i = 0;
  if constexpr (!kPerLane) {  // two vectors per step: two independent add chains
    V acc_dy2(0), acc_dy_xc2(0);
    const V vmean = pmean.at(0, W), vscale = pscale.at(0, W), vshift = pshift.at(0, W);
    for (; i + 2 * W <= n; i += 2 * W) {
      const V x0 = V::loadu(x + i), x1 = V::loadu(x + i + W);
      const V dy0 = gn::pre_activation_grad<kSilu>(V::loadu(dz + i), x0, vmean, vscale, vshift,
                                                   VecSigmoid{});
      const V dy1 = gn::pre_activation_grad<kSilu>(V::loadu(dz + i + W), x1, vmean, vscale,
                                                   vshift, VecSigmoid{});
      if (dy_out) {
        dy0.store(dy_out + i);
        dy1.store(dy_out + i + W);
      }
      acc_dy = acc_dy + dy0;
      acc_dy2 = acc_dy2 + dy1;
      acc_dy_xc = at::vec::fmadd(dy0, x0 - vmean, acc_dy_xc);
      acc_dy_xc2 = at::vec::fmadd(dy1, x1 - vmean, acc_dy_xc2);
    }
    acc_dy = acc_dy + acc_dy2;
    acc_dy_xc = acc_dy_xc + acc_dy_xc2;
  }
  for_each_vector<W>(n - i, [&, i0 = i](int64_t j, int64_t k) {
    const int64_t i = i0 + j;
    const V vmean = pmean.at(i, k);
    const V vx = V::loadu(x + i, k);
    // Lanes past n load dz = 0, so they add nothing.
    const V dy = gn::pre_activation_grad<kSilu>(V::loadu(dz + i, k), vx, vmean, pscale.at(i, k),
                                                pshift.at(i, k), VecSigmoid{});
    if (dy_out) dy.store(dy_out + i, k);
    if constexpr (kPerLane) {
      (V::loadu(sum_dy + i, k) + dy).store(sum_dy + i, k);
      at::vec::fmadd(dy, vx - vmean, V::loadu(sum_dy_xc + i, k)).store(sum_dy_xc + i, k);
    } else {
      acc_dy = acc_dy + dy;
      acc_dy_xc = at::vec::fmadd(dy, vx - vmean, acc_dy_xc);
    }
  });
  if constexpr (!kPerLane) {
    *sum_dy += horizontal_sum(acc_dy);
    *sum_dy_xc += horizontal_sum(acc_dy_xc);
  }
}

// Channels-last: adds the per-channel sums of dy and dy * (x - mean) over `rows` rows of C
// (row-major, contiguous) to sum_dy[c], sum_dy_xc[c]; stores dy to dy_out unless it is null.
// Two SIMD columns at a time, their sums held in registers while walking down the rows (the
// rows stay in L2): per-lane sums in memory (grad_sums_block along each row) cost two loads
// and two stores per vector, which bound the pass on CPUs with one store a cycle (Zen 4's
// 512-bit stores take two). But the walk down the rows reads 2 x rows streams at once, which
// ran at half the speed of the walk along them on a Zen 3 (AVX2). So the kernel does either,
// as measured (GroupNormCpuBackwardArgs::sums_along_rows). Same sums, same order, same bits.
// (The forward's moments, one stream and a second pass in cache, were slower along the rows
// on that Zen 3: they stay in column_sums.)
template <bool kSilu, typename S>
inline void grad_column_sums(const S* dz, const S* x, int64_t rows, int64_t C, const S* mean,
                             const S* scale, const S* shift, S* sum_dy, S* sum_dy_xc,
                             S* dy_out) {
  using V = Vectorized<S>;
  constexpr int64_t W = V::size();
  auto columns = [&](int64_t c, auto vectors, int64_t k) {  // vectors x W columns from c; the
    constexpr int64_t U = decltype(vectors)::value;          // last vector has k lanes
    V vmean[U], vscale[U], vshift[U], acc_dy[U], acc_dy_xc[U];
    for (int64_t u = 0; u < U; ++u) {
      const int64_t lanes = u + 1 < U ? W : k;
      vmean[u] = V::loadu(mean + c + u * W, lanes);
      vscale[u] = V::loadu(scale + c + u * W, lanes);
      vshift[u] = V::loadu(shift + c + u * W, lanes);
      acc_dy[u] = V(0);
      acc_dy_xc[u] = V(0);
    }
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t u = 0; u < U; ++u) {
        const int64_t e = r * C + c + u * W, lanes = u + 1 < U ? W : k;
        const V vx = V::loadu(x + e, lanes);
        // Lanes past C load dz = 0, so they add nothing.
        const V dy = gn::pre_activation_grad<kSilu>(V::loadu(dz + e, lanes), vx, vmean[u],
                                                    vscale[u], vshift[u], VecSigmoid{});
        if (dy_out) dy.store(dy_out + e, lanes);
        acc_dy[u] = acc_dy[u] + dy;
        acc_dy_xc[u] = at::vec::fmadd(dy, vx - vmean[u], acc_dy_xc[u]);
      }
    }
    for (int64_t u = 0; u < U; ++u) {
      const int64_t i = c + u * W, lanes = u + 1 < U ? W : k;
      (V::loadu(sum_dy + i, lanes) + acc_dy[u]).store(sum_dy + i, lanes);
      (V::loadu(sum_dy_xc + i, lanes) + acc_dy_xc[u]).store(sum_dy_xc + i, lanes);
    }
  };
  int64_t c = 0;
  for (; c + 2 * W <= C; c += 2 * W) columns(c, std::integral_constant<int64_t, 2>{}, W);
  for (; c < C; c += W) columns(c, std::integral_constant<int64_t, 1>{}, std::min(W, C - c));
}

// dx[i] = scale * dy + xc_coef * (x - mean) + bias_coef for a block.
template <bool kSilu, bool kPerLane, bool kStream, typename S>
inline void input_grad_block(const S* dz, const S* x, S* dx, int64_t n, const S* mean,
                             const S* scale, const S* shift, const S* xc_coef,
                             const S* bias_coef) {
  using V = Vectorized<S>;
  const Param<kPerLane, V> pmean(mean), pscale(scale), pshift(shift), pxc(xc_coef),
      pbias(bias_coef);
  store_each_vector<kStream, V>(dx, n, [&](int64_t i, int64_t k) {
    const V vmean = pmean.at(i, k);
    const V vscale = pscale.at(i, k);
    const V vx = V::loadu(x + i, k);
    const V dy = gn::pre_activation_grad<kSilu>(V::loadu(dz + i, k), vx, vmean, vscale,
                                                pshift.at(i, k), VecSigmoid{});
    return gn::input_grad(dy, vx, vmean, vscale, pxc.at(i, k), pbias.at(i, k));
  });
}

// Calls f(offset, length) for consecutive blocks of [begin, end): kBlock-sized where T is
// widened through a kBlock buffer, or the whole range at once for float and double.
template <typename T, typename F>
inline void for_each_block(int64_t begin, int64_t end, const F& f) {
  const int64_t block = kWiden<T> ? kBlock : std::max<int64_t>(end - begin, 1);
  for (int64_t i = begin; i < end; i += block) f(i, std::min(block, end - i));
}

// Moments of x[begin, end) (T widened as needed), by two passes over L1-sized blocks: 16 KiB
// of float or double (the horizontal sums and the merge per block cost as much as 512
// elements' passes), or the kBlock elements of the widening buffer.
template <typename T>
inline gn::Moments<acc_t<T>> range_moments(BlockReader<T>& rd, const T* x, int64_t begin,
                                           int64_t end) {
  constexpr int64_t block = kWiden<T> ? kBlock : 16384 / int64_t(sizeof(T));
  gn::Moments<acc_t<T>> m{0, 0, 0};
  for (int64_t off = begin; off < end; off += block) {
    const int64_t len = std::min(block, end - off);
    m = gn::merge(m, block_moments(rd(x + off, len), len));
  }
  return m;
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// n values of S that the tasks initialize themselves, from torch's CPU allocator (pynotes.memory's
// cache when enabled) and not zeroed: a std::vector of the channels-last backward's per-task
// sums (1/32 of x at C = 512) cost 1.3 ms of page faults and zeroing on one thread in a 7 ms
// backward.
template <typename S>
class TaskScratch {
 public:
  explicit TaskScratch(int64_t n) : data_(c10::GetCPUAllocator()->allocate(n * sizeof(S))) {}
  S* data() const { return static_cast<S*>(data_.get()); }

 private:
  at::DataPtr data_;
};

// NCHW with few groups: a task per (n, c, chunk of the channel's spatial extent), with enough
// tasks for every thread. Task t covers spatial [lo(t), hi(t)) of row (n * C + c) = row(t).
struct ChannelChunks {
  int64_t HxW, chunk, chunks, tasks;
  ChannelChunks(int64_t N, int64_t C, int64_t HxW_) : HxW(HxW_) {
    chunk = std::max(kMinTaskElements, ceil_div(N * C * HxW, int64_t(8) * at::get_num_threads()));
    chunks = ceil_div(HxW, chunk);
    tasks = N * C * chunks;
  }
  int64_t row(int64_t t) const { return t / chunks; }
  int64_t lo(int64_t t) const { return (t % chunks) * chunk; }
  int64_t hi(int64_t t) const { return std::min(HxW, lo(t) + chunk); }
};

// NCHW: a task per (n, g), done in cache, when there are enough groups to share out evenly.
inline bool task_per_group(int64_t groups) { return groups >= 4 * at::get_num_threads(); }

// Per-channel affine: scale = rstd * weight_c, shift = bias_c (weight and bias in acc_t).
template <typename T>
struct Affine {
  const acc_t<T>* weight;
  const acc_t<T>* bias;
  acc_t<T> scale(int64_t c, acc_t<T> rstd) const { return weight ? rstd * weight[c] : rstd; }
  acc_t<T> shift(int64_t c) const { return bias ? bias[c] : acc_t<T>(0); }
};

// ---------------------------------------------------------------------------- forward ---

template <typename T, bool kSilu, bool kStream>
void forward_nchw(const GroupNormCpuForwardArgs& a) {
  using S = acc_t<T>;
  const int64_t Cg = a.C / a.G, D = Cg * a.HxW, HxW = a.HxW, groups = a.N * a.G;
  const T* x = static_cast<const T*>(a.x);
  T* y = static_cast<T*>(a.y);
  S* mean_out = static_cast<S*>(a.mean);
  S* rstd_out = static_cast<S*>(a.rstd);
  const Affine<T> affine{static_cast<const S*>(a.weight), static_cast<const S*>(a.bias)};
  const S eps = static_cast<S>(a.eps);

  // Normalizes channel c's spatial elements [begin, end) of sample n.
  auto normalize_channel = [&](BlockReader<T>& rd, BlockWriter<T>& wr, int64_t n, int64_t c,
                               int64_t begin, int64_t end) {
    const int64_t ng = n * a.G + c / Cg;
    const S mean = mean_out[ng], scale = affine.scale(c, rstd_out[ng]), shift = affine.shift(c);
    const int64_t base = (n * a.C + c) * HxW;
    for_each_block<T>(begin, end, [&](int64_t off, int64_t len) {
      normalize_block<kSilu, false, kStream>(rd(x + base + off, len), wr.dest(y + base + off),
                                             len, &mean, &scale, &shift);
      wr.commit(y + base + off, len);
    });
  };

  if (task_per_group(groups)) {
    at::parallel_for(0, groups, 1, [&](int64_t begin, int64_t end) {
      BlockReader<T> rd;
      BlockWriter<T> wr;
      for (int64_t ng = begin; ng < end; ++ng) {
        const gn::Moments<S> m = range_moments(rd, x + ng * D, 0, D);
        mean_out[ng] = m.mean;
        rstd_out[ng] = gn::rstd_of(m, eps);
        const int64_t n = ng / a.G, c0 = (ng % a.G) * Cg;
        for (int64_t c = c0; c < c0 + Cg; ++c) normalize_channel(rd, wr, n, c, 0, HxW);
      }
      if (kStream) stream_fence();
    });
    return;
  }

  // Few groups: split each channel's spatial extent into chunks, one task each.
  const ChannelChunks cc(a.N, a.C, HxW);
  std::vector<gn::Moments<S>> partial(cc.tasks);
  at::parallel_for(0, cc.tasks, 1, [&](int64_t begin, int64_t end) {
    BlockReader<T> rd;
    for (int64_t t = begin; t < end; ++t) {
      partial[t] = range_moments(rd, x + cc.row(t) * HxW, cc.lo(t), cc.hi(t));
    }
  });
  for (int64_t ng = 0; ng < groups; ++ng) {
    gn::Moments<S> m{0, 0, 0};
    for (int64_t t = ng * Cg * cc.chunks; t < (ng + 1) * Cg * cc.chunks; ++t)
      m = gn::merge(m, partial[t]);
    mean_out[ng] = m.mean;
    rstd_out[ng] = gn::rstd_of(m, eps);
  }
  at::parallel_for(0, cc.tasks, 1, [&](int64_t begin, int64_t end) {
    BlockReader<T> rd;
    BlockWriter<T> wr;
    for (int64_t t = begin; t < end; ++t) {
      normalize_channel(rd, wr, cc.row(t) / a.C, cc.row(t) % a.C, cc.lo(t), cc.hi(t));
    }
    if (kStream) stream_fence();
  });
}

// Channels-last work: a task per sample when there are enough samples for every thread;
// otherwise one sample at a time, its rows split over the threads, so that between the two
// passes over a sample only that sample (not the whole batch) has to stay in cache.
// Either way a task covers rows [lo, hi) of one sample, in chunks of about kMinTaskElements.
struct RowTasks {
  bool per_sample;
  int64_t rows_per_task, tasks_per_sample;
  RowTasks(int64_t N, int64_t HxW, int64_t C) {
    const int64_t threads = at::get_num_threads();
    per_sample = N >= 4 * threads;
    rows_per_task = std::max<int64_t>(1, kMinTaskElements / std::max<int64_t>(C, 1));
    if (!per_sample) rows_per_task = std::min(rows_per_task, ceil_div(HxW, 4 * threads));
    rows_per_task = std::max<int64_t>(1, rows_per_task);
    tasks_per_sample = ceil_div(HxW, rows_per_task);
  }

  // first(t) for each task t of each sample, then finish(n), then second(t) for its tasks, in
  // the reverse order: what `first` read last is what the cache still holds. (Zen 4, forward,
  // 32 MB tensors, at the edge of its 32 MB L3: 1.02-1.05x from the order alone, in six
  // same-process comparisons; no change beyond +-3 % at 64-128 MB or in the backward.)
  template <typename Init, typename First, typename Finish, typename Second>
  void run(int64_t N, const Init& init, const First& first, const Finish& finish,
           const Second& second) const {
    if (per_sample) {
      at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
        auto scratch = init();
        for (int64_t n = begin; n < end; ++n) {
          for (int64_t t = n * tasks_per_sample; t < (n + 1) * tasks_per_sample; ++t)
            first(t, scratch);
          finish(n);
          for (int64_t t = (n + 1) * tasks_per_sample; t-- > n * tasks_per_sample;) {
            second(t, scratch);
          }
        }
      });
      return;
    }
    for (int64_t n = 0; n < N; ++n) {
      const int64_t t0 = n * tasks_per_sample, t1 = t0 + tasks_per_sample;
      at::parallel_for(t0, t1, 1, [&](int64_t begin, int64_t end) {
        auto scratch = init();
        for (int64_t t = begin; t < end; ++t) first(t, scratch);
      });
      finish(n);
      at::parallel_for(t0, t1, 1, [&](int64_t begin, int64_t end) {
        auto scratch = init();
        for (int64_t t = end; t-- > begin;) second(t, scratch);
      });
    }
  }
};

template <typename T, bool kSilu, bool kStream>
void forward_channels_last(const GroupNormCpuForwardArgs& a) {
  using S = acc_t<T>;
  const int64_t N = a.N, C = a.C, G = a.G, Cg = C / G, HxW = a.HxW;
  const T* x = static_cast<const T*>(a.x);
  T* y = static_cast<T*>(a.y);
  S* mean_out = static_cast<S*>(a.mean);
  S* rstd_out = static_cast<S*>(a.rstd);
  const Affine<T> affine{static_cast<const S*>(a.weight), static_cast<const S*>(a.bias)};
  const RowTasks rt(N, HxW, C);
  std::vector<gn::Moments<S>> partial(N * rt.tasks_per_sample * G);
  std::vector<S> mean_c(N * C), scale_c(N * C), shift_c(N * C);  // per (n, c), for normalize
  // How the passes walk a task's rows (a.by_columns, measured by the caller for float32/float64):
  // down columns of channels, a tile of rows at a time, with the moments' sums and the
  // normalize parameters in registers, one pass each; or along the rows, where the moments walk
  // a chunk down its columns twice (the second time from L2) and, beyond the cache, first
  // prefetch the next chunk in memory order, and the normalize goes row by row. For Half and
  // BFloat16 (their rows widened, then normalized along the rows) a rule decides: down columns
  // where the samples re-read between the two passes fit in half the last-level cache and a row
  // is short (C * sizeof(S) <= 512 bytes). (Zen 4, float32, against torch in the same run: C
  // 64-128 in cache, 8-16 MB, 1.16-1.62x where the row walks gave 0.85-1.02x; beyond the cache,
  // 32-128 MB, the prefetch took 0.96-1.08x to 1.00-1.16x.)
  const int64_t resident = (rt.per_sample ? std::min<int64_t>(N, at::get_num_threads()) : 1) *
                           HxW * C * static_cast<int64_t>(sizeof(T));
  const bool fits = 2 * resident <= last_level_cache_bytes();
  const bool by_columns =
      a.by_columns >= 0 ? a.by_columns == 1 : fits && C * sizeof(S) <= 512;
  // Rows a column walk goes down before it moves to the next columns: 16 KB of them, half of
  // the smallest L1 data cache of a CPU with AVX2, so that a tile's lines, a row's length apart,
  // stay in L1 however long the rows are.
  const int64_t tile = std::max<int64_t>(1, 16384 / (C * static_cast<int64_t>(sizeof(S))));

  // Scratch of one thread: per-channel mean and M2, Half/BFloat16 rows widened to float.
  struct Scratch {
    std::vector<S> mean, m2, widened;
    BlockReader<T> rd;
    BlockWriter<T> wr;
  };
  auto make_scratch = [&] {
    return Scratch{std::vector<S>(C), std::vector<S>(C),
                   std::vector<S>(kWiden<T> ? rt.rows_per_task * C : 0), {}, {}};
  };
  auto rows_of = [&](int64_t t, int64_t& n, int64_t& lo, int64_t& rows) {
    n = t / rt.tasks_per_sample;
    lo = (t % rt.tasks_per_sample) * rt.rows_per_task;
    rows = std::min(HxW, lo + rt.rows_per_task) - lo;
  };
  // Task t's per-group moments: per-channel moments of its rows, merged.
  auto chunk_moments = [&](int64_t t, Scratch& sc) {
    int64_t n, lo, rows;
    rows_of(t, n, lo, rows);
    const T* chunk = x + (n * HxW + lo) * C;  // rows x C, contiguous
    const S* xs;
    if constexpr (kWiden<T>) {
      at::vec::convert(chunk, sc.widened.data(), rows * C);
      xs = sc.widened.data();
    } else {
      xs = chunk;
    }
    if (by_columns) {
      column_moments(xs, rows, C, tile, sc.mean.data(), sc.m2.data());
    } else {
      if (!fits) {  // the next chunk in memory order, fetched while this one is walked
        const char* next = reinterpret_cast<const char*>(chunk + rows * C);
        const int64_t ahead = std::min<int64_t>(rows * C, x + N * HxW * C - (chunk + rows * C));
        for (int64_t b = 0; b < ahead * static_cast<int64_t>(sizeof(T)); b += 64) {
          __builtin_prefetch(next + b, 0, 2);
        }
      }
      using V = Vectorized<S>;
      column_sums(xs, rows, C, sc.mean.data(), [](const V& v, int64_t, int64_t) { return v; });
      for (int64_t c = 0; c < C; ++c) sc.mean[c] /= S(rows);
      column_sums(xs, rows, C, sc.m2.data(), [&](const V& v, int64_t c, int64_t k) {
        const V d = v - V::loadu(sc.mean.data() + c, k);
        return d * d;
      });
    }
    for (int64_t g = 0; g < G; ++g) {
      partial[t * G + g] =
          gn::merge_equal_counts(S(rows), sc.mean.data() + g * Cg, sc.m2.data() + g * Cg, Cg);
    }
  };
  // Sample n's statistics from its tasks' moments, and its per-channel mean / scale / shift.
  auto finish_sample = [&](int64_t n) {
    for (int64_t g = 0; g < G; ++g) {
      gn::Moments<S> m{0, 0, 0};
      for (int64_t t = n * rt.tasks_per_sample; t < (n + 1) * rt.tasks_per_sample; ++t)
        m = gn::merge(m, partial[t * G + g]);
      const S rstd = gn::rstd_of(m, static_cast<S>(a.eps));
      mean_out[n * G + g] = m.mean;
      rstd_out[n * G + g] = rstd;
      for (int64_t c = g * Cg; c < (g + 1) * Cg; ++c) {
        mean_c[n * C + c] = m.mean;
        scale_c[n * C + c] = affine.scale(c, rstd);
        shift_c[n * C + c] = affine.shift(c);
      }
    }
  };
  auto normalize_rows = [&](int64_t t, Scratch& sc) {
    int64_t n, lo, rows;
    rows_of(t, n, lo, rows);
    if constexpr (!kWiden<T>) {
      if (by_columns) {
        const int64_t base = (n * HxW + lo) * C;
        normalize_columns<kSilu, kStream>(x + base, y + base, rows, C, tile, mean_c.data() + n * C,
                                          scale_c.data() + n * C, shift_c.data() + n * C);
        if (kStream) stream_fence();
        return;
      }
    }
    for (int64_t r = lo; r < lo + rows; ++r) {
      const int64_t base = (n * HxW + r) * C;
      for_each_block<T>(0, C, [&](int64_t off, int64_t len) {
        const int64_t p = n * C + off;
        normalize_block<kSilu, true, kStream>(sc.rd(x + base + off, len),
                                              sc.wr.dest(y + base + off), len, mean_c.data() + p,
                                              scale_c.data() + p, shift_c.data() + p);
        sc.wr.commit(y + base + off, len);
      });
    }
    if (kStream) stream_fence();
  };
  rt.run(N, make_scratch, chunk_moments, finish_sample, normalize_rows);
}

// --------------------------------------------------------------------------- backward ---

// The backward from per-(n, c) sums: sum_dy[n, c] = sum dy, sum_dy_xc[n, c] = sum dy * (x -
// mean). group_coefs: the input-gradient coefficients of group ng; param_grads: dweight, dbias.
template <typename T>
gn::InputGradCoefs<acc_t<T>> group_coefs(const GroupNormCpuBackwardArgs& a, int64_t ng,
                                         const acc_t<T>* sum_dy, const acc_t<T>* sum_dy_xc) {
  using S = acc_t<T>;
  const int64_t Cg = a.C / a.G;
  const S rstd = static_cast<const S*>(a.rstd)[ng];
  const S* weight = static_cast<const S*>(a.weight);
  S gdy = 0, gdy_xhat = 0;
  for (int64_t c = (ng % a.G) * Cg; c < (ng % a.G + 1) * Cg; ++c) {
    const S w = weight ? weight[c] : S(1);
    const int64_t nc = (ng / a.G) * a.C + c;
    gdy += w * sum_dy[nc];
    gdy_xhat += w * rstd * sum_dy_xc[nc];
  }
  return gn::input_grad_coefs(rstd, S(Cg * a.HxW), gdy, gdy_xhat);
}

template <typename T>
void param_grads(const GroupNormCpuBackwardArgs& a, const acc_t<T>* sum_dy,
                 const acc_t<T>* sum_dy_xc) {
  using S = acc_t<T>;
  const int64_t C = a.C, G = a.G, Cg = C / G;
  const S* rstd = static_cast<const S*>(a.rstd);
  S* dweight = static_cast<S*>(a.dweight);
  S* dbias = static_cast<S*>(a.dbias);
  for (int64_t c = 0; c < C; ++c) {
    S dw = 0, db = 0;
    for (int64_t n = 0; n < a.N; ++n) {
      dw += rstd[n * G + c / Cg] * sum_dy_xc[n * C + c];
      db += sum_dy[n * C + c];
    }
    dweight[c] = dw;
    dbias[c] = db;
  }
}

template <typename T, bool kSilu, bool kStream>
void backward_nchw(const GroupNormCpuBackwardArgs& a) {
  using S = acc_t<T>;
  const int64_t C = a.C, G = a.G, Cg = C / G, HxW = a.HxW, groups = a.N * G;
  const T* dz = static_cast<const T*>(a.dy);
  const T* x = static_cast<const T*>(a.x);
  T* dx = static_cast<T*>(a.dx);
  const S* mean = static_cast<const S*>(a.mean);
  const S* rstd = static_cast<const S*>(a.rstd);
  const Affine<T> affine{static_cast<const S*>(a.weight), static_cast<const S*>(a.bias)};
  std::vector<S> sum_dy(a.N * C, S(0)), sum_dy_xc(a.N * C, S(0));

  // Adds channel c's sums over spatial [begin, end) of sample n to *s_dy, *s_dy_xc; with
  // keep_dy, also leaves dy in dx (read back by channel_input_grad with std::true_type).
  auto channel_sums = [&](BlockReader<T>& rd_dz, BlockReader<T>& rd_x, int64_t n, int64_t c,
                          int64_t begin, int64_t end, S* s_dy, S* s_dy_xc, bool keep_dy) {
    const int64_t ng = n * G + c / Cg, base = (n * C + c) * HxW;
    const S scale = affine.scale(c, rstd[ng]), shift = affine.shift(c);
    for_each_block<T>(begin, end, [&](int64_t off, int64_t len) {
      S* dy_out = nullptr;
      if constexpr (!kWiden<T>) dy_out = keep_dy ? dx + base + off : nullptr;
      grad_sums_block<kSilu, false>(rd_dz(dz + base + off, len), rd_x(x + base + off, len), len,
                                    &mean[ng], &scale, &shift, s_dy, s_dy_xc, dy_out);
    });
  };
  // dx over channel c's spatial [begin, end) of sample n; silu_dy is std::true_type when
  // channel_sums left dy in dx.
  auto channel_input_grad = [&](auto silu_dy, BlockReader<T>& rd_dz, BlockReader<T>& rd_x,
                                BlockWriter<T>& wr, int64_t n, int64_t c, int64_t begin,
                                int64_t end, const gn::InputGradCoefs<S>& k) {
    constexpr bool kDyInDx = decltype(silu_dy)::value;
    const int64_t ng = n * G + c / Cg, base = (n * C + c) * HxW;
    const S scale = affine.scale(c, rstd[ng]), shift = affine.shift(c);
    const T* grad = kDyInDx ? dx : dz;
    for_each_block<T>(begin, end, [&](int64_t off, int64_t len) {
      input_grad_block<kSilu && !kDyInDx, false, kStream>(
          rd_dz(grad + base + off, len), rd_x(x + base + off, len), wr.dest(dx + base + off), len,
          &mean[ng], &scale, &shift, &k.xc_coef, &k.bias_coef);
      wr.commit(dx + base + off, len);
    });
  };
  // With SiLU, dy costs an exp: the per-group path computes it once, keeping it in dx.
  constexpr bool kKeepDy = kSilu && !kWiden<T>;

  if (task_per_group(groups)) {
    // One task per group: its sums, then its input gradient while the group is in cache.
    at::parallel_for(0, groups, 1, [&](int64_t begin, int64_t end) {
      BlockReader<T> rd_dz, rd_x;
      BlockWriter<T> wr;
      for (int64_t ng = begin; ng < end; ++ng) {
        const int64_t n = ng / G, c0 = (ng % G) * Cg;
        for (int64_t c = c0; c < c0 + Cg; ++c) {
          channel_sums(rd_dz, rd_x, n, c, 0, HxW, &sum_dy[n * C + c], &sum_dy_xc[n * C + c],
                       kKeepDy);
        }
        const auto k = group_coefs<T>(a, ng, sum_dy.data(), sum_dy_xc.data());
        for (int64_t c = c0; c < c0 + Cg; ++c) {
          channel_input_grad(std::bool_constant<kKeepDy>{}, rd_dz, rd_x, wr, n, c, 0, HxW, k);
        }
      }
      if (kStream) stream_fence();
    });
    param_grads<T>(a, sum_dy.data(), sum_dy_xc.data());
    return;
  }

  // Few groups: tasks over (n, c, spatial chunk) for the sums, then for the input gradient.
  const ChannelChunks cc(a.N, C, HxW);
  std::vector<S> part_dy(cc.tasks, S(0)), part_dy_xc(cc.tasks, S(0));
  at::parallel_for(0, cc.tasks, 1, [&](int64_t begin, int64_t end) {
    BlockReader<T> rd_dz, rd_x;
    for (int64_t t = begin; t < end; ++t) {
      channel_sums(rd_dz, rd_x, cc.row(t) / C, cc.row(t) % C, cc.lo(t), cc.hi(t), &part_dy[t],
                   &part_dy_xc[t], false);
    }
  });
  for (int64_t t = 0; t < cc.tasks; ++t) {
    sum_dy[cc.row(t)] += part_dy[t];
    sum_dy_xc[cc.row(t)] += part_dy_xc[t];
  }
  param_grads<T>(a, sum_dy.data(), sum_dy_xc.data());
  std::vector<gn::InputGradCoefs<S>> coefs(groups);
  for (int64_t ng = 0; ng < groups; ++ng) {
    coefs[ng] = group_coefs<T>(a, ng, sum_dy.data(), sum_dy_xc.data());
  }
  at::parallel_for(0, cc.tasks, 1, [&](int64_t begin, int64_t end) {
    BlockReader<T> rd_dz, rd_x;
    BlockWriter<T> wr;
    for (int64_t t = begin; t < end; ++t) {
      const int64_t n = cc.row(t) / C, c = cc.row(t) % C;
      channel_input_grad(std::false_type{}, rd_dz, rd_x, wr, n, c, cc.lo(t), cc.hi(t),
                         coefs[n * G + c / Cg]);
    }
    if (kStream) stream_fence();
  });
}

template <typename T, bool kSilu, bool kStream>
void backward_channels_last(const GroupNormCpuBackwardArgs& a) {
  using S = acc_t<T>;
  const int64_t N = a.N, C = a.C, G = a.G, Cg = C / G, HxW = a.HxW;
  const T* dz = static_cast<const T*>(a.dy);
  const T* x = static_cast<const T*>(a.x);
  T* dx = static_cast<T*>(a.dx);
  const S* mean = static_cast<const S*>(a.mean);
  const S* rstd = static_cast<const S*>(a.rstd);
  const Affine<T> affine{static_cast<const S*>(a.weight), static_cast<const S*>(a.bias)};
  const RowTasks rt(N, HxW, C);
  const int64_t tasks = N * rt.tasks_per_sample;

  // Per (n, c): mean / scale / shift (read by lane), the sums, and the input-gradient
  // coefficients of the channel's group.
  std::vector<S> mean_c(N * C), scale_c(N * C), shift_c(N * C);
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t c = 0; c < C; ++c) {
      const int64_t ng = n * G + c / Cg;
      mean_c[n * C + c] = mean[ng];
      scale_c[n * C + c] = affine.scale(c, rstd[ng]);
      shift_c[n * C + c] = affine.shift(c);
    }
  }
  const TaskScratch<S> parts(2 * tasks * C);  // task t's sums at t * C, zeroed by the task
  S* const part_dy = parts.data();
  S* const part_dy_xc = part_dy + tasks * C;
  std::vector<S> sum_dy(N * C, S(0)), sum_dy_xc(N * C, S(0)), xc_coef(N * C), bias_coef(N * C);

  auto for_each_row_block = [&](int64_t t, const auto& f) {  // f(element offset, nc offset, len)
    const int64_t n = t / rt.tasks_per_sample;
    const int64_t lo = (t % rt.tasks_per_sample) * rt.rows_per_task;
    const int64_t hi = std::min(HxW, lo + rt.rows_per_task);
    for (int64_t r = lo; r < hi; ++r) {
      for_each_block<T>(0, C, [&](int64_t off, int64_t len) {
        f((n * HxW + r) * C + off, n * C + off, len);
      });
    }
  };
  // With SiLU, dy costs an exp: a task per sample computes it once, keeping it in dx.
  constexpr bool kKeepDy = kSilu && !kWiden<T>;
  const bool keep_dy = kKeepDy && rt.per_sample;
  struct Scratch {
    BlockReader<T> rd_dz, rd_x;
    BlockWriter<T> wr;
  };
  // Task t's per-channel sums (and dy, left in dx, with keep_dy).
  auto chunk_sums = [&](int64_t t, Scratch& sc) {
    std::fill_n(part_dy + t * C, C, S(0));
    std::fill_n(part_dy_xc + t * C, C, S(0));
    if constexpr (!kWiden<T>) {  // float, double: down the task's rows by columns, or along
      if (!a.sums_along_rows) {  // the rows below
        const int64_t n = t / rt.tasks_per_sample;
        const int64_t lo = (t % rt.tasks_per_sample) * rt.rows_per_task;
        const int64_t rows = std::min(HxW, lo + rt.rows_per_task) - lo, e = (n * HxW + lo) * C;
        grad_column_sums<kSilu>(dz + e, x + e, rows, C, mean_c.data() + n * C,
                                scale_c.data() + n * C, shift_c.data() + n * C,
                                part_dy + t * C, part_dy_xc + t * C,
                                keep_dy ? dx + e : nullptr);
        return;
      }
    }
    for_each_row_block(t, [&](int64_t e, int64_t p, int64_t len) {
      const int64_t off = p % C;
      S* dy_out = nullptr;
      if constexpr (kKeepDy) dy_out = keep_dy ? dx + e : nullptr;
      grad_sums_block<kSilu, true>(sc.rd_dz(dz + e, len), sc.rd_x(x + e, len), len,
                                   mean_c.data() + p, scale_c.data() + p, shift_c.data() + p,
                                   part_dy + t * C + off, part_dy_xc + t * C + off,
                                   dy_out);
    });
  };
  // Sample n's sums from its tasks, and the coefficients of its groups, spread over channels.
  auto finish_sample = [&](int64_t n) {
    for (int64_t t = n * rt.tasks_per_sample; t < (n + 1) * rt.tasks_per_sample; ++t) {
      for (int64_t c = 0; c < C; ++c) {
        sum_dy[n * C + c] += part_dy[t * C + c];
        sum_dy_xc[n * C + c] += part_dy_xc[t * C + c];
      }
    }
    for (int64_t g = 0; g < G; ++g) {
      const auto k = group_coefs<T>(a, n * G + g, sum_dy.data(), sum_dy_xc.data());
      std::fill(xc_coef.begin() + n * C + g * Cg, xc_coef.begin() + n * C + (g + 1) * Cg,
                k.xc_coef);
      std::fill(bias_coef.begin() + n * C + g * Cg, bias_coef.begin() + n * C + (g + 1) * Cg,
                k.bias_coef);
    }
  };
  // With dy kept in dx, the block reads it as is (no SiLU derivative again).
  const auto grad_block = keep_dy ? &input_grad_block<false, true, kStream, S>
                                  : &input_grad_block<kSilu, true, kStream, S>;
  auto input_grad = [&](int64_t t, Scratch& sc) {
    const T* grad = keep_dy ? dx : dz;
    for_each_row_block(t, [&](int64_t e, int64_t p, int64_t len) {
      grad_block(sc.rd_dz(grad + e, len), sc.rd_x(x + e, len), sc.wr.dest(dx + e), len,
                 mean_c.data() + p, scale_c.data() + p, shift_c.data() + p, xc_coef.data() + p,
                 bias_coef.data() + p);
      sc.wr.commit(dx + e, len);
    });
    if (kStream) stream_fence();
  };
  rt.run(N, [] { return Scratch{}; }, chunk_sums, finish_sample, input_grad);
  param_grads<T>(a, sum_dy.data(), sum_dy_xc.data());
}

// The kernel for a layout; run() is overloaded on forward / backward arguments.
template <typename T, bool kSilu>
struct LayoutKernel {
  // Non-temporal stores where asked and the output is written directly (not widened).
  static void run(const GroupNormCpuForwardArgs& a) {
    const bool stream = a.stream_output && !kWiden<T>;
    if (a.channels_last) {
      stream ? forward_channels_last<T, kSilu, true>(a) : forward_channels_last<T, kSilu, false>(a);
    } else {
      stream ? forward_nchw<T, kSilu, true>(a) : forward_nchw<T, kSilu, false>(a);
    }
  }
  static void run(const GroupNormCpuBackwardArgs& a) {
    const bool stream = a.stream_output && !kWiden<T>;
    if (a.channels_last) {
      stream ? backward_channels_last<T, kSilu, true>(a)
             : backward_channels_last<T, kSilu, false>(a);
    } else {
      stream ? backward_nchw<T, kSilu, true>(a) : backward_nchw<T, kSilu, false>(a);
    }
  }
};

// Kernel<T, kSilu>::run(args) for the runtime dtype and SiLU flag.
template <template <typename, bool> class Kernel, typename Args>
void dispatch(const Args& a) {
  switch (a.dtype) {
#define PYNOTES_CASE(scalar_type, T) \
  case c10::ScalarType::scalar_type: \
    return a.silu ? Kernel<T, true>::run(a) : Kernel<T, false>::run(a);
    PYNOTES_CASE(Float, float)
    PYNOTES_CASE(Double, double)
    PYNOTES_CASE(Half, c10::Half)
    PYNOTES_CASE(BFloat16, c10::BFloat16)
#undef PYNOTES_CASE
    default: TORCH_INTERNAL_ASSERT(false, "group_norm CPU kernel: unexpected dtype ", a.dtype);
  }
}

}  // namespace

void group_norm_forward_cpu_kernel(const GroupNormCpuForwardArgs& a) {
  dispatch<LayoutKernel>(a);
}

void group_norm_backward_cpu_kernel(const GroupNormCpuBackwardArgs& a) {
  dispatch<LayoutKernel>(a);
}

}  // namespace CPU_CAPABILITY
}  // namespace pynotes
