// The CPU's recurrent LSTM engine (lstm_step.h, LstmEngineForward / LstmEngineBackward),
// compiled once per instruction set (see common/cpu_dispatch.h): everything here is in
// namespace pynotes::CPU_CAPABILITY. The step kernels are lstm_cpu_kernel.cpp.
//
// Threads own slices of the hidden units in whole SIMD vectors. The recurrent product of a
// slice is a register-blocked micro-kernel: per 4 gates x kBatch rows, accumulators over k,
// each k one vector of 4 gates' weights for L units (packed [k][gate][L], so the loads
// stream) times a broadcast of h[b, k]. The weights of a slice (4 x units x H) are packed once
// per call and stay in that core's cache (at batch 1 in float32 they may be read as stored
// instead, see row_dots). In float32/float64 the engine may make the input
// projection too: before the steps (input_products), or in each step, with the slice's w_ih
// rows packed before its w_hh rows and x_t's rows multiplied into the same accumulators.
// Each step visits a thread's blocks of weights in the reverse order of the step before,
// starting on what was read last: where the blocks outgrow the L2, as much of them as fits is
// still there (in one fixed order, each block would be evicted just before its turn). Blocks
// are independent, so the order does not change the bits.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/Utils.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <thread>
#include <type_traits>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "common/cpu_vec.h"
#include "lstm/lstm.h"
#include "lstm/lstm_gate_row.h"
#include "lstm/lstm_step.h"

namespace pynotes {
namespace CPU_CAPABILITY {
namespace {

// A barrier for the threads of one parallel region that spins: the steps are microseconds
// apart, so sleeping would cost more than the step; it yields after a while (oversubscribed).
class SpinBarrier {
 public:
  void set_threads(int threads) { threads_ = threads; }

  void wait() {
    if (threads_ <= 1) return;
    const int generation = generation_.load(std::memory_order_acquire);
    if (arrived_.fetch_add(1, std::memory_order_acq_rel) == threads_ - 1) {
      arrived_.store(0, std::memory_order_relaxed);
      generation_.store(generation + 1, std::memory_order_release);
      return;
    }
    for (int spins = 0; generation_.load(std::memory_order_acquire) == generation; ++spins) {
      if (spins < (1 << 14)) {
        pause();
      } else {
        std::this_thread::yield();
      }
    }
  }

 private:
  static void pause() {
#if defined(__x86_64__) || defined(_M_X64)
    __builtin_ia32_pause();
#endif
  }

  alignas(64) std::atomic<int> arrived_{0};
  alignas(64) std::atomic<int> generation_{0};
  int threads_ = 1;
};

// Runs fn(thread, threads) on every thread of one parallel region (at most `wanted`), with a
// barrier they share.
template <typename Fn>
void run_team(int wanted, SpinBarrier& barrier, const Fn& fn) {
#ifdef _OPENMP
  if (wanted > 1 && !omp_in_parallel()) {
#pragma omp parallel num_threads(wanted)
    {
#pragma omp single
      barrier.set_threads(omp_get_num_threads());
      fn(omp_get_thread_num(), omp_get_num_threads());
    }
    return;
  }
#endif
  barrier.set_threads(1);
  fn(0, 1);
}

// n zeroed values on cache-line boundaries: the engine streams its packed weights from L2 every
// step, and SIMD loads that straddle two lines halve that bandwidth (std::vector's storage is
// only 16-byte aligned).
template <typename T>
class LineAlignedBuffer {
 public:
  explicit LineAlignedBuffer(int64_t n) {
    const size_t bytes = (static_cast<size_t>(n) * sizeof(T) + 63) / 64 * 64;
    data_.reset(static_cast<T*>(std::aligned_alloc(64, std::max<size_t>(bytes, 64))));
    TORCH_CHECK(data_ != nullptr, "lstm engine: could not allocate ", bytes, " bytes");
    std::fill_n(data_.get(), n, T(0));
  }
  T* data() { return data_.get(); }
  T& operator[](int64_t i) { return data_.get()[i]; }

