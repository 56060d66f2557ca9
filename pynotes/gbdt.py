"""Histogram gradient boosting with a scikit-learn estimator API (needs scikit-learn):

    from pynotes.gbdt import GBDTClassifier, GBDTRegressor
    model = GBDTClassifier(n_estimators=100, max_depth=6).fit(X, y, eval_set=[(X_val, y_val)])
    model.predict_proba(X_test)

XGBoost's second-order method (gradients g and hessians h of the loss at the current margins;
leaf weight -G / (H + reg_lambda); split gain as in pynotes/ops/gbdt.py) on 256-bin
histograms, trees grown depth-wise one level at a time by pynotes.ops.grow_tree (one call per
tree on the CPU): per level one split search, the rows of the split nodes sent down, and one
histogram pass for the smaller child of every split (its sibling is the parent's histogram
minus it).
use_quantized_grad=True (CPU) sums gradients rounded to num_grad_quant_bins levels in integer
histograms, the leaf values from the exact sums (Shi et al., NeurIPS 2022; LightGBM's option of
the same name). Categorical features (pandas "category" columns by default, or
categorical_features as in scikit-learn's HistGradientBoosting; CPU only) get a bin per category
and splits that send a set of categories left (grow_tree); missing and unseen categories go a
split's default way. Training is deterministic for a given random_state. Trees are flat tensors in
heap order; save_model / load_model write and read JSON that reproduces predictions exactly.

Data-parallel training: where torch.distributed is initialised with more than one process
(distributed="auto", the default) or fit(..., process_group=group) names a group, every process
calls fit with its own rows and all train one model of the union, the same bits on each (the
categories, classes, cut points from a sample of every process's rows, base margin, each tree
level's histograms, eval metrics and early stopping are combined; pynotes/_gbdt_distributed.py).
distributed=False keeps a fit to its process. examples/gbdt_distributed.py runs it with torchrun.
"""
import json
import math
import sys

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import _check_sample_weight, _num_features, _num_samples, \
    check_is_fitted, validate_data

from pynotes import _gbdt_distributed
from pynotes.ops import gbdt as ops

_MAX_DEPTH = 16
_FORMAT = "pynotes.gbdt"


class _ThreadCount:
    """Runs a block with torch using n_jobs threads (None: unchanged)."""

    def __init__(self, n_jobs):
        self.n_jobs = n_jobs

    def __enter__(self):
        self.previous = torch.get_num_threads()
        if self.n_jobs is not None:
            torch.set_num_threads(self.n_jobs if self.n_jobs > 0 else
                                  max(1, torch.get_num_threads() + 1 + self.n_jobs))

    def __exit__(self, *exc):
        torch.set_num_threads(self.previous)


class _Fitting:
    """The span of a fit: its collective (_GBDTBase._start) set, then dropped (a process group
    is not part of the fitted model)."""

    def __init__(self, model, X, eval_set, process_group):
        self.model, self.args = model, (X, eval_set, process_group)

    def __enter__(self):
        self.model._start(*self.args)

    def __exit__(self, *exc):
        self.model._collective = None


class _Objective:
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

    def gradients(self, margin, y, weight):
        """(grad, hess), each (rows, groups) float32, from float64 margins and float32 labels
        and weights (None: all 1). Computed in float32, the precision the trees sum."""
        m = margin.float()
        if self.name == "squared_error":
            grad = m - y[:, None]
            hess = torch.ones_like(grad)
        elif self.name == "logistic":
            p = torch.sigmoid(m)
            grad = p - y[:, None]
            hess = (p * (1 - p)).clamp_min_(1e-16)
        else:
            # The hessian's factor: LightGBM's K / (K - 1), which keeps the step of a 2-class
            # softmax that of the logistic loss (XGBoost's 2 halves it; with few rounds that
            # leaves its models and ours under-fitted).
            p = torch.softmax(m, 1)
            factor = margin.shape[1] / (margin.shape[1] - 1)
            grad = p - torch.nn.functional.one_hot(y.long(), margin.shape[1])
            hess = (factor * p * (1 - p)).clamp_min_(1e-16)
        if weight is not None:
            grad, hess = grad.mul_(weight[:, None]), hess.mul_(weight[:, None])
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


def _is_frame(X):
    return hasattr(X, "iloc") and hasattr(X, "dtypes") and hasattr(X, "columns")


