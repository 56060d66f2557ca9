// A whole tree in one call on the CPU (the gbdt_grow_tree op; gbdt_kernels.h, GbdtGrowTree),
// compiled once per instruction set like every *_cpu_kernel.cpp. TreeGrower composes, as
// scikit-learn's TreeGrower and LightGBM's serial tree learner do:
//   - RowPartition: each node's rows kept together in a row index, with their gradients
//     beside them, and split stably into the children, touching only the rows of the nodes
//     that split (the last level's rows are labeled with their leaf, not moved);
//   - HistogramBuilder: the histograms of a level's nodes, in parallel over features (4 a
//     pass over a node's rows), every cell summed by one thread in row order (the same bits
//     for any number of threads);
//   - SplitFinder: each node's best split over the allowed features (the formulas: gbdt.h;
//     the gains of a vector of thresholds at once, over the bins the data reaches);
//   - a Reducer, injected: nothing to do for one process; in a data-parallel fit,
//     FeatureSharded combines what the processes computed apart, exactly (fixed point), so
//     that all grow one tree: each sums and searches a block of the features.
// What the histograms sum is FloatGradients (float64 (G, H) pairs) or QuantizedGradients.
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <memory>
#include <numeric>
#include <type_traits>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "gbdt/gbdt.h"
#include "gbdt/gbdt_kernels.h"

namespace pynotes {
namespace CPU_CAPABILITY {
namespace {

constexpr int64_t kPartitionBlock = 8192;  // rows
constexpr int64_t kTwoChainRows = 2048;    // nodes from this many rows use two histogram copies

// ---------------------------------------------------------------------------------------------
// The gradients a histogram sums, kPerBin cells per bin and per row. A row's kPerBin Values
// move with it in the partition, so that a node's are in its rows' order (as LightGBM's
// ordered gradients, without gathering them from the rows' places each level).

// float64 (G, H) pairs (each row's pair kept as the gradients' dtype),
template <typename T>
struct FloatGradients {
  using Cell = double;
  using Value = T;
  static constexpr int64_t kPerBin = 2;
  const T* grad;
  const T* hess;
  void value(int64_t r, Value* out) const {
    out[0] = grad[r];
    out[1] = hess[r];
  }
  static void add(Cell* bin, const Cell* value) {
#if defined(__SSE2__)
    _mm_storeu_pd(bin, _mm_add_pd(_mm_loadu_pd(bin), _mm_loadu_pd(value)));
#else
    bin[0] += value[0];
    bin[1] += value[1];
#endif
  }
  gbdt::PairBins bins(const Cell* hist) const { return {hist}; }
};

// or quantized gradients (integers times a scale per tree), packed in one int64 per row and
// per bin: G in the high 32 bits, H >= 0 in the low 32 (sums exact, in any order).
struct PackedBins {
  const int64_t* hist;
  double g_scale, h_scale;
  double h(int64_t b) const {
    return static_cast<double>(static_cast<uint32_t>(hist[b])) * h_scale;
  }
  double g(int64_t b) const {
    return static_cast<double>((hist[b] - static_cast<uint32_t>(hist[b])) >> 32) * g_scale;
  }
};

struct QuantizedGradients {
  using Cell = int64_t;
  using Value = int64_t;
  static constexpr int64_t kPerBin = 1;
  const int64_t* packed;  // per row
  double g_scale, h_scale;
  void value(int64_t r, Value* out) const { out[0] = packed[r]; }
  static void add(Cell* bin, const Cell* value) { bin[0] += value[0]; }
  PackedBins bins(const Cell* hist) const { return {hist, g_scale, h_scale}; }
};

// The sizes of a tree's gradients, over every process of a data-parallel fit: the largest
// |g| and h (the quantization scales), and the largest sums of |g| and h of one process (the
// bound of the fixed-point sums).
struct GradientSizes {
  double g_max = 0, h_max = 0, g_sum = 0, h_sum = 0;
};
static_assert(sizeof(GradientSizes) == 4 * sizeof(double), "reduced as 4 doubles");

// A uniform number in [0, 1) from (seed, i): splitmix64, so that stochastic rounding does not
// depend on the thread that rounds.
inline double uniform(uint64_t seed, uint64_t i) {
  uint64_t z = seed + (i + 1) * 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return static_cast<double>((z ^ (z >> 31)) >> 11) * 0x1.0p-53;
}

// Gradients rounded stochastically (unbiased) to integers in [-bins / 2, bins / 2] times
// g_scale = max |g| / (bins / 2), hessians to [0, bins] times h_scale = max h / bins, as
// Shi et al. (NeurIPS 2022) and LightGBM's use_quantized_grad.
template <typename T>
QuantizedGradients quantize_gradients(const GbdtGrowTree& a, const T* grad, const T* hess,
                                      const GradientSizes& sizes, std::vector<int64_t>& packed) {
  const int64_t g_levels = std::max<int64_t>(1, a.quantize_bins / 2), h_levels = a.quantize_bins;
  const double g_max = sizes.g_max, h_max = sizes.h_max;
  const double g_scale = g_max > 0 ? g_max / g_levels : 1.0;
  const double h_scale = h_max > 0 ? h_max / h_levels : 1.0;
  packed.resize(a.rows);
  at::parallel_for(0, a.rows, gbdt::kRowGrain, [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; ++r) {
      const auto round = [&](double v, uint64_t stream) {
        return static_cast<int64_t>(
            std::floor(v + uniform(a.seed, 2 * (a.row_offset + r) + stream)));
      };
      const int64_t g = std::clamp<int64_t>(round(grad[r] / g_scale, 0), -g_levels, g_levels);
      const int64_t h = std::clamp<int64_t>(round(hess[r] / h_scale, 1), 0, h_levels);
      packed[r] = g * (int64_t(1) << 32) + h;
    }
  });
  return {packed.data(), g_scale, h_scale};
}

// ---------------------------------------------------------------------------------------------
// A node's split as the grower records it: NodeSplit (gbdt.h) and, for a categorical feature,
// the bitset of the bins it sends left.
struct SplitChoice {
  gbdt::NodeSplit split;
  int32_t cat_left[gbdt::kCategoryWords];
};

// The reducer: what this process computed, combined with what the other processes of a
// data-parallel fit computed. For one process (this class) there is nothing to combine.
template <typename Cell>
class Reducer {
 public:
  Reducer(int64_t features, int64_t feature_cells) : F_(features), feature_cells_(feature_cells) {}
  virtual ~Reducer() = default;
  virtual bool distributed() const { return false; }
  // The features whose histograms this process sums and searches: [first, last).
  virtual std::pair<int64_t, int64_t> features() const { return {0, F_}; }
  // Each field the largest over the processes.
  virtual void max(GradientSizes&) {}
  // The scale of fixed-point sums for a tree of gradients this large.
  virtual void set_bound(const GradientSizes&) {}
  // A level's histograms of this process's rows, which build(first, last) writes into local
  // (nodes x F features x feature_cells) for features [first, last), with each node's totals
  // (feature_cells / num_bins cells) and rows, summed over the processes: into own the
  // histograms of this process's features, totals and rows in place.
  // (One process: build, and its histograms are the sums; the grower builds straight into
  // its own instead.)
  using BuildFeatures = std::function<void(int64_t first, int64_t last)>;
  virtual void sum_level(const BuildFeatures& build, const Cell* local, int64_t nodes,
                         Cell* /*totals*/, int64_t* /*rows*/, Cell* own) {
    build(0, F_);
    std::copy(local, local + nodes * F_ * feature_cells_, own);
  }
  // Each node's split, the best of every process's (the first of equal gains in process order,
  // which is feature order).
  virtual void best_of(std::vector<SplitChoice>&) {}
  // float64 values (the leaves' sums) summed over the processes.
  virtual void sum(double*, int64_t) {}