 private:
  struct Free {
    void operator()(T* p) const { std::free(p); }
  };
  std::unique_ptr<T[], Free> data_;
};

// n values of T on cache-line boundaries, this thread's to reuse from call to call, not zeroed:
// the engine rewrites its packed weights every call, and a fresh buffer of that size (512 KB a
// thread at hidden 256) cost its allocation and zero fill every call, a fixed cost that short
// sequences at batch 1 pay in full. Kept until the thread ends (the largest size so far).
template <typename T>
T* thread_scratch(int64_t n) {
  struct Free {
    void operator()(void* p) const { std::free(p); }
  };
  thread_local std::unique_ptr<void, Free> data;
  thread_local size_t capacity = 0;
  const size_t bytes = (static_cast<size_t>(n) * sizeof(T) + 63) / 64 * 64;
  if (bytes > capacity) {
    data.reset(std::aligned_alloc(64, bytes));
    TORCH_CHECK(data != nullptr, "lstm engine: could not allocate ", bytes, " bytes");
    capacity = bytes;
  }
  return static_cast<T*>(data.get());
}

// Hidden units [begin, end) of thread `thread` of `threads`: whole vectors of L, the last slice
// the rest (possibly empty).
struct UnitSlice {
  int64_t begin, end;
  UnitSlice(int64_t hidden, int64_t lanes, int thread, int threads) {
    const int64_t vectors = (hidden + lanes - 1) / lanes;
    const int64_t per = (vectors + threads - 1) / threads * lanes;
    begin = std::min(hidden, thread * per);
    end = std::min(hidden, begin + per);
  }
};

// Threads for a layer of `hidden` units: one vector of units each at least.
int team_size(int64_t hidden, int64_t lanes) {
  return static_cast<int>(std::max<int64_t>(
      1, std::min<int64_t>(at::get_num_threads(), (hidden + lanes - 1) / lanes)));
}

// Rows of the batch per micro-kernel call: as many as the registers hold (4 gates x kBatch
// accumulators, 4 weight vectors and a broadcast: 29 of AVX-512's 32 at 6; 13 of AVX2's 16 at
// 2). Six rows against four: 193 against 181 GFLOP/s on one core of a Xeon whose FMAs peak at
// 230, with weights and rows in L1.
constexpr int kMaxRows = 6;
template <typename A>
constexpr int kBatch = at::vec::Vectorized<A>::size() * sizeof(A) >= 64 ? kMaxRows : 2;

// acc[q][b] += sum_k w[k][q][:] * h[b][k] over k < K; w packed [K][4][L], h rows `stride` apart
// (q: the 4 gates of L units forward; 4 blocks of L units of dh backward).
// Register-blocked: the accumulators are named locals (GCC keeps an array of vectors the
// loop indexes in memory, a store and a reload per FMA), kRows rows of each gate.
// (first: start from zero, else add to acc.) The macros name the accumulators of rows 0-5,
// starting from acc or zero and stored back to acc, for this and the bfloat16 dot products.
#define PYNOTES_ROWS(X) X(0) X(1) X(2) X(3) X(4) X(5)
#define PYNOTES_DECLARE(b)                                                  \
  V i##b = first ? V(0) : acc[0][b], f##b = first ? V(0) : acc[1][b],       \
    g##b = first ? V(0) : acc[2][b], o##b = first ? V(0) : acc[3][b];
#define PYNOTES_STORE(b)   \
  if constexpr (b < kRows) { \
    acc[0][b] = i##b;        \
    acc[1][b] = f##b;        \
    acc[2][b] = g##b;        \
    acc[3][b] = o##b;        \
  }

template <int kRows, typename T, typename A>
void gate_products(const T* w, const A* h, int64_t stride, int64_t K,
                   OpVec<T> (&acc)[4][kMaxRows], bool first) {
  using V = OpVec<T>;
  constexpr int64_t L = V::size();
  PYNOTES_ROWS(PYNOTES_DECLARE)
  int64_t k = 0;
  if constexpr (kRows == 1) {
    // One row has only 4 FMA chains, too few to hide the FMA latency: odd k go to a second set.
    V i_odd(A(0)), f_odd(A(0)), g_odd(A(0)), o_odd(A(0));
    for (; k + 1 < K; k += 2) {
      const T* wk = w + k * 4 * L;
      const V h_even(h[k]), h_odd(h[k + 1]);
      i0 = at::vec::fmadd(load_op(wk), h_even, i0);
      f0 = at::vec::fmadd(load_op(wk + L), h_even, f0);
      g0 = at::vec::fmadd(load_op(wk + 2 * L), h_even, g0);
      o0 = at::vec::fmadd(load_op(wk + 3 * L), h_even, o0);
      i_odd = at::vec::fmadd(load_op(wk + 4 * L), h_odd, i_odd);
      f_odd = at::vec::fmadd(load_op(wk + 5 * L), h_odd, f_odd);
      g_odd = at::vec::fmadd(load_op(wk + 6 * L), h_odd, g_odd);
      o_odd = at::vec::fmadd(load_op(wk + 7 * L), h_odd, o_odd);
    }
    i0 = i0 + i_odd;
    f0 = f0 + f_odd;
    g0 = g0 + g_odd;
    o0 = o0 + o_odd;
  }
  for (; k < K; ++k) {
    const T* wk = w + k * 4 * L;
    const V wi = load_op(wk), wf = load_op(wk + L), wg = load_op(wk + 2 * L),
            wo = load_op(wk + 3 * L);
#define PYNOTES_FMA(b)                          \
    if constexpr (b < kRows) {                  \
      const V hb(h[b * stride + k]);            \
      i##b = at::vec::fmadd(wi, hb, i##b);      \
      f##b = at::vec::fmadd(wf, hb, f##b);      \
      g##b = at::vec::fmadd(wg, hb, g##b);      \
      o##b = at::vec::fmadd(wo, hb, o##b);      \
    }
    PYNOTES_ROWS(PYNOTES_FMA)
#undef PYNOTES_FMA
  }
  PYNOTES_ROWS(PYNOTES_STORE)
}

// n rows as the fewest groups of at most `most` rows, as even as can be (8 rows as 4 + 4, not
// 6 + 2: a micro-kernel call on few rows runs below the FMA rate).
struct RowGroups {
  int64_t n, count;
  RowGroups(int64_t n, int64_t most) : n(n), count((n + most - 1) / most) {}
  int64_t begin(int64_t group) const { return group * n / count; }
  int rows(int64_t group) const { return static_cast<int>(begin(group + 1) - begin(group)); }
};

// The accumulators of one row block, kept between k (j) chunks.
template <typename T>
struct GateSums {
  OpVec<T> v[4][kMaxRows];
};

// k per chunk when the rows come in several blocks: 4 gates x L units of weights in 16 KB.
template <typename T>
constexpr int64_t kChunk = std::max<int64_t>(OpVec<T>::size(),
                                             (16384 / (4 * OpVec<T>::size() * sizeof(T))) /
                                                 OpVec<T>::size() * OpVec<T>::size());

// The kRows instance for n <= kBatch rows.
template <typename T, typename A, typename... Args>
void gate_products_n(int n, Args&&... args) {
  switch (n) {
    case 1: return gate_products<1, T, A>(args...);
    case 2: return gate_products<2, T, A>(args...);
    case 3: if constexpr (kBatch<A> >= 3) return gate_products<3, T, A>(args...); break;
    case 4: if constexpr (kBatch<A> >= 4) return gate_products<4, T, A>(args...); break;
    case 5: if constexpr (kBatch<A> >= 5) return gate_products<5, T, A>(args...); break;
    default: if constexpr (kBatch<A> >= 6) return gate_products<6, T, A>(args...); break;
  }
  TORCH_INTERNAL_ASSERT(false, "lstm engine: ", n, " rows per micro-kernel");
}

// At batch 1 a step multiplies w_hh by one row of h and streams w_hh from cache whatever its
// layout, so float32 w_hh may be read as stored, rows of H (LstmEngineForward::w_hh_rows),
// with no packed copy: the copy doubles what a call moves, and at hidden 512 on a Xeon
// (4 MB of w_hh) the copy and the rows it was made from outgrew the two cores' L2, so that
// each call read w_hh from memory to pack it again (180 of 1400 us at T = 50). Each row
// product is then a dot product along k, summed across lanes at the end (sum_each), which
// costs most where rows are short: the steps ran 5-18 % slower at hidden 64-512 with w_hh in
// L2 (lstm_ops.cpp times both at batch 1).
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
constexpr bool kRowDots = true;
// Lane r of sum_each(a): the sum of the lanes of a[r], added in a fixed order (so the same bits
// on any thread count).
#if defined(CPU_CAPABILITY_AVX512)
using RawFloats = __m512;
inline __m512 sum_each(const __m512 (&a)[16]) {
  auto pairs = [](__m512 x, __m512 y) {  // per 128 bits: x, y, x, y
    return _mm512_add_ps(_mm512_unpacklo_ps(x, y), _mm512_unpackhi_ps(x, y));
  };
  auto quads = [](__m512 x, __m512 y) {  // per 128 bits: the 4 rows of x and y's pairs
    const __m512d xd = _mm512_castps_pd(x), yd = _mm512_castps_pd(y);
    return _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(xd, yd)),
                         _mm512_castpd_ps(_mm512_unpackhi_pd(xd, yd)));
  };
  auto halves = [](__m512 x, __m512 y) {  // 128-bit lanes 0+1, 2+3 of x, then of y
    return _mm512_add_ps(_mm512_shuffle_f32x4(x, y, _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm512_shuffle_f32x4(x, y, _MM_SHUFFLE(3, 1, 3, 1)));
  };
  __m512 q[4];
  for (int i = 0; i < 4; ++i) {
    q[i] = quads(pairs(a[4 * i], a[4 * i + 1]), pairs(a[4 * i + 2], a[4 * i + 3]));
  }
  return halves(halves(q[0], q[1]), halves(q[2], q[3]));
}
#else
using RawFloats = __m256;
inline __m256 sum_each(const __m256 (&a)[8]) {
  auto pairs = [](__m256 x, __m256 y) {
    return _mm256_add_ps(_mm256_unpacklo_ps(x, y), _mm256_unpackhi_ps(x, y));
  };
  auto quads = [](__m256 x, __m256 y) {
    const __m256d xd = _mm256_castps_pd(x), yd = _mm256_castps_pd(y);
    return _mm256_add_ps(_mm256_castpd_ps(_mm256_unpacklo_pd(xd, yd)),
                         _mm256_castpd_ps(_mm256_unpackhi_pd(xd, yd)));
  };
  const __m256 lo = quads(pairs(a[0], a[1]), pairs(a[2], a[3]));
  const __m256 hi = quads(pairs(a[4], a[5]), pairs(a[6], a[7]));
  return _mm256_add_ps(_mm256_permute2f128_ps(lo, hi, 0x20),
                       _mm256_permute2f128_ps(lo, hi, 0x31));
}
#endif

// Lane r < rows: w's row r (rows `ld` apart) times h, over K. (Lanes past rows are zero.)
// R rows at a time, each along k with two accumulators: on one core of a Xeon, with 512 KB of
// rows in L2, 4 rows at a time read them at 154-163 GB/s, all 16 at once at 135-143, and the
// packed layout's single stream at 157-171. (Not inlined: inlined in the step loop, GCC
// spilled its registers, and a layer at hidden 256 ran 1.4x slower.)
template <bool kAllRows>
__attribute__((noinline)) at::vec::Vectorized<float> row_dots(const float* w, int64_t ld,
                                                              const float* h, int64_t K,
                                                              int rows) {
  using V = at::vec::Vectorized<float>;
  constexpr int L = V::size();
  constexpr int R = L == 16 ? 4 : 2;  // (registers: L sums, 2R accumulators, h, the loads)
  RawFloats sums[L];
  for (int r0 = 0; r0 < L; r0 += R) {
    RawFloats acc[R][2];
    for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = V(0);
    auto add_products = [&](int64_t k, int64_t n, int a) {
      const V hk = n == L ? V::loadu(h + k) : V::loadu(h + k, n);
      for (int r = 0; r < R; ++r) {
        if (kAllRows || r0 + r < rows) {
          const float* wr = w + (r0 + r) * ld + k;
          const V wv = n == L ? V::loadu(wr) : V::loadu(wr, n);
          acc[r][a] = at::vec::fmadd(wv, hk, V(acc[r][a]));
        }
      }
    };
    int64_t k = 0;
    if (kAllRows || r0 < rows) {
      for (; k + 2 * L <= K; k += 2 * L) {
        add_products(k, L, 0);
        add_products(k + L, L, 1);
      }
      for (; k < K; k += L) add_products(k, std::min<int64_t>(L, K - k), 0);
    }
    for (int r = 0; r < R; ++r) sums[r0 + r] = V(acc[r][0]) + V(acc[r][1]);
  }
  return V(sum_each(sums));
}
#else
constexpr bool kRowDots = false;
#endif

// How the engine's recurrent products run, by storage type. Every layout puts the weights of
// element k for 4 x L outputs at w + k * 4 * L (k even where elements come in pairs).
//
// Widened: weights of type T widened to A as they are loaded, the multiplied rows (h, dgates)
// kept in A, FMAs in A.
template <typename T>
struct WidenedProducts {
  using Row = opmath_t<T>;             // element type of h (forward) and dgates (backward)
  static constexpr int64_t kPair = 1;  // elements of k per weight group
  static constexpr bool kDgatesInPlace = !kWidened<T>;  // dgates read from the output rows

