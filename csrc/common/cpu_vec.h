#pragma once
// SIMD loads and stores of any floating storage type T as vectors of its at::opmath_type:
// float and double pass through; Half and BFloat16 are widened to float on load and rounded
// on store, so kernels compute in float whatever they read. For the per-ISA kernel files
// (*_cpu_kernel.cpp) only: everything is in namespace pynotes::CPU_CAPABILITY.
#include <ATen/OpMathType.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <cstdint>
#include <type_traits>

namespace pynotes {
namespace CPU_CAPABILITY {

template <typename T>
using opmath_t = at::opmath_type<T>;

template <typename T>
using OpVec = at::vec::Vectorized<opmath_t<T>>;

template <typename T>
constexpr bool kWidened = !std::is_same_v<T, opmath_t<T>>;

// The first n <= OpVec<T>::size() values at p (the rest of the vector 0).
template <typename T>
inline OpVec<T> load_op(const T* p, int64_t n = OpVec<T>::size()) {
  if constexpr (!kWidened<T>) {
    return OpVec<T>::loadu(p, n);
  } else {
    if (n == OpVec<T>::size()) {
      OpVec<T> v;
      at::vec::load_to_float(p, v);
      return v;
    }
    opmath_t<T> buffer[OpVec<T>::size()] = {};
    at::vec::convert(p, buffer, n);
    return OpVec<T>::loadu(buffer);
  }
}

// Stores the first n <= OpVec<T>::size() lanes of v at p.
template <typename T>
inline void store_op(const OpVec<T>& v, T* p, int64_t n = OpVec<T>::size()) {
  if constexpr (!kWidened<T>) {
    v.store(p, n);
  } else {
    at::vec::convert_from_float<T>(v, v).store(p, n);
  }
}

// sigmoid and tanh on SIMD lanes (LSTM gates, the fused SiLU of group norm), both from exp_u20
// (ATen's polynomial exp, within 2 ulp), which costs half of Sleef's 1-ulp exp and a third of
// its tanh. tanh(x) = 2 sigmoid(2x) - 1 is exact at +-inf and within a few float ulp of 1 in
// absolute error near 0, where tanh is small.
struct VecSigmoid {
  template <typename V>
  V operator()(const V& x) const {
    return V(1) / (V(1) + x.neg().exp_u20());
  }
};

struct VecTanh {
  template <typename V>
  V operator()(const V& x) const {
    return V(2) / (V(1) + (x * V(-2)).exp_u20()) - V(1);
  }
};

}  // namespace CPU_CAPABILITY
}  // namespace pynotes
