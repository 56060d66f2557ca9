#pragma once
// The formulas of histogram gradient boosting (XGBoost's second-order objective), written
// once for the CPU and CUDA kernels. With G, H the sums of gradients and hessians of a node
// and lambda, gamma the regularization:
//   leaf weight  w* = -G / (H + lambda)
//   split gain   1/2 [G_L^2 / (H_L + lambda) + G_R^2 / (H_R + lambda) - G^2 / (H + lambda)] - gamma
// A split is allowed when both children have H >= min_child_weight and H > 0.
#include <c10/macros/Macros.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "gbdt/gbdt_kernels.h"

namespace pynotes {
namespace gbdt {

// The bin of x: how many of the cut points (sorted, padded with +inf up to max_cuts) are < x;
// NaN goes to missing_bin.
template <typename T>
C10_HOST_DEVICE inline uint8_t bin_of(T x, const T* cuts, int64_t max_cuts,
                                      int64_t missing_bin) {
  if (x != x) return static_cast<uint8_t>(missing_bin);
  if (max_cuts == 0) return 0;
  // Branch-free lower bound (a conditional move per step, no mispredictions).
  const T* base = cuts;
  for (int64_t n = max_cuts; n > 1; n -= n / 2) base = base[n / 2] < x ? base + n / 2 : base;
  return static_cast<uint8_t>((base - cuts) + (*base < x));
}

C10_HOST_DEVICE inline double score(double g, double h, double reg_lambda) {
  return g * g / (h + reg_lambda);
}

struct Split {
  double gain;
  int64_t bin;
  bool default_left;
  double g_left, h_left;
};

C10_HOST_DEVICE inline Split no_split(double g_total = 0, double h_total = 0) {
  return {-std::numeric_limits<double>::infinity(), -1, false, g_total, h_total};
}

// The best split of one feature's histogram (num_bins x (G, H), the last bin holding the
// missing values): thresholds in increasing order, for each the missing values going right
// first, then left; the first of equal gains wins, so the choice is deterministic.
C10_HOST_DEVICE inline Split best_split_of_feature(const double* hist, int64_t num_bins,
                                                   double reg_lambda, double gamma,
                                                   double min_child_weight) {
  const int64_t missing = num_bins - 1;
  double g_total = 0, h_total = 0;
  for (int64_t b = 0; b < num_bins; ++b) {
    g_total += hist[2 * b];
    h_total += hist[2 * b + 1];
  }
  const double g_missing = hist[2 * missing], h_missing = hist[2 * missing + 1];
  const double parent = score(g_total, h_total, reg_lambda);
  Split best = no_split();
  double g_left = 0, h_left = 0;  // values in bins <= b
  for (int64_t b = 0; b < missing; ++b) {
    g_left += hist[2 * b];
    h_left += hist[2 * b + 1];
    for (int left = 0; left < 2; ++left) {
      const double gl = left ? g_left + g_missing : g_left;
      const double hl = left ? h_left + h_missing : h_left;
      const double gr = g_total - gl, hr = h_total - hl;
      if (hl < min_child_weight || hr < min_child_weight || !(hl > 0) || !(hr > 0)) continue;
      const double gain =
          0.5 * (score(gl, hl, reg_lambda) + score(gr, hr, reg_lambda) - parent) - gamma;
      if (gain > best.gain) best = {gain, b, left != 0, gl, hl};
    }
  }
  return best;
}

// The best split of item i = slot * features + feature of a split search (none for a
// feature left out by the mask).
C10_HOST_DEVICE inline Split best_split_of_item(const GbdtBestSplits& a, int64_t i) {
  if (a.feature_mask && !a.feature_mask[i % a.features]) return no_split();
  return best_split_of_feature(a.hist + i * a.num_bins * 2, a.num_bins, a.reg_lambda, a.gamma,
                               a.min_child_weight);
}

// Slot s's best split among its features' best (per_feature[s * features + f]), the first of
// equal gains in feature order, written to the outputs of `a`. Without a split the left sums
// hold the node's totals and the right sums are zero.
C10_HOST_DEVICE inline void write_best_split(const GbdtBestSplits& a, const Split* per_feature,
                                             int64_t s) {
  const int64_t F = a.features, B = a.num_bins;
  int64_t best_f = -1;
  for (int64_t f = 0; f < F; ++f) {
    const Split& c = per_feature[s * F + f];
    if (c.bin >= 0 && (best_f < 0 || c.gain > per_feature[s * F + best_f].gain)) best_f = f;
  }
  double g_total = 0, h_total = 0;  // the node's totals, from feature 0's histogram
  for (int64_t b = 0; F > 0 && b < B; ++b) {
    g_total += a.hist[s * F * B * 2 + 2 * b];
    h_total += a.hist[s * F * B * 2 + 2 * b + 1];
  }
  const Split c = best_f >= 0 ? per_feature[s * F + best_f] : no_split(g_total, h_total);
  a.gain[s] = c.gain;
  a.feature[s] = best_f;
  a.bin[s] = c.bin;
  a.default_left[s] = c.default_left;
  a.left_sum[2 * s] = c.g_left;
  a.left_sum[2 * s + 1] = c.h_left;
  a.right_sum[2 * s] = best_f >= 0 ? g_total - c.g_left : 0.0;
  a.right_sum[2 * s + 1] = best_f >= 0 ? h_total - c.h_left : 0.0;
}

// Whether a row in bin `bin` goes to the left child of a split at split_bin.
C10_HOST_DEVICE inline bool goes_left(int64_t bin, int64_t missing_bin, int64_t split_bin,
                                      bool default_left) {
  return bin == missing_bin ? default_left : bin <= split_bin;
}

// Moves row r one level down (rows in leaves stay) and returns its node.
C10_HOST_DEVICE inline int32_t advance_row(const GbdtAdvance& a, int64_t r) {
  int32_t n = a.node[r];
  const int32_t f = a.split_feature[n];
  if (f >= 0) {
    const bool left = goes_left(a.bins[r * a.features + f], a.missing_bin, a.split_bin[n],
                                a.default_left[n]);
    n = 2 * n + (left ? 1 : 2);
    a.node[r] = n;
  }
  return n;
}

// The leaf a row reaches in one tree of `nodes` entries: raw features (NaN is missing) or
// bins. A split whose children would fall outside the tree counts as a leaf.
template <typename X, typename Th>
C10_HOST_DEVICE inline int64_t leaf_of(const X* row, const int32_t* feature, const Th* threshold,
                                       const bool* default_left, int64_t nodes,
                                       int64_t missing_bin) {
  int64_t n = 0;
  while (feature[n] >= 0 && 2 * n + 2 < nodes) {
    const X v = row[feature[n]];
    bool left;
    if constexpr (std::is_floating_point_v<X>) {
      left = v != v ? default_left[n] : v <= threshold[n];
    } else {
      left = goes_left(v, missing_bin, threshold[n], default_left[n]);
    }
    n = 2 * n + (left ? 1 : 2);
  }
  return n;
}

}  // namespace gbdt
}  // namespace pynotes
