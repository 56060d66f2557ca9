// LSTM step kernels on CPU, compiled once per instruction set (see common/cpu_dispatch.h):
// everything here is defined in namespace pynotes::CPU_CAPABILITY. Rows are split over
// threads; within a row the four gate blocks are read at the same offset, one SIMD vector of
// hidden units at a time, so a step reads each gate once and writes it once. float16 and
// bfloat16 gates and hidden states are widened to float as they are read (common/cpu_vec.h);
// cell states and the bias are float already. The recurrent engine, which runs whole layers,
// is lstm_engine_cpu_kernel.cpp.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>

#include "common/cpu_vec.h"
#include "lstm/lstm.h"
#include "lstm/lstm_gate_row.h"
#include "lstm/lstm_step.h"

namespace pynotes {
namespace CPU_CAPABILITY {
namespace {

// Elements a task should cover at least: a step of batch 32 x hidden 256 still splits over
// a few threads (the step is short, and every microsecond is paid once per time step).
constexpr int64_t kMinTaskElements = 1 << 11;

template <typename Fn>
void for_each_row(int64_t rows, int64_t hidden, const Fn& fn) {
  const int64_t grain = std::max<int64_t>(1, kMinTaskElements / std::max<int64_t>(hidden, 1));
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) fn(r);
  });
}

template <typename T>
void step_forward(const LstmStepForward& a) {
  using V = OpVec<T>;
  using A = opmath_t<T>;
  const int64_t H = a.hidden;
  const A* bias = static_cast<const A*>(a.bias);
  for_each_row(a.rows, H, [&](int64_t row) {
    const GateRow<T> gates{static_cast<T*>(a.gates) + row * 4 * H, H};
    const A* c = static_cast<const A*>(a.c) + row * H;
    A* c_next = static_cast<A*>(a.c_next) + row * H;
    A* c_saved = a.c_saved ? static_cast<A*>(a.c_saved) + row * H : nullptr;
    T* h_next = static_cast<T*>(a.h_next) + row * H;
    T* h_copy = a.h_next_copy ? static_cast<T*>(a.h_next_copy) + row * H : nullptr;
    for (int64_t j = 0; j < H; j += V::size()) {
      const int64_t k = std::min<int64_t>(V::size(), H - j);
      const V cv = V::loadu(c + j, k);
      const StepVector<V> s = step_vector(gates.load(j, k), bias, H, j, k, cv);
      gates.store(s.act, j, k);
      if (c_saved) cv.store(c_saved + j, k);
      s.c_next.store(c_next + j, k);
      store_op(s.h_next, h_next + j, k);
      if (h_copy) store_op(s.h_next, h_copy + j, k);
    }
  });
}

template <typename T>
void step_backward(const LstmStepBackward& a) {
  using V = OpVec<T>;
  using A = opmath_t<T>;
  const int64_t H = a.hidden;
  for_each_row(a.rows, H, [&](int64_t row) {
    const GateRow<const T> gates{static_cast<const T*>(a.gates) + row * 4 * H, H};
    const GateRow<T> dgates{static_cast<T*>(a.dgates) + row * 4 * H, H};
    const A* c = static_cast<const A*>(a.c) + row * H;
    const T* dh = a.dh ? static_cast<const T*>(a.dh) + row * H : nullptr;
    const T* dh_extra = a.dh_extra ? static_cast<const T*>(a.dh_extra) + row * H : nullptr;
    const A* dc_next = a.dc_next ? static_cast<const A*>(a.dc_next) + row * H : nullptr;
    A* dc = static_cast<A*>(a.dc) + row * H;
    for (int64_t j = 0; j < H; j += V::size()) {
      const int64_t k = std::min<int64_t>(V::size(), H - j);
      V dhv = dh ? load_op(dh + j, k) : V(0);
      if (dh_extra) dhv = dhv + load_op(dh_extra + j, k);
      const V dcn = dc_next ? V::loadu(dc_next + j, k) : V(0);
      lstm::Gates<V> dz;
      const V dcv = lstm::cell_backward(gates.load(j, k), V::loadu(c + j, k), dhv, dcn,
                                        VecTanh{}, dz);
      dgates.store(dz, j, k);
      dcv.store(dc + j, k);
    }
  });
}

// acc[r][b] += w[r][k] * v[b][k] lane-wise over k < K, for kR rows of weights and kB rows
// of v (K apart); lanes past K add zero.
template <int kR, int kB, typename T>
inline void add_row_dots(const T* const (&w)[kR], const T* v, int64_t K,
                         at::vec::Vectorized<T> (&acc)[kR][kB]) {
  using V = at::vec::Vectorized<T>;
  constexpr int64_t L = V::size();
  int64_t k = 0;
  for (; k + L <= K; k += L) {
    V vb[kB];
#pragma GCC unroll 4
    for (int b = 0; b < kB; ++b) vb[b] = V::loadu(v + b * K + k);
#pragma GCC unroll 8
    for (int r = 0; r < kR; ++r) {
      const V wr = V::loadu(w[r] + k);
#pragma GCC unroll 4
      for (int b = 0; b < kB; ++b) acc[r][b] = at::vec::fmadd(wr, vb[b], acc[r][b]);
    }
  }
  if (k == K) return;
  V vb[kB];
  for (int b = 0; b < kB; ++b) vb[b] = V::loadu(v + b * K + k, K - k);
  for (int r = 0; r < kR; ++r) {
    const V wr = V::loadu(w[r] + k, K - k);
    for (int b = 0; b < kB; ++b) acc[r][b] = at::vec::fmadd(wr, vb[b], acc[r][b]);
  }
}