 protected:
  const int64_t F_, feature_cells_;  // of the histograms
};

// Process `rank` of a data-parallel fit, as LightGBM's data-parallel learner: it owns a block
// of ceil(F / processes) features. A level's histograms go through one reduce-scatter (each
// process receives the sums of its features only, with every node's totals and rows), and
// each process sends its best split per node to all (one all-gather of a few words). The
// other processes' blocks are built first and their reduce-scatter started (kReduceScatterStart)
// before this process builds its own, so that the transfer overlaps that work. float64
// values travel as int64 in fixed point (gbdt.h, fixed_point_scale), so that the sums are
// exact and the same on every process, whatever order the backend adds in.
template <typename Cell>
class FeatureSharded final : public Reducer<Cell> {
 public:
  FeatureSharded(const GbdtCollective& collective, int64_t processes, int64_t rank,
                 int64_t features, int64_t feature_cells, int64_t total_cells)
      : Reducer<Cell>(features, feature_cells), collective_(collective), processes_(processes),
        rank_(rank), block_((features + processes - 1) / processes), total_cells_(total_cells) {}
  bool distributed() const override { return true; }
  std::pair<int64_t, int64_t> features() const override { return range(rank_); }
  void max(GradientSizes& sizes) override { collective_(GbdtCollectiveOp::kMax, &sizes, 4); }
  void set_bound(const GradientSizes& sizes) override {
    scale_ = gbdt::fixed_point_scale(processes_ * std::max(sizes.g_sum, sizes.h_sum));
  }

  void sum_level(const typename Reducer<Cell>::BuildFeatures& build, const Cell* local,
                 int64_t nodes, Cell* totals, int64_t* rows, Cell* own) override {
    // Chunk p (process p's): per node its features' cells, the totals, the rows.
    const int64_t node_words = block_ * feature_cells_ + total_cells_ + 1;
    const int64_t chunk = nodes * node_words;
    wire_.assign(processes_ * chunk, 0);
    const auto to_chunk = [&](int64_t p) {
      const auto [first, last] = range(p);
      at::parallel_for(0, nodes, 1, [&](int64_t lo, int64_t hi) {
        for (int64_t s = lo; s < hi; ++s) {
          int64_t* out = wire_.data() + p * chunk + s * node_words;
          const Cell* in = local + (s * F_ + first) * feature_cells_;
          for (int64_t c = 0; c < (last - first) * feature_cells_; ++c) out[c] = to_wire(in[c]);
          out += block_ * feature_cells_;
          for (int64_t c = 0; c < total_cells_; ++c) {
            out[c] = to_wire(totals[s * total_cells_ + c]);
          }
          out[total_cells_] = rows[s];
        }
      });
    };
    const auto [first, last] = range(rank_);
    build(0, first);
    build(last, F_);
    for (int64_t p = 0; p < processes_; ++p) {
      if (p != rank_) to_chunk(p);
    }
    collective_(GbdtCollectiveOp::kReduceScatterStart, wire_.data(), processes_ * chunk);
    build(first, last);
    to_chunk(rank_);
    collective_(GbdtCollectiveOp::kReduceScatter, wire_.data(), processes_ * chunk);
    const int64_t own_cells = (last - first) * feature_cells_;
    at::parallel_for(0, nodes, 1, [&](int64_t lo, int64_t hi) {
      for (int64_t s = lo; s < hi; ++s) {
        const int64_t* in = wire_.data() + rank_ * chunk + s * node_words;
        for (int64_t c = 0; c < own_cells; ++c) own[s * own_cells + c] = from_wire(in[c]);
        in += block_ * feature_cells_;
        for (int64_t c = 0; c < total_cells_; ++c) totals[s * total_cells_ + c] = from_wire(in[c]);
        rows[s] = in[total_cells_];
      }
    });
  }

  void best_of(std::vector<SplitChoice>& choices) override {
    constexpr int64_t kWords = 8 + gbdt::kCategoryWords / 2;
    const int64_t nodes = static_cast<int64_t>(choices.size()), chunk = nodes * kWords;
    wire_.assign(processes_ * chunk, 0);
    for (int64_t s = 0; s < nodes; ++s) pack(choices[s], wire_.data() + rank_ * chunk + s * kWords);
    collective_(GbdtCollectiveOp::kAllGather, wire_.data(), processes_ * chunk);
    for (int64_t s = 0; s < nodes; ++s) {
      for (int64_t p = 0; p < processes_; ++p) {
        if (p == rank_) continue;
        SplitChoice c;
        unpack(wire_.data() + p * chunk + s * kWords, c);
        const gbdt::NodeSplit& best = choices[s].split;
        // Process p's features come before this process's when p < rank.
        const bool better = c.split.feature >= 0 &&
            (best.feature < 0 || c.split.split.gain > best.split.gain ||
             (c.split.split.gain == best.split.gain && c.split.feature < best.feature));
        if (better) choices[s] = c;
      }
    }
  }

  void sum(double* values, int64_t n) override {
    wire_.resize(n);
    for (int64_t i = 0; i < n; ++i) wire_[i] = std::llrint(values[i] * scale_);
    collective_(GbdtCollectiveOp::kSum, wire_.data(), n);
    for (int64_t i = 0; i < n; ++i) values[i] = static_cast<double>(wire_[i]) / scale_;
  }

