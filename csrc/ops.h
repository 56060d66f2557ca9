#pragma once
// The C++ API of pynotes: each function calls its operator through the PyTorch dispatcher, so
// it runs the CPU or CUDA kernel for the inputs' device and records autograd where registered.
// Schemas (argument meanings, defaults) are in pynotes.cpp.
#include <ATen/core/Tensor.h>

#include <array>
#include <optional>
#include <tuple>

namespace pynotes {

// Group norm over (N, C, *): returns (output, mean, rstd); mean and rstd are (N, num_groups),
// float32 (float64 for float64 input). silu=true applies SiLU to the output in the same kernel.
std::tuple<at::Tensor, at::Tensor, at::Tensor> group_norm(
    const at::Tensor& input, int64_t num_groups,
    const std::optional<at::Tensor>& weight = std::nullopt,
    const std::optional<at::Tensor>& bias = std::nullopt, double eps = 1e-5, bool silu = false);

// Gradients (input, weight, bias) of group_norm from its saved mean and rstd. The weight and
// bias gradients are computed also when weight / bias are absent (as if all ones / zeros).
std::tuple<at::Tensor, at::Tensor, at::Tensor> group_norm_backward(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& mean,
    const at::Tensor& rstd, int64_t num_groups, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, bool silu);

// LSTM, PyTorch's gate order (i, f, g, o) and weight layout: w_ih (4H, I), w_hh (4H, P),
// optional biases (4H), w_hr (P, H) for a projection (P = H without one).

// One step: (hy, cy, workspace) where workspace is the activated gates (B, 4H) the backward
// needs. float32, float64, float16 and bfloat16 (cell state in float for the half types).
using LstmCellResult = std::tuple<at::Tensor, at::Tensor, at::Tensor>;
LstmCellResult lstm_cell(const at::Tensor& input, const at::Tensor& hx, const at::Tensor& cx,
                         const at::Tensor& w_ih, const at::Tensor& w_hh,
                         const std::optional<at::Tensor>& b_ih = std::nullopt,
                         const std::optional<at::Tensor>& b_hh = std::nullopt);

// (grad_input, grad_hx, grad_cx, grad_w_ih, grad_w_hh, grad_bias); output_mask says which of
// input, hx, weights, bias to compute (the others are undefined). grad_bias is the gradient
// of b_ih and of b_hh alike.
using LstmCellGrads =
    std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
LstmCellGrads lstm_cell_backward(const std::optional<at::Tensor>& grad_hy,
                                 const std::optional<at::Tensor>& grad_cy,
                                 const at::Tensor& workspace, const at::Tensor& input,
                                 const at::Tensor& hx, const at::Tensor& cx,
                                 const at::Tensor& w_ih, const at::Tensor& w_hh,
                                 std::array<bool, 4> output_mask);

// One layer and direction over a sequence, (output, hy, cy): input (T, B, I) time-major, or
// packed (N, I) with batch_sizes (T) on the CPU as in PackedSequence; reverse runs from the
// last step to the first.
std::tuple<at::Tensor, at::Tensor, at::Tensor> lstm_layer(
    const at::Tensor& input, const at::Tensor& hx, const at::Tensor& cx, const at::Tensor& w_ih,
    const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih = std::nullopt,
    const std::optional<at::Tensor>& b_hh = std::nullopt,
    const std::optional<at::Tensor>& w_hr = std::nullopt,
    const std::optional<at::Tensor>& batch_sizes = std::nullopt, bool reverse = false);

// lstm_layer plus what its backward needs: (output, hy, cy, gates, c_prev, h_prev, r).
using LstmLayerTrainResult = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                                        at::Tensor, at::Tensor, at::Tensor>;
LstmLayerTrainResult lstm_layer_train(
    const at::Tensor& input, const at::Tensor& hx, const at::Tensor& cx, const at::Tensor& w_ih,
    const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
    const std::optional<at::Tensor>& b_hh, const std::optional<at::Tensor>& w_hr,
    const std::optional<at::Tensor>& batch_sizes, bool reverse);

// (grad_input, grad_hx, grad_cx, grad_w_ih, grad_w_hh, grad_bias, grad_w_hr) from the saved
// tensors of lstm_layer_train; output_mask: input, weights, bias.
using LstmLayerGrads = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                                  at::Tensor, at::Tensor>;
LstmLayerGrads lstm_layer_backward(
    const std::optional<at::Tensor>& grad_output, const std::optional<at::Tensor>& grad_hy,
    const std::optional<at::Tensor>& grad_cy, const at::Tensor& input, const at::Tensor& hx,
    const at::Tensor& w_ih,
    const at::Tensor& w_hh, const std::optional<at::Tensor>& w_hr,
    const std::optional<at::Tensor>& batch_sizes, bool reverse, const at::Tensor& gates,
    const at::Tensor& c_prev, const at::Tensor& h_prev, const at::Tensor& r,
    std::array<bool, 3> output_mask);

// GCN propagation out = A x (rows of x are nodes): A is CSR by target node (rowptr (N + 1)
// int64, col int32/int64 source nodes) with entry values scale[i] * weight[e] * scale[col[e]]
// (absent weight or scale count as 1; both in x's accumulation dtype). rowptr_t, col_t are the
// transposed CSR and perm_t maps its entries to the CSR's; the backward runs on them.
// Differentiable in x and weight. pynotes.graph.gcn_norm (Python) builds all of these.
at::Tensor gcn_propagate(const at::Tensor& x, const at::Tensor& rowptr, const at::Tensor& col,
                         const std::optional<at::Tensor>& weight,
                         const std::optional<at::Tensor>& scale, const at::Tensor& rowptr_t,
                         const at::Tensor& col_t, const at::Tensor& perm_t);

// (grad_x, grad_weight) of gcn_propagate; output_mask says which to compute (x is needed
// only for grad_weight, which has x's accumulation dtype).
std::tuple<at::Tensor, at::Tensor> gcn_propagate_backward(
    const at::Tensor& grad_output, const std::optional<at::Tensor>& x, const at::Tensor& rowptr,
    const at::Tensor& col, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& scale, const at::Tensor& rowptr_t, const at::Tensor& col_t,
    const at::Tensor& perm_t, std::array<bool, 2> output_mask);

// A PyG edge_index (2, E) as the CSR the GCN ops take: (rowptr, col, edge_id, rowptr_t, col_t,
// perm_t); edge_id is the edge each entry came from (-1: an added self loop; empty without
// edge_ids). self_loops is "keep", "drop", "replace" (one per node, as PyG's
// add_remaining_self_loops) or "append". CPU; pynotes.graph (Python) also runs it on CUDA and
// turns it into an Adjacency.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> graph_csr(
    const at::Tensor& edge_index, int64_t num_nodes, c10::string_view self_loops,
    bool edge_ids = true, c10::string_view caller = "graph_csr");

