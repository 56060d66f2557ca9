"""Histogram gradient-boosting kernels (XGBoost's "hist" method): binning, level-wise
gradient/hessian histograms, split finding, the rows' level step, a whole tree's growth and
ensemble prediction.
pynotes.gbdt builds the scikit-learn-style trainer on them."""

import concurrent.futures

import numpy as np
import torch

from pynotes import _ext
from pynotes.reference import gbdt as reference

Splits = reference.Splits

# The deepest tree grow_tree and the trainer grow: csrc/gbdt/gbdt.h's kMaxDepth.
MAX_DEPTH = 20

# The operations of a data-parallel tree's collective(op, buffer) over the processes
# (csrc/gbdt/gbdt_kernels.h, GbdtCollectiveOp), in place: int64 summed, float64 maxed, int64 in
# one chunk per process reduce-scattered (this process's chunk summed) or all-gathered;
# REDUCE_SCATTER_START may start the REDUCE_SCATTER of the same buffer that follows it (every
# chunk but this process's is final; a collective may ignore it).
REDUCE_SUM, REDUCE_MAX, REDUCE_SCATTER, ALL_GATHER, REDUCE_SCATTER_START = 0, 1, 2, 3, 4


def _compute_cuts(x, max_bins, sample_size, random_state):
    """Per-feature cut points (features, max_bins - 2), +inf padded: midpoints between distinct
    values when a feature has at most max_bins - 1 of them, else quantiles of the (sampled)
    non-missing values."""
    rows, features = x.shape
    sample = None  # the rows of the sample, or all
    if rows > sample_size:
        generator = torch.Generator().manual_seed(random_state)
        sample = torch.randperm(rows, generator=generator)[:sample_size]
    max_cuts = max_bins - 2
    cuts = torch.full((features, max_cuts), torch.inf, dtype=x.dtype, device=x.device)
    if max_cuts == 0 or rows == 0:
        return cuts
    if x.is_cuda:  # per feature, NaN last
        x = x[sample.to(x.device)] if sample is not None else x
        ordered = torch.sort(x.t().contiguous(), dim=1).values
        present = (~torch.isnan(x)).sum(0).tolist()
        for f in range(features):
            _feature_cuts(ordered[f][:present[f]], max_cuts, cuts[f])
        return cuts
    # NumPy's SIMD sort is >10x faster than torch's on CPU, and one column at a time (its
    # sample gathered) keeps the memory this needs at a column per thread, not a copy of the
    # sample. The columns run in parallel on torch's threads (NumPy's sort releases the GIL).
    x_np, sample = x.numpy(), sample.numpy() if sample is not None else None

    def column_cuts(f):
        column = np.sort(x_np[:, f] if sample is None else x_np[sample, f])  # NaN last
        values = column[:column.size - np.count_nonzero(np.isnan(column))]
        _feature_cuts(torch.from_numpy(values), max_cuts, cuts[f])
    threads = min(torch.get_num_threads(), features)
    if threads <= 1 or rows * features < 1 << 18:
        for f in range(features):
            column_cuts(f)
    else:
        with concurrent.futures.ThreadPoolExecutor(threads) as pool:
            list(pool.map(column_cuts, range(features)))  # (list: raises a thread's error)
    return cuts


def _feature_cuts(values, max_cuts, out):
    """One feature's cut points into out (its row of cuts) from its sorted non-missing
    values."""
    if values.numel() < 2:
        return
    distinct = torch.unique_consecutive(values)
    if distinct.numel() <= max_cuts + 1:
        low, high = distinct[:-1], distinct[1:]
        mid = low + (high - low) / 2
        # mid may round up to high; below -inf it is NaN, and the cut -inf keeps the -inf
        # rows in the first bin (above the last finite value +inf rows are past every cut)
        feature_cuts = torch.where(mid < high, mid, low)
    else:
        positions = torch.arange(1, max_cuts + 1, device=values.device) * values.numel() \
            // (max_cuts + 1)
        feature_cuts = torch.unique_consecutive(values[positions])
        feature_cuts = feature_cuts[feature_cuts < values[-1]]  # the top bin is not empty
    out[:feature_cuts.numel()] = feature_cuts


