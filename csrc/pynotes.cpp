// Every pynotes operator schema, in one place, and the C++ API (ops.h) that calls them.
// Kernels register per dispatch key next to their code: <op>/<op>_cpu.cpp (CPU; the graph
// builders in gcn/gcn_graph_cpu.cpp), <op>/<op>_cuda.cu (CUDA), <op>/<op>_autograd.cpp
// (Autograd of the differentiable ops; common/not_differentiable.cpp for the GBDT ops and the
// graph builders); fake kernels, vmap and autocast rules are in pynotes/ops/*.py.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include "ops.h"

TORCH_LIBRARY(pynotes, m) {
  const std::vector<at::Tag> tags = {at::Tag::pt2_compliant_tag};
  m.def(
      "group_norm(Tensor input, int num_groups, Tensor? weight=None, Tensor? bias=None, "
      "float eps=1e-05, bool silu=False) -> (Tensor, Tensor, Tensor)",
      tags);
  m.def(
      "group_norm_backward(Tensor grad_output, Tensor input, Tensor mean, Tensor rstd, "
      "int num_groups, Tensor? weight, Tensor? bias, bool silu) -> (Tensor, Tensor, Tensor)",
      tags);
  // LSTM (PyTorch's gate order i, f, g, o; w_ih (4H, I), w_hh (4H, P), w_hr (P, H)).
  // lstm_cell returns the activated gates as its workspace, which the backward needs.
  m.def(
      "lstm_cell(Tensor input, Tensor hx, Tensor cx, Tensor w_ih, Tensor w_hh, "
      "Tensor? b_ih=None, Tensor? b_hh=None) -> (Tensor hy, Tensor cy, Tensor workspace)",
      tags);
  m.def(
      "lstm_cell_backward(Tensor? grad_hy, Tensor? grad_cy, Tensor workspace, Tensor input, "
      "Tensor hx, Tensor cx, Tensor w_ih, Tensor w_hh, bool[4] output_mask) -> (Tensor "
      "grad_input, Tensor grad_hx, Tensor grad_cx, Tensor grad_w_ih, Tensor grad_w_hh, Tensor "
      "grad_bias)",
      tags);
  // One layer and direction over a whole sequence: input (T, B, I), or packed (N, I) with
  // CPU int64 batch_sizes (T) as in PackedSequence. output (T, B, P) or (N, P).
  m.def(
      "lstm_layer(Tensor input, Tensor hx, Tensor cx, Tensor w_ih, Tensor w_hh, "
      "Tensor? b_ih=None, Tensor? b_hh=None, Tensor? w_hr=None, Tensor? batch_sizes=None, "
      "bool reverse=False) -> (Tensor output, Tensor hy, Tensor cy)",
      tags);
  // lstm_layer that also returns what the backward needs: per row of the (N, *) layout the
  // activated gates (N, 4H), the c and h the step started from (N, H) / (N, P), and the
  // projection inputs r (N, H) (empty without w_hr).
  m.def(
      "lstm_layer_train(Tensor input, Tensor hx, Tensor cx, Tensor w_ih, Tensor w_hh, "
      "Tensor? b_ih=None, Tensor? b_hh=None, Tensor? w_hr=None, Tensor? batch_sizes=None, "
      "bool reverse=False) -> (Tensor output, Tensor hy, Tensor cy, Tensor gates, "
      "Tensor c_prev, Tensor h_prev, Tensor r)",
      tags);
  // output_mask: (input, weights, bias). grad_bias is the gradient of b_ih and of b_hh.
  m.def(
      "lstm_layer_backward(Tensor? grad_output, Tensor? grad_hy, Tensor? grad_cy, "
      "Tensor input, Tensor hx, Tensor w_ih, Tensor w_hh, Tensor? w_hr, Tensor? batch_sizes, "
      "bool reverse, "
      "Tensor gates, Tensor c_prev, Tensor h_prev, Tensor r, bool[3] output_mask) -> (Tensor "
      "grad_input, Tensor grad_hx, Tensor grad_cx, Tensor grad_w_ih, Tensor grad_w_hh, Tensor "
      "grad_bias, Tensor grad_w_hr)",
      tags);
  // GCN propagation: out = A x with A in CSR by target node (rowptr, col), entry values
  // scale[i] * weight[e] * scale[col[e]] (absent weight or scale: 1), and the transposed CSR
  // (rowptr_t, col_t, perm_t: its entry k is entry perm_t[k]) that the backward runs on.
  m.def(
      "gcn_propagate(Tensor x, Tensor rowptr, Tensor col, Tensor? weight, Tensor? scale, "
      "Tensor rowptr_t, Tensor col_t, Tensor perm_t) -> Tensor",
      tags);
  // output_mask: (x, weight); x is needed only for the weight gradient.
  m.def(
      "gcn_propagate_backward(Tensor grad_output, Tensor? x, Tensor rowptr, Tensor col, "
      "Tensor? weight, Tensor? scale, Tensor rowptr_t, Tensor col_t, Tensor perm_t, "
      "bool[2] output_mask) -> (Tensor grad_x, Tensor grad_weight)",
      tags);
  // A PyG edge_index (2, E) (row 0 sources, row 1 targets) as CSR by target node: rowptr
  // (N + 1) int64, col (nnz) and edge_id (nnz, or 0 without edge_ids: the edge each entry came
  // from, -1 for an added self loop); and the transpose (rowptr_t, col_t, perm_t: its entry k
  // is entry perm_t[k]). The CSR's rows hold their entries in edge order, then their added
  // loop; the transpose's in CSR order. Indices are int32 when N + E < 2^31, else int64. self_loops: "keep", "drop",
  // "replace" (PyG's add_remaining_self_loops: one per node, edge_id that of the node's last
  // existing loop or -1) or "append" (one more per node). caller names the function in errors.
  m.def(
      "graph_csr(Tensor edge_index, SymInt num_nodes, str self_loops, bool edge_ids=True, "
      "str caller=\"graph_csr\") -> (Tensor rowptr, Tensor col, Tensor edge_id, "
      "Tensor rowptr_t, Tensor col_t, Tensor perm_t)",
      tags);
  // The normalized values of a graph_csr CSR, in CSR order: w_e = edge_weight[edge_id[e]] (1
  // without edge_weight; fill for an added loop), degrees d = sums of w over the rows
  // (by_source: the transposed rows), v_e = d[row]^-1/2 w_e d[col[e]]^-1/2 (0 for a degree 0).
  // Checks that edge_weight is finite and no degree negative. Not differentiable: pynotes.graph computes them with torch ops when edge_weight needs a
  // gradient.
  m.def(
      "graph_values(Tensor rowptr, Tensor col, Tensor edge_id, Tensor rowptr_t, Tensor perm_t, "
      "Tensor? edge_weight, float fill, bool by_source, ScalarType dtype, "
      "str caller=\"graph_values\") -> Tensor",
      tags);
  // Histogram gradient boosting (conventions in gbdt/gbdt_kernels.h): binning, the
  // gradient/hessian histograms of one tree level, split finding, the level step of the rows,
  // and ensemble prediction. Not differentiable.
  m.def("gbdt_bin(Tensor x, Tensor cuts, int missing_bin) -> Tensor", tags);
  m.def(
      "gbdt_histogram(Tensor bins, Tensor grad, Tensor hess, Tensor node, Tensor slot_of_node, "
      "int num_slots, int num_bins) -> Tensor",
      tags);
  m.def(
      "gbdt_best_splits(Tensor hist, Tensor? feature_mask, float reg_lambda, float gamma, "
      "float min_child_weight) -> (Tensor gain, Tensor feature, Tensor bin, Tensor "
      "default_left, Tensor left_sum, Tensor right_sum)",
      tags);
  m.def(
      "gbdt_advance(Tensor bins, Tensor node, Tensor split_feature, Tensor split_bin, "
      "Tensor default_left, int missing_bin) -> (Tensor node, Tensor count)",
      tags);
  m.def(
      "gbdt_predict(Tensor x, Tensor feature, Tensor threshold, Tensor default_left, "
      "Tensor value, Tensor group, Tensor base, int missing_bin, Tensor? categorical=None, "
      "Tensor? cat_left=None) -> Tensor",
      tags);
  // One tree grown to max_depth in one call (CPU only; gbdt/gbdt_kernels.h, GbdtGrowTree).
  m.def(
      "gbdt_grow_tree(Tensor bins, Tensor grad, Tensor hess, Tensor? feature_mask, "
      "int max_depth, int num_bins, float reg_lambda, float gamma, float min_child_weight, "
      "int quantize_bins=0, int seed=0, Tensor? categorical=None) -> "
      "(Tensor feature, Tensor split_bin, Tensor default_left, Tensor gain, Tensor sums, "
      "Tensor leaf, Tensor cat_left)",
      tags);
  // Log-sum-exp importance weighting over `dim` (IWAE, Burda et al.): the bound
  // logsumexp(log_w) - log K, its backward (the normalized weights times grad), and the bound
  // with the normalized weights and the effective sample size 1 / sum w~^2.
  m.def("iwae_bound(Tensor log_w, int dim=0, bool keepdim=False) -> Tensor", tags);
  m.def(
      "iwae_bound_backward(Tensor grad, Tensor log_w, Tensor bound, int dim, bool keepdim) "
      "-> Tensor",
      tags);
  m.def(
      "importance_weights(Tensor log_w, int dim=0) -> (Tensor bound, Tensor weights, "
      "Tensor ess)",
      tags);
}