// The normalized values d[row]^-1/2 w d[col]^-1/2 of a graph_csr CSR (degrees over rows, or
// over the transposed rows with by_source); w from edge_weight through edge_id, fill for added
// loops. Not differentiable.
at::Tensor graph_values(const at::Tensor& rowptr, const at::Tensor& col,
                        const at::Tensor& edge_id, const at::Tensor& rowptr_t,
                        const at::Tensor& perm_t, const std::optional<at::Tensor>& edge_weight,
                        double fill, bool by_source, at::ScalarType dtype,
                        c10::string_view caller = "graph_values");

// Histogram gradient boosting (conventions in gbdt/gbdt_kernels.h; the trainer is Python's
// pynotes.gbdt). gbdt_bin: uint8 bins of x (rows, features) given per-feature cut points
// (features, max_cuts) padded with +inf; NaN goes to missing_bin.
at::Tensor gbdt_bin(const at::Tensor& x, const at::Tensor& cuts, int64_t missing_bin);

// float64 (num_slots, features, num_bins, 2) sums of (grad, hess) of the rows whose node has a
// slot (slot_of_node[node[r]] >= 0).
at::Tensor gbdt_histogram(const at::Tensor& bins, const at::Tensor& grad, const at::Tensor& hess,
                          const at::Tensor& node, const at::Tensor& slot_of_node,
                          int64_t num_slots, int64_t num_bins);

// Per slot the best split: (gain, feature, bin, default_left, left_sum, right_sum).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
gbdt_best_splits(const at::Tensor& hist, const std::optional<at::Tensor>& feature_mask,
                 double reg_lambda, double gamma, double min_child_weight);

// One level of descent of every row: (new node, rows per node).
std::tuple<at::Tensor, at::Tensor> gbdt_advance(const at::Tensor& bins, const at::Tensor& node,
                                                const at::Tensor& split_feature,
                                                const at::Tensor& split_bin,
                                                const at::Tensor& default_left,
                                                int64_t missing_bin);

// float64 (rows, groups) margins: base plus every tree's leaf value in its group's column.
at::Tensor gbdt_predict(const at::Tensor& x, const at::Tensor& feature,
                        const at::Tensor& threshold, const at::Tensor& default_left,
                        const at::Tensor& value, const at::Tensor& group, const at::Tensor& base,
                        int64_t missing_bin,
                        const std::optional<at::Tensor>& categorical = std::nullopt,
                        const std::optional<at::Tensor>& cat_left = std::nullopt);

// One tree grown depth-wise in one call (CPU): (feature, split_bin, default_left, gain, sums,
// leaf of every row, the categorical splits' left sets), heap order.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
gbdt_grow_tree(const at::Tensor& bins, const at::Tensor& grad, const at::Tensor& hess,
               const std::optional<at::Tensor>& feature_mask, int64_t max_depth, int64_t num_bins,
               double reg_lambda, double gamma, double min_child_weight, int64_t quantize_bins = 0,
               int64_t seed = 0, const std::optional<at::Tensor>& categorical = std::nullopt);

// Log-sum-exp importance weighting over `dim` (K samples): the IWAE bound
// logsumexp(log_w, dim) - log K (one pass; differentiable, its gradient the normalized weights
// times grad), its backward, and (bound, normalized weights, effective sample size
// 1 / sum w~^2) in one op (the weights and ess carry no gradient). -inf is a zero weight; an
// all -inf slice gives a -inf bound, zero weights and gradient, and ess 0.
at::Tensor iwae_bound(const at::Tensor& log_w, int64_t dim = 0, bool keepdim = false);
at::Tensor iwae_bound_backward(const at::Tensor& grad, const at::Tensor& log_w,
                               const at::Tensor& bound, int64_t dim, bool keepdim);
std::tuple<at::Tensor, at::Tensor, at::Tensor> importance_weights(const at::Tensor& log_w,
                                                                  int64_t dim = 0);

}  // namespace pynotes