def _check_quantize_input(op, x, max_bins):
    if not isinstance(max_bins, int) or isinstance(max_bins, bool) or not 2 <= max_bins <= 256:
        raise ValueError(f"{op}: max_bins must be an int in [2, 256], got {max_bins!r}")
    if torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active():
        raise RuntimeError(f"{op}: runs eagerly only (not under torch.compile, torch.export "
                           "or torch.func): its cut points are data-dependent and sorted by "
                           "NumPy; call it before, and bin_features inside")
    if not isinstance(x, torch.Tensor) or x.dtype not in (torch.float32, torch.float64) \
            or x.dim() != 2:
        raise TypeError(f"{op}: x must be a 2-D float32 or float64 tensor, got "
                        f"{getattr(x, 'dtype', type(x).__name__)} "
                        f"{tuple(getattr(x, 'shape', ()))}")


def cut_points(x, max_bins=256, sample_size=200_000, random_state=0, categorical=None):
    """The cut points quantize bins x with (see there)."""
    _check_quantize_input("cut_points", x, max_bins)
    return _cut_points(x, max_bins, sample_size, random_state, categorical)


def _cut_points(x, max_bins, sample_size, random_state, categorical):
    cuts = _compute_cuts(x, max_bins, sample_size, random_state)
    if categorical is not None:  # a bin per code: cuts at 1/2, 3/2, ...
        codes = torch.arange(max_bins - 2, dtype=x.dtype, device=x.device) + 0.5
        cuts[torch.as_tensor(categorical, dtype=torch.bool).to(x.device)] = codes
    return cuts


def quantize(x, max_bins=256, sample_size=200_000, random_state=0, categorical=None):
    """Bins every feature of x (rows, features), float32/float64, NaN for missing.

    Returns (bins, cuts): bins is uint8 (rows, features), row-major (the layout the histogram
    kernel streams); a value gets bin b = how many of its feature's cut points are < x, so
    "bin <= b" means "x <= cuts[f, b]"; NaN gets the bin max_bins - 1 of its own. cuts is
    (features, max_bins - 2) in x's dtype, padded with +inf: midpoints between neighbouring
    distinct values when a feature has at most max_bins - 1 of them, else quantiles computed
    on a sample of sample_size rows (seeded by random_state). Constant features get no cuts.
    categorical (a bool per feature, or None) marks features whose values are category codes,
    integers in [0, max_bins - 1): code c gets bin c (cuts at c + 1/2).
    """
    _check_quantize_input("quantize", x, max_bins)
    if categorical is not None:
        for f in torch.nonzero(torch.as_tensor(categorical, dtype=torch.bool)).flatten().tolist():
            codes = x[:, f][~torch.isnan(x[:, f])]
            if not bool(((codes >= 0) & (codes < max_bins - 1) & (codes == codes.round()))
                        .all()):
                raise ValueError(f"quantize: categorical feature {f} must hold integer codes in "
                                 f"[0, max_bins - 1) = [0, {max_bins - 1}) or NaN")
    cuts = _cut_points(x, max_bins, sample_size, random_state, categorical)
    return bin_features(x, cuts, max_bins - 1), cuts


def bin_features(x, cuts, missing_bin):
    """The bins of x under given cut points (see quantize)."""
    if _ext.use_extension(x):
        return torch.ops.pynotes.gbdt_bin(x, cuts, missing_bin)
    return reference.bin_features(x, cuts, missing_bin)


def build_histogram(bins, grad, hess, node, slot_of_node, num_slots, num_bins=256):
    """Gradient and hessian sums per (slot, feature, bin): float64 (num_slots, features,
    num_bins, 2). Row r adds (grad[r], hess[r]) to slot slot_of_node[node[r]] (int32 tensors;
    slot -1 skips the row), so the chosen nodes of a tree level are built in one pass.
    Deterministic: each cell is summed in row order by one thread, whatever the number of
    threads."""
    if _ext.use_extension(bins):
        return torch.ops.pynotes.gbdt_histogram(bins, grad, hess, node, slot_of_node, num_slots,
                                                num_bins)
    return reference.build_histogram(bins, grad, hess, node, slot_of_node, num_slots, num_bins)


def find_best_splits(hist, reg_lambda=1.0, gamma=0.0, min_child_weight=1.0,
                     feature_mask=None):
    """The best split of each slot's histogram by XGBoost's gain; the missing values are tried
    on both sides. Returns Splits(gain, feature, bin, default_left, left_sum, right_sum):
    feature -1 and gain -inf where no split keeps both children's hessian sums above
    min_child_weight; left_sum / right_sum are (slots, 2) sums (G, H) of the children (left
    holds the node's totals when there is no split). Ties go to the lowest feature, then bin,
    then missing-right."""
    if _ext.use_extension(hist):
        return Splits(*torch.ops.pynotes.gbdt_best_splits(hist, feature_mask, reg_lambda, gamma,
                                                          min_child_weight))
    return reference.find_best_splits(hist, reg_lambda, gamma, min_child_weight, feature_mask)


