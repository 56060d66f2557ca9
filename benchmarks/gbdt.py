"""Histogram gradient boosting against XGBoost (tree_method="hist"), LightGBM and
scikit-learn's HistGradientBoosting, matched settings: the case's rounds and depth (LightGBM
and scikit-learn: 2^depth - 1 leaves and the depth), 256 bins (255 value bins for the others),
learning rate 0.1, no early stopping, the torch thread count for every library.

Cases (synthetic, fixed seeds; the test rows are 100k or 20 %):
  (a) make_classification 500k x 50, depth 6, 100 rounds (the quick run's only case)
  (b) 300k x 12 integer codes with 7 to 4000 distinct values each, depth 8, 200 rounds
  (c) make_classification 1M x 8, depth 10, 100 rounds
  (d) make_classification 100k x 200, depth 6, 100 rounds
  (e) make_classification 10 classes, 100k x 30, depth 6, 100 rounds
  (f) regression (Friedman #1 with 15 noise features) 500k x 20, depth 6, 100 rounds
  (g) 300k rows: 4 string categorical columns of 5, 20, 100 and 500 levels (pandas
      "category") beside 10 numeric ones, depth 6, 100 rounds: pynotes, LightGBM and
      HistGradientBoosting with native categoricals, XGBoost with enable_categorical.
      HistGradientBoosting takes at most 255 categories a column: it gets the 500-level
      column with its 254 most frequent levels kept and the others missing.
  (h) full depth: 300k x 12 integer codes with 3 to 4000 distinct values, every column
      informative (a random effect per value), depth 8, 200 rounds: deep trees, though not
      all 255 leaves (small nodes stop at min_child_weight; the note gives pynotes' leaves
      per tree)
Rows per case and peer: training time, prediction of the test rows (100k), the latency of a
call on 1, 10 and 100 rows (per call, over 200 calls), test AUC (log loss for multiclass,
RMSE for regression) of both in
the note, and for case (a) in the full run the peak memory of each fit (in its own process,
VmHWM above the loaded data and library; also with glibc's mmap threshold fixed). And the
histogram kernel alone (one level over all training rows) against the pure-PyTorch reference
(index_add), with its bandwidth on the bytes it must read.

On a GPU only case (a) runs, the anchors XGBoost device="cuda" when it is installed and,
always, pynotes' own CPU path on every core of the machine (the GPU machine we use has no
XGBoost or LightGBM).
"""
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch

from benchmarks.common import Result, time_pair

TEST_ROWS = 100_000
# name: (description, train rows, depth, rounds, task)
CASES = {
    "a": ("500k x 50, depth 6, 100 rounds", 400_000, 6, 100, "binary"),
    "b": ("300k x 12 integer codes, depth 8, 200 rounds", 300_000, 8, 200, "binary"),
    "c": ("1M x 8, depth 10, 100 rounds", 1_000_000, 10, 100, "binary"),
    "d": ("100k x 200, depth 6, 100 rounds", 100_000, 6, 100, "binary"),
    "e": ("10 classes, 100k x 30, depth 6, 100 rounds", 100_000, 6, 100, "multiclass"),
    "f": ("regression 500k x 20, depth 6, 100 rounds", 500_000, 6, 100, "regression"),
    "g": ("300k x (4 categorical + 10 numeric), depth 6, 100 rounds", 200_000, 6, 100,
          "binary"),
    "h": ("full depth: 300k x 12 informative integer codes, depth 8, 200 rounds", 300_000, 8,
          200, "binary"),
}
LATENCY_ROWS = (1, 10, 100)
CATEGORY_LEVELS = (5, 20, 100, 500)


def make_categorical_data(n):
    """Case (g): a DataFrame of 10 numeric columns and 4 string categorical ones (skewed
    level frequencies for the larger two), and a binary target of both."""
    import pandas as pd
    rng = np.random.default_rng(0)
    numeric = rng.normal(size=(n, 10)).astype(np.float32)
    frame = pd.DataFrame({f"x{i}": numeric[:, i] for i in range(10)})
    logit = numeric[:, 0] - 0.5 * numeric[:, 1] ** 2 + np.sin(2 * numeric[:, 2])
    for j, levels in enumerate(CATEGORY_LEVELS):
        codes = rng.integers(0, levels, n) if levels <= 20 else \
            np.minimum(rng.zipf(1.2, n) - 1, levels - 1)
        effect = rng.normal(0, 1, levels)
        logit = logit + effect[codes] * (1 + 0.5 * (numeric[:, 3] > 0) * (j == 1))
        names = np.array([f"c{j}_level{k}" for k in range(levels)], dtype=object)
        frame[f"c{j}"] = pd.Categorical(names[codes], categories=names)
    y = (logit + rng.logistic(size=n) > np.median(logit)).astype(np.int64)
    return frame, y


