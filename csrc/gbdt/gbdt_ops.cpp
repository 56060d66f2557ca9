// Device-generic gradient-boosting ops: checks at the boundary (shapes, dtypes, devices, and
// every index a kernel will follow), then the device's kernels (gbdt_kernels.h).
#include "gbdt/gbdt_ops.h"

#include <ATen/ops/aminmax.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/zeros.h>
#include <c10/core/DeviceGuard.h>

#include <algorithm>
#include <limits>
#include <mutex>
#include <utility>
#include <vector>

#include "common/checks.h"
#include "gbdt/gbdt.h"

namespace pynotes {
namespace {

void check_tensor(const at::Tensor& t, const char* op, const char* name, at::ScalarType dtype,
                  int64_t dim) {
  TORCH_CHECK_TYPE(t.scalar_type() == dtype, op, ": ", name, " must have dtype ", dtype,
                   ", got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.dim() == dim, op, ": ", name, " must have ", dim, " dimensions, got shape ",
                    t.sizes());
}

void check_size(const at::Tensor& t, const char* op, const char* name, int64_t dim,
                int64_t size, const char* meaning) {
  TORCH_CHECK_VALUE(t.size(dim) == size, op, ": ", name, ".size(", dim, ") must be ", meaning,
                    " = ", size, ", got ", t.size(dim));
}

template <typename T>
void min_max(const T* data, int64_t n, int64_t& lo, int64_t& hi) {
  for (int64_t i = 0; i < n; ++i) {
    lo = std::min<int64_t>(lo, data[i]);
    hi = std::max<int64_t>(hi, data[i]);
  }
}

// The smallest and largest element of a non-empty integer tensor: a loop for int32/int64 on
// the CPU (a one-row prediction checks a whole ensemble: tensor ops cost more than the walk).
std::pair<int64_t, int64_t> integer_range(const at::Tensor& t) {
  if (t.is_cpu() && (t.scalar_type() == at::kInt || t.scalar_type() == at::kLong)) {
    const at::Tensor c = t.contiguous();
    int64_t lo = std::numeric_limits<int64_t>::max(), hi = std::numeric_limits<int64_t>::min();
    if (c.scalar_type() == at::kInt) {
      min_max(c.const_data_ptr<int32_t>(), c.numel(), lo, hi);
    } else {
      min_max(c.const_data_ptr<int64_t>(), c.numel(), lo, hi);
    }
    return {lo, hi};
  }
  auto [min, max] = at::aminmax(t);
  return {min.item<int64_t>(), max.item<int64_t>()};
}

// Every element of an integer tensor in [low, high).
void check_range(const at::Tensor& t, const char* op, const char* name, int64_t low,
                 int64_t high) {
  if (t.numel() == 0) return;
  const auto [lo, hi] = integer_range(t);
  TORCH_CHECK_VALUE(lo >= low && hi < high, op, ": ", name, " must hold values in [", low, ", ",
                    high, "), got ", lo < low ? lo : hi);
}

void check_bins(const at::Tensor& bins, const char* op, int64_t num_bins) {
  check_tensor(bins, op, "bins", at::kByte, 2);
  TORCH_CHECK_VALUE(num_bins >= 2 && num_bins <= 256, op,
                    ": num_bins must be in [2, 256], got ", num_bins);
  if (num_bins < 256) check_range(bins, op, "bins", 0, num_bins);
}

// Whether a feature of trees x nodes split tables is outside [-1, limit); marks each node
// that is a split in some tree. (This file is built for any x86-64: the clones vectorize the
// loop with the CPU's widest vectors, chosen when the library loads.)
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target_clones("avx512f", "avx2", "default")))
#endif
bool scan_splits(const int32_t* f, int64_t trees, int64_t nodes, int32_t limit,
                 int32_t* split_in_some_tree) {
  int32_t bad = 0;
  for (int64_t tree = 0; tree < trees; ++tree, f += nodes) {
    for (int64_t n = 0; n < nodes; ++n) {
      bad |= (f[n] < -1) | (f[n] >= limit);
      split_in_some_tree[n] |= f[n] >= 0;
    }
  }
  return bad != 0;
}

