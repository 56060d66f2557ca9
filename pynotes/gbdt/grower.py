"""One tree at a time: the binned features, the cut points' values, and one call of
pynotes.ops.gbdt.grow_tree per tree (TreeGrower); and the level loop that grows a tree where the
CPU extension does not (grow_tree_by_levels: CUDA, the pure-PyTorch fallback)."""
import time

import torch

from pynotes.ops import gbdt as ops
from pynotes.reference import gbdt as reference


class TreeGrower:
    """Grows one tree depth-wise on binned data with the pynotes kernels.

    On the CPU the histograms are built from bins stored one feature after another
    (layout="col-wise") or one row after another ("row-wise", XGBoost's layout: a row's bins
    read together); the trees are the same bits. layout="auto" (LightGBM's way) times the
    first tree in both on this machine and keeps the faster (layout_seconds: the timings)."""

    # A first tree faster than this is not timed again: either layout is fast, and the
    # timings of so short a call are noise.
    LAYOUT_TIMING_MIN_SECONDS = 0.005
    # Row-wise is taken where its tree takes at most this fraction of the col-wise tree's
    # time (one tree's time varies by ~5 % from call to call; col-wise is the default).
    ROW_WISE_MARGIN = 0.9

    def __init__(self, bins, cuts, params, device, categorical=None, collective=None,
                 processes=1, rank=0, row_offset=0, layout="col-wise"):
        # The layouts ops.grow_tree may read on the CPU (elsewhere bins as they come). A
        # data-parallel fit does not time them: each process would choose alone, and a
        # timing tree is a collective call that every process must make.
        cpu = bins.device.type == "cpu"
        if layout == "auto" and (not cpu or collective is not None):
            layout = "col-wise"
        self.layout, self.layout_seconds = layout, None
        self._bins = None  # both layouts, until "auto" chooses
        if not cpu:
            self.bins = bins
        elif layout == "auto":
            self.bins, self._bins = None, {"row-wise": bins.contiguous(),
                                           "col-wise": bins.t().contiguous().t()}
        else:
            self.bins = bins.contiguous() if layout == "row-wise" else bins.t().contiguous().t()
        self.device, self.p = device, params
        self.categorical = categorical
        # One process of a distributed fit: the combining callback, the number of processes,
        # this one's rank and first row (ops.grow_tree).
        self.collective, self.processes = collective, processes
        self.rank, self.row_offset = rank, row_offset
        self.num_bins = params.max_bins
        # Threshold values by (feature, bin); a bin past the last cut means "every value".
        inf = torch.full((cuts.shape[0], 1), torch.inf, dtype=cuts.dtype, device=cuts.device)
        self.cut_values = torch.cat([cuts, inf], 1).float()

    def grow(self, grad, hess, feature_mask, seed):
        """Returns (feature, threshold, default_left, value, gain) per node, each row's leaf
        and the categorical splits' left sets; leaf values include the learning rate. Rows
        left out by subsampling come with zero gradient and hessian; seed drives the rounding
        of quantized gradients."""
        if self.layout == "auto":
            return self._choose_layout(grad, hess, feature_mask, seed)
        return self._grow(self.bins, grad, hess, feature_mask, seed)

    def _choose_layout(self, grad, hess, feature_mask, seed):
        """The first tree, grown col-wise, then (if it took long enough to time) row-wise and
        col-wise again, each timed: the layout of the faster from here on (the first tree
        paid for the grower's buffers' first touch, so it is not compared)."""
        def timed(layout):
            start = time.perf_counter()
            out = self._grow(self._bins[layout], grad, hess, feature_mask, seed)
            return out, time.perf_counter() - start

        tree, first = timed("col-wise")
        seconds = {"col-wise": first, "row-wise": None}
        if first >= self.LAYOUT_TIMING_MIN_SECONDS:
            seconds["row-wise"] = timed("row-wise")[1]
            seconds["col-wise"] = timed("col-wise")[1]
        faster = seconds["row-wise"] is not None and \
            seconds["row-wise"] <= self.ROW_WISE_MARGIN * seconds["col-wise"]
        self.layout = "row-wise" if faster else "col-wise"
        self.bins, self._bins, self.layout_seconds = self._bins[self.layout], None, seconds
        return tree

    def _grow(self, bins, grad, hess, feature_mask, seed):
        p = self.p
        feature, split_bin, default_left, gain, sums, leaf, cat_left = ops.grow_tree(
            bins, grad, hess, p.max_depth, self.num_bins, p.reg_lambda, p.gamma,
            p.min_child_weight, feature_mask,
            quantize_bins=p.num_grad_quant_bins if p.use_quantized_grad else 0, seed=seed,
            categorical=self.categorical, collective=self.collective, processes=self.processes,
            rank=self.rank, row_offset=self.row_offset)
        value = torch.where(feature < 0, -sums[:, 0] / (sums[:, 1] + p.reg_lambda), 0.0)
        value = (value * p.learning_rate).float()
        numeric = feature >= 0
        if self.categorical is not None:  # categorical splits have no threshold
            numeric &= ~self.categorical[feature.clamp_min(0).long()]
        threshold = torch.where(
            numeric, self.cut_values[feature.clamp_min(0).long(), split_bin.long()],
            torch.zeros((), device=self.device))
        return feature, threshold, default_left, value, gain.cpu(), leaf, cat_left


