// Gradient-boosting kernels on CPU, compiled once per instruction set (common/cpu_dispatch.h):
// everything here is in namespace pynotes::CPU_CAPABILITY. The formulas are in gbdt.h.
//
// The histogram is built in parallel over features: each thread owns a range of features and
// reads every active row (its slot's rows together, in row order), so every histogram cell is
// summed by one thread in row order. No atomics and no per-thread copies to reduce, and the
// result does not depend on the number of threads.
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <numeric>
#include <type_traits>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif
#if defined(CPU_CAPABILITY_AVX512)
#include <immintrin.h>
#endif

#include "gbdt/gbdt.h"
#include "gbdt/gbdt_kernels.h"

namespace pynotes {
namespace CPU_CAPABILITY {
namespace {

constexpr int64_t kRowGrain = 2048;
constexpr int64_t kPrefetchAhead = 16;  // rows
constexpr int64_t kPartitionBlock = 8192;  // rows
constexpr int64_t kTwoChainRows = 2048;    // nodes from this many rows use two histogram copies

template <typename T>
void bin(const GbdtBin& a) {
  const T* x = static_cast<const T*>(a.x);
  const T* cuts = static_cast<const T*>(a.cuts);
  at::parallel_for(0, a.rows, kRowGrain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      for (int64_t f = 0; f < a.features; ++f) {
        a.out[r * a.features + f] = gbdt::bin_of(x[r * a.features + f], cuts + f * a.max_cuts,
                                                 a.max_cuts, a.missing_bin);
      }
    }
  });
}

// hist[f, row[f]] += (g, h) for f in [f_begin, f_end): one 16-byte add per cell.
inline void add_row(double* hist, const uint8_t* row, int64_t f_begin, int64_t f_end,
                    int64_t B, double g, double h) {
#if defined(__SSE2__)
  const __m128d gh = _mm_set_pd(h, g);
  for (int64_t f = f_begin; f < f_end; ++f) {
    double* cell = hist + (f * B + row[f]) * 2;
    _mm_storeu_pd(cell, _mm_add_pd(_mm_loadu_pd(cell), gh));
  }
#else
  for (int64_t f = f_begin; f < f_end; ++f) {
    double* cell = hist + (f * B + row[f]) * 2;
    cell[0] += g;
    cell[1] += h;
  }
#endif
}

// The active rows grouped by slot, each group in row order (a counting sort over row blocks):
// offsets (num_slots + 1) into rows.
void group_rows_by_slot(const GbdtHistogram& a, std::vector<int64_t>& offsets,
                        std::vector<int32_t>& rows) {
  const int64_t S = a.num_slots;
  const int64_t blocks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(),
                                                                a.rows / kRowGrain));
  std::vector<int64_t> counts(blocks * (S + 1), 0);  // per block: rows per slot, then offsets
  const auto block_rows = [&](int64_t b) {
    return std::pair<int64_t, int64_t>{a.rows * b / blocks, a.rows * (b + 1) / blocks};
  };
  at::parallel_for(0, blocks, 1, [&](int64_t b_begin, int64_t b_end) {
    for (int64_t b = b_begin; b < b_end; ++b) {
      auto [begin, end] = block_rows(b);
      int64_t* count = counts.data() + b * (S + 1);
      for (int64_t r = begin; r < end; ++r) {
        const int32_t s = a.slot_of_node[a.node[r]];
        if (s >= 0) ++count[s];
      }
    }
  });
  offsets.assign(S + 1, 0);
  for (int64_t s = 0; s < S; ++s) {  // slot-major, block-minor: row order within a slot
    int64_t next = offsets[s];
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t n = counts[b * (S + 1) + s];
      counts[b * (S + 1) + s] = next;
      next += n;
    }
    offsets[s + 1] = next;
  }
  rows.resize(offsets[S]);
  at::parallel_for(0, blocks, 1, [&](int64_t b_begin, int64_t b_end) {
    for (int64_t b = b_begin; b < b_end; ++b) {
      auto [begin, end] = block_rows(b);
      int64_t* cursor = counts.data() + b * (S + 1);
      for (int64_t r = begin; r < end; ++r) {
        const int32_t s = a.slot_of_node[a.node[r]];
        if (s >= 0) rows[cursor[s]++] = static_cast<int32_t>(r);
      }
    }
  });
}

