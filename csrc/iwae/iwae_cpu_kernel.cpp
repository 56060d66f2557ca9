// IWAE log-sum-exp kernels on CPU, compiled once per instruction set (common/cpu_dispatch.h):
// everything here is in namespace pynotes::CPU_CAPABILITY.
//
// One read of log_w per slice for the bound: a running (max, sum) per SIMD lane, updated a block
// of values at a time (the block's max first, so one rescaling exp per block and one exp per
// value). Reducing over the contiguous last dim, the lanes run along K and are merged at the
// end; otherwise they run along the contiguous inner dim, one slice per lane.
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cmath>
#include <limits>

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

// The weights pass of one lane vector: writes w~ and returns sum w~^2.
template <typename T>
V<T> weights_of(const V<T>& lse, const V<T>& x, T* out, int64_t count) {
  const V<T> w = exp_shifted(x - safe_shift(lse));
  w.store(out, count);
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
  constexpr int64_t L = V<T>::size(), W = kInner;
  const int64_t blocks = (a.inner + W - 1) / W;
  const T* x = static_cast<const T*>(a.log_w);
  const T log_k = std::log(T(a.K));
  at::parallel_for(0, a.outer * blocks, std::max<int64_t>(1, kGrain / (a.K * W)),
                   [&](int64_t begin, int64_t end) {
    Running<T> run[W / L];
    for (int64_t t = begin; t < end; ++t) {
      const int64_t o = t / blocks, j0 = (t % blocks) * W, width = std::min(W, a.inner - j0);
      const T* base = x + o * a.K * a.inner + j0;
      for (int64_t v = 0; v * L < width; ++v) run[v] = Running<T>();
      for (int64_t k = 0; k < a.K; k += kRows) {
        const int64_t rows = std::min(kRows, a.K - k);
        for (int64_t v = 0; v * L < width; ++v) {
          const int64_t n = std::min(L, width - v * L);
          run[v].add(rows, [&](int64_t r) {
            return V<T>::loadu(base + (k + r) * a.inner + v * L, n);
          });
        }
      }
      V<T> lse[W / L], squares[W / L];
      for (int64_t v = 0; v * L < width; ++v) {
        const int64_t n = std::min(L, width - v * L);
        lse[v] = run[v].lse();
        squares[v] = V<T>(T(0));
        (lse[v] - V<T>(log_k)).store(static_cast<T*>(a.bound) + o * a.inner + j0 + v * L, n);
        if (a.lse) lse[v].store(static_cast<T*>(a.lse) + o * a.inner + j0 + v * L, n);
      }
      if (!a.weights) continue;
      T* w = static_cast<T*>(a.weights) + o * a.K * a.inner + j0;
      for (int64_t k = 0; k < a.K; ++k) {
        for (int64_t v = 0; v * L < width; ++v) {
          const int64_t n = std::min(L, width - v * L), at = k * a.inner + v * L;
          squares[v] = squares[v] + weights_of(lse[v], V<T>::loadu(base + at, n), w + at, n);
        }
      }
      for (int64_t v = 0; v * L < width; ++v) {
        ess_of(squares[v]).store(static_cast<T*>(a.ess) + o * a.inner + j0 + v * L,
                                 std::min(L, width - v * L));
      }
    }
  });
}

