#pragma once
// What the CPU group norm ops measured on this machine (group_norm_cpu.cpp).
#include <c10/core/ScalarType.h>

#include <cstdint>
#include <vector>

namespace pynotes {

// How the channels-last backward takes its per-channel sums, for a shape class (dtype, SiLU,
// N, C and HxW rounded up to powers of two, threads): along the rows or down them
// (GroupNormCpuBackwardArgs::sums_along_rows), and the measured time of each whole backward.
struct GroupNormSumsChoice {
  c10::ScalarType dtype;
  bool silu;
  int64_t n, c, hxw;
  int threads;
  bool along_rows;
  double along_rows_seconds, down_columns_seconds;
};
std::vector<GroupNormSumsChoice> group_norm_sums_choices();

}  // namespace pynotes
