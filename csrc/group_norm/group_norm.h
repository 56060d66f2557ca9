#pragma once
// Group norm math shared by the CPU and CUDA kernels. Each function is a template so the CPU
// kernels run it on at::vec::Vectorized lanes and the CUDA kernels on scalars: the CPU tests
// check the very formulas the GPU runs.
//
// Forward, per (sample n, group g) of D = C/G * spatial elements:
//   mean, rstd = 1 / sqrt(var + eps)   (biased variance, as torch.nn.GroupNorm)
//   y = (x - mean) * scale_c + shift_c,  scale_c = rstd * weight_c,  shift_c = bias_c
//   out = y, or silu(y) = y * sigmoid(y) when fused with SiLU
// Backward, with dy = d out / d y * grad_out and xc = x - mean:
//   grad_bias_c   = sum_n sum dy            grad_weight_c = sum_n rstd * sum dy * xc
//   grad_x = scale_c * dy + coef_xc * xc + coef_0, from two sums over the group (see below).
// Centering on the saved mean keeps every sum free of the cancellation E[x^2] - E[x]^2 (and
// sum(dy*x) - mean*sum(dy)) suffers when |mean| >> std.
#include <c10/macros/Macros.h>

#include <cmath>
#include <cstdint>

namespace pynotes {
namespace group_norm {

// Count, mean and sum of squared deviations (M2) of a set of values.
template <typename T>
struct Moments {
  T count;
  T mean;
  T m2;
};

// Chan et al.'s pairwise merge: exact for any split of the data, so partial moments from a
// SIMD block, a chunk of rows or a CUDA block combine without losing accuracy.
template <typename T>
C10_HOST_DEVICE inline Moments<T> merge(const Moments<T>& a, const Moments<T>& b) {
  if (b.count == T(0)) return a;  // also keeps an infinite mean out of inf * 0
  if (a.count == T(0)) return b;
  const T count = a.count + b.count;
  const T delta = b.mean - a.mean;
  const T b_share = b.count / count;
  return {count, a.mean + delta * b_share, a.m2 + b.m2 + delta * delta * a.count * b_share};
}

// Merge of k sets of `count` values each, given their means and M2s: the mean of the means,
// and M2 = sum of M2s + count * sum (mean_i - mean)^2. One division instead of k.
template <typename T>
C10_HOST_DEVICE inline Moments<T> merge_equal_counts(T count, const T* means, const T* m2s,
                                                     int64_t k) {
  T mean = 0, m2 = 0, spread = 0;
  for (int64_t i = 0; i < k; ++i) mean += means[i];
  mean /= T(k);
  for (int64_t i = 0; i < k; ++i) {
    const T d = means[i] - mean;
    spread += d * d;
    m2 += m2s[i];
  }
  return {count * T(k), mean, m2 + count * spread};
}

// Adds one value (Welford's update), for streaming over elements one at a time.
template <typename T>
C10_HOST_DEVICE inline void welford_add(Moments<T>& m, T x) {
  m.count += T(1);
  const T delta = x - m.mean;
  m.mean += delta / m.count;
  m.m2 += delta * (x - m.mean);
}

template <typename T>
C10_HOST_DEVICE inline T rstd_of(const Moments<T>& m, T eps) {
  const T var = m.count > T(0) ? m.m2 / m.count : T(0);
  return T(1) / std::sqrt((var < T(0) ? T(0) : var) + eps);  // NaN (an inf in x) stays NaN
}

// y before the activation. T is a scalar or a SIMD vector.
template <typename T>
C10_HOST_DEVICE inline T normalize(T x, T mean, T scale, T shift) {
  return (x - mean) * scale + shift;
}

// SiLU and its derivative, given sigmoid(y) (each backend computes exp its own way).
template <typename T>
C10_HOST_DEVICE inline T silu(T y, T sigmoid_y) {
  return y * sigmoid_y;
}
template <typename T>
C10_HOST_DEVICE inline T silu_grad(T y, T sigmoid_y) {
  return sigmoid_y * (T(1) + y * (T(1) - sigmoid_y));
}

// The output: y, or silu(y). `sigmoid` is the backend's (std::exp on the GPU, SIMD exp on
// the CPU).
template <bool kSilu, typename T, typename Sigmoid>
C10_HOST_DEVICE inline T activate(T y, const Sigmoid& sigmoid) {
  if constexpr (kSilu) {
    return silu(y, sigmoid(y));
  } else {
    return y;
  }
}

// dL/dy from dL/dout: through SiLU's derivative (y recomputed from x) when fused.
template <bool kSilu, typename T, typename Sigmoid>
C10_HOST_DEVICE inline T pre_activation_grad(T dout, T x, T mean, T scale, T shift,
                                             const Sigmoid& sigmoid) {
  if constexpr (kSilu) {
    const T y = normalize(x, mean, scale, shift);
    return dout * silu_grad(y, sigmoid(y));
  } else {
    return dout;
  }
}

template <typename T>
C10_HOST_DEVICE inline T input_grad(T dy, T x, T mean, T scale, T xc_coef, T bias_coef) {
  return scale * dy + xc_coef * (x - mean) + bias_coef;
}

// grad_x = scale_c * dy + xc_coef * (x - mean) + bias_coef, where over the group of
// `count` elements sum_gdy = sum_c weight_c * sum dy and sum_gdy_xhat = sum_c weight_c * rstd *
// sum dy * (x - mean).
template <typename T>
struct InputGradCoefs {
  T xc_coef;
  T bias_coef;
};
template <typename T>
C10_HOST_DEVICE inline InputGradCoefs<T> input_grad_coefs(T rstd, T count, T sum_gdy,
                                                          T sum_gdy_xhat) {
  const T s = rstd / count;
  return {-s * rstd * sum_gdy_xhat, -s * sum_gdy};
}

}  // namespace group_norm
}  // namespace pynotes