class _Categories:
    """One categorical feature's categories in bin order, and the codes (bins) of values."""

    def __init__(self, values):
        values = list(values)
        self.values = np.asarray(values, dtype=np.float64 if _all_numbers(values) else object)
        self._order = np.argsort(self.values, kind="stable")
        self._sorted = self.values[self._order]

    @classmethod
    def fit(cls, column, max_codes, collective=None):
        """The categories of a training column (pandas categorical, or any array): at most
        max_codes, the most frequent (the others will count as missing), in the column's
        category order or sorted. In a distributed fit, of every process's column."""
        values, counts, ordered = cls._count(column)
        if collective is not None:
            parts = collective.gather((values.tolist(), counts.tolist(), ordered),
                                      "merging the categories")
            merged = {}
            for part_values, part_counts, _ in parts:
                for v, c in zip(part_values, part_counts):
                    merged[v] = merged.get(v, 0) + c
            values = list(merged)  # first seen first: one order when the ranks' orders agree
            if not all(part[2] for part in parts):
                values = sorted(values)
            values = np.asarray(values, dtype=object)
            counts = np.array([merged[v] for v in values], dtype=np.int64)
        used = np.flatnonzero(counts > 0)
        if used.size > max_codes:  # the most frequent, ties to the earlier category
            used = np.sort(used[np.argsort(-counts[used], kind="stable")[:max_codes]])
        return cls(np.asarray(values, dtype=object)[used].tolist())

    @staticmethod
    def _count(column):
        """(values, counts, ordered): a column's categories and rows of each; ordered when
        they come in the order of a pandas categorical (else sorted)."""
        if getattr(column.dtype, "name", "") == "category":
            values = np.asarray(column.cat.categories, dtype=object)
            codes = column.cat.codes.to_numpy()
            return values, np.bincount(codes[codes >= 0], minlength=len(values)), True
        present = np.asarray(column, dtype=object)
        present = present[~_missing(present)]
        try:
            values, counts = np.unique(present.astype(np.float64) if _all_numbers(present)
                                       else present, return_counts=True)
        except TypeError as e:
            raise ValueError(f"categories of mixed types that do not sort: {e}") from None
        return np.asarray(values, dtype=object), counts, False

    def codes(self, column):
        """float32 codes of a column; NaN for missing values and categories not seen in fit."""
        if getattr(column.dtype, "name", "") == "category":
            lookup = np.append(self.codes(np.asarray(column.cat.categories, dtype=object)),
                               np.float32(np.nan))
            return lookup[column.cat.codes.to_numpy()]  # code -1 (missing): the NaN appended
        column = np.asarray(column, dtype=object)
        out = np.full(column.shape[0], np.nan, dtype=np.float32)
        present = ~_missing(column)
        if not self.values.size or not present.any():
            return out
        values = column[present]
        try:
            values = values.astype(self.values.dtype)
            at = np.minimum(np.searchsorted(self._sorted, values), self.values.size - 1)
        except (TypeError, ValueError):
            kinds = sorted({type(v).__name__ for v in values[:1000]})
            raise ValueError(f"values of type {', '.join(kinds)} cannot be compared with its "
                             f"categories of type {type(self.values[0]).__name__}") from None
        hit = self._sorted[at] == values
        out[present] = np.where(hit, self._order[at], np.nan)
        return out


def _missing(values):
    """Where an object array holds NaN or None."""
    return np.array([v is None or (isinstance(v, (float, np.floating)) and v != v)
                     for v in values], dtype=bool)


def _all_numbers(values):
    """Whether every value is a number (not a bool): such categories are kept as float64."""
    return all(isinstance(v, (int, float, np.integer, np.floating)) and
               not isinstance(v, (bool, np.bool_)) for v in values)