 private:
  std::pair<int64_t, int64_t> range(int64_t p) const {
    return {std::min(F_, p * block_), std::min(F_, (p + 1) * block_)};
  }
  int64_t to_wire(Cell v) const {
    if constexpr (std::is_same_v<Cell, double>) return std::llrint(v * scale_); else return v;
  }
  Cell from_wire(int64_t v) const {
    if constexpr (std::is_same_v<Cell, double>) return static_cast<double>(v) / scale_;
    else return v;
  }
  static int64_t bits(double v) {
    int64_t w;
    std::memcpy(&w, &v, sizeof w);
    return w;
  }
  static double value(int64_t w) {
    double v;
    std::memcpy(&v, &w, sizeof v);
    return v;
  }
  static void pack(const SplitChoice& c, int64_t* w) {
    const gbdt::NodeSplit& n = c.split;
    w[0] = n.feature, w[1] = bits(n.split.gain), w[2] = n.split.bin, w[3] = n.split.default_left;
    w[4] = bits(n.split.g_left), w[5] = bits(n.split.h_left);
    w[6] = bits(n.g_right), w[7] = bits(n.h_right);
    std::memcpy(w + 8, c.cat_left, sizeof c.cat_left);
  }
  static void unpack(const int64_t* w, SplitChoice& c) {
    gbdt::NodeSplit& n = c.split;
    n.feature = w[0], n.split.gain = value(w[1]), n.split.bin = w[2];
    n.split.default_left = w[3] != 0;
    n.split.g_left = value(w[4]), n.split.h_left = value(w[5]);
    n.g_right = value(w[6]), n.h_right = value(w[7]);
    std::memcpy(c.cat_left, w + 8, sizeof c.cat_left);
  }

  using Reducer<Cell>::F_;
  using Reducer<Cell>::feature_cells_;
  const GbdtCollective& collective_;
  const int64_t processes_, rank_, block_, total_cells_;
  double scale_ = 1.0;
  std::vector<int64_t> wire_;
};

// The gradients' sizes over every process: needed for quantized gradients and for the
// fixed-point sums of a data-parallel fit only.
template <typename T, typename Cell>
GradientSizes gradient_sizes(const GbdtGrowTree& a, const T* grad, const T* hess,
                             Reducer<Cell>& reducer) {
  GradientSizes s;
  if (a.quantize_bins == 0 && !reducer.distributed()) return s;
  std::vector<GradientSizes> parts(std::max<int64_t>(1, at::get_num_threads()));
  at::parallel_for(0, a.rows, gbdt::kRowGrain, [&](int64_t lo, int64_t hi) {
    GradientSizes& p = parts[at::get_thread_num()];
    for (int64_t r = lo; r < hi; ++r) {
      const double g = std::abs(static_cast<double>(grad[r])), h = hess[r];
      p.g_max = std::max(p.g_max, g), p.h_max = std::max(p.h_max, h);
      p.g_sum += g, p.h_sum += h;
    }
  });
  for (const GradientSizes& p : parts) {
    s.g_max = std::max(s.g_max, p.g_max), s.h_max = std::max(s.h_max, p.h_max);
    s.g_sum += p.g_sum, s.h_sum += p.h_sum;
  }
  reducer.max(s);
  reducer.set_bound(s);
  return s;
}

// ---------------------------------------------------------------------------------------------
// The row-sized and level-sized buffers of a tree, kept on this thread from one tree to the
// next: a fit grows hundreds of trees of the same rows, and fresh buffers would fault in
// their pages in every tree (10-20 % of a 300k-row depth-8 fit, measured with glibc's
// threshold for returning memory raised). gbdt_release_grower_buffers_cpu_kernel frees them
// (the trainer, when a fit ends). Cells are 8 bytes: double, or int64 for quantized sums;
// a row's Values (its gradients) 8 bytes (float32 pairs, packed int64) or 16 (float64 pairs).
struct GrowerBuffers {
  std::vector<int32_t> indexes[2];     // RowPartition
  std::vector<uint64_t> values[2];     // RowPartition: the rows' Values, beside the indexes
  std::vector<uint8_t> goes_left;      // RowPartition
  std::vector<uint64_t> histograms[2];  // a level's and the next level's
};
thread_local GrowerBuffers grower_buffers;

// n Cells (or Values) in buffer.
template <typename Cell>
Cell* cells_of(std::vector<uint64_t>& buffer, int64_t n) {
  static_assert(sizeof(Cell) <= sizeof(uint64_t) && sizeof(uint64_t) % sizeof(Cell) == 0);
  const int64_t words = (n * static_cast<int64_t>(sizeof(Cell)) + 7) / 8;
  if (static_cast<int64_t>(buffer.size()) < words) buffer.resize(words);
  return reinterpret_cast<Cell*>(buffer.data());
}

// ---------------------------------------------------------------------------------------------
// Each node's rows together: node n's rows are index[begin[n], end[n]) of one of two row
// indexes (a split moves a node's rows from its index into the other: no copy back), in row
// order, and their gradients (kPerBin Values a row) at the same places of the index's values.
template <typename Gradients>
class RowPartition {
 public:
  using Value = typename Gradients::Value;
  static constexpr int64_t kPerBin = Gradients::kPerBin;
  RowPartition(const Gradients& grads, int64_t rows, int64_t nodes)
      : indexes_{&grower_buffers.indexes[0], &grower_buffers.indexes[1]},
        values_{cells_of<Value>(grower_buffers.values[0], rows * kPerBin),
                cells_of<Value>(grower_buffers.values[1], rows * kPerBin)},
        goes_left_(grower_buffers.goes_left), begin_(nodes, 0), end_(nodes, 0), in_(nodes, 0) {
    indexes_[0]->resize(rows), indexes_[1]->resize(rows), goes_left_.resize(rows);
    at::parallel_for(0, rows, gbdt::kRowGrain, [&](int64_t lo, int64_t hi) {
      int32_t* const index = indexes_[0]->data();
      Value* const values = values_[0];
      for (int64_t r = lo; r < hi; ++r) {
        index[r] = static_cast<int32_t>(r);
        grads.value(r, values + r * kPerBin);
      }
    });
    end_[0] = rows;
  }
  int64_t count(int64_t n) const { return end_[n] - begin_[n]; }
  const int32_t* rows(int64_t n) const { return index(n) + begin_[n]; }
  const int32_t* index(int64_t n) const { return indexes_[in_[n]]->data(); }  // (that holds n)
  const Value* values(int64_t n) const { return values_[in_[n]] + begin_[n] * kPerBin; }

  // Where split node n (a's feature, split_bin, default_left, cat_left) sends its rows at
  // positions [begin, end) of its index (within [begin_[n], end_[n])), in order: body(i,
  // row, left) for each; returns how many go left. (Everything by value: stores through body
  // could alias what is read by reference, which the loop would then load again every row.)
  template <typename Body>
  int64_t decide(const GbdtGrowTree& a, int64_t n, Body body) const {
    return decide(a, n, begin_[n], end_[n], body);
  }
  template <typename Body>
  int64_t decide(const GbdtGrowTree& a, int64_t n, int64_t begin, int64_t end,
                 Body body) const {
    const int64_t f = a.feature[n], missing = a.num_bins - 1;
    // Row r's bin is column[r * stride]: a feature's column, or the rows' bins at f.
    const bool by_row = a.bins_by_feature == nullptr;
    const uint8_t* column = by_row ? a.bins_by_row + f : a.bins_by_feature + f * a.rows;
    const int64_t stride = by_row ? a.features : 1;
    const int32_t* index = this->index(n);
    const auto each_row = [=](auto left_of_bin) {
      int64_t left = 0;
      for (int64_t i = begin; i < end; ++i) {
        const int32_t r = index[i];
        const bool l = left_of_bin(column[r * stride]);
        body(i, r, l);
        left += l;
      }
      return left;
    };
    const bool default_left = a.default_left[n];
    if (a.categorical && a.categorical[f]) {
      const int32_t* words = a.cat_left + n * gbdt::kCategoryWords;
      return each_row([missing, words, default_left](int64_t bin) {
        return gbdt::category_goes_left(bin, missing, words, default_left);
      });
    }
    const int64_t split_bin = a.split_bin[n];
    return each_row([missing, split_bin, default_left](int64_t bin) {
      return gbdt::goes_left(bin, missing, split_bin, default_left);
    });
  }

