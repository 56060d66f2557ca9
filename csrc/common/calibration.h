#pragma once
// What the choices measured on the user's machine share (common/matmul.cpp, lstm/lstm_ops.cpp):
// shape classes and the timing of a candidate.
#include <algorithm>
#include <chrono>
#include <cstdint>

namespace pynotes {

// The shape-class bound of a size: the smallest power of two >= v (1 for v <= 1).
inline int64_t round_up_pow2(int64_t v) {
  int64_t p = 1;
  while (p < v) p *= 2;
  return p;
}

// Seconds of the fastest of `runs` calls of f, after one warm-up call.
template <typename F>
double best_seconds(int runs, const F& f) {
  f();
  double best = 1e300;
  for (int run = 0; run < runs; ++run) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    best = std::min(best,
                    std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return best;
}

}  // namespace pynotes
