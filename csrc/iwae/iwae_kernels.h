#pragma once
// Log-sum-exp importance weighting kernels on raw pointers; the CPU (per-ISA,
// iwae_cpu_kernel.cpp) and CUDA (iwae_cuda.cu) kernels implement them, iwae_ops.cpp calls them.
// log_w is viewed as a contiguous (outer, K, inner) array reduced over K; per (outer, inner):
//   lse   = max + log sum_k exp(log_w[k] - max)   (the max-shift; -inf when every entry is -inf)
//   bound = lse - log K
//   w~[k] = exp(log_w[k] - lse),  ess = 1 / sum_k w~[k]^2  (0 when every entry is -inf)
// NaN or +inf entries make the slice's results NaN.
#include <c10/core/ScalarType.h>

#include <cstdint>

#include "common/cpu_dispatch.h"

namespace pynotes {

struct IwaeForward {
  c10::ScalarType dtype;  // of log_w, bound and weights
  int64_t outer, K, inner;
  const void* log_w;
  void* bound;    // (outer, inner), or nullptr (then lse is not)
  void* weights;  // (outer, K, inner), or nullptr
  void* ess;      // (outer, inner), or nullptr (only with weights)
  void* lse;      // (outer, inner) in at::opmath_type, or nullptr
};

// grad_log_w[k] = w~[k] * grad_bound; 0 where lse is -inf.
struct IwaeBackward {
  c10::ScalarType dtype;
  int64_t outer, K, inner;
  const void* log_w;
  const void* bound;       // (outer, inner); lse = bound + log K
  const void* lse;         // or this lse in at::opmath_type (outer, inner), if not nullptr
  const void* grad_bound;  // (outer, inner)
  void* grad_log_w;        // (outer, K, inner)
};

struct IwaeKernels {
  void (*forward)(const IwaeForward&);
  void (*backward)(const IwaeBackward&);
};

PYNOTES_DECLARE_CPU_KERNEL(void iwae_forward_cpu_kernel(const IwaeForward&))
PYNOTES_DECLARE_CPU_KERNEL(void iwae_backward_cpu_kernel(const IwaeBackward&))

}  // namespace pynotes