  // The listed nodes' rows in blocks of at most kPartitionBlock positions, node by node, and
  // body(block) for each in parallel. The threads get even shares of the rows (each takes the
  // blocks that start in its share), not of the nodes or the blocks: a level's nodes, and so
  // its blocks, range from a few rows to many.
  struct Block {
    int64_t node, begin, end;
    int64_t at;                 // the rows of the blocks before it
    int64_t left;               // rows of the block going left (split)
    int64_t left_at, right_at;  // where they go (split)
  };
  std::vector<Block> blocks(const std::vector<int64_t>& nodes) const {
    std::vector<Block> out;
    int64_t at = 0;
    for (const int64_t n : nodes) {
      for (int64_t b = begin_[n]; b < end_[n]; b += kPartitionBlock) {
        const int64_t e = std::min(end_[n], b + kPartitionBlock);
        out.push_back({n, b, e, at, 0, 0, 0});
        at += e - b;
      }
    }
    return out;
  }
  template <typename Body>
  static void each_block(std::vector<Block>& blocks, Body&& body) {
    if (blocks.empty()) return;
    const int64_t rows = blocks.back().at + (blocks.back().end - blocks.back().begin);
    at::parallel_for(0, rows, kPartitionBlock, [&](int64_t lo, int64_t hi) {
      auto k = std::lower_bound(blocks.begin(), blocks.end(), lo,
                                [](const Block& b, int64_t row) { return b.at < row; });
      for (; k != blocks.end() && k->at < hi; ++k) body(*k);
    });
  }

  // The rows of every split node (a's feature, split_bin, default_left, cat_left), with their
  // values, stably partitioned into its children in the other index: blocks decide in
  // parallel (reading the split feature's column, where a node's rows share cache lines),
  // then scatter to offsets from the blocks before them.
  void split(const GbdtGrowTree& a, const std::vector<int64_t>& split_nodes) {
    std::vector<Block> blocks = this->blocks(split_nodes);
    each_block(blocks, [&](Block& blk) {
      blk.left = decide(a, blk.node, blk.begin, blk.end,
                        [goes = goes_left_.data()](int64_t i, int32_t, bool l) { goes[i] = l; });
    });
    for (size_t k = 0; k < blocks.size();) {  // one node's blocks at a time
      const int64_t n = blocks[k].node;
      size_t last = k;
      int64_t left = 0;
      for (; last < blocks.size() && blocks[last].node == n; ++last) left += blocks[last].left;
      int64_t left_at = begin_[n], right_at = begin_[n] + left;
      begin_[2 * n + 1] = begin_[n], end_[2 * n + 1] = right_at;
      begin_[2 * n + 2] = right_at, end_[2 * n + 2] = end_[n];
      in_[2 * n + 1] = in_[2 * n + 2] = 1 - in_[n];
      for (; k < last; ++k) {
        blocks[k].left_at = left_at, blocks[k].right_at = right_at;
        left_at += blocks[k].left;
        right_at += (blocks[k].end - blocks[k].begin) - blocks[k].left;
      }
    }
    each_block(blocks, [&](Block& blk) {
      const int64_t k = kPerBin;
      const int32_t* from = indexes_[in_[blk.node]]->data();
      int32_t* to = indexes_[1 - in_[blk.node]]->data();
      const Value* from_values = values_[in_[blk.node]];
      Value* to_values = values_[1 - in_[blk.node]];
      const uint8_t* goes = goes_left_.data();
      int64_t left_at = blk.left_at, right_at = blk.right_at;
      const int64_t end = blk.end;
      for (int64_t i = blk.begin; i < end; ++i) {  // no branch on the data
        const int64_t l = goes[i];
        const int64_t at = right_at + (left_at - right_at) * l;
        to[at] = from[i];
        std::memcpy(to_values + at * k, from_values + i * k, sizeof(Value) * k);  // (one move)
        left_at += l;
        right_at += 1 - l;
      }
    });
  }

 private:
  std::vector<int32_t>* indexes_[2];  // (grower_buffers': rows long or longer)
  Value* values_[2];                  // (grower_buffers')
  std::vector<uint8_t>& goes_left_;
  std::vector<int64_t> begin_, end_;
  std::vector<uint8_t> in_;  // the index that holds each node's rows
};

// ---------------------------------------------------------------------------------------------
// The histograms of G features (hist[g], bins column[g]) of a node's rows: bin
// column[g][index[i]] += values[i] for i < n, one pass over the rows for the G features (a
// row's index and value read once). Long runs send every other row to `second` (zeroed here,
// summed in after): with few distinct values a row mostly hits the bin the row before it hit,
// and a single read-add-write chain per bin would serialize on the store-to-load latency.
// Each cell gets its rows in the same order for any G.
template <typename Gradients, int G>
void add_rows(typename Gradients::Cell* const* hist,
              std::vector<typename Gradients::Cell>& second, int64_t B,
              const uint8_t* const* column, const int32_t* index,
              const typename Gradients::Value* values, int64_t n) {
  using Cell = typename Gradients::Cell;
  constexpr int64_t k = Gradients::kPerBin;
  const bool two = n >= kTwoChainRows;
  if (two) second.assign(G * B * k, Cell(0));
  // Local copies (registers: the stores into the histograms cannot change them).
  Cell* even[G];
  Cell* odd[G];
  const uint8_t* col[G];
  for (int g = 0; g < G; ++g) {
    even[g] = hist[g];
    odd[g] = two ? second.data() + g * B * k : hist[g];
    col[g] = column[g];
  }
  const auto add_row = [&](Cell* const* h, int64_t i) {
    const int64_t r = index[i];
    Cell v[k];
    for (int64_t c = 0; c < k; ++c) v[c] = values[i * k + c];
    for (int g = 0; g < G; ++g) Gradients::add(h[g] + col[g][r] * k, v);
  };
  int64_t i = 0;
  for (; i + 1 < n; i += 2) {
    add_row(even, i);
    add_row(odd, i + 1);
  }
  if (i < n) add_row(even, i);
  if (two) {
    for (int g = 0; g < G; ++g) {
      for (int64_t c = 0; c < B * k; ++c) hist[g][c] += second[g * B * k + c];
    }
  }
}

// The same for features [0, F) of row-major bins (`stride` bytes a row): the histograms of
// F features, B bins each, from one pass over the node's rows. A row's value is read once for
// all of them, and its bins share a cache line. Each cell gets its rows in add_rows' order
// (long runs: every other row into `second`, summed in after), so the sums are its bits.
template <typename Gradients>
void add_rows_by_row(typename Gradients::Cell* hist, std::vector<typename Gradients::Cell>& second,
                     int64_t B, int64_t F, const uint8_t* bins, int64_t stride,
                     const int32_t* index, const typename Gradients::Value* values, int64_t n) {
  using Cell = typename Gradients::Cell;
  constexpr int64_t k = Gradients::kPerBin;
  const bool two = n >= kTwoChainRows;
  if (two) second.assign(F * B * k, Cell(0));
  Cell* const even = hist;
  Cell* const odd = two ? second.data() : hist;
  const auto add_row = [=](Cell* h, int64_t i) {  // (by value: registers, see add_rows)
    const uint8_t* row = bins + int64_t(index[i]) * stride;
    Cell v[k];
    for (int64_t c = 0; c < k; ++c) v[c] = values[i * k + c];
    for (int64_t f = 0; f < F; ++f) Gradients::add(h + (f * B + row[f]) * k, v);
  };
  int64_t i = 0;
  for (; i + 1 < n; i += 2) {
    add_row(even, i);
    add_row(odd, i + 1);
  }
  if (i < n) add_row(even, i);
  if (two) {
    for (int64_t c = 0; c < F * B * k; ++c) hist[c] += second[c];
  }
}

// The histograms of a list of nodes: (nodes, features, num_bins, kPerBin) cells.
template <typename Gradients>
class HistogramBuilder {
 public:
  using Cell = typename Gradients::Cell;
  explicit HistogramBuilder(const GbdtGrowTree& a) : a_(a) {}
  int64_t feature_cells() const { return a_.num_bins * Gradients::kPerBin; }
  int64_t cells() const { return a_.features * feature_cells(); }

