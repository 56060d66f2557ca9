#pragma once
// Device-generic gradient-boosting ops (gbdt_ops.cpp): argument checks and output allocation;
// each device registers them with its kernels (gbdt_kernels.h) through
// register_gbdt_ops<kernels> (gbdt_cpu.cpp, gbdt_cuda.cu). Schemas are in pynotes.cpp.
#include <ATen/core/Tensor.h>

#include <optional>
#include <string>
#include <tuple>

#include "gbdt/gbdt_kernels.h"

namespace pynotes {

using GbdtSplits =
    std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
// feature, split_bin, default_left, gain, sums, leaf, cat_left (gbdt_kernels.h, GbdtGrowTree).
using GbdtTree = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                            at::Tensor, at::Tensor>;

at::Tensor gbdt_bin_impl(const at::Tensor& x, const at::Tensor& cuts, int64_t missing_bin,
                         const GbdtKernels& kernels);
at::Tensor gbdt_histogram_impl(const at::Tensor& bins, const at::Tensor& grad,
                               const at::Tensor& hess, const at::Tensor& node,
                               const at::Tensor& slot_of_node, int64_t num_slots,
                               int64_t num_bins, const GbdtKernels& kernels);
GbdtSplits gbdt_best_splits_impl(const at::Tensor& hist,
                                 const std::optional<at::Tensor>& feature_mask,
                                 double reg_lambda, double gamma, double min_child_weight,
                                 const GbdtKernels& kernels);
std::tuple<at::Tensor, at::Tensor> gbdt_advance_impl(const at::Tensor& bins, const at::Tensor& node,
                             const at::Tensor& split_feature, const at::Tensor& split_bin,
                             const at::Tensor& default_left, int64_t missing_bin,
                             const GbdtKernels& kernels);
at::Tensor gbdt_predict_impl(const at::Tensor& x, const at::Tensor& feature,
                             const at::Tensor& threshold, const at::Tensor& default_left,
                             const at::Tensor& value, const at::Tensor& group,
                             const at::Tensor& base, int64_t missing_bin,
                             const std::optional<at::Tensor>& categorical,
                             const std::optional<at::Tensor>& cat_left,
                             const GbdtKernels& kernels);
GbdtTree gbdt_grow_tree_impl(const at::Tensor& bins, const at::Tensor& grad,
                             const at::Tensor& hess, const std::optional<at::Tensor>& feature_mask,
                             int64_t max_depth, int64_t num_bins, double reg_lambda, double gamma,
                             double min_child_weight, int64_t quantize_bins, int64_t seed,
                             const std::optional<at::Tensor>& categorical,
                             const GbdtKernels& kernels,
                             const GbdtCollective* collective = nullptr, int64_t processes = 1,
                             int64_t rank = 0, int64_t row_offset = 0);
// The CPU tree of one process of a data-parallel fit (gbdt_kernels.h, GbdtCollective): what
// pynotes._C.gbdt_grow_tree_distributed runs (not an operator: it calls back into Python).
GbdtTree gbdt_grow_tree_distributed_cpu(const at::Tensor& bins, const at::Tensor& grad,
                                       const at::Tensor& hess,
                                       const std::optional<at::Tensor>& feature_mask,
                                       int64_t max_depth, int64_t num_bins, double reg_lambda,
                                       double gamma, double min_child_weight,
                                       int64_t quantize_bins, int64_t seed,
                                       const std::optional<at::Tensor>& categorical,
                                       const GbdtCollective& collective, int64_t processes,
                                       int64_t rank, int64_t row_offset);
// pynotes._C.gbdt_boost_step: the trainer's pass over the rows between two trees on the CPU
// (GbdtBoostStep; loss "squared_error" or "logistic"); grad and hess are written.
void gbdt_boost_step_cpu(const at::Tensor& margin, const std::optional<at::Tensor>& value,
                         const std::optional<at::Tensor>& leaf, const at::Tensor& y,
                         const std::optional<at::Tensor>& weight, const at::Tensor& grad,
                         const at::Tensor& hess, const std::string& loss);
// Frees the buffers the CPU gbdt_grow_tree keeps on the calling thread between trees
// (pynotes._C.gbdt_release_grower_buffers; the trainer calls it when a fit ends).
void gbdt_release_grower_buffers_cpu();

template <const GbdtKernels& (*kernels)()>
struct GbdtOps {
  static at::Tensor bin(const at::Tensor& x, const at::Tensor& cuts, int64_t missing_bin) {
    return gbdt_bin_impl(x, cuts, missing_bin, kernels());
  }
  static at::Tensor histogram(const at::Tensor& bins, const at::Tensor& grad,
                              const at::Tensor& hess, const at::Tensor& node,
                              const at::Tensor& slot_of_node, int64_t num_slots,
                              int64_t num_bins) {
    return gbdt_histogram_impl(bins, grad, hess, node, slot_of_node, num_slots, num_bins,
                               kernels());
  }
  static GbdtSplits best_splits(const at::Tensor& hist,
                                const std::optional<at::Tensor>& feature_mask,
                                double reg_lambda, double gamma, double min_child_weight) {
    return gbdt_best_splits_impl(hist, feature_mask, reg_lambda, gamma, min_child_weight,
                                 kernels());
  }
  static std::tuple<at::Tensor, at::Tensor> advance(const at::Tensor& bins, const at::Tensor& node,
                            const at::Tensor& split_feature, const at::Tensor& split_bin,
                            const at::Tensor& default_left, int64_t missing_bin) {
    return gbdt_advance_impl(bins, node, split_feature, split_bin, default_left, missing_bin,
                             kernels());
  }
  static at::Tensor predict(const at::Tensor& x, const at::Tensor& feature,
                            const at::Tensor& threshold, const at::Tensor& default_left,
                            const at::Tensor& value, const at::Tensor& group,
                            const at::Tensor& base, int64_t missing_bin,
                            const std::optional<at::Tensor>& categorical,
                            const std::optional<at::Tensor>& cat_left) {
    return gbdt_predict_impl(x, feature, threshold, default_left, value, group, base,
                             missing_bin, categorical, cat_left, kernels());
  }
  static GbdtTree grow_tree(const at::Tensor& bins, const at::Tensor& grad,
                            const at::Tensor& hess, const std::optional<at::Tensor>& feature_mask,
                            int64_t max_depth, int64_t num_bins, double reg_lambda, double gamma,
                            double min_child_weight, int64_t quantize_bins, int64_t seed,
                            const std::optional<at::Tensor>& categorical) {
    return gbdt_grow_tree_impl(bins, grad, hess, feature_mask, max_depth, num_bins, reg_lambda,
                               gamma, min_child_weight, quantize_bins, seed, categorical,
                               kernels());
  }
};

template <const GbdtKernels& (*kernels)(), typename Library>
void register_gbdt_ops(Library& m) {
  m.impl("gbdt_bin", &GbdtOps<kernels>::bin);
  m.impl("gbdt_histogram", &GbdtOps<kernels>::histogram);
  m.impl("gbdt_best_splits", &GbdtOps<kernels>::best_splits);
  m.impl("gbdt_advance", &GbdtOps<kernels>::advance);
  m.impl("gbdt_predict", &GbdtOps<kernels>::predict);
  if (kernels().grow_tree != nullptr) m.impl("gbdt_grow_tree", &GbdtOps<kernels>::grow_tree);
}

}  // namespace pynotes