// Split tables of a tree level step or an ensemble: features in [-1, features), children of
// every split inside the table. On the CPU one vectorized pass, tree by tree: a one-row
// prediction checks the whole ensemble, so this pass must cost less than the walk.
void check_splits(const at::Tensor& feature, const char* op, int64_t features) {
  const int64_t nodes = feature.size(-1);
  if (feature.numel() == 0) return;
  int64_t last = -1;  // the last node that is a split in some tree
  if (feature.is_cpu()) {
    const at::Tensor c = feature.contiguous();
    const int32_t* f = c.const_data_ptr<int32_t>();
    const int32_t limit = static_cast<int32_t>(std::min<int64_t>(features, 1 << 30));
    std::vector<int32_t> split_in_some_tree(nodes, 0);
    if (scan_splits(f, c.numel() / nodes, nodes, limit, split_in_some_tree.data())) {
      check_range(feature, op, "feature", -1, features);  // (its message)
    }
    for (last = nodes - 1; last >= 0 && !split_in_some_tree[last];) --last;
  } else {
    check_range(feature, op, "feature", -1, features);
    const at::Tensor index = feature.reshape({-1, nodes}).ge(0).any(0).nonzero();
    if (index.numel() > 0) last = index.max().item<int64_t>();
  }
  if (last < 0) return;
  TORCH_CHECK_VALUE(2 * last + 2 < nodes, op, ": node ", last, " is a split but its children (",
                    2 * last + 1, ", ", 2 * last + 2, ") are outside the ", nodes,
                    " nodes of a tree");
}

// The categorical-feature mask of an op: one bool per feature, on `like`'s device.
void check_categorical(const at::Tensor& categorical, const char* op, const at::Tensor& like,
                       const char* like_name, int64_t features) {
  check_tensor(categorical, op, "categorical", at::kBool, 1);
  check_device(categorical, "categorical", like, like_name);
  check_size(categorical, op, "categorical", 0, features, "the number of features");
}

// Ensembles that predictions of a few rows on the CPU have checked, by tensor: a model that
// predicts one row at a time passes the same tensors every call, and checking its 100k nodes
// costs more than walking them. An entry holds weak references to the tensors (so no other
// tensor can take a checked one's address) and their versions, which every change made
// through torch bumps; the few-row walk checks each node it visits, which covers writes made
// around torch (through a NumPy view).
class CheckedEnsembles {
 public:
  bool contains(const at::Tensor& feature, const at::Tensor& group, int64_t features,
                int64_t groups) {
    std::lock_guard<std::mutex> lock(mutex_);
    for (const Entry& e : entries_) {
      if (e.features == features && e.groups == groups && e.feature.same(feature) &&
          e.group.same(group)) {
        return true;
      }
    }
    return false;
  }
  void add(const at::Tensor& feature, const at::Tensor& group, int64_t features,
           int64_t groups) {
    if (feature.is_inference() || group.is_inference()) return;  // (no versions)
    std::lock_guard<std::mutex> lock(mutex_);
    if (entries_.size() == kEntries) entries_.erase(entries_.begin());
    entries_.push_back({Checked(feature), Checked(group), features, groups});
  }

 private:
  static constexpr size_t kEntries = 8;
  struct Checked {
    explicit Checked(const at::Tensor& t)
        : impl(t.getIntrusivePtr()), data(t.const_data_ptr()), version(t._version()),
          sizes(t.sizes().vec()), strides(t.strides().vec()) {}
    bool same(const at::Tensor& t) const {
      return !t.is_inference() && !impl.expired() &&
             impl._unsafe_get_target() == t.unsafeGetTensorImpl() &&
             data == t.const_data_ptr() && version == t._version() && t.sizes() == sizes &&
             t.strides() == strides;
    }
    c10::weak_intrusive_ptr<c10::TensorImpl> impl;
    const void* data;
    int64_t version;
    std::vector<int64_t> sizes, strides;
  };
  struct Entry {
    Checked feature, group;
    int64_t features, groups;
  };
  std::mutex mutex_;
  std::vector<Entry> entries_;  // the newest last
};

