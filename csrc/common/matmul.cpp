#include "common/matmul.h"

#include <ATen/Context.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>

#include <cstring>
#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

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

// Float32 products go to MKL (at::mm) on Intel CPUs, where it beat oneDNN's matmul on every
// LSTM shape we timed (a Xeon, benchmarks/lstm.py); elsewhere to oneDNN as before (MKL's code
// paths for other vendors are generic).
bool is_intel_cpu() {
#if defined(__x86_64__) || defined(__i386__)
  static const bool intel = [] {
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    if (!__get_cpuid(0, &eax, &ebx, &ecx, &edx)) return false;
    char vendor[13] = {};
    std::memcpy(vendor, &ebx, 4);
    std::memcpy(vendor + 4, &edx, 4);
    std::memcpy(vendor + 8, &ecx, 4);
    return std::strcmp(vendor, "GenuineIntel") == 0;
  }();
  return intel;
#else
  return false;
#endif
}

bool use_onednn(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b) {
  return &at::native::mkldnn_matmul != nullptr && out.is_cpu() && !is_intel_cpu() &&
         out.scalar_type() == at::kFloat && at::hasMKLDNN() &&
         at::globalContext().userEnabledMkldnn() && is_plain_matrix(a) && is_plain_matrix(b);
}

}  // namespace

void matmul_into(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b,
                 bool accumulate) {
  if (out.numel() == 0) return;
  if (a.size(1) == 0) {  // an empty sum
    if (!accumulate) out.zero_();
    return;
  }
  if (use_onednn(out, a, b)) {
    at::native::mkldnn_matmul(a, b, out, accumulate ? 1.0f : 0.0f, 1.0f);
  } else if (accumulate) {
    at::addmm_out(const_cast<at::Tensor&>(out), out, a, b);
  } else {
    at::mm_out(const_cast<at::Tensor&>(out), a, b);
  }
}

at::Tensor matrix_product(const at::Tensor& a, const at::Tensor& b) {
  at::Tensor out = at::empty({a.size(0), b.size(1)}, a.options());
  matmul_into(out, a, b, false);
  return out;
}

}  // namespace pynotes