// Slices along the contiguous last dim (inner == 1): lanes run along K, merged at the end.
template <typename T>
void forward_last(const IwaeForward& a) {
  constexpr int64_t L = V<T>::size();
  const T* x = static_cast<const T*>(a.log_w);
  const T log_k = std::log(T(a.K));
  const T inf = std::numeric_limits<T>::infinity();
  at::parallel_for(0, a.outer, std::max<int64_t>(1, kGrain / a.K), [&](int64_t begin, int64_t end) {
    for (int64_t o = begin; o < end; ++o) {
      const T* row = x + o * a.K;
      Running<T> run;
      int64_t k = 0;
      for (; k + kRows * L <= a.K; k += kRows * L) {
        run.add(kRows, [&](int64_t r) { return V<T>::loadu(row + k + r * L); });
      }
      for (; k < a.K; k += L) {  // the rest, absent lanes -inf (they add nothing)
        T buffer[L];
        std::fill(buffer, buffer + L, -inf);
        std::copy(row + k, row + std::min(a.K, k + L), buffer);
        run.add(1, [&](int64_t) { return V<T>::loadu(buffer); });
      }
      // Merge the lanes: the max of their maxima (NaN wins), then their rescaled sums.
      T lane_max[L], lane_sum[L];
      run.max.store(lane_max);
      run.sum.store(lane_sum);
      T m = -inf;
      for (int64_t l = 0; l < L; ++l) {
        m = std::isnan(lane_max[l]) || lane_max[l] > m ? lane_max[l] : m;
      }
      T s = 0;
      const T shift = iwae::safe_shift(m);
      for (int64_t l = 0; l < L; ++l) s += lane_sum[l] * std::exp(lane_max[l] - shift);
      const T lse = std::isnan(m) ? m : iwae::finish(m, s);
      static_cast<T*>(a.bound)[o] = lse - log_k;
      if (a.lse) static_cast<T*>(a.lse)[o] = lse;
      if (!a.weights) continue;
      T* w = static_cast<T*>(a.weights) + o * a.K;
      V<T> squares(T(0));
      k = 0;
      for (; k + L <= a.K; k += L) {
        squares = squares + weights_of(V<T>(lse), V<T>::loadu(row + k), w + k, L);
      }
      if (k < a.K) {
        T buffer[L];  // absent lanes -inf: weight 0
        std::fill(buffer, buffer + L, -inf);
        std::copy(row + k, row + a.K, buffer);
        squares = squares + weights_of(V<T>(lse), V<T>::loadu(buffer), w + k, a.K - k);
      }
      T q[L];
      squares.store(q);
      T total = 0;
      for (int64_t l = 0; l < L; ++l) total += q[l];
      static_cast<T*>(a.ess)[o] = total == T(0) ? T(0) : T(1) / total;
    }
  });
}

template <typename T>
void backward(const IwaeBackward& a) {
  constexpr int64_t L = V<T>::size();
  const T* x = static_cast<const T*>(a.log_w);
  // lse per slice: given, or the bound + log K.
  const T* bound = static_cast<const T*>(a.lse ? a.lse : a.bound);
  const T* g = static_cast<const T*>(a.grad_bound);
  T* out = static_cast<T*>(a.grad_log_w);
  const T log_k = a.lse ? T(0) : std::log(T(a.K));
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
        const V<T> lse = a.inner == 1 ? V<T>(bound[stat] + log_k)
                                      : V<T>::loadu(bound + stat, n) + V<T>(log_k);
        const V<T> grad = a.inner == 1 ? V<T>(g[stat]) : V<T>::loadu(g + stat, n);
        const V<T> w = exp_shifted(V<T>::loadu(x + r * row_len + i, n) - safe_shift(lse));
        // An all -inf slice: w is 0 and so is the gradient, whatever grad is.
        const V<T> value = V<T>::blendv(w * grad, V<T>(T(0)), w == V<T>(T(0)));
        value.store(out + r * row_len + i, n);
      }
    }
  });
}

}  // namespace

void iwae_forward_cpu_kernel(const IwaeForward& a) {
  const bool f64 = a.dtype == at::kDouble;
  if (a.inner == 1) {
    if (f64) forward_last<double>(a); else forward_last<float>(a);
  } else {
    if (f64) forward_inner<double>(a); else forward_inner<float>(a);
  }
}

void iwae_backward_cpu_kernel(const IwaeBackward& a) {
  if (a.dtype == at::kDouble) backward<double>(a); else backward<float>(a);
}

}  // namespace CPU_CAPABILITY
}  // namespace pynotes