CheckedEnsembles& checked_ensembles() {
  static CheckedEnsembles* checked = new CheckedEnsembles();  // (never destroyed: used at exit)
  return *checked;
}

bool is_real(const at::Tensor& t) {
  return t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble;
}

}  // namespace

at::Tensor gbdt_bin_impl(const at::Tensor& x, const at::Tensor& cuts, int64_t missing_bin,
                         const GbdtKernels& kernels) {
  constexpr const char* op = "gbdt_bin";
  TORCH_CHECK_TYPE(is_real(x), op, ": x must be float32 or float64, got ", x.scalar_type());
  TORCH_CHECK_VALUE(x.dim() == 2, op, ": x must have shape (rows, features), got ", x.sizes());
  check_tensor(cuts, op, "cuts", x.scalar_type(), 2);
  check_device(cuts, "cuts", x, "x");
  check_size(cuts, op, "cuts", 0, x.size(1), "x.size(1)");
  TORCH_CHECK_VALUE(cuts.size(1) < missing_bin && missing_bin <= 255, op,
                    ": missing_bin must be in (cuts.size(1), 255] = (", cuts.size(1),
                    ", 255], got ", missing_bin);
  c10::OptionalDeviceGuard guard(x.device());
  const at::Tensor xc = x.contiguous(), cc = cuts.contiguous();
  at::Tensor out = at::empty(x.sizes(), x.options().dtype(at::kByte));
  if (out.numel() > 0) {
    kernels.bin({x.scalar_type(), x.size(0), x.size(1), cuts.size(1), missing_bin,
                 xc.const_data_ptr(), cc.const_data_ptr(), out.mutable_data_ptr<uint8_t>()});
  }
  return out;
}

at::Tensor gbdt_histogram_impl(const at::Tensor& bins, const at::Tensor& grad,
                               const at::Tensor& hess, const at::Tensor& node,
                               const at::Tensor& slot_of_node, int64_t num_slots,
                               int64_t num_bins, const GbdtKernels& kernels) {
  constexpr const char* op = "gbdt_histogram";
  check_bins(bins, op, num_bins);
  const int64_t rows = bins.size(0);
  TORCH_CHECK_TYPE(is_real(grad), op, ": grad must be float32 or float64, got ",
                   grad.scalar_type());
  check_tensor(grad, op, "grad", grad.scalar_type(), 1);
  check_tensor(hess, op, "hess", grad.scalar_type(), 1);
  check_tensor(node, op, "node", at::kInt, 1);
  check_tensor(slot_of_node, op, "slot_of_node", at::kInt, 1);
  check_device(slot_of_node, "slot_of_node", bins, "bins");
  for (const auto& [t, name] : {std::pair{&grad, "grad"}, {&hess, "hess"}, {&node, "node"}}) {
    check_device(*t, name, bins, "bins");
    check_size(*t, op, name, 0, rows, "bins.size(0)");
  }
  TORCH_CHECK_VALUE(num_slots >= 0, op, ": num_slots must be non-negative, got ", num_slots);
  check_range(node, op, "node", 0, slot_of_node.size(0));
  check_range(slot_of_node, op, "slot_of_node", -1, num_slots);
  TORCH_CHECK_VALUE(rows <= std::numeric_limits<int32_t>::max(), op,
                    ": at most 2^31 - 1 rows are supported, got ", rows);
  c10::OptionalDeviceGuard guard(bins.device());
  if (rows == 0) {
    return at::zeros({num_slots, bins.size(1), num_bins, 2}, bins.options().dtype(at::kDouble));
  }
  at::Tensor hist = at::empty({num_slots, bins.size(1), num_bins, 2},
                              bins.options().dtype(at::kDouble));
  if (hist.numel() == 0) return hist;
  const at::Tensor b = bins.contiguous(), g = grad.contiguous(), h = hess.contiguous(),
                   n = node.contiguous(), s = slot_of_node.contiguous();
  kernels.histogram({grad.scalar_type(), rows, bins.size(1), num_bins, num_slots,
                     b.const_data_ptr<uint8_t>(), g.const_data_ptr(), h.const_data_ptr(),
                     n.const_data_ptr<int32_t>(), s.const_data_ptr<int32_t>(),
                     hist.mutable_data_ptr<double>()});
  return hist;
}