  // The histograms of nodes list[0, count) into out (count x cells()), in parallel over
  // features, every bin summed by one thread in a fixed order (the same for any thread count).
  void build(const RowPartition<Gradients>& partition, const int32_t* list, int64_t count,
             Cell* out) {
    build_features(partition, list, count, out, 0, a_.features);
  }

  // Each listed node's sum of its values (kPerBin cells), in row order.
  static void node_sums(const RowPartition<Gradients>& partition, const int32_t* list,
                        int64_t count, Cell* out) {
    const int64_t k = Gradients::kPerBin;
    for (int64_t s = 0; s < count; ++s) {
      const auto* values = partition.values(list[s]);
      Cell sum[k] = {};
      for (int64_t p = 0; p < partition.count(list[s]); ++p) {
        Cell v[k];
        for (int64_t c = 0; c < k; ++c) v[c] = values[p * k + c];
        Gradients::add(sum, v);
      }
      std::copy(sum, sum + k, out + s * k);
    }
  }

  // The histograms of features [first, last) only.
  void build_features(const RowPartition<Gradients>& partition, const int32_t* list,
                      int64_t count, Cell* out, int64_t first, int64_t last) {
    const int64_t F = last - first;
    const auto run = [&](int64_t f_begin, int64_t f_end) {
      std::vector<Cell> second;
      for (int64_t s = 0; s < count; ++s) {
        const int64_t n = list[s];
        const auto* v = partition.values(n);
        Cell* h = out + s * cells() + f_begin * feature_cells();
        std::fill(h, h + (f_end - f_begin) * feature_cells(), Cell(0));
        if (a_.bins_by_feature == nullptr) {  // row-wise
          add_rows_by_row<Gradients>(h, second, a_.num_bins, f_end - f_begin,
                                     a_.bins_by_row + f_begin, a_.features, partition.rows(n),
                                     v, partition.count(n));
          continue;
        }
        for (int64_t f = f_begin; f < f_end;) {  // (4 features a pass, then 2, then 1)
          const int64_t G = f_end - f >= 4 ? 4 : f_end - f >= 2 ? 2 : 1;
          Cell* hists[4];
          const uint8_t* columns[4];
          for (int64_t g = 0; g < G; ++g) {
            hists[g] = h + (f + g - f_begin) * feature_cells();
            columns[g] = a_.bins_by_feature + (f + g) * a_.rows;
          }
          const auto add = G == 4 ? add_rows<Gradients, 4> : G == 2 ? add_rows<Gradients, 2>
                                                                     : add_rows<Gradients, 1>;
          add(hists, second, a_.num_bins, columns, partition.rows(n), v, partition.count(n));
          f += G;
        }
      }
    };
    int64_t rows = 0;
    for (int64_t s = 0; s < count; ++s) rows += partition.count(list[s]);
    const int64_t tasks = rows * F < (int64_t(1) << 16) ? 1 :
                          std::min<int64_t>(at::get_num_threads(), F);
    if (tasks <= 1) return run(first, last);
    at::parallel_for(0, tasks, 1, [&](int64_t t_begin, int64_t t_end) {
      for (int64_t t = t_begin; t < t_end; ++t) {
        run(first + F * t / tasks, first + F * (t + 1) / tasks);
      }
    });
  }

 private:
  const GbdtGrowTree& a_;
};

// ---------------------------------------------------------------------------------------------
// Per feature, the number of bins below the missing bin that the rows' bins reach (bins from
// there to the missing bin are empty in every node, and the split search skips them: a feature
// of 7 distinct values searches 7 bins, not 255). Read from bins stored a feature at a time
// (a vectorized pass); otherwise, and in a data-parallel fit (whose other processes hold other
// rows), none are known empty.
inline std::vector<int64_t> used_bins(const GbdtGrowTree& a, bool distributed) {
  const int64_t missing = a.num_bins - 1;
  std::vector<int64_t> used(a.features, missing);
  if (distributed || a.bins_by_feature == nullptr) return used;
  at::parallel_for(0, a.features, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t f = lo; f < hi; ++f) {
      const uint8_t* column = a.bins_by_feature + f * a.rows;
      // Bin b + shift (mod 256) is 0 for the missing bin, else b + shift: a byte max.
      const uint8_t shift = static_cast<uint8_t>(256 - missing);
      uint8_t top = 0;
      for (int64_t r = 0; r < a.rows; ++r) {
        const uint8_t u = static_cast<uint8_t>(column[r] + shift);
        top = u > top ? u : top;
      }
      used[f] = top == 0 ? 0 : top - shift + 1;
    }
  });
  return used;
}

