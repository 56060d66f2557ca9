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
the same name). Training is deterministic for a given random_state. Trees are flat tensors in
heap order; save_model / load_model write and read JSON that reproduces predictions exactly.
"""
import json
import math
import sys

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, validate_data

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


class _Objective:
    """Gradients and hessians of a loss at margins (rows, groups), and its eval metric."""

    def __init__(self, name):
        self.name = name
        self.metric = {"squared_error": "rmse", "logistic": "logloss",
                       "softmax": "mlogloss"}[name]

    def base_margin(self, y, weight, groups):
        if self.name == "squared_error":
            return torch.tensor([float((y * weight).sum() / weight.sum())], dtype=torch.float64)
        if self.name == "logistic":
            p = float((y * weight).sum() / weight.sum())
            p = min(max(p, 1e-6), 1 - 1e-6)
            return torch.tensor([math.log(p / (1 - p))], dtype=torch.float64)
        prior = torch.zeros(groups, dtype=torch.float64).index_add_(0, y.long().cpu(),
                                                                    weight.double().cpu())
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

    def loss(self, margin, y, weight):
        if self.name == "squared_error":
            return float(((margin[:, 0] - y) ** 2 * weight).sum() / weight.sum()) ** 0.5
        if self.name == "logistic":
            losses = torch.nn.functional.binary_cross_entropy_with_logits(
                margin[:, 0], y.double(), reduction="none")
        else:
            losses = torch.nn.functional.cross_entropy(margin, y.long(), reduction="none")
        return float((losses * weight).sum() / weight.sum())


class _Ensemble:
    """Trees as (trees, nodes) tensors in heap order, plus each tree's output column."""

    def __init__(self, nodes, groups, base):
        self.nodes, self.groups, self.base = nodes, groups, base
        self.feature, self.threshold, self.default_left, self.value, self.group = \
            [], [], [], [], []
        self._stacked = None  # (device, tensors) of every tree, for repeated predictions

    def add(self, feature, threshold, default_left, value, group):
        self._stacked = None
        self.feature.append(feature.int().cpu())
        self.threshold.append(threshold.float().cpu())
        self.default_left.append(default_left.bool().cpu())
        self.value.append(value.float().cpu())
        self.group.append(group)

    def truncate(self, trees):
        self._stacked = None
        for name in ("feature", "threshold", "default_left", "value", "group"):
            setattr(self, name, getattr(self, name)[:trees])

    def tensors(self, device, first=0):
        if first == 0 and self._stacked is not None and self._stacked[0] == device:
            return self._stacked[1]

        def stack(items, dtype):
            kept = items[first:]
            return (torch.stack(kept) if kept else
                    torch.zeros(0, self.nodes, dtype=dtype)).to(device)
        stacked = (stack(self.feature, torch.int32), stack(self.threshold, torch.float32),
                   stack(self.default_left, torch.bool), stack(self.value, torch.float32),
                   torch.tensor(self.group[first:], dtype=torch.long, device=device))
        if first == 0:
            self._stacked = (device, stacked)
        return stacked

    def margins(self, x, device, first=0, base=None):
        base = self.base if base is None else base
        return ops.predict_trees(x, *self.tensors(device, first), base.to(device))

    def to_json(self):
        return {"nodes": self.nodes, "groups": self.groups, "base": self.base.tolist(),
                "feature": [t.tolist() for t in self.feature],
                "threshold": [t.tolist() for t in self.threshold],
                "default_left": [t.tolist() for t in self.default_left],
                "value": [t.tolist() for t in self.value], "group": list(self.group)}

    @classmethod
    def from_json(cls, data):
        ensemble = cls(data["nodes"], data["groups"], torch.tensor(data["base"],
                                                                   dtype=torch.float64))
        for f, t, d, v, g in zip(data["feature"], data["threshold"], data["default_left"],
                                 data["value"], data["group"]):
            ensemble.add(torch.tensor(f), torch.tensor(t), torch.tensor(d), torch.tensor(v), g)
        return ensemble


