#pragma once
// Matrix products for ops that keep their GEMMs in ATen's BLAS (cuBLAS on CUDA, oneDNN or
// MKL on CPU) and fuse only what comes after them.
#include <ATen/core/Tensor.h>

#include <vector>

namespace pynotes {

// out = a @ b, or out += a @ b when `accumulate`. All three are 2-D on one device with one
// dtype; out is contiguous and does not overlap a or b.
//
// On CPU, float32 goes to oneDNN's matmul or to at::mm, whichever measured faster on this
// machine for the product's shape class (matmul.cpp); everything else goes to at::mm.
void matmul_into(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b,
                 bool accumulate);

// A float32 CPU backend choice made so far: the shape class (M, N, K rounded up to powers of
// two, operand layouts, threads), the winner and both measured times.
struct MatmulChoice {
  int64_t m, n, k;
  bool a_row_major, b_row_major;
  int threads;
  bool onednn;
  double onednn_seconds, aten_seconds;
};
std::vector<MatmulChoice> matmul_choices();

// Whether torch's oneDNN matmul runs float32 on this CPU (it does not on some; matmul.cpp).
bool onednn_runs_float32();

// a @ b as a new contiguous tensor, by matmul_into.
at::Tensor matrix_product(const at::Tensor& a, const at::Tensor& b);

}  // namespace pynotes
