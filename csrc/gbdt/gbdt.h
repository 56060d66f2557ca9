#pragma once
// The formulas of histogram gradient boosting (XGBoost's second-order objective), written
// once for the CPU and CUDA kernels. With G, H the sums of gradients and hessians of a node
// and lambda, gamma the regularization:
//   leaf weight  w* = -G / (H + lambda)
//   split gain   1/2 [G_L^2 / (H_L + lambda) + G_R^2 / (H_R + lambda) - G^2 / (H + lambda)] - gamma
// A split is allowed when both children have H >= min_child_weight and H > 0.
#include <c10/macros/Macros.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "gbdt/gbdt_kernels.h"

namespace pynotes {
namespace gbdt {

// The deepest tree: a complete tree in heap order has 2^(kMaxDepth + 1) - 1 nodes. The trainer's
// limit too (pynotes.ops.gbdt.MAX_DEPTH, which the tests check against this one).
constexpr int64_t kMaxDepth = 20;

// The fewest rows a CPU task takes (at::parallel_for's grain in the row loops).
constexpr int64_t kRowGrain = 2048;

// Predictions of fewer rows walk each row through many trees at once, on the calling thread,
// and check each node they visit (GbdtPredict::bad_node), so the op may skip checking the
// ensemble again for them.
constexpr int64_t kFewRows = 16;

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

// One feature's histogram in a node, bin by bin: float64 (G, H) pairs.
struct PairBins {
  const double* hist;
  C10_HOST_DEVICE double g(int64_t b) const { return hist[2 * b]; }
  C10_HOST_DEVICE double h(int64_t b) const { return hist[2 * b + 1]; }
};

// The sums (G, H) over every bin of a histogram.
template <typename Bins>
C10_HOST_DEVICE inline void bin_totals(const Bins& hist, int64_t num_bins, double& g_total,
                                       double& h_total) {
  g_total = 0, h_total = 0;
  for (int64_t b = 0; b < num_bins; ++b) {
    g_total += hist.g(b);
    h_total += hist.h(b);
  }
}

// The gain of children (gl, hl) and (gr, hr) of a parent of score `parent`: T is double, or a
// vector of them (the CPU grower's split search), with the same operations in the same order.
template <typename T>
C10_HOST_DEVICE inline T split_gain(T gl, T hl, T gr, T hr, T parent, T reg_lambda, T gamma) {
  return T(0.5) * (gl * gl / (hl + reg_lambda) + gr * gr / (hr + reg_lambda) - parent) - gamma;
}

// Tries the children of a split whose left side holds (g_left, h_left) before the missing
// values: with the missing values right, and (directions == 2) left; keeps the better in best.
C10_HOST_DEVICE inline void try_split(Split& best, int64_t bin, double g_left, double h_left,
                                      double g_missing, double h_missing, int directions,
                                      double g_total, double h_total, double parent,
                                      double reg_lambda, double gamma, double min_child_weight) {
  for (int left = 0; left < directions; ++left) {
    const double gl = left ? g_left + g_missing : g_left;
    const double hl = left ? h_left + h_missing : h_left;
    const double gr = g_total - gl, hr = h_total - hl;
    if (hl < min_child_weight || hr < min_child_weight || !(hl > 0) || !(hr > 0)) continue;
    const double gain = split_gain(gl, hl, gr, hr, parent, reg_lambda, gamma);
    if (gain > best.gain) best = {gain, bin, left != 0, gl, hl};
  }
}

// The best split of one feature's histogram (num_bins bins, the last holding the missing
// values): thresholds in increasing order, for each the missing values going right first,
// then left; the first of equal gains wins, so the choice is deterministic.
template <typename Bins>
C10_HOST_DEVICE inline Split best_split_of_feature(const Bins& hist, int64_t num_bins,
                                                   double reg_lambda, double gamma,
                                                   double min_child_weight) {
  const int64_t missing = num_bins - 1;
  double g_total, h_total;
  bin_totals(hist, num_bins, g_total, h_total);
  const double g_missing = hist.g(missing), h_missing = hist.h(missing);
  // Without missing values both directions give the same children: only "right" is tried.
  const int directions = g_missing == 0 && h_missing == 0 ? 1 : 2;
  const double parent = score(g_total, h_total, reg_lambda);
  Split best = no_split();
  double g_left = 0, h_left = 0;  // values in bins <= b
  for (int64_t b = 0; b < missing; ++b) {
    const double g_bin = hist.g(b), h_bin = hist.h(b);
    g_left += g_bin;
    h_left += h_bin;
    // An empty bin leaves the sums, so the gains, of the bin before: the earlier wins ties.
    if (b > 0 && g_bin == 0 && h_bin == 0) continue;
    try_split(best, b, g_left, h_left, g_missing, h_missing, directions, g_total, h_total,
              parent, reg_lambda, gamma, min_child_weight);
  }
  return best;
}

// Categorical features: a bin per category, and a split sends a set of categories left (the
// missing values go the default way, categories not in the set right). As scikit-learn's
// HistGradientBoosting (and LightGBM): the node's categories with a support of at least
// kCategorySmooth rows (H times the node's rows / H, its rows for a constant hessian) sorted
// by G / (H + kCategorySmooth), ties in bin order, and the best of the splits into a prefix
// of that order and the rest (Fisher 1958: for squared error the best set is such a prefix);
// categories of less support always go right. The left set is a bitset of kCategoryWords
// 32-bit words. The split search is host code only.
constexpr int64_t kCategoryWords = 8;  // 256 bins
constexpr double kCategorySmooth = 10.0;

C10_HOST_DEVICE inline bool in_category_set(const int32_t* words, int64_t bin) {
  return (static_cast<uint32_t>(words[bin >> 5]) >> (bin & 31)) & 1u;
}

// The categories of a histogram with enough support (rows_per_h: the node's rows / H) in
// split order, into order; returns their number.
template <typename Bins>
inline int64_t sorted_categories(const Bins& hist, int64_t num_bins, double rows_per_h,
                                 int64_t* order) {
  double key[256];
  int64_t n = 0;
  for (int64_t b = 0; b < num_bins - 1; ++b) {
    const double g = hist.g(b), h = hist.h(b);
    if (!(h * rows_per_h >= kCategorySmooth)) continue;
    key[b] = g / (h + kCategorySmooth);
    order[n++] = b;
  }
  std::stable_sort(order, order + n, [&](int64_t i, int64_t j) { return key[i] < key[j]; });
  return n;
}

// The best categorical split of one feature's histogram of a node of `rows` rows; its bin is
// the position of the last
// category of the left set in the sorted order (categorical_left_set turns it into the set).
template <typename Bins>
inline Split best_categorical_split(const Bins& hist, int64_t num_bins, int64_t rows,
                                    double reg_lambda, double gamma, double min_child_weight) {
  const int64_t missing = num_bins - 1;
  double g_total, h_total;
  bin_totals(hist, num_bins, g_total, h_total);
  int64_t order[256];
  const int64_t n = sorted_categories(hist, num_bins, rows / h_total, order);
  const double g_missing = hist.g(missing), h_missing = hist.h(missing);
  const int directions = g_missing == 0 && h_missing == 0 ? 1 : 2;
  const double parent = score(g_total, h_total, reg_lambda);
  Split best = no_split();
  double g_left = 0, h_left = 0;  // the categories order[0 .. k]
  for (int64_t k = 0; k < n; ++k) {
    g_left += hist.g(order[k]);
    h_left += hist.h(order[k]);
    try_split(best, k, g_left, h_left, g_missing, h_missing, directions, g_total, h_total,
              parent, reg_lambda, gamma, min_child_weight);
  }
  return best;
}

// The bitset (kCategoryWords words) of the categories a split at sorted position k sends left
// (the histogram and rows of best_categorical_split).
template <typename Bins>
inline void categorical_left_set(const Bins& hist, int64_t num_bins, int64_t rows, int64_t k,
                                 int32_t* words) {
  double g_total, h_total;
  bin_totals(hist, num_bins, g_total, h_total);
  int64_t order[256];
  sorted_categories(hist, num_bins, rows / h_total, order);
  for (int64_t w = 0; w < kCategoryWords; ++w) words[w] = 0;
  for (int64_t i = 0; i <= k; ++i) {
    words[order[i] >> 5] = static_cast<int32_t>(static_cast<uint32_t>(words[order[i] >> 5]) |
                                                (1u << (order[i] & 31)));
  }
}

// The best split of item i = slot * features + feature of a split search (none for a
// feature left out by the mask).
C10_HOST_DEVICE inline Split best_split_of_item(const GbdtBestSplits& a, int64_t i) {
  if (a.feature_mask && !a.feature_mask[i % a.features]) return no_split();
  return best_split_of_feature(PairBins{a.hist + i * a.num_bins * 2}, a.num_bins, a.reg_lambda,
                               a.gamma, a.min_child_weight);
}

// A node's split among its features' best (per_feature[f]): the first of equal gains in
// feature order (feature -1: none), with the right child's sums. Without a split the left
// sums hold the node's totals and the right sums are zero.
struct NodeSplit {
  int64_t feature;
  Split split;
  double g_right, h_right;
};

C10_HOST_DEVICE inline NodeSplit choose_split(const Split* per_feature, int64_t features,
                                              double g_total, double h_total) {
  int64_t best_f = -1;
  for (int64_t f = 0; f < features; ++f) {
    const Split& c = per_feature[f];
    if (c.bin >= 0 && (best_f < 0 || c.gain > per_feature[best_f].gain)) best_f = f;
  }
  if (best_f < 0) return {-1, no_split(g_total, h_total), 0.0, 0.0};
  const Split& c = per_feature[best_f];
  return {best_f, c, g_total - c.g_left, h_total - c.h_left};
}

// Slot s's split (choose_split over per_feature[s * features + f]), written to the outputs
// of `a`; the node's totals come from feature 0's histogram.
C10_HOST_DEVICE inline void write_best_split(const GbdtBestSplits& a, const Split* per_feature,
                                             int64_t s) {
  const int64_t F = a.features, B = a.num_bins;
  double g_total = 0, h_total = 0;
  if (F > 0) bin_totals(PairBins{a.hist + s * F * B * 2}, B, g_total, h_total);
  const NodeSplit c = choose_split(per_feature + s * F, F, g_total, h_total);
  a.gain[s] = c.split.gain;
  a.feature[s] = c.feature;
  a.bin[s] = c.split.bin;
  a.default_left[s] = c.split.default_left;
  a.left_sum[2 * s] = c.split.g_left;
  a.left_sum[2 * s + 1] = c.split.h_left;
  a.right_sum[2 * s] = c.g_right;
  a.right_sum[2 * s + 1] = c.h_right;
}

// Sums over the processes of a data-parallel fit are taken in fixed point: each process's
// values times fixed_point_scale(bound), rounded to int64, where bound >= the number of
// processes times the largest sum of |values| of one process; every process's integers are
// then below 2^62 / processes, and their sum is exact and the same on every process.
inline double fixed_point_scale(double bound) {
  int exponent = 0;
  std::frexp(bound, &exponent);
  return std::ldexp(1.0, 62 - exponent);
}

// Whether a row in bin `bin` goes to the left child of a split at split_bin.
C10_HOST_DEVICE inline bool goes_left(int64_t bin, int64_t missing_bin, int64_t split_bin,
                                      bool default_left) {
  return bin == missing_bin ? default_left : bin <= split_bin;
}

// Whether a row in bin `bin` goes to the left child of a categorical split.
C10_HOST_DEVICE inline bool category_goes_left(int64_t bin, int64_t missing_bin,
                                               const int32_t* words, bool default_left) {
  return bin == missing_bin ? default_left : in_category_set(words, bin);
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

// Whether a row whose value at a split's feature is v goes left: v raw (NaN is missing) with
// a raw threshold, or a bin with a threshold bin.
template <typename X, typename Th>
C10_HOST_DEVICE inline bool value_goes_left(X v, Th threshold, bool default_left,
                                            int64_t missing_bin) {
  if constexpr (std::is_floating_point_v<X>) {
    return v != v ? default_left : v <= threshold;
  } else {
    return goes_left(v, missing_bin, threshold, default_left);
  }
}

// The same for a categorical split: v a category code (NaN, or any value that is not a code of
// the bitset, is missing) or a bin.
template <typename X>
C10_HOST_DEVICE inline bool value_in_category_set(X v, const int32_t* words, bool default_left,
                                                  int64_t missing_bin) {
  if constexpr (std::is_floating_point_v<X>) {
    if (!(v >= 0 && v < 32 * kCategoryWords)) return default_left;  // NaN too
    const int64_t code = static_cast<int64_t>(v);
    return static_cast<X>(code) == v ? in_category_set(words, code) : default_left;
  } else {
    return category_goes_left(v, missing_bin, words, default_left);
  }
}

// The leaf a row reaches in one tree of `nodes` entries: raw features (NaN is missing) or
// bins. A split whose children would fall outside the tree counts as a leaf. categorical (per
// feature) and cat_left (the tree's bitsets, kCategoryWords per node) are both nullptr for a
// tree without categorical splits.
template <typename X, typename Th>
C10_HOST_DEVICE inline int64_t leaf_of(const X* row, const int32_t* feature, const Th* threshold,
                                       const bool* default_left, int64_t nodes,
                                       int64_t missing_bin, const bool* categorical = nullptr,
                                       const int32_t* cat_left = nullptr) {
  int64_t n = 0;
  while (feature[n] >= 0 && 2 * n + 2 < nodes) {
    const int32_t f = feature[n];
    const bool left =
        categorical && categorical[f]
            ? value_in_category_set(row[f], cat_left + n * kCategoryWords, default_left[n],
                                    missing_bin)
            : value_goes_left(row[f], threshold[n], default_left[n], missing_bin);
    n = 2 * n + (left ? 1 : 2);
  }
  return n;
}

}  // namespace gbdt
}  // namespace pynotes
