#pragma once
// The online log-sum-exp (max-shift) of the IWAE kernels, written once for CPU vectors and
// CUDA scalars: a running (max, sum of exp(x - max)) pair, updated by blocks of values and
// merged pairwise.
#include <c10/macros/Macros.h>

#include <cmath>
#include <limits>

namespace pynotes {
namespace iwae {

// The shift that keeps exp() finite: the max itself, or 0 when it is -inf (every value so far
// -inf: all terms are 0 and nothing may turn into -inf - -inf = NaN).
template <typename A>
C10_HOST_DEVICE inline A safe_shift(A max) {
  return max == -std::numeric_limits<A>::infinity() ? A(0) : max;
}

// log(sum) + max, the log-sum-exp of a finished running pair.
template <typename A>
C10_HOST_DEVICE inline A finish(A max, A sum) {
  if (max == -std::numeric_limits<A>::infinity()) return max;
  return max + std::log(sum);
}

// exp(x - lse), the normalized weight; 0 for an all -inf slice, NaN stays NaN.
template <typename A>
C10_HOST_DEVICE inline A weight(A x, A lse) {
  if (lse == -std::numeric_limits<A>::infinity()) return A(0);
  return std::exp(x - lse);
}

}  // namespace iwae
}  // namespace pynotes