// gbdt::best_split_of_feature with the gains of Vec::size() thresholds at once (8 with
// AVX-512, 4 with AVX2): the same prefix sums in the same order, gbdt::split_gain on vectors
// (no contraction into FMAs: ATen's vector ops), the totals bin_totals would sum (bins past
// `used` are empty, and adding +0 changes no sum that starts at +0), and the first of the
// largest in the same order (threshold, then missing values right before left): the same split.
// An empty bin's threshold is masked, not a branch: it mispredicted half the time in nodes
// of few rows.
template <typename Bins>
gbdt::Split best_split_of_feature_vec(const Bins& hist, int64_t num_bins, double reg_lambda,
                                      double gamma, double min_child_weight, int64_t used) {
  using Vec = at::vec::Vectorized<double>;
  constexpr int64_t W = Vec::size();
  const int64_t missing = num_bins - 1;
  const int64_t end = used < 0 || used > missing ? missing : used;
  // Per threshold b: the sums of bins <= b, and whether it is tried (not an empty bin but 0).
  double g_left[256 + W], h_left[256 + W], tried[256 + W];
  double g = 0, h = 0;
  for (int64_t b = 0; b < end; ++b) {
    const double g_bin = hist.g(b), h_bin = hist.h(b);
    g += g_bin;
    h += h_bin;
    g_left[b] = g, h_left[b] = h;
    tried[b] = b == 0 || g_bin != 0 || h_bin != 0 ? 1.0 : 0.0;
  }
  const double g_missing = hist.g(missing), h_missing = hist.h(missing);
  const double g_total = g + g_missing, h_total = h + h_missing;  // (bin_totals' sums)
  const int directions = g_missing == 0 && h_missing == 0 ? 1 : 2;
  const double parent = gbdt::score(g_total, h_total, reg_lambda);
  const int64_t padded = (end + W - 1) / W * W;
  for (int64_t b = end; b < padded; ++b) g_left[b] = h_left[b] = tried[b] = 0.0;
  const double inf = std::numeric_limits<double>::infinity();
  const Vec lambda(reg_lambda), weight(min_child_weight), zero(0.0), G(g_total), H(h_total);
  Vec best_gain(-inf), best_at(-1.0);  // per lane; at = 2 * threshold + (missing left)
  for (int64_t b = 0; b < padded; b += W) {
    const Vec gl0 = Vec::loadu(g_left + b), hl0 = Vec::loadu(h_left + b);
    const Vec tried_b = Vec::loadu(tried + b) != zero;
    for (int left = 0; left < directions; ++left) {
      const Vec gl = left ? gl0 + Vec(g_missing) : gl0, hl = left ? hl0 + Vec(h_missing) : hl0;
      const Vec gr = G - gl, hr = H - hl;
      const Vec valid = tried_b & (hl >= weight) & (hr >= weight) & (hl > zero) & (hr > zero);
      const Vec gain = gbdt::split_gain(gl, hl, gr, hr, Vec(parent), lambda, Vec(gamma));
      const Vec better = Vec::blendv(zero, gain > best_gain, valid);
      best_gain = Vec::blendv(best_gain, gain, better);
      best_at = Vec::blendv(best_at, Vec::arange(2.0 * b + left, 2.0), better);
    }
  }
  double gains[W], ats[W];
  best_gain.store(gains);
  best_at.store(ats);
  int64_t at = -1;
  double gain = -inf;
  for (int64_t l = 0; l < W; ++l) {  // the largest gain, the first of equals
    if (ats[l] >= 0 && (at < 0 || gains[l] > gain || (gains[l] == gain && ats[l] < at))) {
      gain = gains[l], at = static_cast<int64_t>(ats[l]);
    }
  }
  if (at < 0) return gbdt::no_split();
  const int64_t b = at / 2;
  const bool left = at % 2;
  return {gain, b, left, left ? g_left[b] + g_missing : g_left[b],
          left ? h_left[b] + h_missing : h_left[b]};
}

// Per node of a level, the best split over the allowed features of this process.
template <typename Gradients>
class SplitFinder {
 public:
  using Cell = typename Gradients::Cell;
  SplitFinder(const GbdtGrowTree& a, const Gradients& grads, std::pair<int64_t, int64_t> features,
              const std::vector<int64_t>& used_bins)
      : a_(a), grads_(grads), first_(features.first), F_(features.second - features.first),
        used_bins_(used_bins) {}

  // level's nodes have the histograms of features [first, first + F) in hist, totals (G, H)
  // and node_rows[n] rows (over every process).
  std::vector<SplitChoice> find(const std::vector<int32_t>& level, const Cell* hist,
                                const std::vector<double>& totals,
                                const std::vector<int64_t>& node_rows) {
    const int64_t S = static_cast<int64_t>(level.size()), F = F_, B = a_.num_bins;
    const int64_t feature_cells = B * Gradients::kPerBin;
    per_feature_.resize(S * F);
    at::parallel_for(0, S * F, 16, [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) {
        const int64_t f = first_ + i % F;
        const auto bins = grads_.bins(hist + i * feature_cells);
        per_feature_[i] =
            a_.feature_mask && !a_.feature_mask[f] ? gbdt::no_split()
            : a_.categorical && a_.categorical[f]
                ? gbdt::best_categorical_split(bins, B, node_rows[level[i / F]], a_.reg_lambda,
                                               a_.gamma, a_.min_child_weight)
                : best_split_of_feature_vec(bins, B, a_.reg_lambda, a_.gamma,
                                            a_.min_child_weight, used_bins_[f]);
      }
    });
    std::vector<SplitChoice> choices(S);
    for (int64_t s = 0; s < S; ++s) {
      SplitChoice& c = choices[s];
      c.split = gbdt::choose_split(per_feature_.data() + s * F, F, totals[2 * s],
                                   totals[2 * s + 1]);
      std::fill(c.cat_left, c.cat_left + gbdt::kCategoryWords, 0);
      if (c.split.feature < 0) continue;
      const int64_t f = c.split.feature;
      c.split.feature += first_;
      if (a_.categorical && a_.categorical[c.split.feature]) {
        gbdt::categorical_left_set(grads_.bins(hist + (s * F + f) * feature_cells), B,
                                   node_rows[level[s]], c.split.split.bin, c.cat_left);
      }
    }
    return choices;
  }

 private:
  const GbdtGrowTree& a_;
  const Gradients& grads_;
  const int64_t first_, F_;  // this process's features
  const std::vector<int64_t>& used_bins_;  // per feature (used_bins)
  std::vector<gbdt::Split> per_feature_;  // (nodes, features)
};

// ---------------------------------------------------------------------------------------------
// Grows the tree depth-wise into a's outputs (GbdtGrowTree): per level the best split of every
// node, the rows of the split nodes partitioned, and the next level's histograms built for the
// smaller child of each pair, its sibling's taken as the parent's minus it. One process knows
// the children's rows before it builds and takes the child with fewer (the left one on a
// tie); a data-parallel fit learns them with the histograms, so it takes the child with the
// smaller hessian sum, known from the split (LightGBM's estimate of the smaller leaf).
template <typename T, typename Gradients>
class TreeGrower {
 public:
  using Cell = typename Gradients::Cell;
  TreeGrower(const GbdtGrowTree& a, const Gradients& grads, Reducer<Cell>& reducer)
      : a_(a), grads_(grads), reducer_(reducer), nodes_((int64_t(2) << a.max_depth) - 1),
        own_(reducer.features()),
        own_cells_((own_.second - own_.first) * a.num_bins * Gradients::kPerBin),
        used_bins_(used_bins(a, reducer.distributed())), partition_(grads, a.rows, nodes_),
        histograms_(a), splitter_(a, grads, own_, used_bins_),
        node_rows_(nodes_, 0), reached_(nodes_, 0) {}

