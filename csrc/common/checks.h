#pragma once
// Argument checks at an op's boundary. Each message names the argument and what was expected,
// so a user sees which input is wrong without reading our source.
#include <ATen/core/Tensor.h>
#include <ATen/core/grad_mode.h>
#include <c10/util/Exception.h>
#include <optional>

namespace pynotes {

inline void check_floating(const at::Tensor& t, const char* name) {
  TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()),
                   name, " must be a floating-point tensor (float32, float64, float16 or "
                   "bfloat16), got ", t.scalar_type());
}

// `t` must sit on the same device as `ref`.
inline void check_device(const at::Tensor& t, const char* name, const at::Tensor& ref,
                         const char* ref_name) {
  TORCH_CHECK(t.device() == ref.device(), name, " must be on the same device as ", ref_name,
              " (", ref.device(), "), got ", t.device());
}

// `t` must sit on the same device and have the same dtype as `ref`.
inline void check_like(const at::Tensor& t, const char* name, const at::Tensor& ref,
                       const char* ref_name) {
  check_device(t, name, ref, ref_name);
  TORCH_CHECK_TYPE(t.scalar_type() == ref.scalar_type(), name, " must have the same dtype as ",
                   ref_name, " (", ref.scalar_type(), "), got ", t.scalar_type());
}

// An optional per-channel vector (weight, bias): absent, or shape (size,) like `ref`.
inline void check_optional_vector(const std::optional<at::Tensor>& t, const char* name,
                                  int64_t size, const at::Tensor& ref, const char* ref_name) {
  if (!t.has_value() || !t->defined()) return;
  check_like(*t, name, ref, ref_name);
  TORCH_CHECK_VALUE(t->dim() == 1 && t->size(0) == size, name, " must have shape (", size,
                    ",), got ", t->sizes());
}

inline bool has_tensor(const std::optional<at::Tensor>& t) { return t.has_value() && t->defined(); }

inline bool requires_grad(const std::optional<at::Tensor>& t) {
  return has_tensor(t) && t->requires_grad();
}

// An undefined tensor (e.g. a gradient autograd did not compute) as an absent optional.
inline std::optional<at::Tensor> optional_tensor(const at::Tensor& t) {
  return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt;
}

// In an op's C++ backward (its Autograd-key kernel): grad mode is on there only when the
// backward must itself be differentiable (create_graph=True), which the backward kernels are
// not. Stop with an error then rather than return gradients that would differentiate as
// constants. The Python functions (pynotes.ops) have differentiable backwards.
inline void check_not_double_backward(const char* op) {
  TORCH_CHECK(!at::GradMode::is_enabled(), "pynotes::", op,
              ": the backward of the raw operator is not differentiable (create_graph=True, "
              "second derivatives); call pynotes.ops.", op,
              " instead, whose backward is differentiable");
}

}  // namespace pynotes