GbdtSplits gbdt_best_splits_impl(const at::Tensor& hist,
                                 const std::optional<at::Tensor>& feature_mask,
                                 double reg_lambda, double gamma, double min_child_weight,
                                 const GbdtKernels& kernels) {
  constexpr const char* op = "gbdt_best_splits";
  check_tensor(hist, op, "hist", at::kDouble, 4);
  TORCH_CHECK_VALUE(hist.size(3) == 2 && hist.size(2) >= 2, op,
                    ": hist must have shape (slots, features, num_bins >= 2, 2), got ",
                    hist.sizes());
  TORCH_CHECK_VALUE(reg_lambda >= 0 && min_child_weight >= 0 && gamma >= 0, op,
                    ": reg_lambda, gamma and min_child_weight must be non-negative, got ",
                    reg_lambda, ", ", gamma, ", ", min_child_weight);
  const int64_t slots = hist.size(0), features = hist.size(1);
  if (has_tensor(feature_mask)) {
    check_tensor(*feature_mask, op, "feature_mask", at::kBool, 1);
    check_device(*feature_mask, "feature_mask", hist, "hist");
    check_size(*feature_mask, op, "feature_mask", 0, features, "hist.size(1)");
  }
  c10::OptionalDeviceGuard guard(hist.device());
  const auto opts = hist.options();
  at::Tensor gain = at::empty({slots}, opts), feature = at::empty({slots}, opts.dtype(at::kLong)),
             bin = at::empty({slots}, opts.dtype(at::kLong)),
             default_left = at::empty({slots}, opts.dtype(at::kBool)),
             left = at::empty({slots, 2}, opts), right = at::empty({slots, 2}, opts);
  if (slots > 0) {
    const at::Tensor h = hist.contiguous();
    const at::Tensor mask = has_tensor(feature_mask) ? feature_mask->contiguous() : at::Tensor();
    kernels.best_splits({slots, features, hist.size(2), reg_lambda, gamma, min_child_weight,
                         h.const_data_ptr<double>(),
                         mask.defined() ? mask.const_data_ptr<bool>() : nullptr,
                         gain.mutable_data_ptr<double>(), feature.mutable_data_ptr<int64_t>(),
                         bin.mutable_data_ptr<int64_t>(), default_left.mutable_data_ptr<bool>(),
                         left.mutable_data_ptr<double>(), right.mutable_data_ptr<double>()});
  }
  return {gain, feature, bin, default_left, left, right};
}