template <typename T>
void histogram(const GbdtHistogram& a) {
  const T* grad = static_cast<const T*>(a.grad);
  const T* hess = static_cast<const T*>(a.hess);
  const int64_t F = a.features, B = a.num_bins, S = a.num_slots;
  // Rows grouped by slot, so that each slot's histogram stays in cache while its rows stream
  // past; with one slot the rows are read in place.
  std::vector<int64_t> offsets;
  std::vector<int32_t> order;
  const bool grouped = S > 1;
  if (grouped) group_rows_by_slot(a, offsets, order);
  const int64_t threads = std::min<int64_t>(at::get_num_threads(), F);
  // Small problems on one thread: a parallel region costs more than it saves.
  const int64_t tasks = a.rows * F < (int64_t(1) << 16) ? 1 : threads;
  const auto run = [&](int64_t f_begin, int64_t f_end) {
    for (int64_t s = 0; s < S; ++s) {
      std::memset(a.hist + (s * F + f_begin) * B * 2, 0,
                  (f_end - f_begin) * B * 2 * sizeof(double));
    }
    if (!grouped) {
      for (int64_t r = 0; r < a.rows; ++r) {
        if (a.slot_of_node[a.node[r]] < 0) continue;
        add_row(a.hist, a.bins + r * F, f_begin, f_end, B, grad[r], hess[r]);
      }
      return;
    }
    for (int64_t s = 0; s < S; ++s) {
      double* hist = a.hist + s * F * B * 2;
      const int64_t end = offsets[s + 1];
      for (int64_t i = offsets[s]; i < end; ++i) {
        const int64_t r = order[i];
        if (i + kPrefetchAhead < end) {
          const int64_t ahead = order[i + kPrefetchAhead];
          __builtin_prefetch(a.bins + ahead * F + f_begin);
          __builtin_prefetch(grad + ahead);
          __builtin_prefetch(hess + ahead);
        }
        add_row(hist, a.bins + r * F, f_begin, f_end, B, grad[r], hess[r]);
      }
    }
  };
  if (tasks == 1) return run(0, F);
  at::parallel_for(0, tasks, 1, [&](int64_t t_begin, int64_t t_end) {
    for (int64_t t = t_begin; t < t_end; ++t) run(F * t / tasks, F * (t + 1) / tasks);
  });
}

void best_splits(const GbdtBestSplits& a) {
  // Every (slot, feature) on its own, then each slot's features in order: deterministic.
  const int64_t items = a.num_slots * a.features;
  std::vector<gbdt::Split> per_feature(items);
  at::parallel_for(0, items, 16, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) per_feature[i] = gbdt::best_split_of_item(a, i);
  });
  for (int64_t s = 0; s < a.num_slots; ++s) gbdt::write_best_split(a, per_feature.data(), s);
}

void advance(const GbdtAdvance& a) {
  // Row blocks with their own counts, summed after (integers: any order gives the same).
  const int64_t blocks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(),
                                                                a.rows / kRowGrain));
  std::vector<int64_t> counts(blocks * a.nodes, 0);
  at::parallel_for(0, blocks, 1, [&](int64_t b_begin, int64_t b_end) {
    for (int64_t b = b_begin; b < b_end; ++b) {
      int64_t* count = counts.data() + b * a.nodes;
      for (int64_t r = a.rows * b / blocks; r < a.rows * (b + 1) / blocks; ++r) {
        ++count[gbdt::advance_row(a, r)];
      }
    }
  });
  for (int64_t n = 0; n < a.nodes; ++n) {
    int64_t total = 0;
    for (int64_t b = 0; b < blocks; ++b) total += counts[b * a.nodes + n];
    a.count[n] = total;
  }
}

// Rows b .. b + m - 1 add tree t's values at their leaves node[0 .. m - 1].
inline void add_leaf_values(const GbdtPredict& a, int64_t t, int64_t b, int64_t m,
                            const int32_t* node) {
  const float* value = a.value + t * a.nodes;
  double* out = a.out + b * a.num_groups + a.group[t];
  for (int64_t i = 0; i < m; ++i) out[i * a.num_groups] += value[node[i]];
}

