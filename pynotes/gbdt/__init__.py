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
level's histograms, eval metrics and early stopping are combined; pynotes/gbdt/distributed.py).
distributed=False keeps a fit to its process. examples/gbdt_distributed.py runs it with torchrun.

The package's modules: estimators (the scikit-learn classes and the boosting loop), objectives
(losses), categories (categorical features), model (the trees and their JSON), grower (a tree
per call of pynotes.ops.grow_tree), distributed (the collectives of a data-parallel fit).
"""
from pynotes.gbdt.estimators import GBDTClassifier, GBDTRegressor

# The classes of pickles from before the package (pynotes/gbdt.py) load by these names; the
# distributed tests' worker patches _Objective.
from pynotes.gbdt.categories import Categories as _Categories  # noqa: E402,F401
from pynotes.gbdt.model import Ensemble as _Ensemble  # noqa: E402,F401
from pynotes.gbdt.objectives import Objective as _Objective  # noqa: E402,F401

__all__ = ["GBDTClassifier", "GBDTRegressor"]
