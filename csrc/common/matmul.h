#pragma once
// Matrix products for ops that keep their GEMMs in ATen's BLAS (cuBLAS on CUDA, oneDNN or
// MKL on CPU) and fuse only what comes after them.
#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>

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

// m (rows x cols) summed over its rows (a bias gradient: ones^T m), in m's dtype. On CPU for a
// contiguous m: fixed blocks of rows summed in parallel, then the blocks' sums in order, so
// the same bits for any thread count; elsewhere m.sum(0).
at::Tensor sum_over_rows(const at::Tensor& m);

// One right-hand matrix b (K x N) for many products a @ b whose a has `rows` rows, as the
// steps of a recurrence multiply by one weight. On CPU, b can be packed once into a GEMM's
// internal layout, so that the products skip the re-packing every GEMM call does: MKL's packed
// GEMM (cblas_sgemm_pack, float32, exported by torch's MKL) or oneDNN's packed linear weight
// (torch's mkldnn::_reorder_linear_weight / _linear_pointwise, float32 and the half types).
// Which of those and matmul_into is fastest depends on the CPU, so it is measured per shape
// class (matmul.cpp). Products with other row counts (all of them for rows = 0) go to
// matmul_into.
class RepeatedMatmul {
 public:
  enum class Backend { unpacked, mkl, onednn };
  RepeatedMatmul(const at::Tensor& b, int64_t rows);
  // out = a @ b, or out += a @ b when `accumulate`; as matmul_into.
  void into(const at::Tensor& out, const at::Tensor& a, bool accumulate) const;

 private:
  at::Tensor b_, packed_;  // packed_: the backend's packed b, undefined when unpacked
  int64_t rows_;
  Backend backend_ = Backend::unpacked;
};

// A packing choice made so far: the shape class (rows, N, K rounded up to powers of two, dtype,
// threads), the winner and the measured seconds of one product per backend (< 0: unavailable).
struct PackedMatmulChoice {
  int64_t m, n, k;
  c10::ScalarType dtype;
  int threads;
  RepeatedMatmul::Backend backend;
  double unpacked_seconds, mkl_seconds, onednn_seconds;
};
std::vector<PackedMatmulChoice> packed_matmul_choices();

// Whether MKL's packed float32 GEMM is there and gives a @ b (probed once on a small product).
bool mkl_packed_gemm_available();
// Whether torch's oneDNN packed linear runs in dtype on this CPU (probed once per dtype).
bool onednn_packed_linear_available(c10::ScalarType dtype);

}  // namespace pynotes
