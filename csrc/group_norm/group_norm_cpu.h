#pragma once
// What the CPU group norm ops measured on this machine (group_norm_cpu.cpp).
#include <c10/core/ScalarType.h>

#include <cstdint>
#include <vector>

namespace pynotes {

// How a channels-last kernel walks the rows of its chunks, for a shape class (dtype, SiLU, N, C
// and HxW rounded up to powers of two, threads): along the rows or down columns of channels,
// and the measured time of the whole kernel each way. Two such choices: how the backward takes
// its per-channel sums (GroupNormCpuBackwardArgs::sums_along_rows; same bits either way) and
// how the forward walks both its passes (GroupNormCpuForwardArgs::by_columns).
struct GroupNormWalkChoice {
  c10::ScalarType dtype;
  bool silu;
  int64_t n, c, hxw;
  int threads;
  bool along_rows;
  double along_rows_seconds, down_columns_seconds;
};
std::vector<GroupNormWalkChoice> group_norm_sums_choices();
std::vector<GroupNormWalkChoice> group_norm_forward_walk_choices();

// Whether a float32/float64 kernel writes its output with non-temporal stores, for a shape
// class (as above), layout and pass, and the measured time of the whole kernel each way.
struct GroupNormStreamChoice {
  c10::ScalarType dtype;
  bool silu;
  int64_t n, c, hxw;
  int threads;
  bool channels_last, backward, stream;
  double streaming_seconds, cached_seconds;
};
std::vector<GroupNormStreamChoice> group_norm_stream_choices();

// Whether a block's pages are in memory already (not a fresh mapping that faults at its first
// write), sampled: where the choice above is to stream, only such outputs are streamed.
bool pages_exist(const void* data, int64_t bytes);

}  // namespace pynotes
