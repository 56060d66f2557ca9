"""One tree at a time: the binned features, the cut points' values, and one call of
pynotes.ops.grow_tree per tree."""
import torch

from pynotes.ops import gbdt as ops


class TreeGrower:
    """Grows one tree depth-wise on binned data with the pynotes kernels."""

    def __init__(self, bins, cuts, params, device, categorical=None, all_reduce=None,
                 processes=1, row_offset=0):
        # Stored one feature after another: the layout ops.grow_tree reads on the CPU.
        self.bins = bins.t().contiguous().t() if bins.device.type == "cpu" else bins
        self.device, self.p = device, params
        self.categorical = categorical
        # One process of a distributed fit: the combining callback, the number of processes
        # and this one's first row (ops.grow_tree).
        self.all_reduce, self.processes, self.row_offset = all_reduce, processes, row_offset
        self.num_bins = params.max_bins
        # Threshold values by (feature, bin); a bin past the last cut means "every value".
        inf = torch.full((cuts.shape[0], 1), torch.inf, dtype=cuts.dtype, device=cuts.device)
        self.cut_values = torch.cat([cuts, inf], 1).float()

    def grow(self, grad, hess, feature_mask, seed):
        """Returns (feature, threshold, default_left, value, gain) per node, each row's leaf
        and the categorical splits' left sets; leaf values include the learning rate. Rows
        left out by subsampling come with zero gradient and hessian; seed drives the rounding
        of quantized gradients."""
        p = self.p
        feature, split_bin, default_left, gain, sums, leaf, cat_left = ops.grow_tree(
            self.bins, grad, hess, p.max_depth, self.num_bins, p.reg_lambda, p.gamma,
            p.min_child_weight, feature_mask,
            quantize_bins=p.num_grad_quant_bins if p.use_quantized_grad else 0, seed=seed,
            categorical=self.categorical, all_reduce=self.all_reduce, processes=self.processes,
            row_offset=self.row_offset)
        value = torch.where(feature < 0, -sums[:, 0] / (sums[:, 1] + p.reg_lambda), 0.0)
        value = (value * p.learning_rate).float()
        numeric = feature >= 0
        if self.categorical is not None:  # categorical splits have no threshold
            numeric &= ~self.categorical[feature.clamp_min(0).long()]
        threshold = torch.where(
            numeric, self.cut_values[feature.clamp_min(0).long(), split_bin.long()],
            torch.zeros((), device=self.device))
        return feature, threshold, default_left, value, gain.cpu(), leaf, cat_left
