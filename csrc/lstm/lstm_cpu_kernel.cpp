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
      lstm::Gates<V> z = gates.load(j, k);
      if (bias) {
        const lstm::Gates<V> bz = GateRow<const A>{bias, H}.load(j, k);
        z = {z.i + bz.i, z.f + bz.f, z.g + bz.g, z.o + bz.o};
      }
      const lstm::Gates<V> act = lstm::activate(z, VecSigmoid{}, VecTanh{});
      const V cv = V::loadu(c + j, k);
      const V cn = lstm::next_cell(act, cv);
      const V hn = lstm::next_hidden(act, cn, VecTanh{});
      gates.store(act, j, k);
      if (c_saved) cv.store(c_saved + j, k);
      cn.store(c_next + j, k);
      store_op(hn, h_next + j, k);
      if (h_copy) store_op(hn, h_copy + j, k);
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

}  // namespace

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
