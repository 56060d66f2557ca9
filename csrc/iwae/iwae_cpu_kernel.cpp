// IWAE log-sum-exp kernels on CPU, compiled once per instruction set (common/cpu_dispatch.h):
// everything here is in namespace pynotes::CPU_CAPABILITY.
//
// One read of log_w per slice for the bound: a running (max, sum) per SIMD lane, updated a block
// of values at a time (the block's max first, so one rescaling exp per block and one exp per
// value). Reducing over the contiguous last dim, the lanes run along K and are merged at the
// end; otherwise they run along the contiguous inner dim, one slice per lane. float16 and
// bfloat16 are widened to float as they are read (common/cpu_vec.h).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "common/cpu_vec.h"
#include "iwae/iwae.h"
#include "iwae/iwae_kernels.h"

namespace pynotes {
namespace CPU_CAPABILITY {
namespace {

using at::vec::Vectorized;

constexpr int64_t kInner = 256;  // slices per task (inner layout): their state stays in L1
constexpr int64_t kRows = 8;     // values per lane between rescalings
constexpr int64_t kGrain = 1 << 14;

template <typename T>
using V = Vectorized<T>;

// exp(d) for d <= 0, -inf or NaN: ATen's fast exp (exactly 0 below the float range), NaN kept.
template <typename T>
V<T> exp_shifted(const V<T>& d) {
  return V<T>::blendv(d.exp_u20(), d, d.isnan());
}

template <typename T>
V<T> safe_shift(const V<T>& m) {
  return V<T>::blendv(m, V<T>(T(0)), m == V<T>(-std::numeric_limits<T>::infinity()));
}

// Running (max, sum) of one lane vector, folding in n vectors of values.
template <typename T>
struct Running {
  V<T> max = V<T>(-std::numeric_limits<T>::infinity());
  V<T> sum = V<T>(T(0));

  template <typename Load>
  void add(int64_t n, const Load& load) {
    V<T> block = load(0);
    for (int64_t r = 1; r < n; ++r) block = at::vec::maximum(block, load(r));
    const V<T> new_max = at::vec::maximum(max, block);
    const V<T> shift = safe_shift(new_max);
    V<T> s = sum * exp_shifted(max - shift);
    for (int64_t r = 0; r < n; ++r) s = s + exp_shifted(load(r) - shift);
    max = new_max;
    sum = s;
  }

