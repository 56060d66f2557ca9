#include "common/matmul.h"

#include <ATen/Context.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/ones.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <tuple>

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
// MFLOP of its leading rows) and keeps the faster, for the rest of the process.
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
  // Not under the lock: the products run on every thread. On the leading rows of a only, so
  // that a calibration costs at most a few hundred MFLOP whatever the product's size.
  const int64_t flops_per_row = std::max<int64_t>(2 * b.size(0) * b.size(1), 1);
  const int64_t rows =
      std::min(a.size(0), std::max<int64_t>(16, (int64_t(1) << 28) / flops_per_row));
  const at::Tensor a_rows = a.narrow(0, 0, rows);
  const at::Tensor scratch = at::empty({rows, out.size(1)}, out.options());
  const double onednn_s = best_seconds(2, [&] { run_backend(true, scratch, a_rows, b, false); });
  const double aten_s = best_seconds(2, [&] { run_backend(false, scratch, a_rows, b, false); });
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

at::Tensor matrix_product(const at::Tensor& a, const at::Tensor& b) {
  at::Tensor out = at::empty({a.size(0), b.size(1)}, a.options());
  matmul_into(out, a, b, false);
  return out;
}

}  // namespace pynotes
