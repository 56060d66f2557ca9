#pragma once
// GateRow, for the LSTM step kernels and engine (lstm_cpu_kernel.cpp,
// lstm_engine_cpu_kernel.cpp): per-ISA files only, in namespace pynotes::CPU_CAPABILITY.
#include <cstdint>
#include <type_traits>

#include "common/cpu_vec.h"
#include "lstm/lstm.h"

namespace pynotes {
namespace CPU_CAPABILITY {

// The four gate blocks (i, f, g, o) of one row of a (rows, 4 * hidden) matrix, as opmath
// vectors. T may be const.
template <typename T>
struct GateRow {
  using V = OpVec<std::remove_const_t<T>>;
  T* p;
  int64_t hidden;
  lstm::Gates<V> load(int64_t j, int64_t k) const {
    return {load_op(p + j, k), load_op(p + hidden + j, k), load_op(p + 2 * hidden + j, k),
            load_op(p + 3 * hidden + j, k)};
  }
  void store(const lstm::Gates<V>& g, int64_t j, int64_t k) const {
    store_op(g.i, p + j, k);
    store_op(g.f, p + hidden + j, k);
    store_op(g.g, p + 2 * hidden + j, k);
    store_op(g.o, p + 3 * hidden + j, k);
  }
};

// One vector of units' step from their pre-activations z (bias, b_ih + b_hh in opmath, added
// where given; k <= V::size() units from unit j): the activated gates, c' and h'. The step
// kernels, the fused cell and the engine share it.
template <typename V>
struct StepVector {
  lstm::Gates<V> act;
  V c_next, h_next;
};

template <typename V, typename A>
inline StepVector<V> step_vector(lstm::Gates<V> z, const A* bias, int64_t hidden, int64_t j,
                                 int64_t k, const V& c) {
  if (bias) {
    const lstm::Gates<V> bz = GateRow<const A>{bias, hidden}.load(j, k);
    z = {z.i + bz.i, z.f + bz.f, z.g + bz.g, z.o + bz.o};
  }
  const lstm::Gates<V> act = lstm::activate(z, VecSigmoid{}, VecTanh{});
  const V c_next = lstm::next_cell(act, c);
  return {act, c_next, lstm::next_hidden(act, c_next, VecTanh{})};
}

}  // namespace CPU_CAPABILITY
}  // namespace pynotes