// Pre-activations z[b][q * L + u] = x[b] . w_ih[row] + h[b] . w_hh[row] for rows q * H + j + u
// of the width units of block j and kB rows of the batch: kR weight rows at a time, each sum
// over its lanes at the end (the same order whatever the threads).
template <int kB, typename T>
void cell_block_preactivations(const LstmCellForward& a, int64_t j, int64_t width, int64_t b0,
                               T* z) {
  using V = at::vec::Vectorized<T>;
  constexpr int64_t L = V::size();
  constexpr int kR = kB == 1 ? 8 : 4;  // accumulators: kR x kB vectors
  const int64_t H = a.hidden, I = a.input_size;
  const T* x = static_cast<const T*>(a.input) + b0 * I;
  const T* h = static_cast<const T*>(a.hx) + b0 * H;
  const T* w_ih = static_cast<const T*>(a.w_ih);
  const T* w_hh = static_cast<const T*>(a.w_hh);
  for (int64_t n = 0; n < 4 * width; n += kR) {
    // Rows n..n + kR of this block's 4 x width (gate-major); the last group may repeat row
    // 4 * width - 1 in place of the rows past it (computed, not stored).
    int64_t row[kR];
    for (int r = 0; r < kR; ++r) {
      const int64_t m = std::min(n + r, 4 * width - 1);
      row[r] = (m / width) * H + j + m % width;
    }
    V acc[kR][kB];
    for (auto& per_row : acc) {
      for (auto& v : per_row) v = V(T(0));
    }
    const T* wi[kR];
    const T* wh[kR];
    for (int r = 0; r < kR; ++r) {
      wi[r] = w_ih + row[r] * I;
      wh[r] = w_hh + row[r] * H;
    }
    add_row_dots<kR, kB>(wi, x, I, acc);
    add_row_dots<kR, kB>(wh, h, H, acc);
    for (int r = 0; r < kR && n + r < 4 * width; ++r) {
      const int64_t m = n + r;
      for (int b = 0; b < kB; ++b) {
        z[b * 4 * L + (m / width) * L + m % width] =
            at::vec::vec_reduce_all<T>([](const V& p, const V& q) { return p + q; }, acc[r][b]);
      }
    }
  }
}

template <typename T>
void cell_forward(const LstmCellForward& a) {
  using V = at::vec::Vectorized<T>;
  constexpr int64_t L = V::size();
  constexpr int kRowBlock = 4;
  const int64_t H = a.hidden, B = a.rows;
  const int64_t blocks = (H + L - 1) / L;
  const T* bias = static_cast<const T*>(a.bias);
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    alignas(64) T z[kRowBlock * 4 * L] = {};  // (lanes past a partial block: finite)
    for (int64_t block = begin; block < end; ++block) {
      const int64_t j = block * L, width = std::min(L, H - j);
      for (int64_t b0 = 0; b0 < B; b0 += kRowBlock) {
        const int64_t n = std::min<int64_t>(kRowBlock, B - b0);
        switch (n) {
          case 1: cell_block_preactivations<1>(a, j, width, b0, z); break;
          case 2: cell_block_preactivations<2>(a, j, width, b0, z); break;
          case 3: cell_block_preactivations<3>(a, j, width, b0, z); break;
          default: cell_block_preactivations<4>(a, j, width, b0, z); break;
        }
        for (int64_t r = 0; r < n; ++r) {
          const int64_t b = b0 + r;
          const T* zr = z + r * 4 * L;
          const StepVector<V> s = step_vector(
              lstm::Gates<V>{V::loadu(zr), V::loadu(zr + L), V::loadu(zr + 2 * L),
                             V::loadu(zr + 3 * L)},
              bias, H, j, width, V::loadu(static_cast<const T*>(a.c) + b * H + j, width));
          GateRow<T>{static_cast<T*>(a.gates) + b * 4 * H, H}.store(s.act, j, width);
          s.c_next.store(static_cast<T*>(a.c_next) + b * H + j, width);
          s.h_next.store(static_cast<T*>(a.h_next) + b * H + j, width);
        }
      }
    }
  });
}

}  // namespace

void lstm_cell_forward_cpu_kernel(const LstmCellForward& a) {
  AT_DISPATCH_FLOATING_TYPES(a.dtype, "lstm_cell_forward_cpu", [&] { cell_forward<scalar_t>(a); });
}

void lstm_step_forward_cpu_kernel(const LstmStepForward& a) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.dtype, "lstm_step_forward_cpu",
                                  [&] { step_forward<scalar_t>(a); });
}

void lstm_step_backward_cpu_kernel(const LstmStepBackward& a) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.dtype, "lstm_step_backward_cpu",
                                  [&] { step_backward<scalar_t>(a); });
}

}  // namespace CPU_CAPABILITY
}  // namespace pynotes