class _Ensemble:
    """Trees as (trees, nodes) tensors in heap order, plus each tree's output column; with
    categorical features (categorical: a bool per feature) each tree's (nodes, 8) bitsets of
    the categories its categorical splits send left."""
    _PER_TREE = ("feature", "threshold", "default_left", "value", "group", "cat_left")

    def __init__(self, nodes, groups, base, categorical=None):
        self.nodes, self.groups, self.base = nodes, groups, base
        self.categorical = categorical if categorical is not None and bool(categorical.any()) \
            else None
        for name in self._PER_TREE:
            setattr(self, name, [])
        self._stacked = None  # (device, tensors) of every tree, for repeated predictions

    def add(self, feature, threshold, default_left, value, group, cat_left=None):
        self._stacked = None
        self.feature.append(feature.int().cpu())
        self.threshold.append(threshold.float().cpu())
        self.default_left.append(default_left.bool().cpu())
        self.value.append(value.float().cpu())
        self.group.append(group)
        if self.categorical is not None:
            self.cat_left.append(cat_left.int().cpu())

    def truncate(self, trees):
        self._stacked = None
        for name in self._PER_TREE:
            setattr(self, name, getattr(self, name)[:trees])

    def tensors(self, device, first=0):
        if first == 0 and self._stacked is not None and self._stacked[0] == device:
            return self._stacked[1]

        def stack(items, dtype):
            kept = items[first:]
            return (torch.stack(kept) if kept else
                    torch.zeros(0, self.nodes, dtype=dtype)).to(device)
        categories = (None, None)
        if self.categorical is not None:
            kept = self.cat_left[first:]
            categories = (self.categorical.to(device), (
                torch.stack(kept) if kept else
                torch.zeros(0, self.nodes, 8, dtype=torch.int32)).to(device))
        stacked = (stack(self.feature, torch.int32), stack(self.threshold, torch.float32),
                   stack(self.default_left, torch.bool), stack(self.value, torch.float32),
                   torch.tensor(self.group[first:], dtype=torch.long, device=device), categories)
        if first == 0:
            self._stacked = (device, stacked)
        return stacked

    def margins(self, x, device, first=0, base=None):
        base = self.base if base is None else base
        *trees, (categorical, cat_left) = self.tensors(device, first)
        return ops.predict_trees(x, *trees, base.to(device), categorical=categorical,
                                 cat_left=cat_left)

    def to_json(self):
        data = {"nodes": self.nodes, "groups": self.groups, "base": self.base.tolist(),
                "feature": [t.tolist() for t in self.feature],
                "threshold": [t.tolist() for t in self.threshold],
                "default_left": [t.tolist() for t in self.default_left],
                "value": [t.tolist() for t in self.value], "group": list(self.group)}
        if self.categorical is not None:
            # Per tree, [node, bitset words] of each categorical split.
            data["categorical"] = self.categorical.tolist()
            data["cat_left"] = [[[n, bits[n].tolist()] for n in
                                 torch.nonzero(bits.any(1)).flatten().tolist()]
                                for bits in self.cat_left]
        return data

    @classmethod
    def from_json(cls, data):
        categorical = torch.tensor(data["categorical"]) if "categorical" in data else None
        ensemble = cls(data["nodes"], data["groups"], torch.tensor(data["base"],
                                                                   dtype=torch.float64),
                       categorical)
        for i, (f, t, d, v, g) in enumerate(zip(data["feature"], data["threshold"],
                                                data["default_left"], data["value"],
                                                data["group"])):
            cat_left = None
            if categorical is not None:
                cat_left = torch.zeros(data["nodes"], 8, dtype=torch.int32)
                for node, words in data["cat_left"][i]:
                    cat_left[node] = torch.tensor(words, dtype=torch.int32)
            ensemble.add(torch.tensor(f), torch.tensor(t), torch.tensor(d), torch.tensor(v), g,
                         cat_left)
        return ensemble


class _TreeGrower:
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