def kept_levels(X_train):
    """HistGradientBoosting refuses more than 255 categories a column: per larger column of
    the training frame, its 254 most frequent levels (for_library sends the rest to missing)."""
    if not hasattr(X_train, "dtypes"):
        return {}
    return {column: list(X_train[column].value_counts().index[:254]) for column in X_train
            if X_train[column].dtype.name == "category" and
            len(X_train[column].cat.categories) > 255}


def for_library(library, X, kept):
    """X as a peer takes it (kept: kept_levels of the training frame)."""
    if library != "sklearn HistGradientBoosting" or not kept:
        return X
    import pandas as pd
    X = X.copy()
    for column, levels in kept.items():
        X[column] = pd.Categorical(X[column].where(X[column].isin(levels)), categories=levels)
    return X


def make_data(case):
    """(X_train, X_test, y_train, y_test), float32 features; seeds fixed."""
    from sklearn.datasets import make_classification, make_friedman1
    _, train, _, _, _ = CASES[case]
    n = train + TEST_ROWS
    if case == "g":
        X, y = make_categorical_data(n)
        test = X.shape[0] - TEST_ROWS
        return X.iloc[:test], X.iloc[test:], y[:test], y[test:]
    if case == "a":
        X, y = make_classification(n_samples=500_000, n_features=50, random_state=0)
    elif case == "b":
        rng = np.random.default_rng(0)
        distinct = [7, 12, 20, 31, 50, 100, 200, 365, 500, 1000, 2000, 4000]
        X = np.stack([rng.integers(0, d, n) for d in distinct], 1).astype(np.float64)
        logit = (np.sin(X[:, 0]) + (X[:, 1] % 3 == 0) + np.log1p(X[:, 7]) / 3
                 - np.cos(X[:, 9] / 50) + 0.5 * (X[:, 11] > 2000) * (X[:, 2] > 10)
                 + rng.normal(0, 1, n))
        y = (logit > np.median(logit)).astype(np.int64)
    elif case == "h":
        rng = np.random.default_rng(1)
        distinct = [3, 7, 12, 20, 31, 50, 100, 200, 365, 1000, 2000, 4000]
        X = np.stack([rng.integers(0, d, n) for d in distinct], 1).astype(np.float64)
        # Each value of each column moves the logit by its own amount: no column is noise,
        # and no few splits capture a column.
        logit = sum(rng.normal(0, 1, d)[X[:, j].astype(np.int64)] for j, d in enumerate(distinct))
        y = (logit + rng.normal(0, 1, n) > np.median(logit)).astype(np.int64)
    elif case == "c":
        X, y = make_classification(n_samples=n, n_features=8, n_informative=6, n_redundant=1,
                                   random_state=0)
    elif case == "d":
        X, y = make_classification(n_samples=n, n_features=200, n_informative=40,
                                   random_state=0)
    elif case == "e":
        X, y = make_classification(n_samples=n, n_features=30, n_informative=15, n_classes=10,
                                   random_state=0)
    else:
        X, y = make_friedman1(n_samples=n, n_features=20, noise=1.0, random_state=0)
    X = X.astype(np.float32)
    test = X.shape[0] - TEST_ROWS
    return X[:test], X[test:], y[:test], y[test:]


def score(task, y, model, X):
    """Test AUC (binary), log loss (multiclass) or RMSE (regression), and its name."""
    from sklearn.metrics import log_loss, roc_auc_score
    if task == "binary":
        return "AUC", roc_auc_score(y, model.predict_proba(X)[:, 1])
    if task == "multiclass":
        return "logloss", log_loss(y, model.predict_proba(X))
    return "RMSE", float(np.sqrt(np.mean((model.predict(X) - y) ** 2)))


