"""The models and data sets of the distributed GBDT tests, shared by the test and its worker
processes: name -> (model factory, data factory returning X, y, sample_weight, X_val, y_val
for all processes together; shard takes one process's rows)."""
import numpy as np
from sklearn.datasets import make_classification, make_regression

from pynotes.gbdt import GBDTClassifier, GBDTRegressor


def binary(rows=2400):
    X, y = make_classification(n_samples=rows + 600, n_features=8, random_state=0)
    X[np.random.default_rng(0).random(X.shape) < 0.05] = np.nan
    w = np.random.default_rng(1).uniform(0.5, 2.0, rows)
    return X[:rows], y[:rows], w, X[rows:], y[rows:]


def regression():
    X, y = make_regression(n_samples=2500, n_features=6, noise=5.0, random_state=0)
    return X[:2000], y[:2000], None, X[2000:], y[2000:]


def multiclass():
    X, y = make_classification(n_samples=1800, n_features=10, n_informative=6, n_classes=4,
                               random_state=0)
    return X, y, None, None, None


def categorical():
    try:
        import pandas as pd
    except ImportError:
        return None
    rng = np.random.default_rng(2)
    rows = 2000
    codes = rng.integers(0, 9, rows)
    X = pd.DataFrame({"x": rng.normal(size=rows),
                      "c": pd.Categorical(np.array(list("abcdefghi"), dtype=object)[codes])})
    y = (np.isin(codes, [1, 3, 4]) ^ (X["x"] > 1)).astype(int)
    return X, y, None, None, None


def sampled_cuts():
    """More rows than the cut points' sample: each process samples its share."""
    X, y = make_classification(n_samples=260_000, n_features=5, random_state=0)
    return X[:220_000], y[:220_000], None, X[220_000:], y[220_000:]


CONFIGS = {
    "binary": (lambda: GBDTClassifier(n_estimators=40, max_depth=4, early_stopping_rounds=5,
                                      colsample_bytree=0.8), binary),
    "regression": (lambda: GBDTRegressor(n_estimators=20, max_depth=5), regression),
    "multiclass": (lambda: GBDTClassifier(n_estimators=10, max_depth=3), multiclass),
    "quantized": (lambda: GBDTClassifier(n_estimators=15, max_depth=4, use_quantized_grad=True,
                                         num_grad_quant_bins=8), binary),
    "categorical": (lambda: GBDTClassifier(n_estimators=15, max_depth=4), categorical),
    "subsample": (lambda: GBDTClassifier(n_estimators=10, max_depth=4, subsample=0.7), binary),
    "sampled_cuts": (lambda: GBDTClassifier(n_estimators=10, max_depth=3), sampled_cuts),
}
# Equal to the single-process model on all rows (same cut points); the others are compared
# by test AUC (sampled_cuts) or only across the processes (subsample: each draws its rows).
EXACT = ("binary", "regression", "multiclass", "quantized", "categorical")


def shard(part, rank, world):
    """Process rank's rows of part (contiguous, uneven shards), or None."""
    if part is None:
        return None
    rows = np.array_split(np.arange(len(part)), world)[rank]
    return part.iloc[rows] if hasattr(part, "iloc") else part[rows]
