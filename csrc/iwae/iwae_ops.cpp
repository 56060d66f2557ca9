// Device-generic IWAE ops: checks at the boundary and the (outer, K, inner) view of log_w
// reduced over `dim`; the device kernels do one pass per output (iwae_kernels.h).
#include "iwae/iwae_ops.h"

#include <ATen/OpMathType.h>
#include <ATen/ops/empty.h>
#include <c10/core/DeviceGuard.h>

#include <vector>

#include "common/checks.h"

namespace pynotes {
namespace {

struct Layout {
  int64_t dim, outer, K, inner;
  std::vector<int64_t> reduced;  // the output shape
};

Layout layout_of(const at::Tensor& log_w, int64_t dim, bool keepdim, const char* op) {
  check_floating(log_w, "log_w");
  const int64_t rank = log_w.dim();
  TORCH_CHECK_INDEX(rank > 0 && dim >= -rank && dim < rank, op, ": dim must be in [", -rank,
                    ", ", rank - 1, "] for log_w of shape ", log_w.sizes(), ", got ", dim);
  Layout l{dim < 0 ? dim + rank : dim, 1, log_w.size(dim < 0 ? dim + rank : dim), 1, {}};
  TORCH_CHECK_VALUE(l.K >= 1, op, ": log_w.size(", l.dim, ") (the number of samples K) must be "
                    "at least 1");
  for (int64_t d = 0; d < rank; ++d) {
    if (d < l.dim) l.outer *= log_w.size(d);
    if (d > l.dim) l.inner *= log_w.size(d);
    if (d != l.dim) l.reduced.push_back(log_w.size(d));
    else if (keepdim) l.reduced.push_back(1);
  }
  return l;
}

}  // namespace

at::Tensor iwae_bound_impl(const at::Tensor& log_w, int64_t dim, bool keepdim,
                           const IwaeKernels& kernels) {
  const Layout l = layout_of(log_w, dim, keepdim, "iwae_bound");
  c10::OptionalDeviceGuard guard(log_w.device());
  at::Tensor bound = at::empty(l.reduced, log_w.options());
  if (bound.numel() == 0) return bound;
  const at::Tensor x = log_w.contiguous();
  kernels.forward({log_w.scalar_type(), l.outer, l.K, l.inner, x.const_data_ptr(),
                   bound.mutable_data_ptr(), nullptr, nullptr, nullptr});
  return bound;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> importance_weights_impl(
    const at::Tensor& log_w, int64_t dim, const IwaeKernels& kernels) {
  const Layout l = layout_of(log_w, dim, false, "importance_weights");
  c10::OptionalDeviceGuard guard(log_w.device());
  at::Tensor bound = at::empty(l.reduced, log_w.options());
  at::Tensor weights = at::empty(log_w.sizes(), log_w.options());  // contiguous
  at::Tensor ess = at::empty(l.reduced, log_w.options());
  if (bound.numel() == 0) return {bound, weights, ess};
  const at::Tensor x = log_w.contiguous();
  kernels.forward({log_w.scalar_type(), l.outer, l.K, l.inner, x.const_data_ptr(),
                   bound.mutable_data_ptr(), weights.mutable_data_ptr(),
                   ess.mutable_data_ptr(), nullptr});
  return {bound, weights, ess};
}

at::Tensor iwae_bound_backward_impl(const at::Tensor& grad, const at::Tensor& log_w,
                                    const at::Tensor& bound, int64_t dim, bool keepdim,
                                    const IwaeKernels& kernels) {
  constexpr const char* op = "iwae_bound_backward";
  const Layout l = layout_of(log_w, dim, keepdim, op);
  for (const auto& [t, name] : {std::pair{&grad, "grad"}, {&bound, "bound"}}) {
    check_like(*t, name, log_w, "log_w");
    TORCH_CHECK_VALUE(t->sizes() == c10::IntArrayRef(l.reduced), op, ": ", name,
                      " must have the bound's shape ", c10::IntArrayRef(l.reduced), ", got ",
                      t->sizes());
  }
  c10::OptionalDeviceGuard guard(log_w.device());
  at::Tensor out = at::empty(log_w.sizes(), log_w.options());
  if (out.numel() == 0) return out;
  const at::Tensor x = log_w.contiguous(), b = bound.contiguous(), g = grad.contiguous();
  // For float16/bfloat16 the bound is rounded to 8-11 bits, too coarse to recover lse from it
  // (bfloat16 near |bound| = 100 is off by up to 0.25, every weight by up to 28 %): lse is
  // recomputed in float from log_w first.
  at::Tensor lse;
  const at::ScalarType opmath = at::toOpMathType(log_w.scalar_type());
  if (opmath != log_w.scalar_type()) {
    lse = at::empty({l.outer * l.inner}, log_w.options().dtype(opmath));
    kernels.forward({log_w.scalar_type(), l.outer, l.K, l.inner, x.const_data_ptr(), nullptr,
                     nullptr, nullptr, lse.mutable_data_ptr()});
  }
  kernels.backward({log_w.scalar_type(), l.outer, l.K, l.inner, x.const_data_ptr(),
                    b.const_data_ptr(), lse.defined() ? lse.const_data_ptr() : nullptr,
                    g.const_data_ptr(), out.mutable_data_ptr()});
  return out;
}

}  // namespace pynotes