def make_model(library, task, depth, rounds, threads, device="cpu"):
    leaves = 2 ** depth - 1
    if library == "pynotes":
        from pynotes.gbdt import GBDTClassifier, GBDTRegressor
        cls = GBDTRegressor if task == "regression" else GBDTClassifier
        return cls(n_estimators=rounds, max_depth=depth, learning_rate=0.1, max_bins=256,
                   n_jobs=threads, device=device)
    if library == "XGBoost hist":
        import xgboost
        cls = xgboost.XGBRegressor if task == "regression" else xgboost.XGBClassifier
        return cls(n_estimators=rounds, max_depth=depth, learning_rate=0.1, max_bin=256,
                   tree_method="hist", n_jobs=threads, device=device, enable_categorical=True)
    if library == "LightGBM":
        import lightgbm
        cls = lightgbm.LGBMRegressor if task == "regression" else lightgbm.LGBMClassifier
        return cls(n_estimators=rounds, num_leaves=leaves, max_depth=depth, learning_rate=0.1,
                   max_bin=255, n_jobs=threads, verbose=-1)
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
    cls = HistGradientBoostingRegressor if task == "regression" else \
        HistGradientBoostingClassifier
    return cls(max_iter=rounds, max_depth=depth, max_leaf_nodes=leaves, learning_rate=0.1,
               max_bins=255, early_stopping=False)


def fit_note(model):
    """pynotes' leaves per tree (mean and fewest): a tree of the complete heap has one more
    leaf than splits; and the histogram layout the fit chose, with its first tree's times."""
    splits = torch.stack(model._ensemble.feature).ge(0).sum(1)
    seconds = model.histogram_layout_seconds_ or {}
    timed = ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in seconds.items() if v is not None)
    return (f"pynotes leaves per tree {splits.double().mean() + 1:.0f} (fewest "
            f"{splits.min() + 1}); histograms {model.histogram_layout_}"
            + (f" (first tree {timed})" if timed else ""))


def peers(device):
    """The anchors installed here."""
    found = []
    try:
        import xgboost  # noqa: F401
        found.append("XGBoost hist")
    except ImportError:
        print(f"gbdt: XGBoost is not installed: no XGBoost anchor on {device}")
    if device == "cpu":
        try:
            import lightgbm  # noqa: F401
            found.append("LightGBM")
        except ImportError:
            print("gbdt: LightGBM is not installed: no LightGBM anchor")
        found.append("sklearn HistGradientBoosting")
    else:
        found.append(f"pynotes CPU, {os.cpu_count()} threads")
    return found


def case_names(device, quick):
    return ["a"] if quick or device != "cpu" else list(CASES)


def cases(device, quick=True):
    names = ", ".join(peers(device))
    listed = [f"gbdt ({c}) {CASES[c][0]}: train, predict 100k rows, predict 1, 10 and 100 "
              f"rows, vs {names}"
              for c in case_names(device, quick)]
    return listed + ["gbdt_histogram 400k x 50, one node, vs the PyTorch reference"]


_MEMORY_SCRIPT = """
import sys
import numpy as np
from benchmarks.gbdt import make_model


def kb(field):  # this process's memory (Linux): VmHWM is its peak, reset by exec
    return int(open("/proc/self/status").read().split(field + ":")[1].split()[0])


X, y = np.load(sys.argv[3]), np.load(sys.argv[4])
model = make_model(sys.argv[1], "binary", 6, 100, int(sys.argv[2]))  # its library imported
before = kb("VmRSS")
model.fit(X, y)
print((kb("VmHWM") - before) / 1024)
"""


