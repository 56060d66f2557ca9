#pragma once
// The kernels of histogram gradient boosting, on raw pointers; the CPU (per-ISA,
// gbdt_cpu_kernel.cpp) and CUDA (gbdt_cuda.cu) kernels implement them and gbdt_ops.cpp calls
// them. Conventions:
// - Binned features are uint8, row-major (rows, features). A feature's values fall in bins
//   0 .. num_bins - 2 (bin b = how many of the feature's cut points are < x, so "bin <= b" is
//   "x <= cut[b]"); NaN falls in the missing bin num_bins - 1.
// - Histograms are float64 (slots, features, num_bins, 2): the sums of gradient and hessian.
// - Trees are complete binary trees in heap order (node n has children 2n + 1 and 2n + 2) of
//   `nodes` = 2^(depth + 1) - 1 entries; a node with feature < 0 is a leaf.
#include <c10/core/ScalarType.h>

#include <cstdint>
#include <functional>

#include "common/cpu_dispatch.h"

namespace pynotes {

// out[r, f] = the bin of x[r, f] given the feature's cut points (cuts is (features, max_cuts),
// padded with +inf; x and cuts have the same floating dtype).
struct GbdtBin {
  c10::ScalarType dtype;
  int64_t rows, features, max_cuts, missing_bin;
  const void* x;
  const void* cuts;
  uint8_t* out;
};

// hist[s, f, bins[r, f]] += (grad[r], hess[r]) for every row whose node has a slot
// s = slot_of_node[node[r]] >= 0 (the nodes of one tree level whose histograms are built).
struct GbdtHistogram {
  c10::ScalarType dtype;  // of grad and hess
  int64_t rows, features, num_bins, num_slots;
  const uint8_t* bins;
  const void* grad;
  const void* hess;
  const int32_t* node;          // (rows)
  const int32_t* slot_of_node;  // (nodes)
  double* hist;  // zeroed by the kernel
};

// Per slot, the split of largest gain over every feature (with feature_mask[f] != 0, or all)
// and threshold bin, the missing bin going right or left; see gbdt.h for the formulas.
struct GbdtBestSplits {
  int64_t num_slots, features, num_bins;
  double reg_lambda, gamma, min_child_weight;
  const double* hist;
  const bool* feature_mask;  // or nullptr
  double* gain;              // -inf where no split is allowed
  int64_t* feature;          // -1 where none
  int64_t* bin;
  bool* default_left;
  double* left_sum;          // (num_slots, 2): G, H of the left child
  double* right_sum;
};

// node[r] moves to the child of its node's split (rows in leaves stay): the tree level step;
// count[n] = the number of rows in node n afterwards.
struct GbdtAdvance {
  int64_t rows, features, missing_bin, nodes;
  const uint8_t* bins;
  const int32_t* split_feature;  // per node, -1 for a leaf
  const int32_t* split_bin;
  const bool* default_left;
  int32_t* node;   // in place
  int64_t* count;  // (nodes)
};

// out[r, group[t]] += value[t, leaf reached by row r in tree t], for raw (floating x, floating
// thresholds) or binned (uint8 x, int32 threshold bins) features.
struct GbdtPredict {
  c10::ScalarType dtype;  // of x: floating, or Byte for bins
  int64_t rows, features, trees, nodes, num_groups, missing_bin;
  const void* x;
  const int32_t* feature;    // (trees, nodes)
  const void* threshold;     // (trees, nodes): x's dtype, or int32 bins
  const bool* default_left;  // (trees, nodes)
  const float* value;        // (trees, nodes)
  const int64_t* group;      // (trees): the output column of each tree
  double* out;               // (rows, num_groups), accumulated into
  // Categorical splits, or both nullptr: per feature whether it is categorical,
  // and per node the bitset of the categories sent left (gbdt.h, value_in_category_set).
  const bool* categorical = nullptr;  // (features)
  const int32_t* cat_left = nullptr;  // (trees, nodes, gbdt::kCategoryWords)
  // Set (CPU, fewer than gbdt::kFewRows rows) when the walk meets a split whose feature is
  // not a column of x or whose children are outside the tree, or a group outside out: the
  // walk stops there, and the op raises.
  bool* bad_node = nullptr;
};

// One tree grown depth-wise to max_depth in one call (the CPU's counterpart of the trainer's
// level loop of histogram, best_splits and advance): per level the best split of every node as
// GbdtBestSplits finds it, a node splitting where that gain is > 0; the rows of the split nodes
// partitioned stably into their children (each node's rows stay contiguous, in row order);
// histograms built for the child of each pair with fewer rows (the left one on a tie) and its
// sibling's taken as the parent's minus it. The outputs come filled for a tree of leaves.
// With quantize_bins > 0 the histograms sum quantized gradients (quantize_gradients in
// tree_grower_cpu_kernel.cpp: integers, stochastically rounded with `seed`) and the leaves' sums
// are renewed from grad and hess; the split nodes' sums are the quantized estimates.
// Data-parallel training (pynotes.gbdt on torch.distributed): each process grows the tree on
// its rows, and a GbdtCollective combines in place what the processes computed apart, giving
// every process the same bits, so that all grow the same tree. Its operations, on a buffer of
// n elements:
enum class GbdtCollectiveOp : int64_t {
  kSum = 0,            // int64, summed over the processes: exact, in any order of addition
  kMax = 1,            // float64, the maximum over the processes
  kReduceScatter = 2,  // int64 in `processes` equal chunks: chunk `rank` summed over the
                       // processes (the other chunks are left as they are)
  kAllGather = 3,      // int64 in `processes` equal chunks: every process's chunk `rank`
  kReduceScatterStart = 4,  // may start the kReduceScatter of this buffer that follows: every
                            // chunk but `rank` is final, chunk `rank` is written until then
};
using GbdtCollective = std::function<void(GbdtCollectiveOp op, void* data, int64_t n)>;

struct GbdtGrowTree {
  c10::ScalarType dtype;  // of grad and hess
  int64_t rows, features, num_bins, max_depth;
  double reg_lambda, gamma, min_child_weight;
  int64_t quantize_bins;  // 0: float64 histograms
  uint64_t seed;
  // The bins one feature after another, (features, rows); or, with bins_by_feature nullptr,
  // bins_by_row: one row after another, (rows, features), where histograms are built a row at
  // a time (row-wise, XGBoost's layout). The trees are the same bits either way.
  const uint8_t* bins_by_feature;
  const void* grad;
  const void* hess;
  const bool* feature_mask;  // or nullptr
  int32_t* feature;          // (nodes): the split feature, -1 for a leaf
  int32_t* split_bin;        // (nodes)
  bool* default_left;        // (nodes)
  double* gain;              // (nodes): the split's gain, 0 for a leaf
  double* sums;              // (nodes, 2): G, H of every node the tree reaches
  int32_t* leaf;             // (rows): the leaf each row ends in
  // Categorical features (or nullptr): their splits send a set of bins left (gbdt.h,
  // best_categorical_split), written to cat_left; their split_bin is 0.
  const bool* categorical;   // (features)
  int32_t* cat_left;         // (nodes, gbdt::kCategoryWords), zero for other nodes
  // Process `rank` of `processes` in a data-parallel fit (or nullptr), as LightGBM's
  // data-parallel learner: each process owns a block of the features. Per tree one kMax of the
  // gradients' sizes; per level one kReduceScatter of the histograms built (float64 sums in
  // fixed point, gbdt.h), which leaves each process the sums of its own features, with the
  // nodes' totals and row counts; then one kAllGather of each process's best split per node;
  // with quantized gradients one kSum of the leaves' renewed sums. row_offset (this process's
  // first row of all) seeds the rounding.
  const GbdtCollective* collective = nullptr;
  int64_t processes = 1;
  int64_t rank = 0;
  int64_t row_offset = 0;
  const uint8_t* bins_by_row = nullptr;
};

struct GbdtKernels {
  void (*bin)(const GbdtBin&);
  void (*histogram)(const GbdtHistogram&);
  void (*best_splits)(const GbdtBestSplits&);
  void (*advance)(const GbdtAdvance&);
  void (*predict)(const GbdtPredict&);
  void (*grow_tree)(const GbdtGrowTree&) = nullptr;  // a device without one: the level loop
};

// One boosting round's pass over the rows (the trainer's, one output column): margin[r] +=
// value[leaf[r]] (the last tree, when leaf is given), then the loss's float32 gradient and
// hessian at the margin, times weight[r] when given: the formulas of
// pynotes/gbdt/objectives.py (which the other devices run), in one pass instead of ~9.
struct GbdtBoostStep {
  enum Loss : int64_t { kSquaredError = 0, kLogistic = 1 };
  int64_t rows, nodes;
  Loss loss;
  double* margin;         // (rows), updated in place
  const int32_t* leaf;    // (rows) in [0, nodes), or nullptr
  const float* value;     // (nodes)
  const float* y;         // (rows)
  const float* weight;    // (rows), or nullptr (all 1)
  float* grad;            // (rows)
  float* hess;            // (rows)
  bool* leaf_in_range;    // false when a leaf index was outside [0, nodes)
};

PYNOTES_DECLARE_CPU_KERNEL(void gbdt_bin_cpu_kernel(const GbdtBin&))
PYNOTES_DECLARE_CPU_KERNEL(void gbdt_boost_step_cpu_kernel(const GbdtBoostStep&))
PYNOTES_DECLARE_CPU_KERNEL(void gbdt_histogram_cpu_kernel(const GbdtHistogram&))
PYNOTES_DECLARE_CPU_KERNEL(void gbdt_best_splits_cpu_kernel(const GbdtBestSplits&))
PYNOTES_DECLARE_CPU_KERNEL(void gbdt_advance_cpu_kernel(const GbdtAdvance&))
PYNOTES_DECLARE_CPU_KERNEL(void gbdt_predict_cpu_kernel(const GbdtPredict&))
PYNOTES_DECLARE_CPU_KERNEL(void gbdt_grow_tree_cpu_kernel(const GbdtGrowTree&))
// Frees the buffers the CPU tree grower keeps on the calling thread from one tree to the next.
PYNOTES_DECLARE_CPU_KERNEL(void gbdt_release_grower_buffers_cpu_kernel())

}  // namespace pynotes