#if defined(CPU_CAPABILITY_AVX512)
// The leaves of 16 rows (float features, `features` apart) in one tree of >= 7 nodes, a level
// per step with gathers: the walk of gbdt::value_goes_left, 16 lanes at once.
inline void walk_16_rows_avx512(const float* rows, int64_t features, const int32_t* feature,
                                const float* threshold, const bool* default_left,
                                int64_t steps, int32_t* node) {
  const __m512i row_offset = _mm512_mullo_epi32(
      _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
      _mm512_set1_epi32(static_cast<int32_t>(features)));
  __m512i n = _mm512_setzero_si512();
  for (int64_t s = 0; s < steps; ++s) {
    const __m512i f = _mm512_i32gather_epi32(n, feature, 4);
    const __mmask16 split = _mm512_cmpge_epi32_mask(f, _mm512_setzero_si512());
    if (split == 0) break;
    const __m512 v = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), split,
                                              _mm512_add_epi32(row_offset, f), rows, 4);
    const __m512 thr = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), split, n, threshold, 4);
    __mmask16 left = _mm512_mask_cmp_ps_mask(split, v, thr, _CMP_LE_OQ);
    // Missing values go the default way. A split node n has 2n + 2 < nodes, so with nodes >= 7
    // the 4-byte gather of its default_left stays inside the tree.
    const __mmask16 missing = _mm512_mask_cmp_ps_mask(split, v, v, _CMP_UNORD_Q);
    if (missing) {
      const __m512i d = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), missing, n,
                                                    default_left, 1);
      left |= _mm512_mask_test_epi32_mask(missing, d, _mm512_set1_epi32(0xFF));
    }
    // child = 2n + 2 - left, for the lanes at a split
    const __m512i child = _mm512_mask_sub_epi32(
        _mm512_add_epi32(_mm512_add_epi32(n, n), _mm512_set1_epi32(2)), left,
        _mm512_add_epi32(_mm512_add_epi32(n, n), _mm512_set1_epi32(2)), _mm512_set1_epi32(1));
    n = _mm512_mask_blend_epi32(split, n, child);
  }
  _mm512_storeu_si512(node, n);
}
#endif

template <typename X, typename Th>
void predict(const GbdtPredict& a) {
  const X* x = static_cast<const X*>(a.x);
  const Th* threshold = static_cast<const Th*>(a.threshold);
  // The deepest node of the heap; the ops checked that every split's children are in it.
  int64_t steps = 0;
  while ((int64_t(2) << steps) - 1 < a.nodes) ++steps;
  if (a.features == 0) steps = 0;  // no feature to split on: every root is a leaf
  // Blocks of rows walk one tree after another (it stays in L1 for the block), all rows of a
  // block a level at a time with no branch on the data: a row in a leaf stands still, and the
  // rows' walks overlap. Each row still adds its trees' values in tree order.
  constexpr int64_t kBlock = 64;
  at::parallel_for(0, a.rows, 4 * kBlock, [&](int64_t begin, int64_t end) {
    int32_t node[kBlock];
    for (int64_t b = begin; b < end; b += kBlock) {
      const int64_t m = std::min(end, b + kBlock) - b;
      const X* rows = x + b * a.features;
      for (int64_t t = 0; t < a.trees; ++t) {
        const int32_t* feature = a.feature + t * a.nodes;
        const Th* thresh = threshold + t * a.nodes;
        const bool* default_left = a.default_left + t * a.nodes;
#if defined(CPU_CAPABILITY_AVX512)
        if constexpr (std::is_same_v<X, float> && std::is_same_v<Th, float>) {
          if (m == kBlock && a.nodes >= 7 && a.features * kBlock < (int64_t(1) << 31) &&
              a.categorical == nullptr) {
            walk_16_rows_avx512(rows, a.features, feature, thresh, default_left, steps, node);
            walk_16_rows_avx512(rows + 16 * a.features, a.features, feature, thresh,
                                default_left, steps, node + 16);
            walk_16_rows_avx512(rows + 32 * a.features, a.features, feature, thresh,
                                default_left, steps, node + 32);
            walk_16_rows_avx512(rows + 48 * a.features, a.features, feature, thresh,
                                default_left, steps, node + 48);
            add_leaf_values(a, t, b, m, node);
            continue;
          }
        }
#endif
        std::fill(node, node + m, 0);
        const int32_t* cat_left =
            a.cat_left ? a.cat_left + t * a.nodes * gbdt::kCategoryWords : nullptr;
        for (int64_t s = 0; s < steps; ++s) {
          bool moved = false;
          for (int64_t i = 0; i < m; ++i) {
            const int32_t n = node[i], f = feature[n];
            const X v = rows[i * a.features + (f < 0 ? 0 : f)];
            const bool left =
                cat_left && f >= 0 && a.categorical[f]
                    ? gbdt::value_in_category_set(v, cat_left + n * gbdt::kCategoryWords,
                                                  default_left[n], a.missing_bin)
                    : gbdt::value_goes_left(v, thresh[n], default_left[n], a.missing_bin);
            node[i] = f < 0 ? n : 2 * n + 2 - left;
            moved |= f >= 0;
          }
          if (!moved) break;
        }
        add_leaf_values(a, t, b, m, node);
      }
    }
  });
}