std::tuple<at::Tensor, at::Tensor> gbdt_advance_impl(const at::Tensor& bins, const at::Tensor& node,
                             const at::Tensor& split_feature, const at::Tensor& split_bin,
                             const at::Tensor& default_left, int64_t missing_bin,
                             const GbdtKernels& kernels) {
  constexpr const char* op = "gbdt_advance";
  check_bins(bins, op, missing_bin + 1);
  check_tensor(node, op, "node", at::kInt, 1);
  check_tensor(split_feature, op, "split_feature", at::kInt, 1);
  check_tensor(split_bin, op, "split_bin", at::kInt, 1);
  check_tensor(default_left, op, "default_left", at::kBool, 1);
  const int64_t nodes = split_feature.size(0);
  for (const auto& [t, name] : {std::pair{&node, "node"}, {&split_feature, "split_feature"},
                                {&split_bin, "split_bin"}, {&default_left, "default_left"}}) {
    check_device(*t, name, bins, "bins");
  }
  check_size(node, op, "node", 0, bins.size(0), "bins.size(0)");
  check_size(split_bin, op, "split_bin", 0, nodes, "split_feature.size(0)");
  check_size(default_left, op, "default_left", 0, nodes, "split_feature.size(0)");
  check_range(node, op, "node", 0, nodes);
  check_splits(split_feature, op, bins.size(1));
  c10::OptionalDeviceGuard guard(bins.device());
  at::Tensor out = node.clone(at::MemoryFormat::Contiguous);
  at::Tensor count = at::zeros({nodes}, node.options().dtype(at::kLong));
  if (out.numel() == 0) return {out, count};
  const at::Tensor b = bins.contiguous(), f = split_feature.contiguous(),
                   s = split_bin.contiguous(), d = default_left.contiguous();
  kernels.advance({bins.size(0), bins.size(1), missing_bin, nodes, b.const_data_ptr<uint8_t>(),
                   f.const_data_ptr<int32_t>(), s.const_data_ptr<int32_t>(),
                   d.const_data_ptr<bool>(), out.mutable_data_ptr<int32_t>(),
                   count.mutable_data_ptr<int64_t>()});
  return {out, count};
}

at::Tensor gbdt_predict_impl(const at::Tensor& x, const at::Tensor& feature,
                             const at::Tensor& threshold, const at::Tensor& default_left,
                             const at::Tensor& value, const at::Tensor& group,
                             const at::Tensor& base, int64_t missing_bin,
                             const std::optional<at::Tensor>& categorical,
                             const std::optional<at::Tensor>& cat_left,
                             const GbdtKernels& kernels) {
  constexpr const char* op = "gbdt_predict";
  const bool binned = x.scalar_type() == at::kByte;
  TORCH_CHECK_TYPE(binned || is_real(x), op, ": x must be float32, float64 or uint8 bins, got ",
                   x.scalar_type());
  TORCH_CHECK_VALUE(x.dim() == 2, op, ": x must have shape (rows, features), got ", x.sizes());
  check_tensor(feature, op, "feature", at::kInt, 2);
  check_tensor(threshold, op, "threshold", binned ? at::kInt : x.scalar_type(), 2);
  check_tensor(default_left, op, "default_left", at::kBool, 2);
  check_tensor(value, op, "value", at::kFloat, 2);
  check_tensor(group, op, "group", at::kLong, 1);
  check_tensor(base, op, "base", at::kDouble, 1);
  for (const auto& [t, name] :
       {std::pair{&feature, "feature"}, {&threshold, "threshold"},
        {&default_left, "default_left"}, {&value, "value"}, {&group, "group"}, {&base, "base"}}) {
    check_device(*t, name, x, "x");
  }
  for (const auto& [t, name] : {std::pair{&threshold, "threshold"},
                                {&default_left, "default_left"}, {&value, "value"}}) {
    TORCH_CHECK_VALUE(t->sizes() == feature.sizes(), op, ": ", name,
                      " must have the shape of feature ", feature.sizes(), ", got ",
                      t->sizes());
  }
  check_size(group, op, "group", 0, feature.size(0), "feature.size(0)");
  const auto check_ensemble = [&] {
    check_range(group, op, "group", 0, base.size(0));
    check_splits(feature, op, x.size(1));
  };
  const bool few_rows = x.is_cpu() && x.size(0) < gbdt::kFewRows;
  if (!few_rows || !checked_ensembles().contains(feature, group, x.size(1), base.size(0))) {
    check_ensemble();
    if (few_rows) checked_ensembles().add(feature, group, x.size(1), base.size(0));
  }
  TORCH_CHECK_VALUE(has_tensor(categorical) == has_tensor(cat_left), op,
                    ": categorical and cat_left come together (a model with categorical splits) "
                    "or not at all");
  if (has_tensor(categorical)) {
    check_categorical(*categorical, op, x, "x", x.size(1));
    check_tensor(*cat_left, op, "cat_left", at::kInt, 3);
    check_device(*cat_left, "cat_left", x, "x");
    TORCH_CHECK_VALUE(cat_left->size(0) == feature.size(0) && cat_left->size(1) ==
                      feature.size(1) && cat_left->size(2) == gbdt::kCategoryWords, op,
                      ": cat_left must have shape (trees, nodes, ", gbdt::kCategoryWords,
                      ") = (", feature.size(0), ", ", feature.size(1), ", ",
                      gbdt::kCategoryWords, "), got ", cat_left->sizes());
  }
  c10::OptionalDeviceGuard guard(x.device());
  // A fresh buffer: expanding base to (1, groups) would be "contiguous" and alias it.
  at::Tensor out = at::empty({x.size(0), base.size(0)}, base.options());
  out.copy_(base.expand({x.size(0), base.size(0)}));
  if (out.numel() == 0 || feature.size(0) == 0 || feature.size(1) == 0) return out;
  const at::Tensor xc = x.contiguous(), f = feature.contiguous(), t = threshold.contiguous(),
                   d = default_left.contiguous(), v = value.contiguous(), g = group.contiguous();
  const bool has_categories = has_tensor(categorical);
  const at::Tensor cat = has_categories ? categorical->contiguous() : at::Tensor(),
                   left_sets = has_categories ? cat_left->contiguous() : at::Tensor();
  bool bad_node = false;
  kernels.predict({x.scalar_type(), x.size(0), x.size(1), feature.size(0), feature.size(1),
                   base.size(0), missing_bin, xc.const_data_ptr(), f.const_data_ptr<int32_t>(),
                   t.const_data_ptr(), d.const_data_ptr<bool>(), v.const_data_ptr<float>(),
                   g.const_data_ptr<int64_t>(), out.mutable_data_ptr<double>(),
                   has_categories ? cat.const_data_ptr<bool>() : nullptr,
                   has_categories ? left_sets.const_data_ptr<int32_t>() : nullptr,
                   &bad_node});
  if (bad_node) {  // changed since it was checked, around torch
    check_ensemble();
    TORCH_CHECK_VALUE(false, op, ": the ensemble's split tables changed while in use");
  }
  return out;
}

