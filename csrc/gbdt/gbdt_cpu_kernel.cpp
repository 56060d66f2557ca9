// Gradient-boosting kernels on CPU, compiled once per instruction set (common/cpu_dispatch.h):
// everything here is in namespace pynotes::CPU_CAPABILITY. The formulas are in gbdt.h; a whole
// tree in one call is tree_grower_cpu_kernel.cpp.
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

constexpr int64_t kPrefetchAhead = 16;  // rows

template <typename T>
void bin(const GbdtBin& a) {
  const T* x = static_cast<const T*>(a.x);
  const T* cuts = static_cast<const T*>(a.cuts);
  at::parallel_for(0, a.rows, gbdt::kRowGrain, [&](int64_t begin, int64_t end) {
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
                                                                a.rows / gbdt::kRowGrain));
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
                                                                a.rows / gbdt::kRowGrain));
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

// The child a row goes to from split node n of tree t (feature f = feature[n] >= 0).
template <typename X, typename Th>
inline int32_t child_of(const GbdtPredict& a, int64_t t, int32_t n, int32_t f, X v) {
  const Th* threshold = static_cast<const Th*>(a.threshold) + t * a.nodes;
  const bool default_left = a.default_left[t * a.nodes + n];
  const bool left =
      a.cat_left && a.categorical[f]
          ? gbdt::value_in_category_set(
                v, a.cat_left + (t * a.nodes + n) * gbdt::kCategoryWords, default_left,
                a.missing_bin)
          : gbdt::value_goes_left(v, threshold[n], default_left, a.missing_bin);
  return 2 * n + 2 - left;
}

// The levels of the deepest node of the heap; the op checked that every split's children
// are in it.
int64_t walk_steps(const GbdtPredict& a) {
  int64_t steps = 0;
  while ((int64_t(2) << steps) - 1 < a.nodes) ++steps;
  return a.features == 0 ? 0 : steps;  // no feature to split on: every root is a leaf
}

// A few rows (a one-row prediction): each row walks kTreeLanes trees at once, a level per
// step. The trees' walks are independent, so their loads overlap, where one row walking one
// tree waits on each node's load in turn. Each row still adds its trees' values in tree
// order, so the sums are those of the blocks below. No thread is woken. Every node visited
// and group used is checked (a.bad_node), so the op need not check the whole ensemble again.
template <typename X, typename Th>
void predict_few_rows(const GbdtPredict& a) {
  constexpr int64_t kTreeLanes = 16;
  const X* x = static_cast<const X*>(a.x);
  for (int64_t t = 0; t < a.trees; ++t) {
    if (a.group[t] < 0 || a.group[t] >= a.num_groups ||
        (a.features == 0 && a.feature[t * a.nodes] >= 0)) {
      return void(*a.bad_node = true);
    }
  }
  for (int64_t r = 0; r < a.rows; ++r) {
    const X* row = x + r * a.features;
    for (int64_t t0 = 0; t0 < a.trees; t0 += kTreeLanes) {
      const int64_t k = std::min(kTreeLanes, a.trees - t0);
      int32_t node[kTreeLanes] = {};
      for (bool moved = a.features > 0; moved;) {  // (no feature: every root is a leaf)
        moved = false;
        bool bad = false;
        for (int64_t j = 0; j < k; ++j) {  // no branch on the data: a leaf stands still
          const int32_t n = node[j], f = a.feature[(t0 + j) * a.nodes + n];
          bad |= f < -1 || f >= a.features || (f >= 0 && 2 * int64_t(n) + 2 >= a.nodes);
          const int32_t g = f < 0 || f >= a.features ? 0 : f;
          const int32_t child = child_of<X, Th>(a, t0 + j, n, g, row[g]);
          node[j] = f < 0 || bad ? n : child;
          moved |= f >= 0;
        }
        if (bad) return void(*a.bad_node = true);
      }
      for (int64_t j = 0; j < k; ++j) {
        a.out[r * a.num_groups + a.group[t0 + j]] += a.value[(t0 + j) * a.nodes + node[j]];
      }
    }
  }
}

template <typename X, typename Th>
void predict(const GbdtPredict& a) {
  constexpr int64_t kBlock = 64;
  if (a.rows < gbdt::kFewRows) return predict_few_rows<X, Th>(a);
  const X* x = static_cast<const X*>(a.x);
  const int64_t steps = walk_steps(a);
  // Blocks of rows walk one tree after another (it stays in L1 for the block), all rows of a
  // block a level at a time with no branch on the data: a row in a leaf stands still, and the
  // rows' walks overlap. Each row still adds its trees' values in tree order.
  at::parallel_for(0, a.rows, 4 * kBlock, [&](int64_t begin, int64_t end) {
    int32_t node[kBlock];
    for (int64_t b = begin; b < end; b += kBlock) {
      const int64_t m = std::min(end, b + kBlock) - b;
      const X* rows = x + b * a.features;
      for (int64_t t = 0; t < a.trees; ++t) {
        const int32_t* feature = a.feature + t * a.nodes;
#if defined(CPU_CAPABILITY_AVX512)
        if constexpr (std::is_same_v<X, float> && std::is_same_v<Th, float>) {
          if (m == kBlock && a.nodes >= 7 && a.features * kBlock < (int64_t(1) << 31) &&
              a.categorical == nullptr) {
            const Th* thresh = static_cast<const Th*>(a.threshold) + t * a.nodes;
            const bool* default_left = a.default_left + t * a.nodes;
            for (int64_t i = 0; i < kBlock; i += 16) {
              walk_16_rows_avx512(rows + i * a.features, a.features, feature, thresh,
                                  default_left, steps, node + i);
            }
            add_leaf_values(a, t, b, m, node);
            continue;
          }
        }
#endif
        std::fill(node, node + m, 0);
        for (int64_t s = 0; s < steps; ++s) {
          bool moved = false;
          for (int64_t i = 0; i < m; ++i) {
            const int32_t n = node[i], f = feature[n], g = f < 0 ? 0 : f;
            const int32_t child = child_of<X, Th>(a, t, n, g, rows[i * a.features + g]);
            node[i] = f < 0 ? n : child;
            moved |= f >= 0;
          }
          if (!moved) break;
        }
        add_leaf_values(a, t, b, m, node);
      }
    }
  });
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

}  // namespace CPU_CAPABILITY
}  // namespace pynotes