  V<T> lse() const {  // per lane
    return V<T>::blendv(max + sum.log(), max,
                        max == V<T>(-std::numeric_limits<T>::infinity()));
  }
};

// The weights pass of one lane vector: writes w~ (as T) and returns sum w~^2.
template <typename T>
OpVec<T> weights_of(const OpVec<T>& lse, const OpVec<T>& x, T* out, int64_t count) {
  const OpVec<T> w = exp_shifted(x - safe_shift(lse));
  store_op(w, out, count);
  return w * w;
}

template <typename T>
V<T> ess_of(const V<T>& squares) {
  return V<T>::blendv(V<T>(T(1)) / squares, V<T>(T(0)), squares == V<T>(T(0)));
}

// Slices along the contiguous inner dim: lane i of a vector is slice (o, j + i). A task keeps
// the running pairs of kInner slices and streams log_w row by row (contiguous reads).
template <typename T>
void forward_inner(const IwaeForward& a) {
  using A = opmath_t<T>;
  constexpr int64_t L = OpVec<T>::size(), W = kInner;
  const int64_t blocks = (a.inner + W - 1) / W;
  const T* x = static_cast<const T*>(a.log_w);
  const A log_k = std::log(A(a.K));
  at::parallel_for(0, a.outer * blocks, std::max<int64_t>(1, kGrain / (a.K * W)),
                   [&](int64_t begin, int64_t end) {
    Running<A> run[W / L];
    for (int64_t t = begin; t < end; ++t) {
      const int64_t o = t / blocks, j0 = (t % blocks) * W, width = std::min(W, a.inner - j0);
      const T* base = x + o * a.K * a.inner + j0;
      for (int64_t v = 0; v * L < width; ++v) run[v] = Running<A>();
      for (int64_t k = 0; k < a.K; k += kRows) {
        const int64_t rows = std::min(kRows, a.K - k);
        for (int64_t v = 0; v * L < width; ++v) {
          const int64_t n = std::min(L, width - v * L);
          run[v].add(rows, [&](int64_t r) { return load_op(base + (k + r) * a.inner + v * L, n); });
        }
      }
      OpVec<T> lse[W / L], squares[W / L];
      for (int64_t v = 0; v * L < width; ++v) {
        const int64_t n = std::min(L, width - v * L);
        lse[v] = run[v].lse();
        squares[v] = OpVec<T>(A(0));
        if (a.bound) {
          store_op(lse[v] - OpVec<T>(log_k),
                   static_cast<T*>(a.bound) + o * a.inner + j0 + v * L, n);
        }
        if (a.lse) lse[v].store(static_cast<A*>(a.lse) + o * a.inner + j0 + v * L, n);
      }
      if (!a.weights) continue;
      T* w = static_cast<T*>(a.weights) + o * a.K * a.inner + j0;
      for (int64_t k = 0; k < a.K; ++k) {
        for (int64_t v = 0; v * L < width; ++v) {
          const int64_t n = std::min(L, width - v * L), at = k * a.inner + v * L;
          squares[v] = squares[v] + weights_of(lse[v], load_op(base + at, n), w + at, n);
        }
      }
      for (int64_t v = 0; v * L < width; ++v) {
        store_op(ess_of(squares[v]), static_cast<T*>(a.ess) + o * a.inner + j0 + v * L,
                 std::min(L, width - v * L));
      }
    }
  });
}

// Slices along the contiguous last dim (inner == 1): lanes run along K, merged at the end.
template <typename T>
void forward_last(const IwaeForward& a) {
  using A = opmath_t<T>;
  constexpr int64_t L = OpVec<T>::size();
  const T* x = static_cast<const T*>(a.log_w);
  const A log_k = std::log(A(a.K));
  const A inf = std::numeric_limits<A>::infinity();
  at::parallel_for(0, a.outer, std::max<int64_t>(1, kGrain / a.K), [&](int64_t begin, int64_t end) {
    for (int64_t o = begin; o < end; ++o) {
      const T* row = x + o * a.K;
      Running<A> run;
      int64_t k = 0;
      for (; k + kRows * L <= a.K; k += kRows * L) {
        run.add(kRows, [&](int64_t r) { return load_op(row + k + r * L); });
      }
      for (; k < a.K; k += L) {  // the rest, absent lanes -inf (they add nothing)
        T buffer[L];
        std::fill(buffer, buffer + L, T(-inf));
        std::copy(row + k, row + std::min(a.K, k + L), buffer);
        run.add(1, [&](int64_t) { return load_op(buffer); });
      }
      // Merge the lanes: the max of their maxima (NaN wins), then their rescaled sums.
      A lane_max[L], lane_sum[L];
      run.max.store(lane_max);
      run.sum.store(lane_sum);
      A m = -inf;
      for (int64_t l = 0; l < L; ++l) {
        m = std::isnan(lane_max[l]) || lane_max[l] > m ? lane_max[l] : m;
      }
      A s = 0;
      const A shift = iwae::safe_shift(m);
      for (int64_t l = 0; l < L; ++l) s += lane_sum[l] * std::exp(lane_max[l] - shift);
      const A lse = std::isnan(m) ? m : iwae::finish(m, s);
      if (a.bound) static_cast<T*>(a.bound)[o] = T(lse - log_k);
      if (a.lse) static_cast<A*>(a.lse)[o] = lse;
      if (!a.weights) continue;
      T* w = static_cast<T*>(a.weights) + o * a.K;
      OpVec<T> squares(A(0));
      k = 0;
      for (; k + L <= a.K; k += L) {
        squares = squares + weights_of(OpVec<T>(lse), load_op(row + k), w + k, L);
      }
      if (k < a.K) {
        T buffer[L];  // absent lanes -inf: weight 0
        std::fill(buffer, buffer + L, T(-inf));
        std::copy(row + k, row + a.K, buffer);
        squares = squares + weights_of(OpVec<T>(lse), load_op(buffer), w + k, a.K - k);
      }
      A q[L];
      squares.store(q);
      A total = 0;
      for (int64_t l = 0; l < L; ++l) total += q[l];
      static_cast<T*>(a.ess)[o] = T(total == A(0) ? A(0) : A(1) / total);
    }
  });
}

template <typename T>
void backward(const IwaeBackward& a) {
  using A = opmath_t<T>;
  constexpr int64_t L = OpVec<T>::size();
  const T* x = static_cast<const T*>(a.log_w);
  // lse per slice: given (in A), or the bound (in T) + log K.
  const A* lse_given = static_cast<const A*>(a.lse);
  const T* bound = static_cast<const T*>(a.bound);
  const T* g = static_cast<const T*>(a.grad_bound);
  T* out = static_cast<T*>(a.grad_log_w);
  const A log_k = std::log(A(a.K));
  const auto lse_of = [&](int64_t stat) {  // one slice's
    return lse_given ? lse_given[stat] : A(bound[stat]) + log_k;
  };
  const auto lse_vec = [&](int64_t stat, int64_t n) {  // n slices'
    return lse_given ? OpVec<T>::loadu(lse_given + stat, n)
                     : load_op(bound + stat, n) + OpVec<T>(log_k);
  };
  // Row (o, k) of `inner` values: grad = exp(x - lse) * g, lse and g broadcast over K.
  const int64_t row_len = a.inner == 1 ? a.K : a.inner;
  const int64_t rows = a.inner == 1 ? a.outer : a.outer * a.K;
  const int64_t grain = std::max<int64_t>(1, kGrain / row_len);
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t o = a.inner == 1 ? r : r / a.K;
      for (int64_t i = 0; i < row_len; i += L) {
        const int64_t n = std::min(L, row_len - i);
        const int64_t stat = a.inner == 1 ? o : o * a.inner + i;  // where lse and g live
        const OpVec<T> lse = a.inner == 1 ? OpVec<T>(lse_of(stat)) : lse_vec(stat, n);
        const OpVec<T> grad = a.inner == 1 ? OpVec<T>(A(g[stat])) : load_op(g + stat, n);
        const OpVec<T> w = exp_shifted(load_op(x + r * row_len + i, n) - safe_shift(lse));
        // An all -inf slice: w is 0 and so is the gradient, whatever grad is.
        const OpVec<T> value = OpVec<T>::blendv(w * grad, OpVec<T>(A(0)), w == OpVec<T>(A(0)));
        store_op(value, out + r * row_len + i, n);
      }
    }
  });
}

}  // namespace

void iwae_forward_cpu_kernel(const IwaeForward& a) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.dtype, "iwae_forward_cpu", [&] {
    if (a.inner == 1) forward_last<scalar_t>(a); else forward_inner<scalar_t>(a);
  });
}

void iwae_backward_cpu_kernel(const IwaeBackward& a) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.dtype, "iwae_backward_cpu",
                                  [&] { backward<scalar_t>(a); });
}

}  // namespace CPU_CAPABILITY
}  // namespace pynotes
