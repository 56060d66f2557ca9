#include "common/matmul.h"

#include <ATen/Context.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/equal.h>
#include <ATen/ops/full.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros.h>

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <tuple>
#include <utility>

#include "common/calibration.h"

namespace at {
namespace native {
// out = beta * out + alpha * (mat1 @ mat2) with oneDNN. Exported by libtorch_cpu (its header,
// ATen/native/mkldnn/Matmul.h, is not installed). Weak, so that a torch built without oneDNN
// still loads us: the address is then null and we use at::mm.
TORCH_API void mkldnn_matmul(const Tensor& mat1, const Tensor& mat2, const Tensor& result,
                             float beta, float alpha) __attribute__((weak));
}  // namespace native
}  // namespace at

extern "C" {
// MKL's packed float32 GEMM (mkl_cblas.h; the LP64 interface: 32-bit sizes, its enums passed as
// int). Exported by libtorch_cpu where torch is built with MKL; weak, as mkldnn_matmul above.
size_t cblas_sgemm_pack_get_size(int identifier, int m, int n, int k) __attribute__((weak));
void cblas_sgemm_pack(int layout, int identifier, int trans, int m, int n, int k, float alpha,
                      const float* src, int ld, float* dest) __attribute__((weak));
void cblas_sgemm_compute(int layout, int transa, int transb, int m, int n, int k, const float* a,
                         int lda, const float* b, int ldb, float beta, float* c, int ldc)
    __attribute__((weak));
}