  void grow() {
    std::vector<int32_t> level{0};  // this level's nodes, their histograms in this order
    Cell* hist = cells_of<Cell>(grower_buffers.histograms[0], own_cells_);
    std::vector<double> totals(2);  // (G, H) of each node of the level
    reached_[0] = 1;
    build_level(level.data(), 1, hist, totals.data());
    a_.sums[0] = totals[0], a_.sums[1] = totals[1];
    for (int64_t depth = 0; depth < a_.max_depth; ++depth) {
      std::vector<SplitChoice> choices = splitter_.find(level, hist, totals, node_rows_);
      reducer_.best_of(choices);
      std::vector<int64_t> split_nodes, split_slots;
      record_splits(level, choices, split_nodes, split_slots);
      if (split_nodes.empty()) break;
      if (depth + 1 == a_.max_depth) {  // the children are leaves: their sums are known, and
        last_split_ = std::move(split_nodes);  // their rows are labeled, not moved
        break;
      }
      partition_.split(a_, split_nodes);
      level = next_level(split_nodes, split_slots, hist, totals);
    }
    finish_leaves();
  }

 private:
  // The histograms of this process's features for nodes list[0, S) into out, summed over the
  // processes, with each node's totals (G, H) and rows (node_rows_).
  void build_level(const int32_t* list, int64_t S, Cell* out, double* totals) {
    const int64_t k = Gradients::kPerBin;
    if (!reducer_.distributed()) {
      histograms_.build(partition_, list, S, out);
      for (int64_t s = 0; s < S; ++s) {
        node_rows_[list[s]] = partition_.count(list[s]);
        node_totals(out + s * own_cells_, totals + 2 * s);
      }
      return;
    }
    local_.resize(S * histograms_.cells());
    std::vector<Cell> total_cells(S * k, Cell(0));  // per node the sums of its values
    if (a_.features > 0) histograms_.node_sums(partition_, list, S, total_cells.data());
    std::vector<int64_t> rows(S);
    for (int64_t s = 0; s < S; ++s) rows[s] = partition_.count(list[s]);
    const auto build = [&](int64_t first, int64_t last) {
      histograms_.build_features(partition_, list, S, local_.data(), first, last);
    };
    reducer_.sum_level(build, local_.data(), S, total_cells.data(), rows.data(), out);
    for (int64_t s = 0; s < S; ++s) {
      node_rows_[list[s]] = rows[s];
      const auto bins = grads_.bins(total_cells.data() + s * k);
      totals[2 * s] = bins.g(0), totals[2 * s + 1] = bins.h(0);
    }
  }

  // A node's (G, H) from one process's histogram of every feature: feature 0's bins.
  void node_totals(const Cell* hist, double* totals) const {
    totals[0] = totals[1] = 0;
    if (a_.features > 0) gbdt::bin_totals(grads_.bins(hist), a_.num_bins, totals[0], totals[1]);
  }

  // Writes the splits with a positive gain into the tree; returns the split nodes and their
  // slots in the level.
  void record_splits(const std::vector<int32_t>& level, const std::vector<SplitChoice>& choices,
                     std::vector<int64_t>& split_nodes, std::vector<int64_t>& split_slots) {
    for (int64_t s = 0; s < static_cast<int64_t>(level.size()); ++s) {
      const gbdt::NodeSplit& c = choices[s].split;
      if (c.feature < 0 || !(c.split.gain > 0)) continue;
      const int64_t n = level[s];
      a_.feature[n] = static_cast<int32_t>(c.feature);
      const bool categorical = a_.categorical && a_.categorical[c.feature];
      a_.split_bin[n] = categorical ? 0 : static_cast<int32_t>(c.split.bin);
      if (categorical) {
        std::copy(choices[s].cat_left, choices[s].cat_left + gbdt::kCategoryWords,
                  a_.cat_left + n * gbdt::kCategoryWords);
      }
      a_.default_left[n] = c.split.default_left;
      a_.gain[n] = c.split.gain;
      a_.sums[2 * (2 * n + 1)] = c.split.g_left, a_.sums[2 * (2 * n + 1) + 1] = c.split.h_left;
      a_.sums[2 * (2 * n + 2)] = c.g_right, a_.sums[2 * (2 * n + 2) + 1] = c.h_right;
      reached_[2 * n + 1] = reached_[2 * n + 2] = 1;
      split_nodes.push_back(n);
      split_slots.push_back(s);
    }
  }