def grow_tree_by_levels(bins, grad, hess, max_depth, num_bins, reg_lambda, gamma,
                        min_child_weight, feature_mask, collective=None, processes=1):
    """ops.grow_tree where the CPU extension does not run it (CUDA, the pure-PyTorch
    fallback): a loop over levels of ops.build_histogram, find_best_splits and advance_nodes,
    with the same results (see there)."""
    if not 0 <= max_depth <= ops.MAX_DEPTH:
        raise ValueError(f"gbdt_grow_tree: max_depth must be in [0, {ops.MAX_DEPTH}], got "
                         f"{max_depth}")
    dev, nodes, missing_bin = bins.device, 2 ** (max_depth + 1) - 1, num_bins - 1
    feature = torch.full((nodes,), -1, dtype=torch.int32, device=dev)
    split_bin = torch.zeros(nodes, dtype=torch.int32, device=dev)
    default_left = torch.zeros(nodes, dtype=torch.bool, device=dev)
    gain = torch.zeros(nodes, dtype=torch.float64)
    sums = torch.zeros(nodes, 2, dtype=torch.float64)
    node = torch.zeros(bins.shape[0], dtype=torch.int32, device=dev)
    slot_of_node = torch.full((nodes,), -1, dtype=torch.int32, device=dev)
    slot_of_node[0] = 0
    scale = None  # of a data-parallel fit's fixed-point histogram sums
    if collective is not None:
        sizes = torch.tensor([0.0, 0.0, float(grad.double().abs().sum()),
                              float(hess.double().sum())], dtype=torch.float64, device=dev)
        collective(ops.REDUCE_MAX, sizes)  # (the layout of the C++ loop's gradient sizes)
        scale = reference.fixed_point_scale(processes * float(sizes[2:].max()))

    def combine(hist):  # a histogram summed over the processes, in place
        if scale is not None:
            wire = torch.round(hist * scale).to(torch.int64)
            collective(ops.REDUCE_SUM, wire.view(-1))
            hist.copy_(wire.double() / scale)
    root = ops.build_histogram(bins, grad, hess, node, slot_of_node, 1, num_bins)
    combine(root)
    if bins.shape[1]:
        sums[0] = root[0, 0].sum(0).cpu()
    # This level's nodes (heap ids) in chunks, each with its histograms.
    chunks = [(torch.tensor([0]), root)]
    for depth in range(max_depth):
        parents, parent_hists = [], []
        for ids, hist in chunks:
            s = ops.Splits(*(t.cpu() for t in ops.find_best_splits(
                hist, reg_lambda, gamma, min_child_weight, feature_mask)))
            split = (s.feature >= 0) & (s.gain > 0)
            if not bool(split.any()):
                continue
            ids = ids[split]
            feature[ids.to(dev)] = s.feature[split].int().to(dev)
            split_bin[ids.to(dev)] = s.bin[split].int().to(dev)
            default_left[ids.to(dev)] = s.default_left[split].to(dev)
            gain[ids] = s.gain[split]
            sums[2 * ids + 1] = s.left_sum[split]
            sums[2 * ids + 2] = s.right_sum[split]
            parents.append(ids)
            parent_hists.append(hist[split.to(hist.device)])
        if not parents:
            break
        node, count = ops.advance_nodes(bins, node, feature, split_bin, default_left, missing_bin)
        if depth + 1 == max_depth:
            break  # the children are leaves: their sums came with the splits
        if collective is not None:
            collective(ops.REDUCE_SUM, count)
        parents, parent_hist, count = torch.cat(parents), torch.cat(parent_hists), count.cpu()
        left, right = 2 * parents + 1, 2 * parents + 2
        build_left = count[left] <= count[right]
        small = torch.where(build_left, left, right)
        large = torch.where(build_left, right, left)
        slot_of_node.fill_(-1)
        slot_of_node[small.to(dev)] = torch.arange(small.numel(), dtype=torch.int32, device=dev)
        small_hist = ops.build_histogram(bins, grad, hess, node, slot_of_node, small.numel(),
                                         num_bins)
        combine(small_hist)
        chunks = [(small, small_hist), (large, parent_hist.sub_(small_hist))]
    cat_left = torch.zeros(nodes, 8, dtype=torch.int32, device=dev)
    return feature, split_bin, default_left, gain.to(dev), sums.to(dev), node, cat_left