def advance_nodes(bins, node, split_feature, split_bin, default_left, missing_bin=255):
    """One level of descent: each row in a split node (heap order, int32) moves to the child
    its bin picks; rows in leaves (split_feature -1) stay. Returns (node, count): the new
    nodes and the number of rows in each node (int64, as many as split_feature)."""
    if _ext.use_extension(bins):
        return torch.ops.pynotes.gbdt_advance(bins, node, split_feature, split_bin, default_left,
                                              missing_bin)
    return reference.advance_nodes(bins, node, split_feature, split_bin, default_left, missing_bin)


def predict_trees(x, feature, threshold, default_left, value, group, base, missing_bin=255,
                  categorical=None, cat_left=None):
    """Raw margins of an ensemble: base (groups,) float64 plus, for every tree t, the value of
    the leaf each row reaches added to column group[t]. x is float (thresholds in x's dtype,
    NaN goes the default way) or uint8 bins (int32 threshold bins). Trees are (trees, nodes)
    tensors in heap order; returns float64 (rows, groups).
    With categorical features: categorical (features,) bool and cat_left (trees, nodes, 8)
    int32, the bitset of the category codes (bins) each categorical split sends left; a value
    that is not a code in the set goes right, NaN (or any non-code) the default way."""
    if _ext.use_extension(x):
        return torch.ops.pynotes.gbdt_predict(x, feature, threshold, default_left, value, group,
                                              base, missing_bin, categorical, cat_left)
    return reference.predict_trees(x, feature, threshold, default_left, value, group, base,
                             missing_bin, categorical, cat_left)


def release_grower_buffers():
    """Frees the buffers that grow_tree on the CPU keeps on the calling thread from one tree
    to the next (row-sized and level-sized: a fit of many trees would otherwise fault their
    pages in again for every tree). The estimators call it when a fit ends."""
    if _ext.extension_loaded():
        _ext._C.gbdt_release_grower_buffers()


def grow_tree(bins, grad, hess, max_depth, num_bins=256, reg_lambda=1.0, gamma=0.0,
              min_child_weight=1.0, feature_mask=None, quantize_bins=0, seed=0,
              categorical=None, collective=None, processes=1, rank=0, row_offset=0):
    """One tree grown depth-wise to max_depth on binned rows: per level the best split of
    every node (find_best_splits; a node splits where its gain is > 0), its rows sent to the
    children, and the next level's histograms built for the child of each pair with fewer rows
    (the left one on a tie), its sibling's taken as the parent's minus it.

    Returns (feature, split_bin, default_left, gain, sums, leaf, cat_left): per node of the
    complete tree in heap order (2^(max_depth + 1) - 1 of them) the split (feature -1 for a
    leaf), its gain (0 for a leaf) and the float64 sums (G, H) of every node reached; the leaf
    of every row (int32); and (nodes, 8) int32 bitsets of the bins each categorical split sends
    left (zero elsewhere). On the CPU one call into the extension, which keeps each node's rows
    together (touching only the rows of the nodes that split); elsewhere a loop over levels of
    the kernels above. The CPU call keeps its row-sized buffers on the calling thread for the
    next tree (release_grower_buffers frees them). Row-major bins (bins.contiguous()) build the
    histograms a row at a time, bins stored a feature at a time (bins.t().contiguous().t(),
    what pynotes.gbdt passes by default) a feature at a time: the same trees.

    quantize_bins > 0 (CPU only) sums quantized gradients instead (Shi et al., NeurIPS 2022;
    LightGBM's use_quantized_grad): each row's gradient rounded stochastically (seeded by
    seed) to an integer in [-quantize_bins / 2, quantize_bins / 2] times max|grad| /
    (quantize_bins / 2), its hessian to [0, quantize_bins] times max hess / quantize_bins,
    histograms of exact integer sums; the leaves' sums are then renewed from grad and hess
    (the split nodes' sums stay the quantized estimates).

    categorical (CPU only; a bool per feature) marks features whose bins are categories: their
    splits send a set of categories left, found by sorting the node's categories by
    G / (H + 10) and splitting that order where the gain is best (as LightGBM and scikit-learn's
    HistGradientBoosting); the missing bin goes the default way.

    collective(op, buffer) makes this process `rank` of `processes` in a data-parallel fit
    (pynotes.gbdt on torch.distributed): every process passes its rows, and the callback
    combines in place what they computed apart (the operations above), so that all grow the
    tree of the union of their rows with the same bits. On the CPU each process owns a block
    of the features, as LightGBM's data-parallel learner: per tree one REDUCE_MAX of the
    gradients' sizes; per level one REDUCE_SCATTER of the histograms built (float64 sums in
    fixed point, as reference.fixed_point_scale says), after which each process holds the sums
    of its features with every node's totals and rows, and one ALL_GATHER of each process's
    best split per node; for quantized gradients one REDUCE_SUM of the leaves' renewed sums.
    Elsewhere (the level loop) every histogram and the children's row counts are REDUCE_SUMmed
    whole. row_offset (this process's first row of all) seeds the rounding."""
    if collective is not None and _ext.use_extension(bins) and bins.device.type == "cpu":
        return _ext._C.gbdt_grow_tree_distributed(
            bins, grad, hess, feature_mask, max_depth, num_bins, reg_lambda, gamma,
            min_child_weight, quantize_bins, seed, categorical, processes, rank, row_offset,
            collective)
    if _ext.use_extension(bins) and bins.device.type == "cpu":
        return torch.ops.pynotes.gbdt_grow_tree(bins, grad, hess, feature_mask, max_depth,
                                                num_bins, reg_lambda, gamma, min_child_weight,
                                                quantize_bins, seed, categorical)
    for name, used in (("quantized gradients", quantize_bins),
                       ("categorical features", categorical is not None)):
        if used:
            raise NotImplementedError(f"grow_tree: {name} run on the CPU extension only, not "
                                      f"on {bins.device} or the pure-PyTorch fallback")
    from pynotes.gbdt.grower import grow_tree_by_levels
    return grow_tree_by_levels(bins, grad, hess, max_depth, num_bins, reg_lambda, gamma,
                               min_child_weight, feature_mask, collective, processes)