def peak_training_mb(library, threads, X, y, fixed_mmap_threshold=False):
    """Peak resident memory (MB) a fit on (X, y) adds above the loaded data and the imported
    library, in a fresh process whose peak (VmHWM) the fit sets: the data are loaded from
    files, not generated there. fixed_mmap_threshold: with glibc's mmap threshold fixed at
    128 kB (MALLOC_MMAP_THRESHOLD_), so that freed large blocks go back to the system rather
    than raise the threshold and stay in the heap."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    if fixed_mmap_threshold:
        env["MALLOC_MMAP_THRESHOLD_"] = "131072"
    with tempfile.TemporaryDirectory() as folder:
        paths = [os.path.join(folder, name) for name in ("X.npy", "y.npy")]
        np.save(paths[0], X)
        np.save(paths[1], y)
        out = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT, library, str(threads), *paths],
                             capture_output=True, text=True, check=True, env=env, timeout=600)
    return float(out.stdout.split()[-1])


def run(device, quick=True):
    from threadpoolctl import threadpool_limits

    from pynotes.ops import gbdt as ops
    from pynotes.reference import gbdt as reference

    threads = torch.get_num_threads()
    rounds = 1 if quick else 3
    results = []
    for case in case_names(device, quick):
        description, _, depth, n_rounds, task = CASES[case]
        X_train, X_test, y_train, y_test = make_data(case)
        kept = kept_levels(X_train)
        models = {}

        def fit(library):
            lib_threads = os.cpu_count() if library.startswith("pynotes CPU") else threads
            lib_device = "cpu" if library.startswith("pynotes CPU") else device
            name = "pynotes" if library.startswith("pynotes CPU") else library
            X = for_library(library, X_train, kept)

            def go():
                with threadpool_limits(lib_threads):
                    models[library] = make_model(name, task, depth, n_rounds, lib_threads,
                                                 lib_device).fit(X, y_train)
            return go

        def predict(library, rows):
            rows = for_library(library, rows, kept)
            model = models[library]
            call = model.predict if task == "regression" else model.predict_proba

            def go():
                with threadpool_limits(threads):
                    return call(rows)
            return go

        def small_batches(library, size):
            batches = [for_library(library, X_test[i * size:(i + 1) * size], kept)
                       for i in range(200)]
            model = models[library]
            call = model.predict if task == "regression" else model.predict_proba

            def go():
                with threadpool_limits(threads):
                    for batch in batches:
                        call(batch)
            return go

        label = f"({case}) {description}"
        memory = {}
        if case == "a" and device == "cpu" and not quick:
            memory = {lib: [peak_training_mb(lib, threads, X_train, y_train, fixed)
                            for fixed in (False, True)] for lib in peers(device) + ["pynotes"]}
        for library in peers(device):
            ms = time_pair(fit(library), fit("pynotes"), device, warmup=0, rounds=rounds)
            metric, theirs = score(task, y_test, models[library],
                                   for_library(library, X_test, kept))
            _, ours = score(task, y_test, models["pynotes"], X_test)
            note = f"{metric} {theirs:.4f} vs pynotes {ours:.4f}; {fit_note(models['pynotes'])}"
            if memory:
                note += (f"; peak memory {memory[library][0]:.0f} MB vs "
                         f"{memory['pynotes'][0]:.0f} MB (glibc mmap threshold fixed: "
                         f"{memory[library][1]:.0f} vs {memory['pynotes'][1]:.0f} MB)")
            results.append(Result("gbdt", label, "train", library, *ms, note=note))
            ms = time_pair(predict(library, X_test), predict("pynotes", X_test), device,
                           warmup=1, rounds=5)
            results.append(Result("gbdt", label, "predict 100k rows", library, *ms))
            for size in LATENCY_ROWS:
                ms = time_pair(small_batches(library, size), small_batches("pynotes", size),
                               device, warmup=1, rounds=5)
                results.append(Result("gbdt", label, f"predict {size} row{'s' * (size > 1)}",
                                      library, ms[0] / 200, ms[1] / 200, note="per call"))

    # The histogram kernel alone: the root level, every training row in one slot.
    X_train = make_data("a")[0]
    x = torch.from_numpy(X_train).to(device)
    bins, _ = ops.quantize(x)
    rows, features = bins.shape
    grad = torch.randn(rows, device=device)
    hess = torch.rand(rows, device=device)
    node = torch.zeros(rows, dtype=torch.int32, device=device)
    slot_of_node = torch.zeros(1, dtype=torch.int32, device=device)
    args = (bins, grad, hess, node, slot_of_node, 1, 256)
    ms = time_pair(lambda: reference.build_histogram(*args), lambda: ops.build_histogram(*args),
                   device, warmup=1, rounds=3 if device == "cpu" else 21)
    min_bytes = rows * features + rows * (4 + 4 + 4)  # bins, grad, hess, node
    results.append(Result("gbdt_histogram", f"{rows // 1000}k x {features}, one node",
                          "kernel", "PyTorch reference (index_add)", *ms, min_bytes))
    return results