  // Units [j, j + width) of the 4 gate blocks of w (4H x K, row-major: w_hh, or w_ih with K
  // inputs) into dst [k][gate][L]: each gate's (width x K) block transposed in L x L tiles
  // (ATen's half-type transposes take <= 32).
  static void pack_gates(const T* w, int64_t H, int64_t K, int64_t j, int64_t width, T* dst) {
    constexpr int64_t L = OpVec<T>::size();
    for (int q = 0; q < 4; ++q) {
      for (int64_t k = 0; k < K; k += L) {
        at::vec::transpose_mxn<T>(w + (q * H + j) * K + k, K, dst + (k * 4 + q) * L, 4 * L,
                                  static_cast<int>(width), static_cast<int>(std::min(L, K - k)));
      }
    }
  }

  // Columns [j, j + width) of w_hh into slot q of dst [row][4][L] (row < 4H).
  static void pack_columns(const T* w_hh, int64_t H, int64_t j, int64_t width, int q, T* dst) {
    constexpr int64_t L = OpVec<T>::size();
    for (int64_t row = 0; row < 4 * H; ++row) {
      std::copy(w_hh + row * H + j, w_hh + row * H + j + width, dst + (row * 4 + q) * L);
    }
  }

  static void products(int rows, const T* w, const Row* h, int64_t stride, int64_t K,
                       OpVec<T> (&acc)[4][kMaxRows], bool first) {
    gate_products_n<T, opmath_t<T>>(rows, w, h, stride, K, acc, first);
  }
};

#if defined(CPU_CAPABILITY_AVX512)
// bfloat16 with AVX512-BF16: the weights packed in pairs of k ([k / 2][gate][L][2]) and h in
// bfloat16 (as the step-by-step path rounds it), so that one vdpbf16ps does two k of 16 units
// with float32 accumulation and no widening of the weights.
using BFloat16 = c10::BFloat16;

template <int kRows>
__attribute__((target("avx512bf16"), noinline)) void dot_products(
    const BFloat16* w, const BFloat16* h, int64_t stride, int64_t K,
    OpVec<BFloat16> (&acc)[4][kMaxRows], bool first) {
  using V = OpVec<BFloat16>;
  constexpr int64_t L = 16;
  PYNOTES_ROWS(PYNOTES_DECLARE)
  for (int64_t k = 0; k < K; k += 2) {
    const BFloat16* wk = w + k * 4 * L;
    const __m512bh wi = (__m512bh)_mm512_load_si512(wk),
                   wf = (__m512bh)_mm512_load_si512(wk + 2 * L),
                   wg = (__m512bh)_mm512_load_si512(wk + 4 * L),
                   wo = (__m512bh)_mm512_load_si512(wk + 6 * L);
#define PYNOTES_DOT(b)                                                  \
    if constexpr (b < kRows) {                                          \
      int32_t pair;                                                     \
      std::memcpy(&pair, h + b * stride + k, sizeof(pair));             \
      const __m512bh hb = (__m512bh)_mm512_set1_epi32(pair);            \
      i##b = V(_mm512_dpbf16_ps(i##b, wi, hb));                         \
      f##b = V(_mm512_dpbf16_ps(f##b, wf, hb));                         \
      g##b = V(_mm512_dpbf16_ps(g##b, wg, hb));                         \
      o##b = V(_mm512_dpbf16_ps(o##b, wo, hb));                         \
    }
    PYNOTES_ROWS(PYNOTES_DOT)
#undef PYNOTES_DOT
  }
  PYNOTES_ROWS(PYNOTES_STORE)
}

struct Bf16DotProducts {
  using Row = BFloat16;
  static constexpr int64_t kPair = 2;
  static constexpr bool kDgatesInPlace = true;