if _ext.extension_loaded():
    @torch.library.register_fake("pynotes::gbdt_bin")
    def _bin_fake(x, cuts, missing_bin):
        return x.new_empty(x.shape, dtype=torch.uint8)

    @torch.library.register_fake("pynotes::gbdt_histogram")
    def _histogram_fake(bins, grad, hess, node, slot_of_node, num_slots, num_bins):
        return bins.new_empty((num_slots, bins.shape[1], num_bins, 2), dtype=torch.float64)

    @torch.library.register_fake("pynotes::gbdt_best_splits")
    def _best_splits_fake(hist, feature_mask, reg_lambda, gamma, min_child_weight):
        slots = hist.shape[0]
        return (hist.new_empty(slots), hist.new_empty(slots, dtype=torch.long),
                hist.new_empty(slots, dtype=torch.long), hist.new_empty(slots, dtype=torch.bool),
                hist.new_empty(slots, 2), hist.new_empty(slots, 2))

    @torch.library.register_fake("pynotes::gbdt_advance")
    def _advance_fake(bins, node, split_feature, split_bin, default_left, missing_bin):
        return node.new_empty(node.shape), node.new_empty(split_feature.shape, dtype=torch.long)

    @torch.library.register_fake("pynotes::gbdt_predict")
    def _predict_fake(x, feature, threshold, default_left, value, group, base, missing_bin,
                      categorical=None, cat_left=None):
        return base.new_empty((x.shape[0], base.shape[0]))

    @torch.library.register_fake("pynotes::gbdt_grow_tree")
    def _grow_tree_fake(bins, grad, hess, feature_mask, max_depth, num_bins, reg_lambda, gamma,
                        min_child_weight, quantize_bins=0, seed=0, categorical=None):
        nodes = 2 ** (max_depth + 1) - 1
        return (bins.new_empty(nodes, dtype=torch.int32), bins.new_empty(nodes, dtype=torch.int32),
                bins.new_empty(nodes, dtype=torch.bool), bins.new_empty(nodes, dtype=torch.float64),
                bins.new_empty((nodes, 2), dtype=torch.float64),
                bins.new_empty(bins.shape[0], dtype=torch.int32),
                bins.new_empty((nodes, 8), dtype=torch.int32))

    # Under torch.func.vmap: one call per vmapped index (the ops are not batched by nature).
    from pynotes.ops._autograd import loop_vmap_rule
    for _name in ("gbdt_bin", "gbdt_histogram", "gbdt_best_splits", "gbdt_advance",
                  "gbdt_predict", "gbdt_grow_tree"):
        torch.library.register_vmap(f"pynotes::{_name}",
                                    loop_vmap_rule(getattr(torch.ops.pynotes, _name)))