GbdtTree gbdt_grow_tree_impl(const at::Tensor& bins, const at::Tensor& grad,
                             const at::Tensor& hess, const std::optional<at::Tensor>& feature_mask,
                             int64_t max_depth, int64_t num_bins, double reg_lambda, double gamma,
                             double min_child_weight, int64_t quantize_bins, int64_t seed,
                             const std::optional<at::Tensor>& categorical,
                             const GbdtKernels& kernels, const GbdtCollective* collective,
                             int64_t processes, int64_t rank, int64_t row_offset) {
  constexpr const char* op = "gbdt_grow_tree";
  check_bins(bins, op, num_bins);
  const int64_t rows = bins.size(0), features = bins.size(1);
  TORCH_CHECK_TYPE(is_real(grad), op, ": grad must be float32 or float64, got ",
                   grad.scalar_type());
  check_tensor(grad, op, "grad", grad.scalar_type(), 1);
  check_tensor(hess, op, "hess", grad.scalar_type(), 1);
  for (const auto& [t, name] : {std::pair{&grad, "grad"}, {&hess, "hess"}}) {
    check_device(*t, name, bins, "bins");
    check_size(*t, op, name, 0, rows, "bins.size(0)");
  }
  if (has_tensor(feature_mask)) {
    check_tensor(*feature_mask, op, "feature_mask", at::kBool, 1);
    check_device(*feature_mask, "feature_mask", bins, "bins");
    check_size(*feature_mask, op, "feature_mask", 0, features, "bins.size(1)");
  }
  if (has_tensor(categorical)) check_categorical(*categorical, op, bins, "bins", features);
  TORCH_CHECK_VALUE(max_depth >= 0 && max_depth <= gbdt::kMaxDepth, op,
                    ": max_depth must be in [0, ", gbdt::kMaxDepth, "], got ", max_depth);
  TORCH_CHECK_VALUE(reg_lambda >= 0 && min_child_weight >= 0 && gamma >= 0, op,
                    ": reg_lambda, gamma and min_child_weight must be non-negative, got ",
                    reg_lambda, ", ", gamma, ", ", min_child_weight);
  TORCH_CHECK_VALUE(rows <= std::numeric_limits<int32_t>::max(), op,
                    ": at most 2^31 - 1 rows are supported, got ", rows);
  // Quantized sums are 32-bit integers: rows x quantize_bins must stay below 2^31.
  TORCH_CHECK_VALUE(quantize_bins == 0 || (quantize_bins >= 2 && quantize_bins <= 1024), op,
                    ": quantize_bins must be 0 (off) or in [2, 1024], got ", quantize_bins);
  TORCH_CHECK_VALUE(rows * quantize_bins < (int64_t(1) << 31), op, ": quantized gradients sum "
                    "in 32 bits: rows x quantize_bins must be below 2^31, got ", rows, " x ",
                    quantize_bins);
  TORCH_CHECK(kernels.grow_tree != nullptr, op, ": not available on ", bins.device());
  c10::OptionalDeviceGuard guard(bins.device());
  const int64_t nodes = (int64_t(2) << max_depth) - 1;
  const auto opts = bins.options();
  at::Tensor feature = at::full({nodes}, -1, opts.dtype(at::kInt)),
             split_bin = at::zeros({nodes}, opts.dtype(at::kInt)),
             default_left = at::zeros({nodes}, opts.dtype(at::kBool)),
             gain = at::zeros({nodes}, opts.dtype(at::kDouble)),
             sums = at::zeros({nodes, 2}, opts.dtype(at::kDouble)),
             leaf = at::zeros({rows}, opts.dtype(at::kInt)),
             cat_left = at::zeros({nodes, gbdt::kCategoryWords}, opts.dtype(at::kInt));
  // The kernel reads bins one feature at a time (bins.t() contiguous, what pynotes.gbdt
  // passes by default), or row-major bins a row at a time (row-wise histograms: its
  // force_row_wise); the trees are the same bits. Any other layout is copied one feature at a
  // time.
  const bool by_row = bins.is_contiguous() && !bins.t().is_contiguous();
  const at::Tensor b = by_row ? bins : bins.t().contiguous();
  const at::Tensor g = grad.contiguous(), h = hess.contiguous();
  const at::Tensor mask = has_tensor(feature_mask) ? feature_mask->contiguous() : at::Tensor();
  const at::Tensor cat = has_tensor(categorical) ? categorical->contiguous() : at::Tensor();
  kernels.grow_tree({grad.scalar_type(), rows, features, num_bins, max_depth, reg_lambda, gamma,
                     min_child_weight, quantize_bins, static_cast<uint64_t>(seed),
                     by_row ? nullptr : b.const_data_ptr<uint8_t>(), g.const_data_ptr(),
                     h.const_data_ptr(), mask.defined() ? mask.const_data_ptr<bool>() : nullptr,
                     feature.mutable_data_ptr<int32_t>(), split_bin.mutable_data_ptr<int32_t>(),
                     default_left.mutable_data_ptr<bool>(), gain.mutable_data_ptr<double>(),
                     sums.mutable_data_ptr<double>(), leaf.mutable_data_ptr<int32_t>(),
                     cat.defined() ? cat.const_data_ptr<bool>() : nullptr,
                     cat_left.mutable_data_ptr<int32_t>(), collective, processes, rank,
                     row_offset, by_row ? b.const_data_ptr<uint8_t>() : nullptr});
  return {feature, split_bin, default_left, gain, sums, leaf, cat_left};
}

}  // namespace pynotes
