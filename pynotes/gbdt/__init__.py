"""Histogram gradient boosting with a scikit-learn estimator API (needs scikit-learn):

    from pynotes.gbdt import GBDTClassifier, GBDTRegressor
    model = GBDTClassifier(n_estimators=100, max_depth=6).fit(X, y, eval_set=[(X_val, y_val)])
    model.predict_proba(X_test)

XGBoost's second-order method (gradients g and hessians h of the loss at the current margins;
leaf weight -G / (H + reg_lambda); split gain as in csrc/gbdt/gbdt.h) on 256-bin
histograms, trees grown depth-wise one level at a time by pynotes.ops.gbdt.grow_tree (one call
per tree on the CPU: csrc/gbdt/tree_grower_cpu_kernel.cpp): per level one split search, the
rows of the split nodes sent down, and one histogram pass for the smaller child of every split
(its sibling is the parent's histogram minus it). Histograms are built col-wise (bins stored a
feature at a time) or row-wise (row-major bins, XGBoost's layout), with the same trees: as
LightGBM does, a fit times its first tree in both and keeps the faster (row-wise only where it
is at least 10 % faster; histogram_layout_ and histogram_layout_seconds_ say which and the
timings), and force_col_wise=True or force_row_wise=True (LightGBM's options) skip the timing.
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
level's histograms, eval metrics and early stopping are combined; pynotes/gbdt/distributed.py).
distributed=False keeps a fit to its process. examples/gbdt_distributed.py runs it with torchrun.

The package's modules: estimators (the scikit-learn classes and the boosting loop), objectives
(losses), categories (categorical features), model (the trees and their JSON), grower (a tree
per call of pynotes.ops.gbdt.grow_tree, and the level loop it falls back to off the CPU
extension), distributed (the collectives of a data-parallel fit).
"""
import importlib

# Imported on first use, so that ops.grow_tree's level loop (grower) loads without
# scikit-learn. The underscored names are the classes of pickles from before the package
# (pynotes/gbdt.py); the distributed tests' worker patches _Objective.
_LAZY = {"GBDTClassifier": ("estimators", "GBDTClassifier"),
         "GBDTRegressor": ("estimators", "GBDTRegressor"),
         "_Categories": ("categories", "Categories"),
         "_Ensemble": ("model", "Ensemble"),
         "_Objective": ("objectives", "Objective")}

__all__ = ["GBDTClassifier", "GBDTRegressor"]


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, attribute = _LAZY[name]
    value = getattr(importlib.import_module(f"{__name__}.{module}"), attribute)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
