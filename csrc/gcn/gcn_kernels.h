#pragma once
// The two sparse kernels behind GCN propagation, on raw pointers; the CPU (per-ISA,
// gcn_cpu_kernel.cpp) and CUDA (gcn_cuda.cu) kernels implement them and gcn_ops.cpp calls them.
//
// The sparse matrix is CSR with `rows` rows (one per target node): row i holds the entries
// rowptr[i] .. rowptr[i+1] - 1, entry e in column col[e] (a source node). Its value is
//   a_e = scale[i] * weight[e] * scale[col[e]],
// with weight == nullptr meaning 1 and scale == nullptr meaning 1. So one kernel serves the
// normalized GCN adjacency D^-1/2 A D^-1/2 computed on the fly (scale = D^-1/2, weight = edge
// weights or none) and stored per-edge values (weight = a, scale = none).
//
// Dense operands are row-major and contiguous with `features` columns. weight and scale are
// at::opmath_type of `dtype` (float for float16/bfloat16). No atomics: each output element
// is summed by one thread in the order of the CSR, so results are bit-for-bit repeatable.
#include <c10/core/ScalarType.h>

#include <cstdint>

#include "common/cpu_dispatch.h"

namespace pynotes {

struct CsrMatrix {
  c10::ScalarType index_dtype;  // of col: Int or Long
  int64_t rows;
  const int64_t* rowptr;        // rows + 1
  const void* col;              // nnz, each in [0, rows)
  const void* weight;           // nnz, or nullptr
  const void* scale;            // rows, or nullptr
};

// out = A x: out (rows, features), x (rows, features).
struct CsrSpmm {
  c10::ScalarType dtype;
  int64_t features;
  CsrMatrix a;
  const void* x;
  void* out;
};

// The gradient of the loss with respect to weight[e] when out = A x and grad_out = dL/dout:
// out[e] = scale[i] * scale[col[e]] * <grad_out[i], x[col[e]]> for each entry e of row i.
struct CsrSddmm {
  c10::ScalarType dtype;
  int64_t features;
  CsrMatrix a;              // a.weight is not read
  const void* grad_out;     // (rows, features)
  const void* x;            // (rows, features)
  void* out;                // nnz, opmath type
};

using CsrSpmmFn = void (*)(const CsrSpmm&);
using CsrSddmmFn = void (*)(const CsrSddmm&);

// One device's kernels.
struct GcnKernels {
  CsrSpmmFn spmm;
  CsrSddmmFn sddmm;
};

PYNOTES_DECLARE_CPU_KERNEL(void csr_spmm_cpu_kernel(const CsrSpmm&))
PYNOTES_DECLARE_CPU_KERNEL(void csr_sddmm_cpu_kernel(const CsrSddmm&))

}  // namespace pynotes