class _TreeGrower:
    """Grows one tree depth-wise on binned data with the pynotes kernels."""

    def __init__(self, bins, cuts, params, device):
        # Stored one feature after another: the layout ops.grow_tree reads on the CPU.
        self.bins = bins.t().contiguous().t() if bins.device.type == "cpu" else bins
        self.device, self.p = device, params
        self.num_bins = params.max_bins
        # Threshold values by (feature, bin); a bin past the last cut means "every value".
        inf = torch.full((cuts.shape[0], 1), torch.inf, dtype=cuts.dtype, device=cuts.device)
        self.cut_values = torch.cat([cuts, inf], 1).float()

    def grow(self, grad, hess, feature_mask, seed):
        """Returns (feature, threshold, default_left, value, gain) per node and each row's
        leaf; leaf values include the learning rate. Rows left out by subsampling come with
        zero gradient and hessian; seed drives the rounding of quantized gradients."""
        p = self.p
        feature, split_bin, default_left, gain, sums, leaf = ops.grow_tree(
            self.bins, grad, hess, p.max_depth, self.num_bins, p.reg_lambda, p.gamma,
            p.min_child_weight, feature_mask,
            quantize_bins=p.num_grad_quant_bins if p.use_quantized_grad else 0, seed=seed)
        value = torch.where(feature < 0, -sums[:, 0] / (sums[:, 1] + p.reg_lambda), 0.0)
        value = (value * p.learning_rate).float()
        threshold = torch.where(
            feature >= 0, self.cut_values[feature.clamp_min(0).long(), split_bin.long()],
            torch.zeros((), device=self.device))
        return feature, threshold, default_left, value, gain.cpu(), leaf