namespace pynotes {

// Looks up a pynotes operator once and calls it through the dispatcher.
#define PYNOTES_CALL_OP(name, fn, ...)                                                  \
  static const auto op = c10::Dispatcher::singleton()                                   \
                             .findSchemaOrThrow("pynotes::" name, "")                   \
                             .typed<decltype(fn)>();                                    \
  return op.call(__VA_ARGS__)

std::tuple<at::Tensor, at::Tensor, at::Tensor> group_norm(
    const at::Tensor& input, int64_t num_groups, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, double eps, bool silu) {
  PYNOTES_CALL_OP("group_norm", group_norm, input, num_groups, weight, bias, eps, silu);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> group_norm_backward(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& mean,
    const at::Tensor& rstd, int64_t num_groups, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, bool silu) {
  PYNOTES_CALL_OP("group_norm_backward", group_norm_backward, grad_output, input, mean, rstd,
                  num_groups, weight, bias, silu);
}

LstmCellResult lstm_cell(const at::Tensor& input, const at::Tensor& hx, const at::Tensor& cx,
                         const at::Tensor& w_ih, const at::Tensor& w_hh,
                         const std::optional<at::Tensor>& b_ih,
                         const std::optional<at::Tensor>& b_hh) {
  PYNOTES_CALL_OP("lstm_cell", lstm_cell, input, hx, cx, w_ih, w_hh, b_ih, b_hh);
}

LstmCellGrads lstm_cell_backward(const std::optional<at::Tensor>& grad_hy,
                                 const std::optional<at::Tensor>& grad_cy,
                                 const at::Tensor& workspace, const at::Tensor& input,
                                 const at::Tensor& hx, const at::Tensor& cx,
                                 const at::Tensor& w_ih, const at::Tensor& w_hh,
                                 std::array<bool, 4> output_mask) {
  PYNOTES_CALL_OP("lstm_cell_backward", lstm_cell_backward, grad_hy, grad_cy, workspace, input,
                  hx, cx, w_ih, w_hh, output_mask);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> lstm_layer(
    const at::Tensor& input, const at::Tensor& hx, const at::Tensor& cx, const at::Tensor& w_ih,
    const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
    const std::optional<at::Tensor>& b_hh, const std::optional<at::Tensor>& w_hr,
    const std::optional<at::Tensor>& batch_sizes, bool reverse) {
  PYNOTES_CALL_OP("lstm_layer", lstm_layer, input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr,
                  batch_sizes, reverse);
}

LstmLayerTrainResult lstm_layer_train(
    const at::Tensor& input, const at::Tensor& hx, const at::Tensor& cx, const at::Tensor& w_ih,
    const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
    const std::optional<at::Tensor>& b_hh, const std::optional<at::Tensor>& w_hr,
    const std::optional<at::Tensor>& batch_sizes, bool reverse) {
  PYNOTES_CALL_OP("lstm_layer_train", lstm_layer_train, input, hx, cx, w_ih, w_hh, b_ih, b_hh,
                  w_hr, batch_sizes, reverse);
}

LstmLayerGrads lstm_layer_backward(
    const std::optional<at::Tensor>& grad_output, const std::optional<at::Tensor>& grad_hy,
    const std::optional<at::Tensor>& grad_cy, const at::Tensor& input, const at::Tensor& hx,
    const at::Tensor& w_ih,
    const at::Tensor& w_hh, const std::optional<at::Tensor>& w_hr,
    const std::optional<at::Tensor>& batch_sizes, bool reverse, const at::Tensor& gates,
    const at::Tensor& c_prev, const at::Tensor& h_prev, const at::Tensor& r,
    std::array<bool, 3> output_mask) {
  PYNOTES_CALL_OP("lstm_layer_backward", lstm_layer_backward, grad_output, grad_hy, grad_cy,
                  input, hx, w_ih, w_hh, w_hr, batch_sizes, reverse, gates, c_prev, h_prev, r,
                  output_mask);
}

at::Tensor gcn_propagate(const at::Tensor& x, const at::Tensor& rowptr, const at::Tensor& col,
                         const std::optional<at::Tensor>& weight,
                         const std::optional<at::Tensor>& scale, const at::Tensor& rowptr_t,
                         const at::Tensor& col_t, const at::Tensor& perm_t) {
  PYNOTES_CALL_OP("gcn_propagate", gcn_propagate, x, rowptr, col, weight, scale, rowptr_t, col_t,
                  perm_t);
}

std::tuple<at::Tensor, at::Tensor> gcn_propagate_backward(
    const at::Tensor& grad_output, const std::optional<at::Tensor>& x, const at::Tensor& rowptr,
    const at::Tensor& col, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& scale, const at::Tensor& rowptr_t, const at::Tensor& col_t,
    const at::Tensor& perm_t, std::array<bool, 2> output_mask) {
  PYNOTES_CALL_OP("gcn_propagate_backward", gcn_propagate_backward, grad_output, x, rowptr, col,
                  weight, scale, rowptr_t, col_t, perm_t, output_mask);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> graph_csr(
    const at::Tensor& edge_index, int64_t num_nodes, c10::string_view self_loops, bool edge_ids,
    c10::string_view caller) {
  PYNOTES_CALL_OP("graph_csr", graph_csr, edge_index, num_nodes, self_loops, edge_ids, caller);
}

at::Tensor graph_values(const at::Tensor& rowptr, const at::Tensor& col,
                        const at::Tensor& edge_id, const at::Tensor& rowptr_t,
                        const at::Tensor& perm_t, const std::optional<at::Tensor>& edge_weight,
                        double fill, bool by_source, at::ScalarType dtype,
                        c10::string_view caller) {
  PYNOTES_CALL_OP("graph_values", graph_values, rowptr, col, edge_id, rowptr_t, perm_t,
                  edge_weight, fill, by_source, dtype, caller);
}

at::Tensor gbdt_bin(const at::Tensor& x, const at::Tensor& cuts, int64_t missing_bin) {
  PYNOTES_CALL_OP("gbdt_bin", gbdt_bin, x, cuts, missing_bin);
}

at::Tensor gbdt_histogram(const at::Tensor& bins, const at::Tensor& grad, const at::Tensor& hess,
                          const at::Tensor& node, const at::Tensor& slot_of_node,
                          int64_t num_slots, int64_t num_bins) {
  PYNOTES_CALL_OP("gbdt_histogram", gbdt_histogram, bins, grad, hess, node, slot_of_node,
                  num_slots, num_bins);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
gbdt_best_splits(const at::Tensor& hist, const std::optional<at::Tensor>& feature_mask,
                 double reg_lambda, double gamma, double min_child_weight) {
  PYNOTES_CALL_OP("gbdt_best_splits", gbdt_best_splits, hist, feature_mask, reg_lambda, gamma,
                  min_child_weight);
}

std::tuple<at::Tensor, at::Tensor> gbdt_advance(const at::Tensor& bins, const at::Tensor& node,
                                                const at::Tensor& split_feature,
                                                const at::Tensor& split_bin,
                                                const at::Tensor& default_left,
                                                int64_t missing_bin) {
  PYNOTES_CALL_OP("gbdt_advance", gbdt_advance, bins, node, split_feature, split_bin,
                  default_left, missing_bin);
}

at::Tensor gbdt_predict(const at::Tensor& x, const at::Tensor& feature,
                        const at::Tensor& threshold, const at::Tensor& default_left,
                        const at::Tensor& value, const at::Tensor& group, const at::Tensor& base,
                        int64_t missing_bin, const std::optional<at::Tensor>& categorical,
                        const std::optional<at::Tensor>& cat_left) {
  PYNOTES_CALL_OP("gbdt_predict", gbdt_predict, x, feature, threshold, default_left, value,
                  group, base, missing_bin, categorical, cat_left);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
gbdt_grow_tree(const at::Tensor& bins, const at::Tensor& grad, const at::Tensor& hess,
               const std::optional<at::Tensor>& feature_mask, int64_t max_depth, int64_t num_bins,
               double reg_lambda, double gamma, double min_child_weight, int64_t quantize_bins,
               int64_t seed, const std::optional<at::Tensor>& categorical) {
  PYNOTES_CALL_OP("gbdt_grow_tree", gbdt_grow_tree, bins, grad, hess, feature_mask, max_depth,
                  num_bins, reg_lambda, gamma, min_child_weight, quantize_bins, seed,
                  categorical);
}

at::Tensor iwae_bound(const at::Tensor& log_w, int64_t dim, bool keepdim) {
  PYNOTES_CALL_OP("iwae_bound", iwae_bound, log_w, dim, keepdim);
}

at::Tensor iwae_bound_backward(const at::Tensor& grad, const at::Tensor& log_w,
                               const at::Tensor& bound, int64_t dim, bool keepdim) {
  PYNOTES_CALL_OP("iwae_bound_backward", iwae_bound_backward, grad, log_w, bound, dim, keepdim);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> importance_weights(const at::Tensor& log_w,
                                                                  int64_t dim) {
  PYNOTES_CALL_OP("importance_weights", importance_weights, log_w, dim);
}

}  // namespace pynotes
