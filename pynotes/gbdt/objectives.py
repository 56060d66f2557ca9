"""The losses pynotes.gbdt boosts: gradients and hessians at the current margins, the base
margin and the eval metric of each."""
import math

import numpy as np
import torch

from pynotes import _ext


def softmax_(margin):
    """The softmax over dim 1 of (rows, groups) margins, in place. torch.softmax over a short
    last dimension (10 classes) took 12 ms for 100k rows on 2 cores, this ~3 ms."""
    margin.sub_(margin.amax(1, keepdim=True)).exp_()
    return margin.div_(margin.sum(1, keepdim=True))


class Objective:
    """Gradients and hessians of a loss at margins (rows, groups), and its eval metric."""

    def __init__(self, name):
        self.name = name
        self.metric = {"squared_error": "rmse", "logistic": "logloss",
                       "softmax": "mlogloss"}[name]

    def base_sums(self, y, weight, groups):
        """What the base margin is computed from: sums over the rows (float64 numpy), which
        the processes of a distributed fit add up."""
        if self.name == "softmax":
            return torch.zeros(groups, dtype=torch.float64).index_add_(
                0, y.long().cpu(), weight.double().cpu()).numpy()
        return np.array([float((y * weight).sum()), float(weight.sum())])

    def base_margin(self, sums):
        if self.name == "squared_error":
            return torch.tensor([sums[0] / sums[1]], dtype=torch.float64)
        if self.name == "logistic":
            p = min(max(sums[0] / sums[1], 1e-6), 1 - 1e-6)
            return torch.tensor([math.log(p / (1 - p))], dtype=torch.float64)
        prior = torch.from_numpy(sums)
        return (prior / prior.sum()).clamp_min(1e-6).log()

    def gradients(self, margin, y, weight, out, trees=()):
        """(grad, hess), written into out: two float32 tensors of margin's shape and strides,
        kept from round to round (fresh ones every round cost their pages' first-touch faults).
        From float64 margins (rows, groups) and float32 labels and weights (None: all 1);
        computed in float32, the precision the trees sum. trees: (group, value, leaf) of the
        last round's trees (float32 values, the int32 leaf of every row), added to their
        columns of margin first. On the CPU one pass of the extension does all of it for one
        column (squared error, logistic): these formulas, a pass over the rows each, were
        ~10 % of a fit there."""
        grad, hess = out
        if margin.shape[1] == 1 and self.name != "softmax" and margin.device.type == "cpu" \
                and _ext.use_extension(margin):
            _, value, leaf = trees[0] if trees else (0, None, None)
            _ext._C.gbdt_boost_step(margin[:, 0], value, leaf, y, weight, grad[:, 0],
                                    hess[:, 0], self.name)
            return grad, hess
        for group, value, leaf in trees:  # (index_select: 7x value[leaf])
            margin[:, group] += value.to(margin.device).double().index_select(0, leaf)
        grad.copy_(margin)  # (then worked in in place: fewer passes)
        if self.name == "squared_error":
            hess.fill_(1)
            grad.sub_(y[:, None])
        elif self.name == "logistic":
            p = grad.sigmoid_()
            torch.neg(p, out=hess).add_(1).mul_(p).clamp_min_(1e-16)  # (1 - p) p
            grad.sub_(y[:, None])
        else:
            # The hessian's factor: LightGBM's K / (K - 1), which keeps the step of a 2-class
            # softmax that of the logistic loss (XGBoost's 2 halves it; with few rounds that
            # leaves its models and ours under-fitted).
            p = softmax_(grad)
            factor = margin.shape[1] / (margin.shape[1] - 1)
            torch.mul(p, p, out=hess).sub_(p).mul_(-factor).clamp_min_(1e-16)  # factor p (1-p)
            p.index_put_((torch.arange(len(y), device=y.device), y.long()),
                         torch.tensor(-1.0, device=y.device), accumulate=True)
        if weight is not None:
            grad.mul_(weight[:, None])
            hess.mul_(weight[:, None])
        return grad, hess

    def loss_sums(self, margin, y, weight):
        """(sum of weighted losses, sum of weights), float64 numpy: the eval metric's parts."""
        if self.name == "squared_error":
            losses = (margin[:, 0] - y) ** 2
        elif self.name == "logistic":
            losses = torch.nn.functional.binary_cross_entropy_with_logits(
                margin[:, 0], y.double(), reduction="none")
        else:
            losses = torch.nn.functional.cross_entropy(margin, y.long(), reduction="none")
        return np.array([float((losses * weight).sum()), float(weight.sum())])

    def metric_of(self, sums):
        mean = sums[0] / sums[1]
        return mean ** 0.5 if self.name == "squared_error" else mean
