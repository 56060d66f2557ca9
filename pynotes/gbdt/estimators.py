"""The scikit-learn estimators GBDTRegressor and GBDTClassifier: parameters, input checks, the
boosting loop and thread control; the parts they compose live in the modules beside this one
(objectives, categories, model, grower, distributed)."""
import math
import sys

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, validate_data

from pynotes.gbdt import categories, distributed, model
from pynotes.gbdt.grower import TreeGrower
from pynotes.gbdt.model import Ensemble
from pynotes.gbdt.objectives import Objective, softmax_
from pynotes.ops import gbdt as ops

_CUT_SAMPLE_ROWS = 200_000  # the rows cut points are taken from, at most
_PLAIN_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


class ThreadCount:
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


class Fitting:
    """The span of a fit: its collective (distributed.start: Alone, or the processes of a
    distributed fit) set, then dropped (a process group is not part of the fitted model), and
    the buffers the CPU tree grower kept from tree to tree freed."""

    def __init__(self, estimator, X, eval_set, process_group):
        self.estimator, self.args = estimator, (X, eval_set, process_group)

    def __enter__(self):
        distributed.start(self.estimator, *self.args)

    def __exit__(self, *exc):
        self.estimator._collective = None
        ops.release_grower_buffers()


class GBDTBase(BaseEstimator):
    def __init__(self, n_estimators=100, learning_rate=0.3, max_depth=6, max_bins=256,
                 reg_lambda=1.0, gamma=0.0, min_child_weight=1.0, subsample=1.0,
                 colsample_bytree=1.0, early_stopping_rounds=None, use_quantized_grad=False,
                 num_grad_quant_bins=4, categorical_features="from_dtype", random_state=0,
                 device="cpu", n_jobs=None, distributed="auto", force_row_wise=False,
                 force_col_wise=False, verbose=False):
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
        self.force_row_wise = force_row_wise
        self.force_col_wise = force_col_wise
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
        check(integer(self.max_depth) and 0 <= self.max_depth <= ops.MAX_DEPTH,
              f"max_depth must be an int in [0, {ops.MAX_DEPTH}], got {self.max_depth!r}")
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
        for name in ("force_row_wise", "force_col_wise"):
            check(isinstance(getattr(self, name), (bool, np.bool_)),
                  f"{name} must be a bool, got {getattr(self, name)!r}")
        check(not (self.force_row_wise and self.force_col_wise),
              "force_row_wise and force_col_wise cannot both be True")
        check(self.distributed in ("auto", False),
              f"distributed must be 'auto' or False, got {self.distributed!r}")

    def _features(self, X, reset, y=None):
        """X as a float32 tensor on the model's device (NaN: missing; -inf and +inf go below
        and above every cut point, as in scikit-learn's HistGradientBoosting; categorical
        features as codes), and y."""
        if reset and y is None:
            raise ValueError(f"{type(self).__name__} requires y to be passed, but the target y "
                             "is None")
        X = categories.encode(self, X, reset)
        kwargs = dict(dtype=np.float32, ensure_all_finite=False, reset=reset)
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
        classifiers), numpy. In a distributed fit (distributed.start) x and labels are this
        process's rows, and every process ends with the same model of all of them."""
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
        total_rows = collective.total_rows(rows)
        if self.use_quantized_grad and total_rows * self.num_grad_quant_bins >= 2 ** 31:
            raise ValueError(f"{name}: quantized gradients sum in 32 bits: rows x "
                             f"num_grad_quant_bins must be below 2^31, got {total_rows} x "
                             f"{self.num_grad_quant_bins}")
        categorical = torch.from_numpy(self.is_categorical_)
        cuts = collective.cut_points(x, self.max_bins, _CUT_SAMPLE_ROWS, self.random_state,
                                     categorical)
        base_sums = collective.sum_in_rank_order(objective.base_sums(yt.cpu(), w.cpu(), groups),
                                                 "the base margin")
        if not np.sum(base_sums if objective.name == "softmax" else base_sums[1:]) > 0:
            raise ValueError(f"{name}: sample_weight must be finite, non-negative and not all "
                             "zero")
        base = objective.base_margin(base_sums)
        y32 = yt.float()
        w32 = None if bool((w == 1).all()) else w.float()
        self._ensemble = Ensemble(2 ** (self.max_depth + 1) - 1, groups, base, categorical)
        # (the grower keeps the layouts it may use; the others' bins die here)
        layout = "row-wise" if self.force_row_wise else \
            "col-wise" if self.force_col_wise else "auto"
        grower = TreeGrower(ops.bin_features(x, cuts, self.max_bins - 1), cuts, self, dev,
                            self._ensemble.categorical, layout=layout,
                            **collective.grow_tree_args())
        # Stored class by class, (groups, rows), and used transposed: each class's column
        # (its gradients, its trees' updates) is contiguous.
        margin = base.to(dev)[:, None].expand(groups, rows).clone().T
        # The rounds' gradients: kept from round to round (fresh ones would cost their pages'
        # first-touch faults every round).
        gradient_buffers = [torch.empty_like(margin, dtype=torch.float32) for _ in range(2)]
        trees = []  # the last round's (group, value, leaf): added to the margins with the
        # next round's gradients
        evals = [self._eval_data(X_e, y_e) for X_e, y_e in (eval_set or [])]
        eval_margins = [base.to(dev).expand(e[0].shape[0], groups).clone() for e in evals]
        self.evals_result_ = {f"validation_{i}": {objective.metric: []} for i in range(len(evals))}
        # Columns are drawn alike by every process; rows (subsample) by each for its own.
        column_generator = torch.Generator().manual_seed(self.random_state)
        row_generator = torch.Generator().manual_seed(
            self.random_state + (1 << 32) * (1 + collective.rank))
        round_gains = []  # per round, the total split gain of each feature
        best_score, best_round, self.best_iteration_ = math.inf, 0, None
        for round_ in range(self.n_estimators):
            # Rows left out by subsampling weigh nothing in this round's trees.
            round_weight = w32
            if self.subsample < 1:
                keep = torch.rand(rows, generator=row_generator) < self.subsample
                round_weight = keep.to(dev).float() if w32 is None else w32 * keep.to(dev)
            grad, hess = objective.gradients(margin, y32, round_weight, gradient_buffers, trees)
            trees = []
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
                trees.append((group, v, leaf))
                split = f.cpu() >= 0
                gains.index_add_(0, f.cpu()[split].long(), g[split])
            round_gains.append(gains)
            loss_sums = []
            for x_e, y_e, w_e, m_e in ((*e, m) for e, m in zip(evals, eval_margins)):
                m_e += self._ensemble.margins(x_e, dev, first=len(self._ensemble.feature) - groups,
                                              base=torch.zeros(groups, dtype=torch.float64))
                loss_sums.append(objective.loss_sums(m_e, y_e, w_e))
            if evals:
                loss_sums = collective.sum_in_rank_order(np.stack(loss_sums), "the eval metric")
                for i, sums in enumerate(loss_sums):
                    self.evals_result_[f"validation_{i}"][objective.metric].append(
                        objective.metric_of(sums))
            score = self.evals_result_[f"validation_{len(evals) - 1}"][objective.metric][-1] \
                if evals else None
            if self.verbose:
                progress(round_ + 1, self.n_estimators, objective.metric, score)
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
        self.histogram_layout_ = grower.layout
        self.histogram_layout_seconds_ = grower.layout_seconds
        self.n_processes_ = collective.size
        self.reduced_bytes_ = collective.tree_bytes
        return self

    def _eval_data(self, X, y):
        x, _ = self._features(X, reset=False)
        labels = self._labels(y)
        return x, torch.from_numpy(labels).to(self.device), \
            torch.ones(x.shape[0], dtype=torch.float64, device=self.device)

    def _margins(self, X):
        if not hasattr(self, "_ensemble"):
            check_is_fitted(self, "_ensemble")  # (its error)
        x = self._plain_rows(X) if type(X) is np.ndarray else self._frame_rows(X)
        with ThreadCount(self.n_jobs):
            if x is None:
                x, _ = self._features(X, reset=False)
            return self._ensemble.margins(x, self.device)

    def _plain_rows(self, X):
        """X as a float32 tensor when it is a NumPy array that needs none of _features'
        work: float32/float64, 2-D, C-contiguous, the fitted width, and a model with
        no categorical features or feature names. A one-row prediction spends more in
        scikit-learn's validation than in its trees. None for any other X (_features then
        checks it, with scikit-learn's errors and warnings)."""
        if not (type(X) is np.ndarray and X.ndim == 2 and X.dtype in _PLAIN_DTYPES and
                X.flags.c_contiguous and X.shape[0] > 0 and X.shape[1] == self.n_features_in_
                and not hasattr(self, "feature_names_in_") and
                not (getattr(self, "is_categorical_", None) is not None and
                     self.is_categorical_.any())):
            return None
        x = X.astype(np.float32) if X.dtype != np.float32 or not X.flags.writeable else X
        return torch.from_numpy(x).to(self.device)

    def _frame_rows(self, X):
        """X as a float32 tensor when it is a DataFrame whose columns are the fitted ones in
        their order, each numeric (a NumPy dtype) or, for a categorical feature, a pandas
        'category' column: converted a column at a time. scikit-learn's validation of a
        DataFrame, and pandas' assignment of the codes, took ~1 ms of a one-row call. None for
        any other X (_features then checks it)."""
        names = getattr(self, "feature_names_in_", None)
        if names is None or not categories.is_frame(X) or X.shape[0] == 0 or \
                X.columns.tolist() != names.tolist():
            return None
        mask = getattr(self, "is_categorical_", None)  # (absent in models pickled before it)
        mask = np.zeros(X.shape[1], dtype=bool) if mask is None else mask
        out = np.empty(X.shape, dtype=np.float32)
        for j, (_, column) in enumerate(X.items()):
            dtype = column.dtype
            if mask[j] and getattr(dtype, "name", "") == "category":
                out[:, j] = self._categories[j].codes(column)
            elif not mask[j] and isinstance(dtype, np.dtype) and dtype.kind in "iuf":
                out[:, j] = column.to_numpy()
            else:
                return None
        return torch.from_numpy(out).to(self.device)

    # -- persistence --------------------------------------------------------------------------

    def save_model(self, path):
        """Writes the model (parameters and trees) as JSON; load_model reads it back."""
        model.save(self, path)

    def load_model(self, path):
        """Restores a model written by save_model (of the same estimator class)."""
        return model.load(self, path)