// The gradients a tree's histograms sum, kPerBin cells per bin and per row (a row's values
// are gathered in node order first, as LightGBM's ordered gradients): float64 (G, H) pairs,
template <typename T>
struct FloatGradients {
  using Cell = double;
  static constexpr int64_t kPerBin = 2;
  const T* grad;
  const T* hess;
  void gather(int64_t r, Cell* out) const {
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
  static constexpr int64_t kPerBin = 1;
  const int64_t* packed;  // per row
  double g_scale, h_scale;
  void gather(int64_t r, Cell* out) const { out[0] = packed[r]; }
  static void add(Cell* bin, const Cell* value) { bin[0] += value[0]; }
  PackedBins bins(const Cell* hist) const { return {hist, g_scale, h_scale}; }
};

// A uniform number in [0, 1) from (seed, i): splitmix64, so that stochastic rounding does not
// depend on the thread that rounds.
inline double uniform(uint64_t seed, uint64_t i) {
  uint64_t z = seed + (i + 1) * 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return static_cast<double>((z ^ (z >> 31)) >> 11) * 0x1.0p-53;
}

// The sizes of a tree's gradients, over every process of a data-parallel fit: the largest
// |g| and h (the quantization scales), and the largest sums of |g| and h of one process (the
// bound of the fixed-point sums); the sums only in a data-parallel fit.
struct GradientSizes {
  double g_max = 0, h_max = 0, g_sum = 0, h_sum = 0;
};
static_assert(sizeof(GradientSizes) == 4 * sizeof(double), "reduced as 4 doubles");

template <typename T>
GradientSizes gradient_sizes(const GbdtGrowTree& a, const T* grad, const T* hess) {
  GradientSizes s;
  if (a.quantize_bins == 0 && a.all_reduce == nullptr) return s;
  std::vector<GradientSizes> parts(std::max<int64_t>(1, at::get_num_threads()));
  at::parallel_for(0, a.rows, kRowGrain, [&](int64_t lo, int64_t hi) {
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
  if (a.all_reduce) (*a.all_reduce)(GbdtReduce::kMax, &s, 4);
  return s;
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
  at::parallel_for(0, a.rows, kRowGrain, [&](int64_t lo, int64_t hi) {
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

// One feature's histogram of a node's rows: bin column[index[i]] += values[i] for i < n.
// Long runs send every other row to `second` (zeroed here, summed in after): with few
// distinct values a row mostly hits the bin the row before it hit, and a single
// read-add-write chain per bin would serialize on the store-to-load latency.
template <typename Gradients>
void add_rows(typename Gradients::Cell* hist, std::vector<typename Gradients::Cell>& second,
              int64_t B, const uint8_t* column, const int32_t* index,
              const typename Gradients::Cell* values, int64_t n) {
  using Cell = typename Gradients::Cell;
  constexpr int64_t k = Gradients::kPerBin;
  const bool two = n >= kTwoChainRows;
  if (two) second.assign(B * k, Cell(0));
  Cell* const targets[2] = {hist, two ? second.data() : hist};
  for (int64_t i = 0; i < n; ++i) {
    Gradients::add(targets[i & 1] + column[index[i]] * k, values + i * k);
  }
  if (two) {
    for (int64_t c = 0; c < B * k; ++c) hist[c] += second[c];
  }
}

// A block of a split node's rows (positions in the row index) for the parallel partition.
struct PartitionBlock {
  int64_t node, begin, end;
  int64_t left;                // rows of the block going left
  int64_t left_at, right_at;   // where they go
};

template <typename T, typename Gradients>
void grow_tree(const GbdtGrowTree& a, const Gradients& grads, const GradientSizes& sizes) {
  using Cell = typename Gradients::Cell;
  const int64_t F = a.features, B = a.num_bins, missing = B - 1;
  const int64_t feature_cells = B * Gradients::kPerBin, cells = F * feature_cells;
  const int64_t nodes = (int64_t(2) << a.max_depth) - 1;
  // Node n's rows are index[begin[n], end[n]), in row order.
  std::vector<int32_t> index(a.rows), moved(a.rows);
  std::iota(index.begin(), index.end(), 0);
  std::vector<int64_t> begin(nodes, 0), end(nodes, 0);
  std::vector<char> reached(nodes, 0);
  end[0] = a.rows;
  reached[0] = 1;
  // Each node's rows (in every process of a data-parallel fit): which child to build, and the
  // categories' support.
  std::vector<int64_t> node_rows(nodes, 0);
  node_rows[0] = a.rows;
  // A data-parallel fit sums values (histogram cells: float64 in fixed point, or packed
  // integers) and row counts over the processes, in place, in one collective.
  const double scale = a.all_reduce ? gbdt::fixed_point_scale(
      a.processes * std::max(sizes.g_sum, sizes.h_sum)) : 1.0;
  std::vector<int64_t> wire;
  const auto combine = [&](auto* values, int64_t n, int64_t* counts, int64_t m) {
    if (a.all_reduce == nullptr) return;
    using V = std::remove_pointer_t<decltype(values)>;
    wire.resize(n + m);
    at::parallel_for(0, n, kRowGrain, [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) {
        if constexpr (std::is_same_v<V, double>) {
          wire[i] = std::llrint(values[i] * scale);
        } else {
          wire[i] = values[i];
        }
      }
    });
    std::copy(counts, counts + m, wire.begin() + n);
    (*a.all_reduce)(GbdtReduce::kSum, wire.data(), n + m);
    at::parallel_for(0, n, kRowGrain, [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) {
        if constexpr (std::is_same_v<V, double>) {
          values[i] = static_cast<double>(wire[i]) / scale;
        } else {
          values[i] = wire[i];
        }
      }
    });
    std::copy(wire.begin() + n, wire.end(), counts);
  };

  // The histograms of nodes list[0, count) into out (count x cells): the nodes' values
  // gathered in row-index order, then in parallel over features, every bin summed by one
  // thread in a fixed order (the same for any thread count).
  std::vector<Cell> values;
  std::vector<int64_t> value_at;
  const auto build = [&](const int32_t* list, int64_t count, Cell* out) {
    value_at.assign(count + 1, 0);
    for (int64_t s = 0; s < count; ++s) {
      value_at[s + 1] = value_at[s] + end[list[s]] - begin[list[s]];
    }
    const int64_t total = value_at[count];
    values.resize(total * Gradients::kPerBin);
    at::parallel_for(0, total, kRowGrain, [&](int64_t lo, int64_t hi) {
      int64_t s = std::upper_bound(value_at.begin(), value_at.end(), lo) - value_at.begin() - 1;
      for (int64_t p = lo; p < hi; ++p) {
        while (p >= value_at[s + 1]) ++s;
        grads.gather(index[begin[list[s]] + p - value_at[s]],
                     values.data() + p * Gradients::kPerBin);
      }
    });
    const auto run = [&](int64_t f_begin, int64_t f_end) {
      std::vector<Cell> second;
      for (int64_t s = 0; s < count; ++s) {
        const int64_t n = list[s];
        const Cell* v = values.data() + value_at[s] * Gradients::kPerBin;
        for (int64_t f = f_begin; f < f_end; ++f) {
          Cell* h = out + s * cells + f * feature_cells;
          std::fill(h, h + feature_cells, Cell(0));
          add_rows<Gradients>(h, second, B, a.bins_by_feature + f * a.rows,
                              index.data() + begin[n], v, end[n] - begin[n]);
        }
      }
    };
    const int64_t tasks = total * F < (int64_t(1) << 16) ? 1 :
                          std::min<int64_t>(at::get_num_threads(), F);
    if (tasks <= 1) return run(0, F);
    at::parallel_for(0, tasks, 1, [&](int64_t t_begin, int64_t t_end) {
      for (int64_t t = t_begin; t < t_end; ++t) run(F * t / tasks, F * (t + 1) / tasks);
    });
  };

  // Per node of `level` (its histograms in hist), the best split over the allowed features.
  std::vector<gbdt::Split> per_feature;
  const auto find_splits = [&](const std::vector<int32_t>& level, const Cell* hist) {
    const int64_t S = static_cast<int64_t>(level.size());
    per_feature.resize(S * F);
    at::parallel_for(0, S * F, 16, [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) {
        const int64_t f = i % F;
        const auto bins = grads.bins(hist + i * feature_cells);
        per_feature[i] =
            a.feature_mask && !a.feature_mask[f] ? gbdt::no_split()
            : a.categorical && a.categorical[f]
                ? gbdt::best_categorical_split(bins, B, node_rows[level[i / F]], a.reg_lambda,
                                               a.gamma, a.min_child_weight)
                : gbdt::best_split_of_feature(bins, B, a.reg_lambda, a.gamma, a.min_child_weight);
      }
    });
    std::vector<gbdt::NodeSplit> splits(S);
    for (int64_t s = 0; s < S; ++s) {
      double g_total = 0, h_total = 0;
      if (F > 0) gbdt::bin_totals(grads.bins(hist + s * cells), B, g_total, h_total);
      splits[s] = gbdt::choose_split(per_feature.data() + s * F, F, g_total, h_total);
    }
    return splits;
  };

  // The rows of every split node, stably partitioned into its children: blocks decide in
  // parallel (reading the split feature's column, where a node's rows share cache lines),
  // then scatter to offsets from the blocks before them.
  std::vector<uint8_t> goes_left(a.rows);
  const auto partition = [&](const std::vector<int64_t>& split_nodes) {
    std::vector<PartitionBlock> blocks;
    for (const int64_t n : split_nodes) {
      for (int64_t b = begin[n]; b < end[n]; b += kPartitionBlock) {
        blocks.push_back({n, b, std::min(end[n], b + kPartitionBlock), 0, 0, 0});
      }
    }
    const auto each_block = [&](auto&& body) {
      at::parallel_for(0, static_cast<int64_t>(blocks.size()), 1, [&](int64_t lo, int64_t hi) {
        for (int64_t k = lo; k < hi; ++k) body(blocks[k]);
      });
    };
    each_block([&](PartitionBlock& blk) {
      const int64_t f = a.feature[blk.node];
      const uint8_t* column = a.bins_by_feature + f * a.rows;
      const int64_t split_bin = a.split_bin[blk.node];
      const bool default_left = a.default_left[blk.node];
      const auto decide = [&](auto&& left_of_bin) {
        int64_t left = 0;
        for (int64_t i = blk.begin; i < blk.end; ++i) {
          const bool l = left_of_bin(column[index[i]]);
          goes_left[i] = l;
          left += l;
        }
        blk.left = left;
      };
      if (a.categorical && a.categorical[f]) {
        const int32_t* words = a.cat_left + blk.node * gbdt::kCategoryWords;
        decide([&](int64_t bin) {
          return gbdt::category_goes_left(bin, missing, words, default_left);
        });
      } else {
        decide([&](int64_t bin) {
          return gbdt::goes_left(bin, missing, split_bin, default_left);
        });
      }
    });
    for (size_t k = 0; k < blocks.size();) {  // one node's blocks at a time
      const int64_t n = blocks[k].node;
      size_t last = k;
      int64_t left = 0;
      for (; last < blocks.size() && blocks[last].node == n; ++last) left += blocks[last].left;
      int64_t left_at = begin[n], right_at = begin[n] + left;
      begin[2 * n + 1] = begin[n], end[2 * n + 1] = right_at;
      begin[2 * n + 2] = right_at, end[2 * n + 2] = end[n];
      for (; k < last; ++k) {
        blocks[k].left_at = left_at, blocks[k].right_at = right_at;
        left_at += blocks[k].left;
        right_at += (blocks[k].end - blocks[k].begin) - blocks[k].left;
      }
    }
    each_block([&](PartitionBlock& blk) {
      int64_t left_at = blk.left_at, right_at = blk.right_at;
      for (int64_t i = blk.begin; i < blk.end; ++i) {  // no branch on the data
        const int64_t l = goes_left[i];
        moved[right_at + (left_at - right_at) * l] = index[i];
        left_at += l;
        right_at += 1 - l;
      }
    });
    each_block([&](PartitionBlock& blk) {
      std::copy(moved.begin() + blk.begin, moved.begin() + blk.end, index.begin() + blk.begin);
    });
  };

  std::vector<int32_t> level{0};  // this level's nodes, their histograms in this order
  std::unique_ptr<Cell[]> hist(new Cell[cells]);
  build(level.data(), 1, hist.get());
  combine(hist.get(), cells, node_rows.data(), 1);
  if (F > 0) gbdt::bin_totals(grads.bins(hist.get()), B, a.sums[0], a.sums[1]);
  for (int64_t depth = 0; depth < a.max_depth; ++depth) {
    const std::vector<gbdt::NodeSplit> splits = find_splits(level, hist.get());
    std::vector<int64_t> split_nodes, split_slots;
    for (int64_t s = 0; s < static_cast<int64_t>(level.size()); ++s) {
      const gbdt::NodeSplit& c = splits[s];
      if (c.feature < 0 || !(c.split.gain > 0)) continue;
      const int64_t n = level[s];
      a.feature[n] = static_cast<int32_t>(c.feature);
      if (a.categorical && a.categorical[c.feature]) {
        gbdt::categorical_left_set(grads.bins(hist.get() + s * cells + c.feature * feature_cells),
                                   B, node_rows[n], c.split.bin,
                                   a.cat_left + n * gbdt::kCategoryWords);
        a.split_bin[n] = 0;
      } else {
        a.split_bin[n] = static_cast<int32_t>(c.split.bin);
      }
      a.default_left[n] = c.split.default_left;
      a.gain[n] = c.split.gain;
      a.sums[2 * (2 * n + 1)] = c.split.g_left, a.sums[2 * (2 * n + 1) + 1] = c.split.h_left;
      a.sums[2 * (2 * n + 2)] = c.g_right, a.sums[2 * (2 * n + 2) + 1] = c.h_right;
      reached[2 * n + 1] = reached[2 * n + 2] = 1;
      split_nodes.push_back(n);
      split_slots.push_back(s);
    }
    if (split_nodes.empty()) break;
    partition(split_nodes);
    if (depth + 1 == a.max_depth) break;  // the children are leaves: their sums are known
    // Next level: the smaller child of each split built, its sibling = parent - it.
    const int64_t P = static_cast<int64_t>(split_nodes.size());
    std::vector<int64_t> child_rows(2 * P);
    for (int64_t i = 0; i < 2 * P; ++i) {
      const int64_t child = 2 * split_nodes[i / 2] + 1 + i % 2;
      child_rows[i] = end[child] - begin[child];
    }
    combine(static_cast<double*>(nullptr), 0, child_rows.data(), 2 * P);
    std::vector<int32_t> next(2 * P);
    for (int64_t i = 0; i < P; ++i) {
      const int64_t l = 2 * split_nodes[i] + 1, r = l + 1;
      node_rows[l] = child_rows[2 * i], node_rows[r] = child_rows[2 * i + 1];
      const bool build_left = node_rows[l] <= node_rows[r];
      next[i] = static_cast<int32_t>(build_left ? l : r);
      next[P + i] = static_cast<int32_t>(build_left ? r : l);
    }
    std::unique_ptr<Cell[]> next_hist(new Cell[2 * P * cells]);
    build(next.data(), P, next_hist.get());
    combine(next_hist.get(), P * cells, nullptr, 0);
    at::parallel_for(0, P, 1, [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) {
        const Cell* parent = hist.get() + split_slots[i] * cells;
        const Cell* small = next_hist.get() + i * cells;
        Cell* large = next_hist.get() + (P + i) * cells;
        for (int64_t c = 0; c < cells; ++c) large[c] = parent[c] - small[c];
      }
    });
    level = std::move(next);
    hist = std::move(next_hist);
  }
  std::vector<int64_t> leaves;
  for (int64_t n = 0; n < nodes; ++n) {
    if (reached[n] && a.feature[n] < 0) leaves.push_back(n);
  }
  // Each leaf's rows; with quantized gradients also its sums renewed from the full-precision
  // gradients (its value must not carry the rounding).
  const T* grad = static_cast<const T*>(a.grad);
  const T* hess = static_cast<const T*>(a.hess);
  at::parallel_for(0, static_cast<int64_t>(leaves.size()), 1, [&](int64_t lo, int64_t hi) {
    for (int64_t k = lo; k < hi; ++k) {
      const int64_t n = leaves[k];
      for (int64_t i = begin[n]; i < end[n]; ++i) a.leaf[index[i]] = static_cast<int32_t>(n);
      if (a.quantize_bins == 0) continue;
      double g = 0, h = 0;
      for (int64_t i = begin[n]; i < end[n]; ++i) g += grad[index[i]], h += hess[index[i]];
      a.sums[2 * n] = g, a.sums[2 * n + 1] = h;
    }
  });
  if (a.quantize_bins != 0 && a.all_reduce) {  // the leaves' sums over every process
    std::vector<double> leaf_sums(2 * leaves.size());
    for (size_t k = 0; k < leaves.size(); ++k) {
      leaf_sums[2 * k] = a.sums[2 * leaves[k]], leaf_sums[2 * k + 1] = a.sums[2 * leaves[k] + 1];
    }
    combine(leaf_sums.data(), static_cast<int64_t>(leaf_sums.size()), nullptr, 0);
    for (size_t k = 0; k < leaves.size(); ++k) {
      a.sums[2 * leaves[k]] = leaf_sums[2 * k], a.sums[2 * leaves[k] + 1] = leaf_sums[2 * k + 1];
    }
  }
}

template <typename T>
void grow_tree(const GbdtGrowTree& a) {
  const T* grad = static_cast<const T*>(a.grad);
  const T* hess = static_cast<const T*>(a.hess);
  const GradientSizes sizes = gradient_sizes(a, grad, hess);
  if (a.quantize_bins == 0) return grow_tree<T>(a, FloatGradients<T>{grad, hess}, sizes);
  std::vector<int64_t> packed;
  grow_tree<T>(a, quantize_gradients(a, grad, hess, sizes, packed), sizes);
}

}  // namespace

void gbdt_bin_cpu_kernel(const GbdtBin& a) {
  if (a.dtype == at::kDouble) bin<double>(a); else bin<float>(a);
}

void gbdt_histogram_cpu_kernel(const GbdtHistogram& a) {
  if (a.dtype == at::kDouble) histogram<double>(a); else histogram<float>(a);
}

void gbdt_best_splits_cpu_kernel(const GbdtBestSplits& a) { best_splits(a); }

void gbdt_advance_cpu_kernel(const GbdtAdvance& a) { advance(a); }

void gbdt_predict_cpu_kernel(const GbdtPredict& a) {
  if (a.dtype == at::kByte) predict<uint8_t, int32_t>(a);
  else if (a.dtype == at::kDouble) predict<double, double>(a);
  else predict<float, float>(a);
}

void gbdt_grow_tree_cpu_kernel(const GbdtGrowTree& a) {
  if (a.dtype == at::kDouble) grow_tree<double>(a); else grow_tree<float>(a);
}

}  // namespace CPU_CAPABILITY
}  // namespace pynotes