class _GBDTBase(BaseEstimator):
    def __init__(self, n_estimators=100, learning_rate=0.3, max_depth=6, max_bins=256,
                 reg_lambda=1.0, gamma=0.0, min_child_weight=1.0, subsample=1.0,
                 colsample_bytree=1.0, early_stopping_rounds=None, use_quantized_grad=False,
                 num_grad_quant_bins=4, categorical_features="from_dtype", random_state=0,
                 device="cpu", n_jobs=None, distributed="auto", verbose=False):
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.max_depth = max_depth
        self.max_bins = max_bins
        self.reg_lambda = reg_lambda
        self.gamma = gamma
        self.min_child_weight = min_child_weight
        self.subsample = subsample
        self.colsample_bytree = colsample_bytree
        self.early_stopping_rounds = early_stopping_rounds
        self.use_quantized_grad = use_quantized_grad
        self.num_grad_quant_bins = num_grad_quant_bins
        self.categorical_features = categorical_features
        self.random_state = random_state
        self.device = device
        self.n_jobs = n_jobs
        self.distributed = distributed
        self.verbose = verbose

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        return tags

    # -- parameters and data ------------------------------------------------------------------

    def _check_params(self):
        def check(ok, message):
            if not ok:
                raise ValueError(f"{type(self).__name__}: {message}")
        integer = lambda v: isinstance(v, (int, np.integer)) and not isinstance(v, bool)  # noqa
        check(integer(self.n_estimators) and self.n_estimators >= 1,
              f"n_estimators must be a positive int, got {self.n_estimators!r}")
        check(integer(self.max_depth) and 0 <= self.max_depth <= _MAX_DEPTH,
              f"max_depth must be an int in [0, {_MAX_DEPTH}], got {self.max_depth!r}")
        check(integer(self.max_bins) and 2 <= self.max_bins <= 256,
              f"max_bins must be an int in [2, 256], got {self.max_bins!r}")
        check(self.learning_rate > 0, f"learning_rate must be positive, got "
              f"{self.learning_rate!r}")
        for name in ("reg_lambda", "gamma", "min_child_weight"):
            check(getattr(self, name) >= 0, f"{name} must be non-negative, got "
                  f"{getattr(self, name)!r}")
        for name in ("subsample", "colsample_bytree"):
            check(0 < getattr(self, name) <= 1, f"{name} must be in (0, 1], got "
                  f"{getattr(self, name)!r}")
        check(self.early_stopping_rounds is None or
              (integer(self.early_stopping_rounds) and self.early_stopping_rounds >= 1),
              f"early_stopping_rounds must be None or a positive int, got "
              f"{self.early_stopping_rounds!r}")
        check(isinstance(self.use_quantized_grad, (bool, np.bool_)),
              f"use_quantized_grad must be a bool, got {self.use_quantized_grad!r}")
        check(integer(self.num_grad_quant_bins) and 2 <= self.num_grad_quant_bins <= 1024,
              f"num_grad_quant_bins must be an int in [2, 1024], got "
              f"{self.num_grad_quant_bins!r}")
        check(not (self.use_quantized_grad and str(self.device).startswith("cuda")),
              "use_quantized_grad runs on the CPU only; use device='cpu' or turn it off")
        check(self.n_jobs is None or (integer(self.n_jobs) and self.n_jobs != 0),
              f"n_jobs must be None or a non-zero int, got {self.n_jobs!r}")
        check(self.device in ("cpu", "cuda") or str(self.device).startswith("cuda:"),
              f"device must be 'cpu' or 'cuda', got {self.device!r}")
        check(self.distributed in ("auto", False),
              f"distributed must be 'auto' or False, got {self.distributed!r}")

    # -- the processes of a distributed fit ---------------------------------------------------

    def _start(self, X, eval_set, process_group):
        """Sets _collective for a fit: None for this process alone, else the processes of a
        distributed fit (process_group, or with distributed='auto' torch.distributed's default
        group when it has more than one process), once every one fits alike."""
        group = _gbdt_distributed.process_group(self.distributed, process_group)
        self._collective = None if group is None else _gbdt_distributed.Collective(group)
        self._rows_per_process = None
        if self._collective is None:
            return
        name = f"{type(self).__name__} distributed fit"
        ignored = ("n_jobs", "verbose", "device", "distributed")  # may differ by process
        try:
            info = {"estimator": type(self).__name__,
                    "parameters": repr(sorted((k, repr(v)) for k, v in self.get_params().items()
                                              if k not in ignored)),
                    "number of features": _num_features(X),
                    "column names": list(map(str, X.columns)) if _is_frame(X) else None,
                    "number of eval sets": len(eval_set or []), "rows": _num_samples(X)}
        except (TypeError, ValueError) as e:
            info = {"error": f"{type(e).__name__}: {e}"}
        infos = self._collective.gather(info, "checking the processes")
        failed = [(r, i["error"]) for r, i in enumerate(infos) if "error" in i]
        if failed:
            raise ValueError(f"{name}: X of rank {failed[0][0]} is not a table: {failed[0][1]}")
        for key in ("estimator", "parameters", "number of features", "column names",
                    "number of eval sets"):
            values = [i[key] for i in infos]
            other = next((r for r, v in enumerate(values) if v != values[0]), None)
            if other is not None:
                raise ValueError(f"{name}: every process must fit alike, but rank {other} "
                                 f"differs from rank 0 in its {key}: {values[other]} vs "
                                 f"{values[0]}")
        empty = [r for r, i in enumerate(infos) if i["rows"] == 0]
        if empty:
            raise ValueError(f"{name}: ranks {empty} have no rows; every process needs rows of "
                             "the training set")
        self._rows_per_process = [i["rows"] for i in infos]

    def _sum(self, values, what):
        """values (float64 numpy) summed over the processes of a distributed fit."""
        if self._collective is None:
            return np.asarray(values, dtype=np.float64)
        return self._collective.sum_in_rank_order(values, what)

    def _cuts(self, x, categorical):
        """Cut points of the training rows: of every process's rows in a distributed fit (all
        of them up to the sample size, else a sample in proportion to each process's rows)."""
        sample_size = 200_000
        if self._collective is None:
            return ops.cut_points(x, self.max_bins, sample_size, self.random_state, categorical)
        rows, total = x.shape[0], sum(self._rows_per_process)
        sample = x
        if total > sample_size:
            take = max(1, round(sample_size * rows / total))
            generator = torch.Generator().manual_seed(self.random_state + self._collective.rank)
            sample = x[torch.randperm(rows, generator=generator)[:take].to(x.device)]
        parts = self._collective.gather(sample.cpu().numpy(), "gathering a sample of the rows")
        union = torch.from_numpy(np.concatenate(parts)).to(x.device)
        return ops.cut_points(union, self.max_bins, union.shape[0], self.random_state,
                              categorical)

    def _categorical_mask(self, X):
        """is_categorical_ of a training X: categorical_features resolved (None, "from_dtype",
        indices, names or a mask), as scikit-learn's HistGradientBoosting; None where X has no
        categorical feature by the spec's form alone (X is then left to validate_data)."""
        name = type(self).__name__
        spec = self.categorical_features
        columns = list(X.columns) if _is_frame(X) else None
        if isinstance(spec, str) and spec != "from_dtype":
            raise ValueError(f"{name}: categorical_features must be None, 'from_dtype', or "
                             f"indices, names or a mask of features, got {spec!r}")
        if spec is None or (isinstance(spec, str) and columns is None):
            return None
        if isinstance(spec, str):
            return np.array([getattr(t, "name", "") == "category" for t in X.dtypes], dtype=bool)
        spec = np.asarray(spec)
        features = len(columns) if columns is not None else np.asarray(X).shape[1]
        mask = np.zeros(features, dtype=bool)
        if spec.size == 0:
            return mask
        if spec.dtype.kind == "b":
            if spec.shape != (features,):
                raise ValueError(f"{name}: a categorical_features mask must have one bool per "
                                 f"feature ({features}), got shape {spec.shape}")
            return spec.copy()
        if spec.dtype.kind in "iu":
            if spec.min() < 0 or spec.max() >= features:
                raise ValueError(f"{name}: categorical_features indices must be in [0, "
                                 f"{features}), got {spec.tolist()}")
            mask[spec] = True
            return mask
        if spec.dtype.kind in "UO":
            if columns is None:
                raise ValueError(f"{name}: categorical_features names {spec.tolist()} need X "
                                 "to be a DataFrame with column names")
            unknown = [s for s in spec.tolist() if s not in columns]
            if unknown:
                raise ValueError(f"{name}: categorical_features names not among X's columns: "
                                 f"{unknown}")
            mask[[columns.index(s) for s in spec.tolist()]] = True
            return mask
        raise ValueError(f"{name}: categorical_features must be None, 'from_dtype', or indices, "
                         f"names or a mask of features, got {self.categorical_features!r}")

    def _encode(self, X, reset):
        """X with its categorical features replaced by their float codes (NaN: missing or
        unseen); in fit the categories are learnt first. A numeric X without categorical
        features comes back as it is."""
        name = type(self).__name__
        frame = _is_frame(X)
        if reset:
            mask = self._categorical_mask(X)
            self.is_categorical_ = mask  # None: none (set by _features once X is validated)
            if frame:
                named = mask if mask is not None else np.zeros(X.shape[1], dtype=bool)
                text = [c for c, t, m in zip(X.columns, X.dtypes, named)
                        if getattr(t, "kind", "O") not in "biuf" and not m]
                if text:
                    raise ValueError(f"{name}: columns {text} are not numeric: name them in "
                                     "categorical_features (its default, 'from_dtype', takes "
                                     "the pandas 'category' columns)")
            if mask is None:
                return X
            if mask.any() and str(self.device).startswith("cuda"):
                raise ValueError(f"{name}: categorical features train on the CPU only; use "
                                 "device='cpu' (the model then predicts on either)")
            self._categories = [None] * mask.size
        mask = getattr(self, "is_categorical_", None)  # (absent in models pickled before it)
        if mask is None or not mask.any():
            return X
        if not frame:
            X = np.asarray(X)
            X = X.astype(np.float64 if X.dtype.kind in "biuf" else object)  # a copy
            if X.ndim != 2 or X.shape[1] != mask.size:
                raise ValueError(f"{name}: X has shape {X.shape}, but the model has {mask.size} "
                                 "features")
        elif X.shape[1] != mask.size:
            raise ValueError(f"{name}: X has {X.shape[1]} features, but the model has "
                             f"{mask.size}")
        out = X.copy() if frame else X
        for f in np.flatnonzero(mask):
            column = X.iloc[:, f] if frame else X[:, f]
            label = repr(X.columns[f]) if frame else str(f)
            try:
                if reset:
                    self._categories[f] = _Categories.fit(column, self.max_bins - 1,
                                                          self._collective)
                codes = self._categories[f].codes(column)
            except ValueError as e:
                raise ValueError(f"{name}: categorical feature {label}: {e}") from None
            if frame:
                out[X.columns[f]] = codes
            else:
                out[:, f] = codes
        return out if frame else out.astype(np.float32)

    def _features(self, X, reset, y=None):
        """X as a float32 tensor on the model's device (NaN allowed, inf not; categorical
        features as codes), and y."""
        if reset and y is None:
            raise ValueError(f"{type(self).__name__} requires y to be passed, but the target y "
                             "is None")
        X = self._encode(X, reset)
        kwargs = dict(dtype=np.float32, ensure_all_finite="allow-nan", reset=reset)
        if y is None:
            X = validate_data(self, X, **kwargs)
        else:
            X, y = validate_data(self, X, y, y_numeric=self._y_numeric, **kwargs)
        if reset and self.is_categorical_ is None:
            self.is_categorical_ = np.zeros(self.n_features_in_, dtype=bool)
            self._categories = [None] * self.n_features_in_
        # (a DataFrame's values may come read-only: torch wants them writable)
        X = np.require(X, requirements=["C_CONTIGUOUS", "WRITEABLE"])
        return torch.from_numpy(X).to(self.device), y

    # -- training -----------------------------------------------------------------------------

    def _fit(self, x, sample_weight, eval_set, objective, groups, labels):
        """x: the validated features (tensor); labels: y as numbers (class indices for
        classifiers), numpy. In a distributed fit (_start) x and labels are this process's
        rows, and every process ends with the same model of all of them."""
        self._objective = objective
        name = type(self).__name__
        if self.early_stopping_rounds is not None and not eval_set:
            raise ValueError(f"{name}: early_stopping_rounds={self.early_stopping_rounds} needs a "
                             "validation set to watch: pass fit(X, y, eval_set=[(X_val, y_val)])")
        weight = _check_sample_weight(sample_weight, x.cpu().numpy(), dtype=np.float64)
        if not np.all(np.isfinite(weight)) or np.any(weight < 0):
            raise ValueError(f"{name}: sample_weight must be finite, non-negative and not all "
                             "zero")
        collective = self._collective
        dev = self.device
        w = torch.from_numpy(weight).to(dev)
        yt = torch.from_numpy(np.array(labels, dtype=np.float64)).to(dev)  # a writable copy
        rows, features = x.shape
        total_rows = sum(self._rows_per_process) if collective else rows
        if self.use_quantized_grad and total_rows * self.num_grad_quant_bins >= 2 ** 31:
            raise ValueError(f"{name}: quantized gradients sum in 32 bits: rows x "
                             f"num_grad_quant_bins must be below 2^31, got {total_rows} x "
                             f"{self.num_grad_quant_bins}")
        categorical = torch.from_numpy(self.is_categorical_)
        cuts = self._cuts(x, categorical)
        base_sums = self._sum(objective.base_sums(yt.cpu(), w.cpu(), groups), "the base margin")
        if not np.sum(base_sums if objective.name == "softmax" else base_sums[1:]) > 0:
            raise ValueError(f"{name}: sample_weight must be finite, non-negative and not all "
                             "zero")
        base = objective.base_margin(base_sums)
        y32 = yt.float()
        w32 = None if bool((w == 1).all()) else w.float()
        self._ensemble = _Ensemble(2 ** (self.max_depth + 1) - 1, groups, base, categorical)
        process = (collective.all_reduce, collective.size,
                   sum(self._rows_per_process[:collective.rank])) if collective else ()
        # (the row-major bins die once the grower has its own layout)
        grower = _TreeGrower(ops.bin_features(x, cuts, self.max_bins - 1), cuts, self, dev,
                             self._ensemble.categorical, *process)
        margin = base.to(dev).expand(rows, groups).clone()
        evals = [self._eval_data(X_e, y_e) for X_e, y_e in (eval_set or [])]
        eval_margins = [base.to(dev).expand(e[0].shape[0], groups).clone() for e in evals]
        self.evals_result_ = {f"validation_{i}": {objective.metric: []} for i in range(len(evals))}
        # Columns are drawn alike by every process; rows (subsample) by each for its own.
        column_generator = torch.Generator().manual_seed(self.random_state)
        row_generator = torch.Generator().manual_seed(
            self.random_state + (1 << 32) * (1 + (collective.rank if collective else 0)))
        round_gains = []  # per round, the total split gain of each feature
        best_score, best_round, self.best_iteration_ = math.inf, 0, None
        for round_ in range(self.n_estimators):
            # Rows left out by subsampling weigh nothing in this round's trees.
            round_weight = w32
            if self.subsample < 1:
                keep = torch.rand(rows, generator=row_generator) < self.subsample
                round_weight = keep.to(dev).float() if w32 is None else w32 * keep.to(dev)
            grad, hess = objective.gradients(margin, y32, round_weight)
            gains = torch.zeros(features, dtype=torch.float64)
            for group in range(groups):
                feature_mask = None
                if self.colsample_bytree < 1:
                    keep = max(1, int(round(self.colsample_bytree * features)))
                    chosen = torch.randperm(features, generator=column_generator)[:keep]
                    feature_mask = torch.zeros(features, dtype=torch.bool)
                    feature_mask[chosen] = True
                    feature_mask = feature_mask.to(dev)
                seed = (self.random_state * groups + group) * self.n_estimators + round_
                f, t, d, v, g, leaf, cat_left = grower.grow(
                    grad[:, group].contiguous(), hess[:, group].contiguous(), feature_mask, seed)
                self._ensemble.add(f, t, d, v, group, cat_left)
                margin[:, group] += v.to(dev).double()[leaf]
                split = f.cpu() >= 0
                gains.index_add_(0, f.cpu()[split].long(), g[split])
            round_gains.append(gains)
            loss_sums = []
            for x_e, y_e, w_e, m_e in ((*e, m) for e, m in zip(evals, eval_margins)):
                m_e += self._ensemble.margins(x_e, dev, first=len(self._ensemble.feature) - groups,
                                              base=torch.zeros(groups, dtype=torch.float64))
                loss_sums.append(objective.loss_sums(m_e, y_e, w_e))
            if evals:
                loss_sums = self._sum(np.stack(loss_sums), "the eval metric")
                for i, sums in enumerate(loss_sums):
                    self.evals_result_[f"validation_{i}"][objective.metric].append(
                        objective.metric_of(sums))
            score = self.evals_result_[f"validation_{len(evals) - 1}"][objective.metric][-1] \
                if evals else None
            if self.verbose:
                _progress(round_ + 1, self.n_estimators, objective.metric, score)
            if evals and self.early_stopping_rounds:
                if score < best_score:
                    best_score, best_round = score, round_
                elif round_ - best_round >= self.early_stopping_rounds:
                    break
        if self.verbose:
            print(file=sys.stderr)
        if evals and self.early_stopping_rounds:
            self.best_iteration_ = best_round
            self._ensemble.truncate((best_round + 1) * groups)
            round_gains = round_gains[:best_round + 1]
        gains = torch.stack(round_gains).sum(0)  # of the trees kept
        total = gains.sum()
        self.feature_importances_ = (gains / total if total > 0 else gains).numpy()
        self.n_processes_ = collective.size if collective else 1
        self.reduced_bytes_ = collective.tree_bytes if collective else 0
        return self

    def _eval_data(self, X, y):
        x, _ = self._features(X, reset=False)
        labels = self._labels(y)
        return x, torch.from_numpy(labels).to(self.device), \
            torch.ones(x.shape[0], dtype=torch.float64, device=self.device)

    def _margins(self, X):
        check_is_fitted(self, "_ensemble")
        with _ThreadCount(self.n_jobs):
            x, _ = self._features(X, reset=False)
            return self._ensemble.margins(x, self.device)

    # -- persistence --------------------------------------------------------------------------

    def save_model(self, path):
        """Writes the model (parameters and trees) as JSON; load_model reads it back."""
        check_is_fitted(self, "_ensemble")
        params = self.get_params()
        if not isinstance(params["categorical_features"], (str, type(None))):
            params["categorical_features"] = np.asarray(params["categorical_features"]).tolist()
        data = {"format": _FORMAT, "version": 1, "estimator": type(self).__name__,
                "params": params, "objective": self._objective.name,
                "n_features_in": int(self.n_features_in_),
                "feature_importances": self.feature_importances_.tolist(),
                "best_iteration": self.best_iteration_, "ensemble": self._ensemble.to_json(),
                "is_categorical": self.is_categorical_.tolist(),
                "categories": [c.values.tolist() if c is not None else None
                               for c in self._categories]}
        if hasattr(self, "classes_"):
            data["classes"] = self.classes_.tolist()
        if hasattr(self, "feature_names_in_"):
            data["feature_names"] = self.feature_names_in_.tolist()
        with open(path, "w") as f:
            json.dump(data, f)

    def load_model(self, path):
        """Restores a model written by save_model (of the same estimator class)."""
        with open(path) as f:
            data = json.load(f)
        if data.get("format") != _FORMAT or data.get("estimator") != type(self).__name__:
            raise ValueError(f"{type(self).__name__}.load_model: {path} is not a saved "
                             f"{type(self).__name__}")
        self.set_params(**data["params"])
        self._objective = _Objective(data["objective"])
        self.n_features_in_ = data["n_features_in"]
        self.feature_importances_ = np.asarray(data["feature_importances"])
        self.best_iteration_ = data["best_iteration"]
        self._ensemble = _Ensemble.from_json(data["ensemble"])
        self.is_categorical_ = np.asarray(data.get("is_categorical",
                                                   [False] * self.n_features_in_), dtype=bool)
        self._categories = [_Categories(c) if c is not None else None
                            for c in data.get("categories", [None] * self.n_features_in_)]
        if "classes" in data:
            self.classes_ = np.asarray(data["classes"])
        if "feature_names" in data:
            self.feature_names_in_ = np.asarray(data["feature_names"], dtype=object)
        elif hasattr(self, "feature_names_in_"):
            del self.feature_names_in_
        return self