  // As WidenedProducts::pack_gates, in pairs of k (K even: two bfloat16 as one 32-bit value,
  // so the tiles transpose as float).
  static void pack_gates(const BFloat16* w, int64_t H, int64_t K, int64_t j, int64_t width,
                         BFloat16* dst) {
    constexpr int64_t L = 16;
    const int64_t pairs = (K + 1) / 2;
    if (K % 2 == 0) {
      for (int q = 0; q < 4; ++q) {
        for (int64_t k2 = 0; k2 < pairs; k2 += L) {
          at::vec::transpose_mxn<float>(
              reinterpret_cast<const float*>(w + (q * H + j) * K) + k2, K / 2,
              reinterpret_cast<float*>(dst) + (k2 * 4 + q) * L, 4 * L, static_cast<int>(width),
              static_cast<int>(std::min(L, pairs - k2)));
        }
      }
      return;
    }
    for (int q = 0; q < 4; ++q) {
      for (int64_t u = 0; u < width; ++u) {
        for (int64_t k = 0; k < K; ++k) {
          dst[((k / 2) * 4 + q) * 2 * L + 2 * u + k % 2] = w[(q * H + j + u) * K + k];
        }
      }
    }
  }

  static void pack_columns(const BFloat16* w_hh, int64_t H, int64_t j, int64_t width, int q,
                           BFloat16* dst) {
    constexpr int64_t L = 16;
    for (int64_t row = 0; row < 4 * H; ++row) {
      BFloat16* d = dst + ((row / 2) * 4 + q) * 2 * L + row % 2;
      for (int64_t u = 0; u < width; ++u) d[2 * u] = w_hh[row * H + j + u];
    }
  }

