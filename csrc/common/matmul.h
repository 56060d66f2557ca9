#pragma once
// Matrix products for ops that keep their GEMMs in ATen's BLAS (cuBLAS on CUDA, oneDNN or
// MKL on CPU) and fuse only what comes after them.
#include <ATen/core/Tensor.h>

namespace pynotes {

// out = a @ b, or out += a @ b when `accumulate`. All three are 2-D on one device with one
// dtype; out is contiguous and does not overlap a or b.
//
// On CPU, float32 goes to oneDNN, as torch's own LSTM does: on the AMD EPYC we develop on,
// MKL's sgemm (what at::mm picks) runs about half as fast as oneDNN's (measured 200-220 vs
// 420-490 GFLOP/s on 2 threads; see benchmarks/lstm.py). Everything else goes to at::mm.
void matmul_into(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b,
                 bool accumulate);

// a @ b as a new contiguous tensor, by matmul_into.
at::Tensor matrix_product(const at::Tensor& a, const at::Tensor& b);

}  // namespace pynotes
