// Gradient-boosting kernels on CPU, compiled once per instruction set (common/cpu_dispatch.h):
// everything here is in namespace pynotes::CPU_CAPABILITY. The formulas are in gbdt.h; a whole
// tree in one call is tree_grower_cpu_kernel.cpp.
//
// The histogram is built in parallel over features: each thread owns a range of features and
// reads every active row (its slot's rows together, in row order), so every histogram cell is
// summed by one thread in row order. No atomics and no per-thread copies to reduce, and the
// result does not depend on the number of threads.
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif
#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
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

#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
// A batch of float features and thresholds walks its trees in blocks of kWalkRows rows with
// SIMD gathers (walk_rows below).
constexpr int64_t kWalkRows = 64;

// One tree of `nodes` entries as walk_rows reads it, and the ensemble's categorical features.
struct WalkTree {
  int64_t nodes;
  const int32_t* feature;
  const float* threshold;
  const bool* default_left;
  const int32_t* categorical;  // per feature 1 or 0 (int32: gathered), or nullptr: none
  const int32_t* cat_left;     // (nodes, gbdt::kCategoryWords), with categorical
};
#endif

#if defined(CPU_CAPABILITY_AVX512)
// The leaves of kWalkRows rows (float features, `features` apart) in one tree of >= 7 nodes:
// gbdt::value_goes_left's walk, a level per step for all rows, 4 vectors of 16 lanes whose
// gathers overlap. A row at a leaf stays there. A row still walking at step s is at a node of
// level s (2^s - 1 .. 2^(s+1) - 2), so down to level 5 the level's features and thresholds fit
// two registers and a permute reads them; deeper levels gather them. A categorical split
// (gbdt::value_in_category_set) gathers a word of its bitset.
inline void walk_rows(const float* rows, int64_t features, const WalkTree& tree,
                      int64_t steps, int32_t* node) {
  constexpr int kVectors = kWalkRows / 16;
  const int32_t* feature = tree.feature;
  const float* threshold = tree.threshold;
  constexpr int64_t kTableLevels = 6;  // levels 0 .. 5: at most 32 nodes
  const __m512i zero = _mm512_setzero_si512(), one = _mm512_set1_epi32(1);
  const __m512i lane_offset = _mm512_mullo_epi32(
      _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
      _mm512_set1_epi32(static_cast<int32_t>(features)));
  __m512i n[kVectors];
  __mmask16 walking[kVectors];
  for (int k = 0; k < kVectors; ++k) {
    n[k] = zero;
    walking[k] = 0xFFFF;
  }
  for (int64_t s = 0; s < steps; ++s) {
    __mmask16 any = 0;
    for (int k = 0; k < kVectors; ++k) any |= walking[k];
    if (any == 0) break;
    __m512i f[kVectors];
    __m512 thr[kVectors];
    if (s < kTableLevels) {
      const int64_t first = (int64_t(1) << s) - 1;
      const int64_t level_nodes = std::min<int64_t>(int64_t(1) << s, tree.nodes - first);
      const auto in_tree = [&](int64_t from) {  // the table's lanes that are in the tree
        return static_cast<__mmask16>(
            (uint32_t(1) << std::clamp<int64_t>(level_nodes - from, 0, 16)) - 1);
      };
      const __m512i f_lo = _mm512_maskz_loadu_epi32(in_tree(0), feature + first);
      const __m512i f_hi = _mm512_maskz_loadu_epi32(in_tree(16), feature + first + 16);
      const __m512 t_lo = _mm512_maskz_loadu_ps(in_tree(0), threshold + first);
      const __m512 t_hi = _mm512_maskz_loadu_ps(in_tree(16), threshold + first + 16);
      const __m512i first_v = _mm512_set1_epi32(static_cast<int32_t>(first));
      for (int k = 0; k < kVectors; ++k) {
        const __m512i i = _mm512_sub_epi32(n[k], first_v);  // (any value where not walking)
        f[k] = _mm512_permutex2var_epi32(f_lo, i, f_hi);
        thr[k] = _mm512_permutex2var_ps(t_lo, i, t_hi);
      }
    } else {
      for (int k = 0; k < kVectors; ++k) {
        f[k] = _mm512_mask_i32gather_epi32(zero, walking[k], n[k], feature, 4);
        thr[k] = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), walking[k], n[k], threshold, 4);
      }
    }
    for (int k = 0; k < kVectors; ++k) {
      const __mmask16 split = _mm512_mask_cmpge_epi32_mask(walking[k], f[k], zero);
      walking[k] = split;
      const __m512i at = _mm512_add_epi32(
          _mm512_add_epi32(lane_offset, _mm512_set1_epi32(static_cast<int32_t>(
                                            16 * k * features))), f[k]);
      const __m512 v = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), split, at, rows, 4);
      __mmask16 left = _mm512_mask_cmp_ps_mask(split, v, thr[k], _CMP_LE_OQ);
      __mmask16 by_default = _mm512_mask_cmp_ps_mask(split, v, v, _CMP_UNORD_Q);  // missing
      const __mmask16 cat = tree.categorical == nullptr ? 0 : _mm512_mask_test_epi32_mask(
          split, _mm512_mask_i32gather_epi32(zero, split, f[k], tree.categorical, 4),
          _mm512_set1_epi32(-1));
      if (cat) {  // a code in [0, 32 kCategoryWords) goes by its bit; any other value: missing
        const __m512i code = _mm512_cvttps_epi32(v);
        const __mmask16 is_code =
            _mm512_mask_cmp_ps_mask(cat, v, _mm512_setzero_ps(), _CMP_GE_OQ) &
            _mm512_mask_cmp_ps_mask(cat, v, _mm512_set1_ps(32 * gbdt::kCategoryWords),
                                    _CMP_LT_OQ) &
            _mm512_mask_cmp_ps_mask(cat, v, _mm512_cvtepi32_ps(code), _CMP_EQ_OQ);
        const __m512i word_at = _mm512_add_epi32(
            _mm512_mullo_epi32(n[k], _mm512_set1_epi32(gbdt::kCategoryWords)),
            _mm512_srli_epi32(code, 5));
        const __m512i word = _mm512_mask_i32gather_epi32(zero, is_code, word_at,
                                                         tree.cat_left, 4);
        const __mmask16 bit = _mm512_test_epi32_mask(
            _mm512_srlv_epi32(word, _mm512_and_si512(code, _mm512_set1_epi32(31))), one);
        left = (left & ~cat) | (is_code & bit);
        by_default = (by_default & ~cat) | (cat & ~is_code);
      }
      // Missing values go the default way. A split node n has 2n + 2 < nodes, so with nodes
      // >= 7 the 4-byte gather of its default_left stays inside the tree.
      if (by_default) {
        const __m512i d = _mm512_mask_i32gather_epi32(zero, by_default, n[k],
                                                      tree.default_left, 1);
        left |= _mm512_mask_test_epi32_mask(by_default, d, _mm512_set1_epi32(0xFF));
      }
      // child = 2n + 2 - left, for the lanes at a split
      const __m512i right = _mm512_add_epi32(_mm512_add_epi32(n[k], n[k]), _mm512_set1_epi32(2));
      n[k] = _mm512_mask_blend_epi32(split, n[k], _mm512_mask_sub_epi32(right, left, right, one));
    }
  }
  for (int k = 0; k < kVectors; ++k) _mm512_storeu_si512(node + 16 * k, n[k]);
}