  // The children of the split nodes, the smaller of each pair first (built), then the larger
  // (parent - smaller); hist and totals become theirs in that order (hist in the other of
  // the two histogram buffers).
  std::vector<int32_t> next_level(const std::vector<int64_t>& split_nodes,
                                  const std::vector<int64_t>& split_slots, Cell*& hist,
                                  std::vector<double>& totals) {
    const int64_t P = static_cast<int64_t>(split_nodes.size()), cells = own_cells_;
    std::vector<int32_t> next(2 * P);
    for (int64_t i = 0; i < P; ++i) {
      const int64_t l = 2 * split_nodes[i] + 1, r = l + 1;
      const bool build_left = reducer_.distributed()
          ? a_.sums[2 * l + 1] <= a_.sums[2 * r + 1]
          : partition_.count(l) <= partition_.count(r);
      next[i] = static_cast<int32_t>(build_left ? l : r);
      next[P + i] = static_cast<int32_t>(build_left ? r : l);
    }
    auto& buffers = grower_buffers.histograms;
    const bool in_first = reinterpret_cast<uint64_t*>(hist) == buffers[0].data();
    Cell* next_hist = cells_of<Cell>(buffers[in_first ? 1 : 0], 2 * P * cells);
    std::vector<double> next_totals(4 * P);
    build_level(next.data(), P, next_hist, next_totals.data());
    at::parallel_for(0, P, 1, [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) {
        const Cell* parent = hist + split_slots[i] * cells;
        const Cell* small = next_hist + i * cells;
        Cell* large = next_hist + (P + i) * cells;
        for (int64_t c = 0; c < cells; ++c) large[c] = parent[c] - small[c];
        const int64_t parent_node = split_nodes[i], small_node = next[i], large_node = next[P + i];
        double* t = next_totals.data() + 2 * (P + i);
        if (reducer_.distributed()) {  // this process holds only its features' histograms
          node_rows_[large_node] = node_rows_[parent_node] - node_rows_[small_node];
          t[0] = totals[2 * split_slots[i]] - next_totals[2 * i];
          t[1] = totals[2 * split_slots[i] + 1] - next_totals[2 * i + 1];
        } else {
          node_rows_[large_node] = partition_.count(large_node);
          node_totals(large, t);
        }
      }
    });
    hist = next_hist;
    totals = std::move(next_totals);
    return next;
  }

  // Each leaf's rows; with quantized gradients also its sums renewed from the full-precision
  // gradients (its value must not carry the rounding), over every process. The leaves of the
  // last level's splits get their rows from their parent's (each row's side of the split), in
  // row order as a partition would give them.
  void finish_leaves() {
    std::vector<char> labeled(nodes_, 0);
    for (const int64_t n : last_split_) labeled[2 * n + 1] = labeled[2 * n + 2] = 1;
    std::vector<int64_t> leaves;  // the others
    for (int64_t n = 0; n < nodes_; ++n) {
      if (reached_[n] && a_.feature[n] < 0 && !labeled[n]) leaves.push_back(n);
    }
    int32_t* const leaf = a_.leaf;
    if (a_.quantize_bins == 0) {  // labels only: in blocks of rows, even shares per thread
      auto blocks = partition_.blocks(leaves);
      RowPartition<Gradients>::each_block(blocks, [&](const auto& blk) {
        const int32_t* index = partition_.index(blk.node);
        const int32_t n = static_cast<int32_t>(blk.node);
        for (int64_t i = blk.begin; i < blk.end; ++i) leaf[index[i]] = n;
      });
      blocks = partition_.blocks(last_split_);
      RowPartition<Gradients>::each_block(blocks, [&](const auto& blk) {
        const int32_t right = static_cast<int32_t>(2 * blk.node + 2), left = right - 1;
        partition_.decide(a_, blk.node, blk.begin, blk.end,
                          [=](int64_t, int32_t r, bool l) { leaf[r] = l ? left : right; });
      });
      return;
    }
    // Quantized: each leaf's sums too, in row order (so a node at a time).
    const T* grad = static_cast<const T*>(a_.grad);
    const T* hess = static_cast<const T*>(a_.hess);
    at::parallel_for(0, static_cast<int64_t>(leaves.size()), 1, [&](int64_t lo, int64_t hi) {
      for (int64_t k = lo; k < hi; ++k) {
        const int64_t n = leaves[k];
        const int32_t* rows = partition_.rows(n);
        const int64_t count = partition_.count(n);
        double g = 0, h = 0;
        for (int64_t i = 0; i < count; ++i) {
          leaf[rows[i]] = static_cast<int32_t>(n);
          g += grad[rows[i]], h += hess[rows[i]];
        }
        a_.sums[2 * n] = g, a_.sums[2 * n + 1] = h;
      }
    });
    const int64_t P = static_cast<int64_t>(last_split_.size());
    at::parallel_for(0, P, 1, [&](int64_t lo, int64_t hi) {
      for (int64_t k = lo; k < hi; ++k) {
        const int64_t n = last_split_[k];
        const int32_t right = static_cast<int32_t>(2 * n + 2), left = right - 1;
        double sums[2][2] = {};  // (right, left) x (g, h), in row order
        partition_.decide(a_, n, [&](int64_t, int32_t r, bool l) {
          leaf[r] = l ? left : right;
          sums[l][0] += grad[r], sums[l][1] += hess[r];
        });
        a_.sums[2 * left] = sums[1][0], a_.sums[2 * left + 1] = sums[1][1];
        a_.sums[2 * right] = sums[0][0], a_.sums[2 * right + 1] = sums[0][1];
      }
    });
    if (!reducer_.distributed()) return;
    for (const int64_t n : last_split_) leaves.push_back(2 * n + 1), leaves.push_back(2 * n + 2);
    std::vector<double> leaf_sums(2 * leaves.size());
    for (size_t k = 0; k < leaves.size(); ++k) {
      leaf_sums[2 * k] = a_.sums[2 * leaves[k]], leaf_sums[2 * k + 1] = a_.sums[2 * leaves[k] + 1];
    }
    reducer_.sum(leaf_sums.data(), static_cast<int64_t>(leaf_sums.size()));
    for (size_t k = 0; k < leaves.size(); ++k) {
      a_.sums[2 * leaves[k]] = leaf_sums[2 * k], a_.sums[2 * leaves[k] + 1] = leaf_sums[2 * k + 1];
    }
  }

  const GbdtGrowTree& a_;
  const Gradients& grads_;
  Reducer<Cell>& reducer_;
  const int64_t nodes_;  // of the complete tree, in heap order
  const std::pair<int64_t, int64_t> own_;  // the features this process searches
  const int64_t own_cells_;                // of a node's histograms of them
  const std::vector<int64_t> used_bins_;  // per feature
  RowPartition<Gradients> partition_;
  HistogramBuilder<Gradients> histograms_;
  SplitFinder<Gradients> splitter_;
  std::vector<Cell> local_;         // a data-parallel level's histograms of this process's rows
  std::vector<int64_t> node_rows_;  // each node's rows over every process
  std::vector<char> reached_;
  std::vector<int64_t> last_split_;  // the nodes split at the last level
};

template <typename Cell>
std::unique_ptr<Reducer<Cell>> make_reducer(const GbdtGrowTree& a, int64_t per_bin) {
  if (a.collective == nullptr) {
    return std::make_unique<Reducer<Cell>>(a.features, a.num_bins * per_bin);
  }
  return std::make_unique<FeatureSharded<Cell>>(*a.collective, a.processes, a.rank, a.features,
                                                a.num_bins * per_bin, per_bin);
}

template <typename T>
void grow_tree(const GbdtGrowTree& a) {
  const T* grad = static_cast<const T*>(a.grad);
  const T* hess = static_cast<const T*>(a.hess);
  if (a.quantize_bins == 0) {
    auto reducer = make_reducer<double>(a, FloatGradients<T>::kPerBin);
    gradient_sizes(a, grad, hess, *reducer);
    const FloatGradients<T> grads{grad, hess};
    return TreeGrower<T, FloatGradients<T>>(a, grads, *reducer).grow();
  }
  auto reducer = make_reducer<int64_t>(a, QuantizedGradients::kPerBin);
  const GradientSizes sizes = gradient_sizes(a, grad, hess, *reducer);
  std::vector<int64_t> packed;
  const QuantizedGradients grads = quantize_gradients(a, grad, hess, sizes, packed);
  TreeGrower<T, QuantizedGradients>(a, grads, *reducer).grow();
}

}  // namespace

void gbdt_grow_tree_cpu_kernel(const GbdtGrowTree& a) {
  if (a.dtype == at::kDouble) grow_tree<double>(a); else grow_tree<float>(a);
}

void gbdt_release_grower_buffers_cpu_kernel() { grower_buffers = GrowerBuffers(); }

}  // namespace CPU_CAPABILITY
}  // namespace pynotes