class _GBDTBase(BaseEstimator):
    def __init__(self, n_estimators=100, learning_rate=0.3, max_depth=6, max_bins=256,
                 reg_lambda=1.0, gamma=0.0, min_child_weight=1.0, subsample=1.0,
                 colsample_bytree=1.0, early_stopping_rounds=None, use_quantized_grad=False,
                 num_grad_quant_bins=4, random_state=0, device="cpu", n_jobs=None,
                 verbose=False):
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
        self.random_state = random_state
        self.device = device
        self.n_jobs = n_jobs
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

    def _features(self, X, reset, y=None):
        """X as a float32 tensor on the model's device (NaN allowed, inf not), and y."""
        if reset and y is None:
            raise ValueError(f"{type(self).__name__} requires y to be passed, but the target y "
                             "is None")
        kwargs = dict(dtype=np.float32, ensure_all_finite="allow-nan", reset=reset)
        if y is None:
            X = validate_data(self, X, **kwargs)
        else:
            X, y = validate_data(self, X, y, y_numeric=self._y_numeric, **kwargs)
        return torch.from_numpy(np.ascontiguousarray(X)).to(self.device), y

    # -- training -----------------------------------------------------------------------------

    def _fit(self, x, sample_weight, eval_set, objective, groups, labels):
        """x: the validated features (tensor); labels: y as numbers (class indices for
        classifiers), numpy."""
        self._objective = objective
        if self.early_stopping_rounds is not None and not eval_set:
            raise ValueError(f"{type(self).__name__}: early_stopping_rounds="
                             f"{self.early_stopping_rounds} needs a validation set to watch: "
                             "pass fit(X, y, eval_set=[(X_val, y_val)])")
        weight = _check_sample_weight(sample_weight, x.cpu().numpy(), dtype=np.float64)
        if not np.all(np.isfinite(weight)) or np.any(weight < 0) or weight.sum() <= 0:
            raise ValueError(f"{type(self).__name__}: sample_weight must be finite, non-negative "
                             "and not all zero")
        dev = self.device
        w = torch.from_numpy(weight).to(dev)
        yt = torch.from_numpy(np.asarray(labels, dtype=np.float64)).to(dev)
        rows, features = x.shape
        bins, cuts = ops.quantize(x, self.max_bins, random_state=self.random_state)
        base = objective.base_margin(yt.cpu(), w.cpu(), groups)
        y32 = yt.float()
        w32 = None if bool((w == 1).all()) else w.float()
        self._ensemble = _Ensemble(2 ** (self.max_depth + 1) - 1, groups, base)
        grower = _TreeGrower(bins, cuts, self, dev)
        margin = base.to(dev).expand(rows, groups).clone()
        evals = [self._eval_data(X_e, y_e) for X_e, y_e in (eval_set or [])]
        eval_margins = [base.to(dev).expand(e[0].shape[0], groups).clone() for e in evals]
        self.evals_result_ = {f"validation_{i}": {objective.metric: []} for i in range(len(evals))}
        generator = torch.Generator().manual_seed(self.random_state)
        round_gains = []  # per round, the total split gain of each feature
        best_score, best_round, self.best_iteration_ = math.inf, 0, None
        for round_ in range(self.n_estimators):
            # Rows left out by subsampling weigh nothing in this round's trees.
            round_weight = w32
            if self.subsample < 1:
                keep = torch.rand(rows, generator=generator) < self.subsample
                round_weight = keep.to(dev).float() if w32 is None else w32 * keep.to(dev)
            grad, hess = objective.gradients(margin, y32, round_weight)
            gains = torch.zeros(features, dtype=torch.float64)
            for group in range(groups):
                feature_mask = None
                if self.colsample_bytree < 1:
                    keep = max(1, int(round(self.colsample_bytree * features)))
                    chosen = torch.randperm(features, generator=generator)[:keep]
                    feature_mask = torch.zeros(features, dtype=torch.bool)
                    feature_mask[chosen] = True
                    feature_mask = feature_mask.to(dev)
                seed = (self.random_state * groups + group) * self.n_estimators + round_
                f, t, d, v, g, leaf = grower.grow(grad[:, group].contiguous(),
                                                  hess[:, group].contiguous(), feature_mask, seed)
                self._ensemble.add(f, t, d, v, group)
                margin[:, group] += v.to(dev).double()[leaf]
                split = f.cpu() >= 0
                gains.index_add_(0, f.cpu()[split].long(), g[split])
            round_gains.append(gains)
            for i, ((x_e, y_e, w_e), m_e) in enumerate(zip(evals, eval_margins)):
                m_e += self._ensemble.margins(x_e, dev, first=len(self._ensemble.feature) - groups,
                                              base=torch.zeros(groups, dtype=torch.float64))
                self.evals_result_[f"validation_{i}"][objective.metric].append(
                    objective.loss(m_e, y_e, w_e))
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
        data = {"format": _FORMAT, "version": 1, "estimator": type(self).__name__,
                "params": self.get_params(), "objective": self._objective.name,
                "n_features_in": int(self.n_features_in_),
                "feature_importances": self.feature_importances_.tolist(),
                "best_iteration": self.best_iteration_, "ensemble": self._ensemble.to_json()}
        if hasattr(self, "classes_"):
            data["classes"] = self.classes_.tolist()
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
        if "classes" in data:
            self.classes_ = np.asarray(data["classes"])
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

    def fit(self, X, y, sample_weight=None, eval_set=None):
        self._check_params()
        with _ThreadCount(self.n_jobs):
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

    def fit(self, X, y, sample_weight=None, eval_set=None):
        self._check_params()
        with _ThreadCount(self.n_jobs):
            x, y = self._features(X, reset=True, y=y)
            check_classification_targets(y)
            if y.dtype.kind == "f" and not np.all(np.isfinite(y)):
                raise ValueError("GBDTClassifier: y must not contain NaN or inf")
            self.classes_ = np.unique(y)
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