#elif defined(CPU_CAPABILITY_AVX2)
// walk_rows of AVX-512 (above) with 8 vectors of 8 lanes, masks in vectors: down to level 3
// the level's nodes fit one register.
inline void walk_rows(const float* rows, int64_t features, const WalkTree& tree,
                      int64_t steps, int32_t* node) {
  constexpr int kVectors = kWalkRows / 8;
  const int32_t* feature = tree.feature;
  const float* threshold = tree.threshold;
  constexpr int64_t kTableLevels = 4;  // levels 0 .. 3: at most 8 nodes
  const __m256i zero = _mm256_setzero_si256(), ones = _mm256_set1_epi32(-1);
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i lane_offset =
      _mm256_mullo_epi32(lane, _mm256_set1_epi32(static_cast<int32_t>(features)));
  __m256i n[kVectors], walking[kVectors];
  for (int k = 0; k < kVectors; ++k) {
    n[k] = zero;
    walking[k] = ones;
  }
  for (int64_t s = 0; s < steps; ++s) {
    __m256i any = zero;
    for (int k = 0; k < kVectors; ++k) any = _mm256_or_si256(any, walking[k]);
    if (_mm256_testz_si256(any, any)) break;
    __m256i f[kVectors];
    __m256 thr[kVectors];
    if (s < kTableLevels) {
      const int64_t first = (int64_t(1) << s) - 1;
      const int64_t level_nodes = std::min<int64_t>(int64_t(1) << s, tree.nodes - first);
      const __m256i in_tree =
          _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int32_t>(level_nodes)), lane);
      const __m256i f_table = _mm256_maskload_epi32(feature + first, in_tree);
      const __m256 t_table = _mm256_maskload_ps(threshold + first, in_tree);
      const __m256i first_v = _mm256_set1_epi32(static_cast<int32_t>(first));
      for (int k = 0; k < kVectors; ++k) {
        const __m256i i = _mm256_sub_epi32(n[k], first_v);  // (any value where not walking)
        f[k] = _mm256_permutevar8x32_epi32(f_table, i);
        thr[k] = _mm256_permutevar8x32_ps(t_table, i);
      }
    } else {
      for (int k = 0; k < kVectors; ++k) {
        f[k] = _mm256_mask_i32gather_epi32(zero, feature, n[k], walking[k], 4);
        thr[k] = _mm256_mask_i32gather_ps(_mm256_setzero_ps(), threshold, n[k],
                                          _mm256_castsi256_ps(walking[k]), 4);
      }
    }
    for (int k = 0; k < kVectors; ++k) {
      const __m256i split = _mm256_and_si256(walking[k], _mm256_cmpgt_epi32(f[k], ones));
      walking[k] = split;
      const __m256i at = _mm256_add_epi32(
          _mm256_add_epi32(lane_offset, _mm256_set1_epi32(static_cast<int32_t>(
                                            8 * k * features))), f[k]);
      const __m256 v = _mm256_mask_i32gather_ps(_mm256_setzero_ps(), rows, at,
                                                _mm256_castsi256_ps(split), 4);
      __m256i left = _mm256_and_si256(
          split, _mm256_castps_si256(_mm256_cmp_ps(v, thr[k], _CMP_LE_OQ)));
      __m256i by_default = _mm256_and_si256(  // missing
          split, _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q)));
      const __m256i cat = tree.categorical == nullptr ? zero : _mm256_and_si256(
          split, _mm256_xor_si256(ones, _mm256_cmpeq_epi32(zero, _mm256_mask_i32gather_epi32(
                                                                 zero, tree.categorical, f[k],
                                                                 split, 4))));
      if (!_mm256_testz_si256(cat, cat)) {  // as in the AVX-512 walk
        const __m256i code = _mm256_cvttps_epi32(v);
        const __m256 in_range = _mm256_and_ps(
            _mm256_cmp_ps(v, _mm256_setzero_ps(), _CMP_GE_OQ),
            _mm256_cmp_ps(v, _mm256_set1_ps(32 * gbdt::kCategoryWords), _CMP_LT_OQ));
        const __m256i is_code = _mm256_and_si256(cat, _mm256_castps_si256(_mm256_and_ps(
            in_range, _mm256_cmp_ps(v, _mm256_cvtepi32_ps(code), _CMP_EQ_OQ))));
        const __m256i word_at = _mm256_add_epi32(
            _mm256_mullo_epi32(n[k], _mm256_set1_epi32(gbdt::kCategoryWords)),
            _mm256_srli_epi32(code, 5));
        const __m256i word =
            _mm256_mask_i32gather_epi32(zero, tree.cat_left, word_at, is_code, 4);
        const __m256i bit = _mm256_and_si256(
            _mm256_srlv_epi32(word, _mm256_and_si256(code, _mm256_set1_epi32(31))),
            _mm256_set1_epi32(1));
        left = _mm256_or_si256(_mm256_andnot_si256(cat, left),
                               _mm256_and_si256(is_code, _mm256_cmpgt_epi32(bit, zero)));
        by_default = _mm256_or_si256(_mm256_andnot_si256(cat, by_default),
                                     _mm256_andnot_si256(is_code, cat));
      }
      // Missing values go the default way (the 4-byte gather stays inside the tree).
      if (!_mm256_testz_si256(by_default, by_default)) {
        const __m256i d = _mm256_mask_i32gather_epi32(
            zero, reinterpret_cast<const int*>(tree.default_left), n[k], by_default, 1);
        const __m256i d_false =
            _mm256_cmpeq_epi32(_mm256_and_si256(d, _mm256_set1_epi32(0xFF)), zero);
        left = _mm256_or_si256(left, _mm256_andnot_si256(d_false, by_default));
      }
      // child = 2n + 2 - left, left being -1 where true
      const __m256i right = _mm256_add_epi32(_mm256_add_epi32(n[k], n[k]), _mm256_set1_epi32(2));
      n[k] = _mm256_blendv_epi8(n[k], _mm256_add_epi32(right, left), split);
    }
  }
  for (int k = 0; k < kVectors; ++k) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(node + 8 * k), n[k]);
  }
}
#endif

