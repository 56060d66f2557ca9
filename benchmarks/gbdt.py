"""Histogram gradient boosting against XGBoost (tree_method="hist"), LightGBM and
scikit-learn's HistGradientBoostingClassifier, matched settings: 100 rounds, depth 6 (LightGBM
and scikit-learn: 63 leaves, depth 6), 256 bins (255 value bins for the others), learning
rate 0.1, the torch thread count for every library. Data:
make_classification(n_samples=500_000, n_features=50, random_state=0), 80/20 split.

Rows: training time and prediction time of the test rows against each library, with both
test AUCs in the note; and the histogram kernel alone (one level over all training rows)
against the pure-PyTorch reference (index_add), with its bandwidth on the bytes it must read.
Training runs once per round of timing (quick: one round, full: three).

On a GPU the anchors are XGBoost device="cuda" when it is installed and, always, pynotes' own
CPU path on every core of the machine (the GPU machine we use has no XGBoost or LightGBM).
"""
import os

import numpy as np
import torch

from benchmarks.common import Result, time_pair

CASE = "500k x 50, 100 rounds, depth 6"


def peers(device, threads):
    """(name, constructor, threads) of the anchors installed here."""
    found = []
    try:
        import xgboost
        found.append(("XGBoost hist", lambda: xgboost.XGBClassifier(
            n_estimators=100, max_depth=6, learning_rate=0.1, max_bin=256, tree_method="hist",
            n_jobs=threads, device=device), threads))
    except ImportError:
        print(f"gbdt: XGBoost is not installed: no XGBoost anchor on {device}")
    if device == "cuda":
        from pynotes.gbdt import GBDTClassifier
        cores = os.cpu_count()
        found.append((f"pynotes CPU, {cores} threads", lambda: GBDTClassifier(
            n_estimators=100, max_depth=6, learning_rate=0.1, max_bins=256, n_jobs=cores,
            device="cpu"), cores))
    if device == "cpu":
        try:
            import lightgbm
            found.append(("LightGBM", lambda: lightgbm.LGBMClassifier(
                n_estimators=100, num_leaves=63, max_depth=6, learning_rate=0.1, max_bin=255,
                n_jobs=threads, verbose=-1), threads))
        except ImportError:
            print("gbdt: LightGBM is not installed: no LightGBM anchor")
        from sklearn.ensemble import HistGradientBoostingClassifier
        found.append(("sklearn HistGradientBoosting", lambda: HistGradientBoostingClassifier(
            max_iter=100, max_depth=6, max_leaf_nodes=63, learning_rate=0.1, max_bins=255,
            early_stopping=False), threads))
    return found


def cases(device, quick=True):
    names = [name for name, _, _ in peers(device, torch.get_num_threads())]
    return [f"gbdt {CASE}: train, predict 100k rows, vs {', '.join(names)}",
            "gbdt_histogram 400k x 50, one node, vs the PyTorch reference"]


def run(device, quick=True):
    from sklearn.datasets import make_classification
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import train_test_split
    from threadpoolctl import threadpool_limits

    from pynotes.gbdt import GBDTClassifier
    from pynotes.ops import gbdt as ops
    from pynotes.reference import gbdt as reference

    threads = torch.get_num_threads()
    X, y = make_classification(n_samples=500_000, n_features=50, random_state=0)
    X = X.astype(np.float32)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.2, random_state=0)
    rounds = 1 if quick else 3
    models = {}

    def fit(name, make, threads=threads):
        def go():
            with threadpool_limits(threads):
                models[name] = make().fit(X_train, y_train)
        return go

    def predict(name, threads=threads):
        def go():
            with threadpool_limits(threads):
                return models[name].predict_proba(X_test)[:, 1]
        return go

    ours = lambda: GBDTClassifier(n_estimators=100, max_depth=6, learning_rate=0.1,  # noqa
                                  max_bins=256, n_jobs=threads, device=device)
    results = []
    for name, make, anchor_threads in peers(device, threads):
        ms = time_pair(fit(name, make, anchor_threads), fit("pynotes", ours), device, warmup=0,
                       rounds=rounds)
        auc = {n: roc_auc_score(y_test, predict(n)()) for n in (name, "pynotes")}
        note = f"AUC {auc[name]:.4f} vs pynotes {auc['pynotes']:.4f}"
        results.append(Result("gbdt", CASE, "train", name, *ms, note=note))
        ms = time_pair(predict(name, anchor_threads), predict("pynotes"), device, warmup=1,
                       rounds=5)
        results.append(Result("gbdt", CASE, "predict 100k rows", name, *ms))

    # The histogram kernel alone: the root level, every training row in one slot.
    x = torch.from_numpy(X_train).to(device)
    bins, _ = ops.quantize(x)
    rows, features = bins.shape
    grad = torch.randn(rows, device=device)
    hess = torch.rand(rows, device=device)
    node = torch.zeros(rows, dtype=torch.int32, device=device)
    slot_of_node = torch.zeros(1, dtype=torch.int32, device=device)
    args = (bins, grad, hess, node, slot_of_node, 1, 256)
    ms = time_pair(lambda: reference.histogram(*args), lambda: ops.build_histogram(*args),
                   device, warmup=1, rounds=3 if device == "cpu" else 21)
    min_bytes = rows * features + rows * (4 + 4 + 4)  # bins, grad, hess, node
    results.append(Result("gbdt_histogram", f"{rows // 1000}k x {features}, one node",
                          "kernel", "PyTorch reference (index_add)", *ms, min_bytes))
    return results