  static void products(int rows, const BFloat16* w, const BFloat16* h, int64_t stride, int64_t K,
                       OpVec<BFloat16> (&acc)[4][kMaxRows], bool first) {
    switch (rows) {
      case 1: return dot_products<1>(w, h, stride, K, acc, first);
      case 2: return dot_products<2>(w, h, stride, K, acc, first);
      case 3: return dot_products<3>(w, h, stride, K, acc, first);
      case 4: return dot_products<4>(w, h, stride, K, acc, first);
      case 5: return dot_products<5>(w, h, stride, K, acc, first);
      default: return dot_products<6>(w, h, stride, K, acc, first);
    }
  }
};

// Where the CPU has AVX512-BF16, for batches of 1 and 2: there the step streams its weights
// from cache for one or two rows, and half the bytes with no widening win (1.1-1.45x per step
// at batch 1-2, hidden 256-1024, on a Xeon). From batch 3 the multiplies bound the step and
// vdpbf16ps ran no faster per multiply-add than the widening FMAs (0.83-0.95x).
bool use_bf16_dot(c10::ScalarType dtype, int64_t batch) {
  static const bool has = [] {
    const auto caps = at::cpu::get_cpu_capabilities();
    const auto it = caps.find("avx512_bf16");
    return it != caps.end() && it->second.isBool() && it->second.toBool();
  }();
  return dtype == at::kBFloat16 && batch <= 2 && has;
}
#endif
#undef PYNOTES_ROWS
#undef PYNOTES_DECLARE
#undef PYNOTES_STORE

// x w_ih^T for the units of one thread's slice, over all N rows of the layer, into gates: the
// step products then add to them what they add to an input projection made elsewhere. Per
// block of L units, w_ih's rows are packed as w_hh's are (into `packed`, 4 x L x input_size,
// which stays in L2 while it is used) and the same micro-kernel runs, over groups of rows
// whose accumulators stay in L1 while k runs in chunks whose weights do. (At batch 1 this
// product of T rows is a third to a half of a layer. On a Zen 4 at T = 50, hidden 256-1024,
// oneDNN ran it at 40-60 % of the cores' FMA peak, this at 55-75 %, and no second parallel
// region is paid.) Rows are read as they are: float32 and float64.
template <typename T, typename P>
void input_products(const LstmEngineForward& a, const UnitSlice& slice, T* packed) {
  using A = opmath_t<T>;
  static_assert(P::kPair == 1 && std::is_same_v<typename P::Row, T>);
  constexpr int64_t L = OpVec<T>::size();
  constexpr int64_t kGroupRows = 16 * kBatch<A>;
  if (a.steps == 0) return;
  const int64_t H = a.hidden, K = a.input_size, G = 4 * H;
  const int64_t N = a.offset[a.steps - 1] + a.rows[a.steps - 1];
  const T* x = static_cast<const T*>(a.input);
  T* gates = static_cast<T*>(a.gates);
  GateSums<T> sums[kGroupRows / kBatch<A>];
  for (int64_t j = slice.begin; j < slice.end; j += L) {
    const int64_t width = std::min(L, slice.end - j);
    if (width < L) std::fill_n(packed, K * 4 * L, T(0));
    P::pack_gates(static_cast<const T*>(a.w_ih), H, K, j, width, packed);
    for (int64_t r0 = 0; r0 < N; r0 += kGroupRows) {
      const int64_t n = std::min(kGroupRows, N - r0);
      for (int64_t k0 = 0; k0 < K; k0 += kChunk<T>) {
        const int64_t kc = std::min(kChunk<T>, K - k0);
        const RowGroups groups(n, kBatch<A>);
        for (int64_t group = 0; group < groups.count; ++group) {
          const int64_t b0 = groups.begin(group);
          const int rows = groups.rows(group);
          auto& acc = sums[group].v;
          P::products(rows, packed + k0 * 4 * L, x + (r0 + b0) * K + k0, K, kc, acc, k0 == 0);
          if (k0 + kc < K) continue;
          for (int r = 0; r < rows; ++r) {
            GateRow<T>{gates + (r0 + b0 + r) * G, H}.store(
                {acc[0][r], acc[1][r], acc[2][r], acc[3][r]}, j, width);
          }
        }
      }
    }
  }
}

// Fetches the cache line at p into L1 (GCC 12 dropped __builtin_prefetch from these loops).
inline void prefetch_line(const void* p) {
#if defined(__x86_64__) || defined(_M_X64)
  asm volatile("prefetcht0 %0" : : "m"(*static_cast<const char*>(p)));
#endif
}

// Prefetches the lines a step's epilogue reads and writes for row `row`, units from j: the four
// gate blocks at g, if given (4H apart: each row's lines are pages apart, which the hardware
// prefetchers do not follow; at batch 256, hidden 256 on a Xeon, after a GEMM made the input
// projection, the epilogue waited on memory for as long as the micro-kernel ran), the output
// and, in training, the saved c and h.
template <typename T>
void prefetch_row_lines(const LstmEngineForward& a, const T* g, int64_t H, int64_t row,
                        int64_t j) {
  using A = opmath_t<T>;
  for (int q = 0; g && q < 4; ++q) prefetch_line(g + q * H);
  prefetch_line(static_cast<T*>(a.output) + row * H + j);
  if (a.train) {
    prefetch_line(static_cast<A*>(a.c_prev) + row * H + j);
    prefetch_line(static_cast<T*>(a.h_prev) + row * H + j);
  }
}

template <typename T, typename P>
void engine_forward(const LstmEngineForward& a) {
  using V = OpVec<T>;
  using A = opmath_t<T>;
  constexpr int64_t L = V::size();
  const int64_t B = a.batch, H = a.hidden, G = 4 * H;
  T* gates = static_cast<T*>(a.gates);
  const A* bias = static_cast<const A*>(a.bias);
  const T* w_hh = static_cast<const T*>(a.w_hh);
  using R = typename P::Row;
  // h of the step and of the next, rows of K (H, whole pairs of k for P; zero past H).
  const int64_t K = (H + P::kPair - 1) / P::kPair * P::kPair;
  // Whether the micro-kernel reads input rows as they are stored, as input_products needs
  // (checked here: an exception must not leave the parallel region below).
  constexpr bool kRowsAsStored = P::kPair == 1 && std::is_same_v<R, T>;
  TORCH_INTERNAL_ASSERT(kRowsAsStored || a.input == nullptr,
                        "lstm engine: input products in float32 or float64 only");
  // With the input projection in each step's products, the packed weights of a block are its
  // w_ih rows (k < KI, multiplying the step's input rows) then its w_hh rows (multiplying h).
  const int64_t KI = a.input && a.input_per_step ? a.input_size : 0, KW = KI + K;
  // w_hh read as stored (see row_dots), not packed.
  const bool rows_of_w_hh =
      a.w_hh_rows && kRowDots && std::is_same_v<T, float> && B == 1 && KI == 0;
  const R* x_rows = static_cast<const R*>(a.input);
  LineAlignedBuffer<R> h_buffers(2 * B * K);
  A* c = static_cast<A*>(a.c_n);
  SpinBarrier barrier;
  run_team(team_size(H, L), barrier, [&](int thread, int threads) {
    const UnitSlice slice(H, L, thread, threads);
    const int64_t blocks = (slice.end - slice.begin + L - 1) / L;
    // This thread's w_hh rows (after its w_ih rows, with KI), packed per block of L units as
    // P lays them out (zero past the slice's end and past H: only there does packing leave
    // values unwritten). The same buffer holds a block of w_ih's rows before, for the input
    // products made before the steps.
    T* packed = thread_scratch<T>(std::max(blocks * KW, a.input ? a.input_size : 0) * 4 * L);
    if constexpr (kRowsAsStored) {
      if (a.input && KI == 0) input_products<T, P>(a, slice, packed);
    }
    if (!rows_of_w_hh && ((slice.end - slice.begin) % L != 0 || K != H)) {
      std::fill_n(packed, blocks * KW * 4 * L, T(0));
    }
    for (int64_t block = 0; block < blocks && !rows_of_w_hh; ++block) {
      const int64_t j = slice.begin + block * L, width = std::min(L, slice.end - j);
      T* w = packed + block * KW * 4 * L;
      if constexpr (kRowsAsStored) {
        if (KI > 0) P::pack_gates(static_cast<const T*>(a.w_ih), H, KI, j, width, w);
      }
      P::pack_gates(w_hh, H, H, j, width, w + KI * 4 * L);
    }
    const T* h0 = static_cast<const T*>(a.h0);
    const A* c0 = static_cast<const A*>(a.c0);
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t u = slice.begin; u < slice.end; ++u) {
        h_buffers[b * K + u] = static_cast<R>(h0[b * H + u]);
        c[b * H + u] = c0[b * H + u];
      }
    }
    barrier.wait();
    std::vector<GateSums<T>> sums(static_cast<size_t>((B + kBatch<A> - 1) / kBatch<A>));
    for (int64_t step = 0; step < a.steps; ++step) {
      const int64_t t = a.reverse ? a.steps - 1 - step : step;
      const int64_t n = a.rows[t], o = a.offset[t];
      const R* h_read = h_buffers.data() + (step & 1) * B * K;
      R* h_write = h_buffers.data() + ((step + 1) & 1) * B * K;
      // With several row blocks, k runs in chunks whose weights stay in L1 across them (the
      // input's k and h's in separate chunks).
      const int64_t chunk = n > kBatch<A> ? kChunk<T> : KW;
      // The rows' gates, output (and saved state) lines that a row group's last chunk reads
      // and writes, fetched at its first chunk, or one group ahead when there is one chunk.
      const RowGroups groups(n, kBatch<A>);
      const int64_t ahead = KI > 0 || chunk < K ? 0 : 1;
      auto block_of = [&](int64_t visit) { return step & 1 ? visit : blocks - 1 - visit; };
      auto prefetch_group = [&](int64_t item) {
        if (item >= blocks * groups.count) return;
        const int64_t j = slice.begin + block_of(item / groups.count) * L;
        const int64_t group = item % groups.count;
        for (int64_t b = groups.begin(group); b < groups.begin(group + 1); ++b) {
          prefetch_row_lines(a, KI == 0 || a.train ? gates + (o + b) * G + j : nullptr, H,
                             o + b, j);
        }
      };
      for (int64_t visit = 0; visit < blocks; ++visit) {  // reversed every step (see top)
        const int64_t block = block_of(visit);
        const int64_t j = slice.begin + block * L, width = std::min(L, slice.end - j);
        const T* w = packed + block * KW * 4 * L;
        for (int64_t k0 = 0, kc; k0 < KW; k0 += kc) {
        const bool input_k = k0 < KI;
        kc = std::min(chunk, (input_k ? KI : KW) - k0);
        for (int64_t group = 0; group < groups.count; ++group) {
          const int64_t b0 = groups.begin(group);
          const int rows = groups.rows(group);
          auto& acc = sums[group].v;
          if (k0 == 0) prefetch_group(visit * groups.count + group + ahead);
          if (input_k) {
            P::products(rows, w + k0 * 4 * L, x_rows + (o + b0) * KI + k0, KI, kc, acc,
                        k0 == 0);
          } else if (rows_of_w_hh) {
            if constexpr (kRowDots && std::is_same_v<T, float>) {
              for (int q = 0; q < 4; ++q) {
                const float* w_q = w_hh + (q * H + j) * H;
                acc[q][0] = width == L ? row_dots<true>(w_q, H, h_read, H, L)
                                       : row_dots<false>(w_q, H, h_read, H, width);
              }
            }
          } else {
            P::products(rows, w + k0 * 4 * L, h_read + b0 * K + k0 - KI, K, kc, acc, k0 == 0);
          }
          if (k0 + kc < KW) continue;
          for (int r = 0; r < rows; ++r) {
            const int64_t b = b0 + r;
            T* g = KI == 0 || a.train ? gates + (o + b) * G : nullptr;  // (else none there)
            lstm::Gates<V> z{acc[0][r], acc[1][r], acc[2][r], acc[3][r]};
            if (KI == 0) {
              const lstm::Gates<V> in = GateRow<T>{g, H}.load(j, width);
              z = {z.i + in.i, z.f + in.f, z.g + in.g, z.o + in.o};
            }
            A* cb = c + b * H + j;
            const V cv = V::loadu(cb, width);
            const StepVector<V> s = step_vector(z, bias, H, j, width, cv);
            if (a.train) {
              GateRow<T>{g, H}.store(s.act, j, width);
              cv.store(static_cast<A*>(a.c_prev) + (o + b) * H + j, width);
              store_op(load_op(h_read + b * K + j, width),
                       static_cast<T*>(a.h_prev) + (o + b) * H + j, width);
            }
            s.c_next.store(cb, width);
            store_op(s.h_next, h_write + b * K + j, width);
            store_op(s.h_next, static_cast<T*>(a.output) + (o + b) * H + j, width);
          }
        }
        }
        // Sequences that have ended (packed input) keep their state.
        for (int64_t b = n; b < B; ++b) {
          std::copy(h_read + b * K + j, h_read + b * K + j + width, h_write + b * K + j);
        }
      }
      barrier.wait();
    }
    const R* h_last = h_buffers.data() + (a.steps & 1) * B * K;
    T* h_n = static_cast<T*>(a.h_n);
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t u = slice.begin; u < slice.end; ++u) {
        h_n[b * H + u] = static_cast<T>(h_last[b * K + u]);
      }
    }
  });
}

