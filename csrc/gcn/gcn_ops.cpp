// Device-generic GCN propagation ops: checks at the boundary, then the device's kernels.
//
// out = A x with A the CSR matrix of gcn_kernels.h (rows = targets). Backward:
//   dx = A^T grad_out: the same SpMM kernel on the transposed CSR (rowptr_t, col_t), whose
//        entry k is entry perm_t[k] of the CSR (its weight is gathered through perm_t);
//   dweight[e] = scale[i] scale[col[e]] <grad_out[i], x[col[e]]>: the SDDMM kernel.
// Neither uses atomics, so gradients are as repeatable as the forward.
#include "gcn/gcn_ops.h"

#include <ATen/OpMathType.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/index_select.h>
#include <c10/core/DeviceGuard.h>

#include "common/checks.h"

namespace pynotes {
namespace {

constexpr const char* kOp = "gcn_propagate";

void check_index(const at::Tensor& t, const char* name, const at::Tensor& x, bool allow_int32) {
  check_device(t, name, x, "x");
  const bool ok_dtype = t.scalar_type() == at::kLong ||
                        (allow_int32 && t.scalar_type() == at::kInt);
  TORCH_CHECK_TYPE(ok_dtype && t.dim() == 1, kOp, ": ", name, " must be a 1-D ",
                   allow_int32 ? "int32 or int64" : "int64", " tensor, got ", t.scalar_type(),
                   " of shape ", t.sizes());
}

void check_size(const at::Tensor& t, const char* name, int64_t size, const char* meaning) {
  TORCH_CHECK_VALUE(t.size(0) == size, kOp, ": ", name, " must have ", meaning, " = ", size,
                    " elements, got ", t.size(0));
}

// A per-entry or per-node value vector: x's accumulation dtype, on x's device, `size` long.
void check_values(const std::optional<at::Tensor>& t, const char* name, const at::Tensor& x,
                  int64_t size, const char* meaning) {
  if (!has_tensor(t)) return;
  const auto dtype = at::toOpMathType(x.scalar_type());
  check_device(*t, name, x, "x");
  TORCH_CHECK_TYPE(t->scalar_type() == dtype, kOp, ": ", name, " must have dtype ", dtype,
                   " (the accumulation type of x's ", x.scalar_type(), "), got ",
                   t->scalar_type());
  TORCH_CHECK_VALUE(t->dim() == 1, kOp, ": ", name, " must be 1-D, got shape ", t->sizes());
  check_size(*t, name, size, meaning);
}

// The CSR's ends, where reading them costs nothing (CPU); a bad rowptr would read out of bounds.
void check_rowptr_ends(const at::Tensor& rowptr, const char* name, int64_t nnz) {
  if (!rowptr.is_cpu()) return;
  const int64_t* p = rowptr.const_data_ptr<int64_t>();
  const int64_t rows = rowptr.size(0) - 1;
  TORCH_CHECK_VALUE(p[0] == 0 && p[rows] == nnz, kOp, ": ", name,
                    " must start at 0 and end at the number of entries (", nnz, "), got ", p[0],
                    " and ", p[rows]);
}

struct Adjacency {
  at::Tensor rowptr, col, rowptr_t, col_t;
  std::optional<at::Tensor> weight, scale;
  int64_t num_nodes, nnz;
};

// Checks x against the adjacency and returns contiguous copies of the adjacency's tensors.
Adjacency check_arguments(const at::Tensor& x, const at::Tensor& rowptr, const at::Tensor& col,
                          const std::optional<at::Tensor>& weight,
                          const std::optional<at::Tensor>& scale, const at::Tensor& rowptr_t,
                          const at::Tensor& col_t, const at::Tensor& perm_t) {
  check_floating(x, "x");
  check_index(rowptr, "rowptr", x, false);
  check_index(col, "col", x, true);
  check_index(rowptr_t, "rowptr_t", x, false);
  check_index(col_t, "col_t", x, true);
  check_index(perm_t, "perm_t", x, true);
  const int64_t num_nodes = rowptr.size(0) - 1, nnz = col.size(0);
  TORCH_CHECK_VALUE(num_nodes >= 0, kOp, ": rowptr must have num_nodes + 1 >= 1 elements");
  TORCH_CHECK_VALUE(x.dim() == 2 && x.size(0) == num_nodes, kOp,
                    ": x must have shape (num_nodes, features) with num_nodes = "
                    "rowptr.size(0) - 1 = ", num_nodes, ", got ", x.sizes());
  TORCH_CHECK_TYPE(col_t.scalar_type() == col.scalar_type(), kOp,
                   ": col_t must have the dtype of col (", col.scalar_type(), "), got ",
                   col_t.scalar_type());
  check_size(rowptr_t, "rowptr_t", num_nodes + 1, "num_nodes + 1");
  check_size(col_t, "col_t", nnz, "col.size(0)");
  check_size(perm_t, "perm_t", nnz, "col.size(0)");
  check_values(weight, "weight", x, nnz, "col.size(0)");
  check_values(scale, "scale", x, num_nodes, "num_nodes");
  const auto contiguous = [](const std::optional<at::Tensor>& t) {
    return has_tensor(t) ? std::optional<at::Tensor>(t->contiguous()) : std::nullopt;
  };
  Adjacency adj{rowptr.contiguous(), col.contiguous(), rowptr_t.contiguous(),
                col_t.contiguous(), contiguous(weight), contiguous(scale), num_nodes, nnz};
  check_rowptr_ends(adj.rowptr, "rowptr", nnz);
  check_rowptr_ends(adj.rowptr_t, "rowptr_t", nnz);
  return adj;
}

const void* data_or_null(const std::optional<at::Tensor>& t) {
  return has_tensor(t) ? t->const_data_ptr() : nullptr;
}

CsrMatrix csr(const at::Tensor& rowptr, const at::Tensor& col,
              const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& scale) {
  return {col.scalar_type(), rowptr.size(0) - 1, rowptr.const_data_ptr<int64_t>(),
          col.const_data_ptr(), data_or_null(weight), data_or_null(scale)};
}

}  // namespace

at::Tensor gcn_propagate_impl(const at::Tensor& x, const at::Tensor& rowptr,
                              const at::Tensor& col, const std::optional<at::Tensor>& weight,
                              const std::optional<at::Tensor>& scale, const at::Tensor& rowptr_t,
                              const at::Tensor& col_t, const at::Tensor& perm_t,
                              const GcnKernels& kernels) {
  const Adjacency adj =
      check_arguments(x, rowptr, col, weight, scale, rowptr_t, col_t, perm_t);
  c10::OptionalDeviceGuard guard(x.device());
  const at::Tensor x_c = x.contiguous();
  at::Tensor out = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
  if (out.numel() == 0) return out;
  kernels.spmm({x.scalar_type(), x.size(1), csr(adj.rowptr, adj.col, adj.weight, adj.scale),
                x_c.const_data_ptr(), out.mutable_data_ptr()});
  return out;
}

std::tuple<at::Tensor, at::Tensor> gcn_propagate_backward_impl(
    const at::Tensor& grad_output, const std::optional<at::Tensor>& x, const at::Tensor& rowptr,
    const at::Tensor& col, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& scale, const at::Tensor& rowptr_t, const at::Tensor& col_t,
    const at::Tensor& perm_t, std::array<bool, 2> output_mask, const GcnKernels& kernels) {
  const Adjacency adj =
      check_arguments(grad_output, rowptr, col, weight, scale, rowptr_t, col_t, perm_t);
  c10::OptionalDeviceGuard guard(grad_output.device());
  const at::Tensor g = grad_output.contiguous();
  const int64_t features = g.size(1);
  at::Tensor grad_x, grad_weight;
  if (output_mask[0]) {
    grad_x = at::empty(g.sizes(), g.options());
    if (grad_x.numel() > 0) {
      // The transposed matrix's entry k is the CSR's entry perm_t[k].
      const std::optional<at::Tensor> weight_t =
          has_tensor(adj.weight) ? std::optional<at::Tensor>(at::index_select(*adj.weight, 0,
                                                                              perm_t))
                                 : std::nullopt;
      kernels.spmm({g.scalar_type(), features, csr(adj.rowptr_t, adj.col_t, weight_t, adj.scale),
                    g.const_data_ptr(), grad_x.mutable_data_ptr()});
    }
  }
  if (output_mask[1]) {
    TORCH_CHECK_VALUE(has_tensor(x), kOp, ": x is needed for the gradient of weight");
    TORCH_CHECK_VALUE(x->sizes() == g.sizes(), kOp,
                      ": grad_output must have the shape of x ", x->sizes(), ", got ",
                      g.sizes());
    check_like(*x, "x", g, "grad_output");
    grad_weight = at::empty({adj.nnz}, g.options().dtype(at::toOpMathType(g.scalar_type())));
    if (adj.nnz > 0 && adj.num_nodes > 0) {
      const at::Tensor x_c = x->contiguous();
      if (features == 0) {
        grad_weight.zero_();
      } else {
        kernels.sddmm({g.scalar_type(), features, csr(adj.rowptr, adj.col, std::nullopt,
                                                      adj.scale),
                       g.const_data_ptr(), x_c.const_data_ptr(), grad_weight.mutable_data_ptr()});
      }
    }
  }
  return {grad_x, grad_weight};
}

}  // namespace pynotes