def progress(done, total, metric, score, width=30):
    filled = width * done // total
    text = f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total}"
    if score is not None:
        text += f"  {metric} {score:.5f}"
    print(text, end="", file=sys.stderr, flush=True)


class GBDTRegressor(RegressorMixin, GBDTBase):
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
        with ThreadCount(self.n_jobs), Fitting(self, X, eval_set, process_group):
            x, y = self._features(X, reset=True, y=y)
            return self._fit(x, sample_weight, eval_set, Objective("squared_error"), 1,
                             self._labels(y))

    def predict(self, X):
        return self._margins(X)[:, 0].cpu().numpy()


class GBDTClassifier(ClassifierMixin, GBDTBase):
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
        with ThreadCount(self.n_jobs), Fitting(self, X, eval_set, process_group):
            x, y = self._features(X, reset=True, y=y)
            check_classification_targets(y)
            if y.dtype.kind == "f" and not np.all(np.isfinite(y)):
                raise ValueError("GBDTClassifier: y must not contain NaN or inf")
            self.classes_ = np.unique(y)
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
            objective = Objective("logistic" if binary else "softmax")
            return self._fit(x, sample_weight, eval_set, objective,
                             1 if binary else len(self.classes_), self._labels(y))

    def predict_proba(self, X):
        margin = self._margins(X)
        if margin.shape[1] > 1:
            return softmax_(margin).cpu().numpy()
        # In NumPy: on one row each tensor op would cost more than the trees' walk.
        proba = np.empty((margin.shape[0], 2))
        with np.errstate(over="ignore"):  # exp(-m) = inf below m = -709: p = 0, as it is
            proba[:, 1] = 1 / (1 + np.exp(-margin.cpu().numpy()[:, 0]))
        proba[:, 0] = 1 - proba[:, 1]
        return proba

    def predict(self, X):
        proba = self.predict_proba(X)  # (first: unfitted, it raises NotFittedError)
        return self.classes_[proba.argmax(1)]