#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
// predict's blocks for float features and thresholds, kWalkRows rows a block: a block
// shorter than that (the end of a thread's rows) walks a copy padded with zeros, whose extra
// rows add nothing.
void predict_blocks(const GbdtPredict& a, int64_t steps) {
  const float* x = static_cast<const float*>(a.x);
  std::vector<int32_t> categorical;
  if (a.categorical != nullptr && a.cat_left != nullptr) {
    categorical.assign(a.categorical, a.categorical + a.features);
  }
  at::parallel_for(0, a.rows, 4 * kWalkRows, [&](int64_t begin, int64_t end) {
    int32_t node[kWalkRows];
    std::vector<float> padded;
    for (int64_t b = begin; b < end; b += kWalkRows) {
      const int64_t m = std::min(end, b + kWalkRows) - b;
      const float* rows = x + b * a.features;
      if (m < kWalkRows) {
        padded.assign(kWalkRows * a.features, 0.0f);
        std::copy(rows, rows + m * a.features, padded.begin());
        rows = padded.data();
      }
      for (int64_t t = 0; t < a.trees; ++t) {
        const WalkTree tree{a.nodes, a.feature + t * a.nodes,
                            static_cast<const float*>(a.threshold) + t * a.nodes,
                            a.default_left + t * a.nodes,
                            categorical.empty() ? nullptr : categorical.data(),
                            categorical.empty() ? nullptr
                                                : a.cat_left + t * a.nodes * gbdt::kCategoryWords};
        walk_rows(rows, a.features, tree, steps, node);
        add_leaf_values(a, t, b, m, node);
      }
    }
  });
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
  const int64_t steps = walk_steps(a);
#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
  if constexpr (std::is_same_v<X, float> && std::is_same_v<Th, float>) {
    if (a.nodes >= 7 && a.features * kWalkRows < (int64_t(1) << 31) &&
        a.nodes * gbdt::kCategoryWords < (int64_t(1) << 31)) {
      return predict_blocks(a, steps);
    }
  }
#endif
  const X* x = static_cast<const X*>(a.x);
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

// GbdtBoostStep: a block of rows at a time, the margins (float) into grad, then the loss
// vectorized over the block; the sigmoid as torch's float kernel computes it.
void boost_step(const GbdtBoostStep& a) {
  using Vec = at::vec::Vectorized<float>;
  std::atomic<bool> in_range{true};
  at::parallel_for(0, a.rows, gbdt::kRowGrain, [&](int64_t lo, int64_t hi) {
    double* const margin = a.margin;
    float* const grad = a.grad;
    float* const hess = a.hess;
    if (a.leaf != nullptr) {
      const int32_t* const leaf = a.leaf;
      const float* const value = a.value;
      const uint32_t nodes = static_cast<uint32_t>(a.nodes);
      bool ok = true;
      for (int64_t r = lo; r < hi; ++r) {
        const uint32_t n = static_cast<uint32_t>(leaf[r]);
        ok &= n < nodes;
        margin[r] += static_cast<double>(value[n < nodes ? n : 0]);
      }
      if (!ok) in_range = false;
    }
    for (int64_t r = lo; r < hi; ++r) grad[r] = static_cast<float>(margin[r]);
    const float* const y = a.y;
    if (a.loss == GbdtBoostStep::kSquaredError) {
      for (int64_t r = lo; r < hi; ++r) grad[r] -= y[r], hess[r] = 1.0f;
    } else {  // logistic: p = sigmoid(m), g = p - y, h = max((1 - p) p, 1e-16)
      // (vectors, a partial one last: every row the same arithmetic for any thread count)
      for (int64_t r = lo; r < hi; r += Vec::size()) {
        const int n = static_cast<int>(std::min<int64_t>(Vec::size(), hi - r));
        const Vec p = ((Vec(0.0f) - Vec::loadu(grad + r, n)).exp() + Vec(1.0f)).reciprocal();
        at::vec::maximum((Vec(1.0f) - p) * p, Vec(1e-16f)).store(hess + r, n);
        (p - Vec::loadu(y + r, n)).store(grad + r, n);
      }
    }
    if (a.weight != nullptr) {
      const float* const w = a.weight;
      for (int64_t r = lo; r < hi; ++r) grad[r] *= w[r], hess[r] *= w[r];
    }
  });
  *a.leaf_in_range = in_range;
}

}  // namespace

void gbdt_boost_step_cpu_kernel(const GbdtBoostStep& a) { boost_step(a); }

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