def _progress(done, total, metric, score, width=30):
    filled = width * done // total
    text = f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total}"
    if score is not None:
        text += f"  {metric} {score:.5f}"
    print(text, end="", file=sys.stderr, flush=True)


class GBDTRegressor(RegressorMixin, _GBDTBase):
    """Gradient-boosted trees for regression (squared error); see the module doc."""
    _y_numeric = True

    def _labels(self, y):
        y = np.asarray(y, dtype=np.float64)
        if not np.all(np.isfinite(y)):
            raise ValueError("GBDTRegressor: y must be finite, got NaN or inf")
        return y

    def fit(self, X, y, sample_weight=None, eval_set=None, process_group=None):
        """Trains on (X, y); in a distributed fit (see the module doc) on every process's
        rows, X and y being this process's."""
        self._check_params()
        with _ThreadCount(self.n_jobs), _Fitting(self, X, eval_set, process_group):
            x, y = self._features(X, reset=True, y=y)
            return self._fit(x, sample_weight, eval_set, _Objective("squared_error"), 1,
                             self._labels(y))

    def predict(self, X):
        return self._margins(X)[:, 0].cpu().numpy()


class GBDTClassifier(ClassifierMixin, _GBDTBase):
    """Gradient-boosted trees for classification: binary logistic, or softmax over more
    classes (one tree per class per round); see the module doc."""
    _y_numeric = False

    def _labels(self, y):
        y = np.asarray(y)
        index = np.searchsorted(self.classes_, y)
        index = np.clip(index, 0, len(self.classes_) - 1)
        if not np.all(self.classes_[index] == y):
            unknown = np.setdiff1d(np.unique(y), self.classes_)
            raise ValueError(f"GBDTClassifier: y has labels that are not classes seen in fit: "
                             f"{unknown[:5].tolist()}")
        return index.astype(np.float64)

    def fit(self, X, y, sample_weight=None, eval_set=None, process_group=None):
        """Trains on (X, y); in a distributed fit (see the module doc) on every process's
        rows, X and y being this process's, and the classes those of every process."""
        self._check_params()
        with _ThreadCount(self.n_jobs), _Fitting(self, X, eval_set, process_group):
            x, y = self._features(X, reset=True, y=y)
            check_classification_targets(y)
            if y.dtype.kind == "f" and not np.all(np.isfinite(y)):
                raise ValueError("GBDTClassifier: y must not contain NaN or inf")
            self.classes_ = np.unique(y)
            if self._collective is not None:
                parts = self._collective.gather(self.classes_, "gathering the classes")
                try:
                    self.classes_ = np.unique(np.concatenate(parts))
                except TypeError:
                    raise ValueError("GBDTClassifier distributed fit: the processes' labels are "
                                     f"of types that do not compare: "
                                     f"{sorted({p.dtype.name for p in parts})}") from None
            if len(self.classes_) < 2:
                raise ValueError(f"GBDTClassifier: y must have at least 2 classes, got 1 class: "
                                 f"{self.classes_.tolist()}")
            binary = len(self.classes_) == 2
            objective = _Objective("logistic" if binary else "softmax")
            return self._fit(x, sample_weight, eval_set, objective,
                             1 if binary else len(self.classes_), self._labels(y))

    def predict_proba(self, X):
        margin = self._margins(X)
        if margin.shape[1] == 1:
            p = torch.sigmoid(margin[:, 0])
            return torch.stack([1 - p, p], 1).cpu().numpy()
        return torch.softmax(margin, 1).cpu().numpy()

    def predict(self, X):
        check_is_fitted(self, "_ensemble")
        return self.classes_[self.predict_proba(X).argmax(1)]
