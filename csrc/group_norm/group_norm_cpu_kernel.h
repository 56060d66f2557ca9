#pragma once
// Entry points of the per-ISA CPU group norm kernels (group_norm_cpu_kernel.cpp). They take
// raw pointers: the caller has checked shapes, dtypes and layout and allocated the outputs.
#include <c10/core/ScalarType.h>

#include <cstdint>

#include "common/cpu_dispatch.h"

namespace pynotes {

struct GroupNormCpuForwardArgs {
  c10::ScalarType dtype;  // of x and y; weight, bias, mean and rstd are its at::opmath_type
  bool channels_last;     // x is (N, *, C) in memory rather than (N, C, *)
  bool silu;
  int64_t N, C, HxW, G;
  double eps;
  const void* x;
  const void* weight;  // (C) or nullptr
  const void* bias;    // (C) or nullptr
  void* y;
  void* mean;  // (N, G)
  void* rstd;  // (N, G)
  // y (float/double) written with non-temporal stores, bypassing the caches: for outputs
  // larger than the last-level cache (group_norm_cpu.cpp). The same values either way.
  bool stream_output = false;
  // Channels-last: how the passes walk the rows (group_norm_cpu_kernel.cpp): -1 by the
  // kernel's rule (whether the samples re-read between the passes stay in cache, and rows are
  // short), 0 or 1 forced (group_norm_cpu.cpp).
  int by_columns = -1;
};

struct GroupNormCpuBackwardArgs {
  c10::ScalarType dtype;
  bool channels_last;
  bool silu;
  int64_t N, C, HxW, G;
  const void* dy;  // same layout as x
  const void* x;
  const void* mean;
  const void* rstd;
  const void* weight;  // (C) or nullptr
  const void* bias;    // (C) or nullptr; read only when silu
  void* dx;
  void* dweight;  // (C), at::opmath_type of dtype
  void* dbias;    // (C), at::opmath_type of dtype
  // Channels-last float/double: the per-channel sums walk along the rows, kept in memory,
  // rather than down them a few SIMD columns at a time in registers. Same sums in the same
  // order, so the same bits; which is faster depends on the CPU (group_norm_cpu.cpp).
  bool sums_along_rows = false;
  bool stream_output = false;  // dx, as GroupNormCpuForwardArgs::stream_output
};

PYNOTES_DECLARE_CPU_KERNEL(void group_norm_forward_cpu_kernel(const GroupNormCpuForwardArgs&))
PYNOTES_DECLARE_CPU_KERNEL(void group_norm_backward_cpu_kernel(const GroupNormCpuBackwardArgs&))

}  // namespace pynotes