namespace pynotes {
namespace {

// One unit stride, as oneDNN's plain row- or column-major matrices need.
bool is_plain_matrix(const at::Tensor& t) {
  return t.stride(1) == 1 || t.stride(0) == 1;
}

// Float32 CPU products have two backends: oneDNN's matmul, as torch's own LSTM uses, and
// at::mm (MKL where torch has it). Which is faster depends on the CPU: MKL beat oneDNN on every
// LSTM shape timed on a Xeon, and ran at half oneDNN's rate on an AMD EPYC (MKL's code paths
// for other vendors are generic). So the choice is measured on the user's machine: the first
// product of each shape class (M, N, K rounded up to powers of two, operand layouts, thread
// count) times both on scratch output (best of two after a warm-up, on at most a few hundred
// MFLOP of it, see use_onednn) and keeps the faster, for the rest of the process.
// PYNOTES_MATMUL=aten or =onednn fixes the choice where oneDNN can run (results differ in the
// last bits between backends, as cudnn.benchmark's choices do).
struct ShapeClass {
  int64_t m, n, k;
  bool a_rows, b_rows;  // row-major (else column-major) operands
  int threads;
  bool operator<(const ShapeClass& o) const {
    return std::tie(m, n, k, a_rows, b_rows, threads) <
           std::tie(o.m, o.n, o.k, o.a_rows, o.b_rows, o.threads);
  }
};

ChoiceTable<ShapeClass, MatmulChoice>& choices() {
  static ChoiceTable<ShapeClass, MatmulChoice> table;
  return table;
}

}  // namespace

// torch 2.14's mkldnn_matmul refuses every dtype on CPUs without AVX512BW/VL/DQ or
// AVX-NE-CONVERT (an AVX2-only AMD EPYC, Zen 3), with an error meant for its bfloat16 path.
// Probed once on a 1 x 1 product.
bool onednn_runs_float32() {
  static const bool runs = [] {
    if (&at::native::mkldnn_matmul == nullptr || !at::hasMKLDNN()) return false;
    const at::Tensor one = at::ones({1, 1}, at::kFloat);
    const at::Tensor out = at::empty({1, 1}, at::kFloat);
    try {
      at::native::mkldnn_matmul(one, one, out, 0.0f, 1.0f);
    } catch (const c10::Error&) {
      return false;
    }
    return out.item<float>() == 1.0f;
  }();
  return runs;
}

namespace {

bool onednn_possible(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b) {
  return out.is_cpu() && out.scalar_type() == at::kFloat &&
         at::globalContext().userEnabledMkldnn() && is_plain_matrix(a) && is_plain_matrix(b) &&
         onednn_runs_float32();
}

void run_backend(bool onednn, const at::Tensor& out, const at::Tensor& a, const at::Tensor& b,
                 bool accumulate) {
  if (onednn) {
    at::native::mkldnn_matmul(a, b, out, accumulate ? 1.0f : 0.0f, 1.0f);
  } else if (accumulate) {
    at::addmm_out(const_cast<at::Tensor&>(out), out, a, b);
  } else {
    at::mm_out(const_cast<at::Tensor&>(out), a, b);
  }
}

bool use_onednn(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b) {
  static const int forced = [] {
    const char* env = std::getenv("PYNOTES_MATMUL");
    if (env == nullptr || env[0] == '\0') return -1;
    if (std::strcmp(env, "onednn") == 0) return 1;
    if (std::strcmp(env, "aten") == 0) return 0;
    TORCH_CHECK(false, "PYNOTES_MATMUL must be 'aten' or 'onednn', got '", env, "'");
  }();
  if (!onednn_possible(out, a, b)) return false;
  if (forced >= 0) return forced == 1;
  const ShapeClass key{round_up_pow2(a.size(0)), round_up_pow2(b.size(1)),
                       round_up_pow2(a.size(1)), a.stride(1) == 1, b.stride(1) == 1,
                       at::get_num_threads()};
  if (const auto known = choices().find(key)) return known->onednn;
  // Not under the lock: the products run on every thread. On a part of the product only, so
  // that a calibration costs at most a few hundred MFLOP whatever its size: a part that is
  // contiguous in memory, as the whole is. That is a's leading rows, or for a column-major a
  // (a transposed matrix: dW = dG^T X) its leading columns and b's leading rows. Its leading
  // rows would leave gaps between columns, which oneDNN ran at half its speed on (an AMD EPYC:
  // the (1024 x 8192) dG^T of an LSTM cut to 64 rows chose at::mm, 15 % slower on the whole).
  constexpr int64_t kBudget = int64_t(1) << 28;  // FLOPs
  const int64_t M = a.size(0), K = a.size(1), N = b.size(1);
  const bool cut_inner = !key.a_rows;
  const int64_t inner =
      cut_inner ? std::min(K, std::max<int64_t>(16, kBudget / std::max<int64_t>(2 * M * N, 1)))
                : K;
  const int64_t rows =
      std::min(M, std::max<int64_t>(16, kBudget / std::max<int64_t>(2 * inner * N, 1)));
  const at::Tensor a_part = a.narrow(0, 0, rows).narrow(1, 0, inner);
  const at::Tensor b_part = b.narrow(0, 0, inner);
  const at::Tensor scratch = at::empty({rows, out.size(1)}, out.options());
  auto seconds = [&](bool onednn) {
    return best_seconds(2, [&] { run_backend(onednn, scratch, a_part, b_part, false); });
  };
  const double onednn_s = seconds(true), aten_s = seconds(false);
  const MatmulChoice choice{key.m, key.n, key.k, key.a_rows, key.b_rows, key.threads,
                            onednn_s < aten_s, onednn_s, aten_s};
  return choices().insert(key, choice).onednn;
}

}  // namespace

void matmul_into(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b,
                 bool accumulate) {
  if (out.numel() == 0) return;
  if (a.size(1) == 0) {  // an empty sum
    if (!accumulate) out.zero_();
    return;
  }
  run_backend(use_onednn(out, a, b), out, a, b, accumulate);
}

std::vector<MatmulChoice> matmul_choices() { return choices().all(); }

namespace {

constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112, kPacked = 151, kBMatrix = 162;

bool fits_int(std::initializer_list<int64_t> sizes) {
  return std::all_of(sizes.begin(), sizes.end(),
                     [](int64_t v) { return v < std::numeric_limits<int>::max(); });
}

// b (K x N float32, one unit stride) in MKL's packed layout for products with m rows of a.
// MKL's bytes must not move: they stay in the returned tensor.
at::Tensor mkl_pack(const at::Tensor& b, int64_t m) {
  const int64_t K = b.size(0), N = b.size(1);
  const bool rows = b.stride(1) == 1;  // else b^T is row-major
  const int64_t ld = rows ? std::max(b.stride(0), N) : std::max(b.stride(1), K);
  const size_t bytes = cblas_sgemm_pack_get_size(kBMatrix, m, N, K);
  at::Tensor packed = at::empty({static_cast<int64_t>(bytes)}, b.options().dtype(at::kByte));
  cblas_sgemm_pack(kRowMajor, kBMatrix, rows ? kNoTrans : kTrans, m, N, K, 1.0f,
                   b.const_data_ptr<float>(), ld, static_cast<float*>(packed.mutable_data_ptr()));
  return packed;
}

// out (+)= a @ b with b packed by mkl_pack for a's rows; a and out with unit column stride.
void mkl_packed_product(const at::Tensor& packed, int64_t K, int64_t N, const at::Tensor& out,
                        const at::Tensor& a, bool accumulate) {
  cblas_sgemm_compute(kRowMajor, kNoTrans, kPacked, a.size(0), N, K, a.const_data_ptr<float>(),
                      std::max(a.stride(0), K), static_cast<const float*>(packed.const_data_ptr()),
                      N, accumulate ? 1.0f : 0.0f, out.mutable_data_ptr<float>(),
                      std::max(out.stride(0), N));
}

// torch's oneDNN linear with a weight packed once (what inductor's CPU freezing uses), called
// through the dispatcher: its schemas are torch's, not in an installed header.
std::optional<c10::OperatorHandle> onednn_op(const char* name) {
  return c10::Dispatcher::singleton().findSchema({name, ""});
}

// b (K x N) packed for a oneDNN linear (x w^T with w = b^T, N x K) of m rows.
at::Tensor onednn_pack(const at::Tensor& b, int64_t m) {
  static const std::optional<c10::OperatorHandle> op = onednn_op("mkldnn::_reorder_linear_weight");
  torch::jit::Stack stack{b.t().contiguous(), c10::IValue(m)};
  op->callBoxed(&stack);
  return stack[0].toTensor();
}

// a @ b as a new tensor, with b packed by onednn_pack.
at::Tensor onednn_packed_product(const at::Tensor& packed, const at::Tensor& a) {
  static const std::optional<c10::OperatorHandle> op = onednn_op("mkldnn::_linear_pointwise");
  torch::jit::Stack stack{a, packed, c10::IValue(), std::string("none"),
                          c10::List<std::optional<at::Scalar>>(), c10::IValue()};
  op->callBoxed(&stack);
  return stack[0].toTensor();
}

void run_packed(RepeatedMatmul::Backend backend, const at::Tensor& packed, const at::Tensor& b,
                const at::Tensor& out, const at::Tensor& a, bool accumulate) {
  if (backend == RepeatedMatmul::Backend::mkl) {
    mkl_packed_product(packed, b.size(0), b.size(1), out, a, accumulate);
  } else if (accumulate) {
    out.add_(onednn_packed_product(packed, a));
  } else {
    out.copy_(onednn_packed_product(packed, a));
  }
}

bool mkl_packable(const at::Tensor& b, int64_t rows) {
  return b.scalar_type() == at::kFloat && (b.stride(0) == 1 || b.stride(1) == 1) &&
         fits_int({rows, b.size(0), b.size(1), b.stride(0), b.stride(1)}) &&
         mkl_packed_gemm_available();
}

struct PackedShapeClass {
  int64_t m, n, k;
  c10::ScalarType dtype;
  int threads;
  bool operator<(const PackedShapeClass& o) const {
    return std::tie(m, n, k, dtype, threads) < std::tie(o.m, o.n, o.k, o.dtype, o.threads);
  }
};

ChoiceTable<PackedShapeClass, PackedMatmulChoice>& packed_choices() {
  static ChoiceTable<PackedShapeClass, PackedMatmulChoice> table;
  return table;
}

// PYNOTES_PACKED_MATMUL=mkl, onednn or 0 forces that backend (0: matmul_into) where it can
// run, read at every call (the tests run each); nullopt when unset.
std::optional<RepeatedMatmul::Backend> forced_backend() {
  const char* env = std::getenv("PYNOTES_PACKED_MATMUL");
  if (env == nullptr || env[0] == '\0') return std::nullopt;
  if (std::strcmp(env, "mkl") == 0) return RepeatedMatmul::Backend::mkl;
  if (std::strcmp(env, "onednn") == 0) return RepeatedMatmul::Backend::onednn;
  TORCH_CHECK(std::strcmp(env, "0") == 0,
              "PYNOTES_PACKED_MATMUL must be 'mkl', 'onednn' or '0', got '", env, "'");
  return RepeatedMatmul::Backend::unpacked;
}

// The probes' product: 3 x 2 times 2 x 3 in small integers, exact in every floating dtype.
std::pair<at::Tensor, at::Tensor> probe_operands(c10::ScalarType dtype) {
  return {at::arange(1, 7, at::kFloat).view({3, 2}).to(dtype),
          at::arange(-3, 3, at::kFloat).view({2, 3}).to(dtype)};
}

}  // namespace

bool mkl_packed_gemm_available() {
  static const bool available = [] {
    if (cblas_sgemm_pack_get_size == nullptr || cblas_sgemm_pack == nullptr ||
        cblas_sgemm_compute == nullptr || !at::hasMKL()) {
      return false;
    }
    // b in both layouts: checks the interface (LP64 sizes, the enums) before any result
    // depends on it.
    const auto [a, b] = probe_operands(at::kFloat);
    const at::Tensor expected = at::mm(a, b);
    for (const at::Tensor& bl : {b, b.t().contiguous().t()}) {
      const at::Tensor out = at::full({3, 3}, 7.0f, at::kFloat);
      mkl_packed_product(mkl_pack(bl, 3), 2, 3, out, a, false);
      if (!at::equal(out, expected)) return false;
    }
    return true;
  }();
  return available;
}

bool onednn_packed_linear_available(c10::ScalarType dtype) {
  static std::mutex mutex;
  static std::map<c10::ScalarType, bool> known;
  std::lock_guard<std::mutex> lock(mutex);
  if (const auto it = known.find(dtype); it != known.end()) return it->second;
  bool runs = at::hasMKLDNN() && onednn_op("mkldnn::_reorder_linear_weight").has_value() &&
              onednn_op("mkldnn::_linear_pointwise").has_value();
  if (runs) {
    try {
      const auto [a, b] = probe_operands(dtype);
      runs = at::equal(onednn_packed_product(onednn_pack(b, 3), a).to(at::kFloat),
                       at::mm(a.to(at::kFloat), b.to(at::kFloat)));
    } catch (const std::exception&) {  // oneDNN refuses the dtype here (c10 or dnnl error)
      runs = false;
    }
  }
  known[dtype] = runs;
  return runs;
}

namespace {

at::Tensor pack_for(RepeatedMatmul::Backend backend, const at::Tensor& b, int64_t rows) {
  switch (backend) {
    case RepeatedMatmul::Backend::mkl: return mkl_pack(b, rows);
    case RepeatedMatmul::Backend::onednn: return onednn_pack(b, rows);
    default: return at::Tensor();
  }
}

}  // namespace

RepeatedMatmul::RepeatedMatmul(const at::Tensor& b, int64_t rows) : b_(b), rows_(rows) {
  if (rows <= 0 || !b.defined() || !b.is_cpu() || b.size(0) == 0 || b.size(1) == 0) return;
  const c10::ScalarType dtype = b.scalar_type();
  const bool mkl = mkl_packable(b, rows);
  const bool onednn = (dtype == at::kFloat || at::isReducedFloatingType(dtype)) &&
                      at::globalContext().userEnabledMkldnn() &&
                      onednn_packed_linear_available(dtype);
  if (!mkl && !onednn) return;
  auto runs = [&](Backend backend) {
    return (backend == Backend::mkl && mkl) || (backend == Backend::onednn && onednn);
  };
  if (const auto forced = forced_backend()) {
    if (runs(*forced)) backend_ = *forced;
    packed_ = pack_for(backend_, b, rows);
    return;
  }
  // The first product of each shape class (rows, N, K rounded up to powers of two, dtype,
  // threads) times each backend, best of 2 after a warm-up on zero rows, and keeps the fastest
  // for the process: on a 2-core Xeon, packing once ran a step's float32 product 1.1-1.6x
  // faster (MKL's packed GEMM ahead of oneDNN's) and a bfloat16 one 1.1-1.7x (oneDNN on AMX).
  const PackedShapeClass key{round_up_pow2(rows), round_up_pow2(b.size(1)),
                             round_up_pow2(b.size(0)), dtype, at::get_num_threads()};
  if (const auto known = packed_choices().find(key)) {
    // (Measured on another b of the class: this one may not suit that backend, e.g. MKL's
    // packing needs one unit stride.)
    if (runs(known->backend)) backend_ = known->backend;
    packed_ = pack_for(backend_, b, rows);
    return;
  }
  const at::Tensor a = at::zeros({rows, b.size(0)}, b.options());
  const at::Tensor out = at::empty({rows, b.size(1)}, b.options());
  PackedMatmulChoice choice{key.m, key.n, key.k, dtype, key.threads, Backend::unpacked,
                            best_seconds(2, [&] { matmul_into(out, a, b, false); }), -1.0, -1.0};
  double best_s = choice.unpacked_seconds;
  at::Tensor best_packed;
  for (const Backend backend : {Backend::mkl, Backend::onednn}) {
    if (!runs(backend)) continue;
    at::Tensor packed = pack_for(backend, b, rows);
    const double s = best_seconds(2, [&] { run_packed(backend, packed, b, out, a, false); });
    (backend == Backend::mkl ? choice.mkl_seconds : choice.onednn_seconds) = s;
    if (s < best_s) {
      best_s = s;
      choice.backend = backend;
      best_packed = std::move(packed);
    }
  }
  const Backend kept = packed_choices().insert(key, choice).backend;  // another thread's
  if (runs(kept)) backend_ = kept;
  packed_ = backend_ == choice.backend ? std::move(best_packed) : pack_for(backend_, b, rows);
}

void RepeatedMatmul::into(const at::Tensor& out, const at::Tensor& a, bool accumulate) const {
  if (backend_ != Backend::unpacked && a.size(0) == rows_ && a.stride(1) == 1 &&
      out.stride(1) == 1 && fits_int({a.stride(0), out.stride(0)})) {
    run_packed(backend_, packed_, b_, out, a, accumulate);
    return;
  }
  matmul_into(out, a, b_, accumulate);
}

std::vector<PackedMatmulChoice> packed_matmul_choices() { return packed_choices().all(); }

at::Tensor matrix_product(const at::Tensor& a, const at::Tensor& b) {
  at::Tensor out = at::empty({a.size(0), b.size(1)}, a.options());
  matmul_into(out, a, b, false);
  return out;
}

// torch's sum(0) of a tall matrix read it at ~12 GB/s on 2 cores of an AMD EPYC (2.6 ms for the
// (8192, 1024) dgates of T32 B256 H256, where a whole-tensor sum took 0.4 ms): each block of
// rows here streams contiguously into its own partial sums.
at::Tensor sum_over_rows(const at::Tensor& m) {
  if (!m.is_cpu() || !m.is_contiguous() || m.dim() != 2 || m.is_complex()) return m.sum(0);
  const int64_t rows = m.size(0), cols = m.size(1);
  // At least 128 rows a block and at most 256 blocks (partial sums of bounded size); set by the
  // shape only.
  const int64_t block_rows = std::max<int64_t>(128, (rows + 255) / 256);
  const int64_t blocks = (rows + block_rows - 1) / block_rows;
  at::Tensor out = at::empty({cols}, m.options());
  const auto dtype = m.scalar_type();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, dtype, "sum_over_rows", [&] {
    using A = at::opmath_type<scalar_t>;
    const scalar_t* x = m.const_data_ptr<scalar_t>();
    std::vector<A> partial(static_cast<size_t>(std::max<int64_t>(blocks, 1) * cols), A(0));
    at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        A* sums = partial.data() + b * cols;
        for (int64_t r = b * block_rows; r < std::min(rows, (b + 1) * block_rows); ++r) {
          const scalar_t* row = x + r * cols;
          for (int64_t j = 0; j < cols; ++j) sums[j] += static_cast<A>(row[j]);
        }
      }
    });
    scalar_t* y = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, cols, 4096, [&](int64_t begin, int64_t end) {
      A* total = partial.data();  // block 0's sums, then each later block's added in order
      for (int64_t b = 1; b < blocks; ++b) {
        const A* sums = partial.data() + b * cols;
        for (int64_t j = begin; j < end; ++j) total[j] += sums[j];
      }
      for (int64_t j = begin; j < end; ++j) y[j] = static_cast<scalar_t>(total[j]);
    });
  });
  return out;
}

}  // namespace pynotes
