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

}  // namespace CPU_CAPABILITY
}  // namespace pynotes
