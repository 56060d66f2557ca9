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

// One right-hand matrix b (K x N) for many products a @ b whose a has `rows` rows, as the
// steps of a recurrence multiply by one weight. For float32 on CPU, b is packed once into MKL's
// internal layout (cblas_sgemm_pack, exported by torch's MKL) where that measured faster than
// matmul_into for the shape class (matmul.cpp): the products then skip the re-packing that
// every GEMM call does. Other row counts, dtypes and devices go to matmul_into.
class RepeatedMatmul {
 public:
  RepeatedMatmul(const at::Tensor& b, int64_t rows);
  // out = a @ b, or out += a @ b when `accumulate`; as matmul_into.
  void into(const at::Tensor& out, const at::Tensor& a, bool accumulate) const;

 private:
  at::Tensor b_, packed_;  // packed_: MKL's bytes, undefined when not packed
  int64_t rows_;
};

// A packing choice made so far: the shape class (rows, N, K rounded up to powers of two,
// threads), the winner and both measured seconds of one product.
struct PackedMatmulChoice {
  int64_t m, n, k;
  int threads;
  bool packed;
  double packed_seconds, unpacked_seconds;
};
std::vector<PackedMatmulChoice> packed_matmul_choices();

// Whether MKL's packed float32 GEMM is there and gives a @ b (probed once on a small product).
bool mkl_packed_gemm_available();

}  // namespace pynotes