template <typename T, typename P>
void engine_backward(const LstmEngineBackward& a) {
  using V = OpVec<T>;
  using A = opmath_t<T>;
  constexpr int64_t L = V::size();
  const int64_t B = a.batch, H = a.hidden, G = 4 * H;
  const T* gates = static_cast<const T*>(a.gates);
  const A* c_prev = static_cast<const A*>(a.c_prev);
  const T* w_hh = static_cast<const T*>(a.w_hh);
  const T* dout = static_cast<const T*>(a.grad_output);
  T* dgates = static_cast<T*>(a.dgates);
  T* dh_io = static_cast<T*>(a.dh);
  A* dc = static_cast<A*>(a.dc);
  // dh reaching each step from the next (B, H).
  LineAlignedBuffer<A> dh(B * H);
  using R = typename P::Row;
  LineAlignedBuffer<R> dg_scratch(P::kDgatesInPlace ? 0 : 2 * B * G);
  SpinBarrier barrier;
  run_team(team_size(H, L), barrier, [&](int thread, int threads) {
    const UnitSlice slice(H, L, thread, threads);
    const int64_t blocks = (slice.end - slice.begin + L - 1) / L;
    // This thread's columns of w_hh for dh = dgates w_hh, in groups of 4 blocks of L units
    // packed [group][j][block][L] (zero past the slice's end): the layout of the forward's
    // weights with blocks for gates, so the same micro-kernel runs (K = 4H, h = dgates).
    const int64_t groups = (blocks + 3) / 4;
    LineAlignedBuffer<T> packed(groups * G * 4 * L);
    for (int64_t block = 0; block < blocks; ++block) {
      const int64_t j = slice.begin + block * L;
      P::pack_columns(w_hh, H, j, std::min(L, slice.end - j), static_cast<int>(block % 4),
                      packed.data() + (block / 4) * G * 4 * L);
    }
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t u = slice.begin; u < slice.end; ++u) {
        dh[b * H + u] = static_cast<A>(dh_io[b * H + u]);
      }
    }
    std::vector<GateSums<T>> sums(static_cast<size_t>((B + kBatch<A> - 1) / kBatch<A>));
    for (int64_t step = a.steps - 1; step >= 0; --step) {
      const int64_t t = a.reverse ? a.steps - 1 - step : step;
      const int64_t n = a.rows[t], o = a.offset[t];
      // The step's dgates as the products read them: the output rows themselves, or a copy in
      // A (double buffered: a thread may write the next step's while another still reads).
      R* dg_rows = P::kDgatesInPlace ? reinterpret_cast<R*>(dgates + o * G)
                                     : dg_scratch.data() + (step & 1) * B * G;
      // Row by row: a row's slice of each gate block is one run of lines, which the hardware
      // prefetchers follow (block by block, the rows' lines are pages apart).
      for (int64_t b = 0; b < n; ++b) {
        for (int64_t block = 0; block < blocks; ++block) {
          const int64_t j = slice.begin + block * L, width = std::min(L, slice.end - j);
          V dhv = V::loadu(dh.data() + b * H + j, width);
          if (dout) dhv = dhv + load_op(dout + (o + b) * H + j, width);
          lstm::Gates<V> dz;
          const V dcv = lstm::cell_backward(GateRow<const T>{gates + (o + b) * G, H}.load(j, width),
                                            V::loadu(c_prev + (o + b) * H + j, width), dhv,
                                            V::loadu(dc + b * H + j, width), VecTanh{}, dz);
          dcv.store(dc + b * H + j, width);
          GateRow<T>{dgates + (o + b) * G, H}.store(dz, j, width);
          if constexpr (!P::kDgatesInPlace) GateRow<R>{dg_rows + b * G, H}.store(dz, j, width);
        }
      }
      barrier.wait();
      for (int64_t visit = 0; visit < groups; ++visit) {  // reversed every step (see top)
        const int64_t group = (a.steps - 1 - step) & 1 ? visit : groups - 1 - visit;
        const T* w = packed.data() + group * G * 4 * L;
        // With several row blocks, j runs in chunks whose weights stay in L1 across them.
        const int64_t chunk = n > kBatch<A> ? kChunk<T> : G;
        const RowGroups row_groups(n, kBatch<A>);
        for (int64_t j0 = 0; j0 < G; j0 += chunk) {
          const int64_t jc = std::min(chunk, G - j0);
          for (int64_t row_group = 0; row_group < row_groups.count; ++row_group) {
            const int64_t b0 = row_groups.begin(row_group);
            const int rows = row_groups.rows(row_group);
            auto& acc = sums[row_group].v;
            P::products(rows, w + j0 * 4 * L, dg_rows + b0 * G + j0, G, jc, acc, j0 == 0);
            if (j0 + jc < G) continue;
            for (int64_t block = group * 4; block < std::min(blocks, group * 4 + 4); ++block) {
              const int64_t j = slice.begin + block * L, width = std::min(L, slice.end - j);
              for (int r = 0; r < rows; ++r) {
                acc[block % 4][r].store(dh.data() + (b0 + r) * H + j, width);
              }
            }
          }
        }
      }
    }
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t u = slice.begin; u < slice.end; ++u) {
        dh_io[b * H + u] = static_cast<T>(dh[b * H + u]);
      }
    }
  });
}

}  // namespace

void lstm_engine_forward_cpu_kernel(const LstmEngineForward& a) {
#if defined(CPU_CAPABILITY_AVX512)
  if (use_bf16_dot(a.dtype, a.batch)) return engine_forward<BFloat16, Bf16DotProducts>(a);
#endif
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.dtype, "lstm_engine_forward",
                                  [&] { engine_forward<scalar_t, WidenedProducts<scalar_t>>(a); });
}

void lstm_engine_backward_cpu_kernel(const LstmEngineBackward& a) {
#if defined(CPU_CAPABILITY_AVX512)
  if (use_bf16_dot(a.dtype, a.batch)) return engine_backward<BFloat16, Bf16DotProducts>(a);
#endif
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.dtype, "lstm_engine_backward",
                                  [&] { engine_backward<scalar_t, WidenedProducts<scalar_t>>(a); });
}

}  // namespace CPU_CAPABILITY
}  // namespace pynotes
