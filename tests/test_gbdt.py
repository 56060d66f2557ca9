"""Histogram gradient boosting: each kernel against a NumPy oracle, then the trainer against
XGBoost (when installed) and scikit-learn's estimator conventions."""
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import pynotes
from pynotes import _ext
from pynotes.ops import gbdt as ops
from pynotes.reference import gbdt as reference

sklearn = pytest.importorskip("sklearn")
from sklearn.datasets import load_breast_cancer, load_digits, make_classification, \
    make_regression  # noqa: E402
from sklearn.metrics import accuracy_score, roc_auc_score  # noqa: E402
from sklearn.model_selection import cross_val_score, train_test_split  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

from pynotes.gbdt import GBDTClassifier, GBDTRegressor  # noqa: E402
from pynotes.gbdt.grower import grow_tree_by_levels  # noqa: E402

try:
    import xgboost
except ImportError:  # an optional test dependency
    xgboost = None

needs_xgboost = pytest.mark.skipif(xgboost is None, reason="xgboost is not installed")
needs_extension = pytest.mark.skipif(not _ext.extension_loaded(), reason="extension not built")


def random_bins(rows, features, num_bins, device="cpu", missing=0.1):
    bins = torch.randint(0, num_bins - 1, (rows, features), dtype=torch.uint8, device=device)
    bins[torch.rand(rows, features, device=device) < missing] = num_bins - 1
    return bins


# -- kernels ----------------------------------------------------------------------------------

@pytest.mark.parametrize("max_bins", [2, 3, 17, 256])
def test_quantize_matches_numpy(device, max_bins):
    rows = 3000
    x = torch.randn(rows, 6, device=device, dtype=torch.float64)
    x[:, 1] = torch.randint(0, 5, (rows,), device=device).double()  # few distinct values
    x[:, 2] = 7.0                                                    # constant
    x[torch.rand(rows, 6, device=device) < 0.1] = torch.nan         # missing
    bins, cuts = ops.quantize(x, max_bins)
    assert bins.dtype == torch.uint8 and cuts.shape == (6, max_bins - 2)
    xn, cn, bn = x.cpu().numpy(), cuts.cpu().numpy(), bins.cpu().numpy()
    for f in range(6):
        feature_cuts = cn[f][np.isfinite(cn[f])]
        assert np.all(np.diff(feature_cuts) > 0)
        expected = np.searchsorted(feature_cuts, xn[:, f], side="left")
        expected[np.isnan(xn[:, f])] = max_bins - 1
        np.testing.assert_array_equal(bn[:, f], expected)
    if max_bins >= 17:  # few distinct values: midpoints between them
        np.testing.assert_allclose(cn[1][np.isfinite(cn[1])], [0.5, 1.5, 2.5, 3.5])
    assert not np.isfinite(cn[2]).any()  # a constant feature has no cuts
    if max_bins == 256:  # many values: quantiles of the non-missing ones (to a rank)
        values = np.sort(xn[:, 0][~np.isnan(xn[:, 0])])
        levels = np.arange(1, 255) / 255
        lower = np.quantile(values, levels, method="inverted_cdf")
        upper = np.quantile(values, np.minimum(levels + 1.0 / len(values), 1),
                            method="inverted_cdf")
        assert np.all((lower <= cn[0]) & (cn[0] <= upper))


def test_bin_extension_matches_reference(device):
    x = torch.randn(500, 4, device=device)
    x[::7, 1] = torch.nan
    _, cuts = ops.quantize(x, 32)
    with _ext.force_fallback():
        expected = ops.bin_features(x, cuts, 31)
    assert torch.equal(ops.bin_features(x, cuts, 31), expected)


def numpy_histogram(bins, grad, hess, slot, num_slots, num_bins):
    rows, features = bins.shape
    hist = np.zeros((num_slots, features, num_bins, 2))
    keep = slot >= 0
    for f in range(features):
        np.add.at(hist[:, f, :, 0], (slot[keep], bins[keep, f]), grad[keep])
        np.add.at(hist[:, f, :, 1], (slot[keep], bins[keep, f]), hess[keep])
    return hist


@pytest.mark.parametrize("num_bins", [256, 33])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_histogram_matches_numpy_add_at(device, num_bins, dtype):
    rows, features, nodes = 5000, 7, 15
    bins = random_bins(rows, features, num_bins, device)
    grad = torch.randn(rows, device=device, dtype=dtype)
    hess = torch.rand(rows, device=device, dtype=dtype)
    node = torch.randint(0, nodes, (rows,), dtype=torch.int32, device=device)
    slot_of_node = torch.full((nodes,), -1, dtype=torch.int32, device=device)
    slot_of_node[[3, 8, 11]] = torch.tensor([2, 0, 1], dtype=torch.int32, device=device)
    hist = ops.build_histogram(bins, grad, hess, node, slot_of_node, 3, num_bins)
    slot = slot_of_node[node.long()].cpu().numpy()
    expected = numpy_histogram(bins.cpu().numpy(), grad.double().cpu().numpy(),
                               hess.double().cpu().numpy(), slot, 3, num_bins)
    np.testing.assert_allclose(hist.cpu().numpy(), expected, rtol=1e-12, atol=1e-12)
    with _ext.force_fallback():
        fallback = ops.build_histogram(bins, grad, hess, node, slot_of_node, 3, num_bins)
    torch.testing.assert_close(hist, fallback, rtol=1e-12, atol=1e-12)


def test_histogram_is_deterministic_across_threads():
    rows, features = 20000, 9
    bins = random_bins(rows, features, 256)
    grad, hess = torch.randn(rows), torch.rand(rows)
    node = torch.randint(0, 3, (rows,), dtype=torch.int32)
    slot_of_node = torch.tensor([1, -1, 0], dtype=torch.int32)
    previous = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2, previous):
            torch.set_num_threads(threads)
            results.append(ops.build_histogram(bins, grad, hess, node, slot_of_node, 2))
    finally:
        torch.set_num_threads(previous)
    for other in results[1:]:
        assert torch.equal(results[0], other)


def brute_force_splits(bins, grad, hess, num_bins, reg_lambda, gamma, min_child_weight,
                       feature_mask=None):
    """The best split of one node, evaluating the gain formula from the rows themselves."""
    def score(g, h):
        return g * g / (h + reg_lambda)
    g_total, h_total = grad.sum(), hess.sum()
    best = (-np.inf, -1, -1, False)
    for f in range(bins.shape[1]):
        if feature_mask is not None and not feature_mask[f]:
            continue
        missing = bins[:, f] == num_bins - 1
        for b in range(num_bins - 1):
            for default_left in (False, True):
                left = (bins[:, f] <= b) & ~missing
                if default_left:
                    left |= missing
                gl, hl = grad[left].sum(), hess[left].sum()
                gr, hr = g_total - gl, h_total - hl
                if hl < min_child_weight or hr < min_child_weight or hl <= 0 or hr <= 0:
                    continue
                gain = 0.5 * (score(gl, hl) + score(gr, hr) - score(g_total, h_total)) - gamma
                if gain > best[0] + 1e-9:
                    best = (gain, f, b, default_left)
    return best


@pytest.mark.parametrize("reg_lambda,gamma,min_child_weight", [(1.0, 0.0, 1.0), (0.0, 0.5, 0.0),
                                                                (5.0, 0.0, 20.0)])
def test_best_splits_match_brute_force(device, reg_lambda, gamma, min_child_weight):
    num_bins, features, slots = 9, 4, 3
    node_bins, hists, truths = [], [], []
    for s in range(slots):
        rows = 200 + 50 * s
        bins = random_bins(rows, features, num_bins)
        grad = torch.randn(rows, dtype=torch.float64) + 0.3 * bins[:, s % features].double()
        hess = torch.rand(rows, dtype=torch.float64) + 0.1
        mask = np.array([True, s != 1, True, True])
        truths.append((brute_force_splits(bins.numpy(), grad.numpy(), hess.numpy(), num_bins,
                                          reg_lambda, gamma, min_child_weight, mask), grad, hess))
        node = torch.zeros(rows, dtype=torch.int32)
        hists.append(ops.build_histogram(bins, grad, hess, node, torch.tensor(
            [0], dtype=torch.int32), 1, num_bins))
    for s in range(slots):
        mask = torch.tensor([True, s != 1, True, True], device=device)
        splits = ops.find_best_splits(hists[s].to(device), reg_lambda, gamma, min_child_weight,
                                      mask)
        (gain, f, b, default_left), grad, hess = truths[s]
        assert int(splits.feature[0]) == f and int(splits.bin[0]) == b
        assert bool(splits.default_left[0]) == default_left
        assert float(splits.gain[0]) == pytest.approx(gain, rel=1e-9)
        total = torch.stack([grad.sum(), hess.sum()])
        torch.testing.assert_close((splits.left_sum + splits.right_sum)[0].cpu(), total)
        with _ext.force_fallback():
            fallback = ops.find_best_splits(hists[s].to(device), reg_lambda, gamma,
                                            min_child_weight, mask)
        for a, b_ in zip(splits, fallback):
            torch.testing.assert_close(a, b_)


def test_best_splits_without_a_valid_split(device):
    hist = torch.zeros(2, 3, 4, 2, dtype=torch.float64, device=device)
    hist[:, :, 0] = torch.tensor([1.0, 0.5], dtype=torch.float64)  # one bin: nothing to split
    splits = ops.find_best_splits(hist, 1.0, 0.0, 1.0)
    assert (splits.feature == -1).all() and torch.isinf(splits.gain).all()
    torch.testing.assert_close(splits.left_sum, hist[:, 0].sum(1))  # the node's totals


def random_tree(depth, features, num_bins, generator):
    nodes = 2 ** (depth + 1) - 1
    feature = torch.randint(0, features, (nodes,), generator=generator, dtype=torch.int32)
    feature[nodes // 2:] = -1                  # the last level: leaves
    feature[torch.rand(nodes, generator=generator) < 0.2] = -1  # and some earlier leaves
    split_bin = torch.randint(0, num_bins - 1, (nodes,), generator=generator, dtype=torch.int32)
    default_left = torch.rand(nodes, generator=generator) < 0.5
    return feature, split_bin, default_left


def test_advance_and_predict_match_a_python_walk(device):
    generator = torch.Generator().manual_seed(0)
    rows, features, num_bins, depth, trees = 700, 5, 17, 4, 6
    bins = random_bins(rows, features, num_bins)
    cuts = torch.sort(torch.randn(features, num_bins - 2, generator=generator), 1).values
    x = torch.empty(rows, features)  # raw values in each bin's range
    for f in range(features):
        edges = torch.cat([cuts[f, :1] - 1, cuts[f]])
        x[:, f] = edges[bins[:, f].long().clamp_max(num_bins - 2)] + 1e-3
    x[bins == num_bins - 1] = torch.nan
    padded = torch.cat([cuts, torch.full((features, 1), torch.inf)], 1)
    tables = [random_tree(depth, features, num_bins, generator) for _ in range(trees)]
    feature = torch.stack([t[0] for t in tables])
    split_bin = torch.stack([t[1] for t in tables])
    default_left = torch.stack([t[2] for t in tables])
    value = torch.randn(feature.shape, generator=generator)
    group = torch.tensor([0, 1, 0, 2, 1, 0])
    base = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    threshold = padded[feature.clamp_min(0).long(), split_bin.long()]
    # Python walk over bins.
    expected = base.expand(rows, 3).clone()
    for t in range(trees):
        for r in range(rows):
            n = 0
            while feature[t, n] >= 0:
                b = int(bins[r, feature[t, n]])
                left = bool(default_left[t, n]) if b == num_bins - 1 else b <= split_bin[t, n]
                n = 2 * n + (1 if left else 2)
            expected[r, group[t]] += float(value[t, n])
    dev = lambda *ts: [t.to(device) for t in ts]  # noqa: E731
    by_bins = ops.predict_trees(*dev(bins, feature, split_bin, default_left, value, group, base),
                                num_bins - 1)
    by_values = ops.predict_trees(*dev(x, feature, threshold, default_left, value, group, base))
    torch.testing.assert_close(by_bins.cpu(), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(by_values.cpu(), expected, rtol=1e-12, atol=1e-12)
    with _ext.force_fallback():
        fallback = ops.predict_trees(*dev(x, feature, threshold, default_left, value, group,
                                          base))
    torch.testing.assert_close(fallback.cpu(), expected, rtol=1e-12, atol=1e-12)
    # One level of descent, and the rows per node.
    node = torch.randint(0, 7, (rows,), dtype=torch.int32)
    moved, count = ops.advance_nodes(*dev(bins, node, feature[0], split_bin[0], default_left[0]),
                                     num_bins - 1)
    for r in range(0, rows, 37):
        n, f = int(node[r]), int(feature[0, node[r]])
        if f < 0:
            assert moved[r] == n
        else:
            b = int(bins[r, f])
            left = bool(default_left[0, n]) if b == num_bins - 1 else b <= split_bin[0, n]
            assert moved[r] == 2 * n + (1 if left else 2)
    assert torch.equal(count.cpu(), torch.bincount(moved.cpu().long(),
                                                   minlength=feature.shape[1]))


@needs_extension
def test_opcheck(device):
    bins = random_bins(64, 3, 16, device)
    x = torch.randn(64, 3, device=device)
    cuts = torch.sort(torch.randn(3, 5, device=device), 1).values
    node = torch.randint(0, 3, (64,), dtype=torch.int32, device=device)
    slot_of_node = torch.tensor([0, -1, 1], dtype=torch.int32, device=device)
    grad, hess = torch.randn(64, device=device), torch.rand(64, device=device)
    check = torch.library.opcheck
    check(torch.ops.pynotes.gbdt_bin.default, (x, cuts, 15))
    check(torch.ops.pynotes.gbdt_histogram.default, (bins, grad, hess, node, slot_of_node, 2, 16))
    hist = ops.build_histogram(bins, grad, hess, node, slot_of_node, 2, 16)
    check(torch.ops.pynotes.gbdt_best_splits.default, (hist, None, 1.0, 0.0, 1.0))
    feature = torch.tensor([0, 1, -1, -1, -1, -1, -1], dtype=torch.int32, device=device)
    split_bin = torch.tensor([3, 5, 0, 0, 0, 0, 0], dtype=torch.int32, device=device)
    default_left = torch.zeros(7, dtype=torch.bool, device=device)
    check(torch.ops.pynotes.gbdt_advance.default,
          (bins, torch.zeros(64, dtype=torch.int32, device=device), feature, split_bin,
           default_left, 15))
    check(torch.ops.pynotes.gbdt_predict.default,
          (x, feature[None], torch.randn(1, 7, device=device), default_left[None],
           torch.randn(1, 7, device=device), torch.zeros(1, dtype=torch.long, device=device),
           torch.zeros(1, dtype=torch.float64, device=device), 255))


def exact_gradients(bins, dtype, generator):
    """Gradients and hessians that are small multiples of 1/4 (sums exact in float64 in any
    order), with a signal on feature 0 so that trees split."""
    rows = bins.shape[0]
    grad = torch.randint(-8, 9, (rows,), generator=generator).to(dtype) / 4
    if bins.shape[1]:
        grad += 2 * (bins[:, 0] < 3).to(dtype)
    hess = torch.randint(1, 5, (rows,), generator=generator).to(dtype) / 2
    return grad, hess


@needs_extension
@pytest.mark.parametrize("rows,features,num_bins,depth,distinct,masked", [
    (1000, 5, 16, 3, None, False), (6000, 12, 256, 6, 7, False), (30000, 8, 64, 8, None, True),
    (3, 2, 4, 2, None, False), (0, 3, 8, 2, None, False), (100, 0, 8, 2, None, False),
    (500, 4, 32, 0, None, False)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_grow_tree_matches_the_level_loop(rows, features, num_bins, depth, distinct, masked,
                                          dtype):
    """The CPU's one-call tree (row partitions, C++ level loop) equals the loop of histogram,
    split and advance kernels, bit for bit where the sums are exact."""
    generator = torch.Generator().manual_seed(rows + depth)
    bins = random_bins(rows, features, num_bins, missing=0.05)
    if distinct:  # few distinct values: long runs of rows in one bin
        bins = torch.where(bins == num_bins - 1, bins, bins % distinct)
    grad, hess = exact_gradients(bins, dtype, generator)
    mask = torch.rand(features, generator=generator) < 0.7 if masked else None
    args = (bins, grad, hess, depth, num_bins, 1.0, 0.0, 1.0, mask)
    got = ops.grow_tree(*args)
    expected = grow_tree_by_levels(*args)
    names = "feature split_bin default_left gain sums leaf cat_left".split()
    for name, a, b in zip(names, got, expected):
        assert a.dtype == b.dtype and torch.equal(a, b), name
    if rows > 100 and depth > 0:
        assert (got[0] >= 0).sum() > 1  # the case grows a tree


def test_deepest_tree():
    """The trainer grows trees as deep as the op does (one limit): each row its own leaf."""
    X = np.arange(64, dtype=float)[:, None]
    model = GBDTRegressor(n_estimators=1, max_depth=ops.MAX_DEPTH, learning_rate=1.0,
                          reg_lambda=0.0, min_child_weight=0.0).fit(X, X[:, 0] ** 2)
    np.testing.assert_allclose(model.predict(X), X[:, 0] ** 2, rtol=1e-6)


@needs_extension
def test_fixed_point_scale_matches_the_kernel():
    """One formula: the reference's fixed-point scale is the C++ one for any bound."""
    bounds = [0.0, 1e-30, 0.3, 1.0, 2.0, 3.0, 1000.0, 2.0 ** 40, 2.0 ** 40 - 1, 7e15, 1e300]
    bounds += torch.rand(200, generator=torch.Generator().manual_seed(0)).mul(60).exp().tolist()
    for bound in bounds:
        assert _ext._C.gbdt_fixed_point_scale(bound) == reference.fixed_point_scale(bound), bound


def test_level_loop_loads_without_scikit_learn():
    """ops.grow_tree's fallback (pynotes.gbdt.grower) needs no scikit-learn; the estimators do."""
    script = ("import sys; sys.modules['sklearn'] = None\n"
              "import torch\n"
              "from pynotes.gbdt.grower import grow_tree_by_levels\n"
              "bins = torch.randint(0, 8, (50, 3), dtype=torch.uint8)\n"
              "tree = grow_tree_by_levels(bins, torch.randn(50), torch.ones(50), 2, 8, 1.0, 0.0,"
              " 1.0, None)\n"
              "assert tree[0][0] >= 0\n"
              "try:\n"
              "    from pynotes.gbdt import GBDTClassifier\n"
              "except ImportError:\n"
              "    print('estimators need scikit-learn')\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120, cwd=os.path.dirname(os.path.dirname(pynotes.__file__)))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "estimators need scikit-learn"


@needs_extension
@needs_extension
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("kind", ["float32", "float64", "quantized", "categorical"])
def test_grow_tree_row_wise_equals_col_wise(kind, threads):
    """Row-major bins build the histograms a row at a time: the same bits as bins stored a
    feature at a time, with any gradients (not only exact sums), long runs of one bin (rows
    summed in two chains) and short nodes, for any thread count."""
    generator = torch.Generator().manual_seed(threads)
    bins = random_bins(20000, 9, 64, missing=0.05)
    bins[:, :3] %= 3  # few distinct values: long runs of rows in one bin
    dtype = torch.float64 if kind == "float64" else torch.float32
    grad = torch.randn(20000, generator=generator, dtype=dtype) + (bins[:, 4] < 20).to(dtype)
    hess = torch.rand(20000, generator=generator, dtype=dtype) + 0.1
    extra = {"quantize_bins": 16, "seed": 5} if kind == "quantized" else {}
    if kind == "categorical":
        extra["categorical"] = torch.arange(9) % 4 == 1
    by_feature = bins.t().contiguous().t()
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        col = ops.grow_tree(by_feature, grad, hess, 7, 64, 1.0, 0.0, 1.0, **extra)
        row = ops.grow_tree(bins.contiguous(), grad, hess, 7, 64, 1.0, 0.0, 1.0, **extra)
    finally:
        torch.set_num_threads(before)
    assert (col[0] >= 0).sum() > 20  # a deep tree
    for a, b in zip(col, row):
        assert torch.equal(a, b)


@pytest.mark.parametrize("margin,auto_layout", [(0.0, "col-wise"), (1e9, "row-wise")])
def test_histogram_layouts(monkeypatch, margin, auto_layout):
    """force_row_wise and force_col_wise (LightGBM's options) give the same model; by default
    the first tree is timed in both layouts (here always, whatever its time) and the fit takes
    the faster by the margin (here forced either way), with the same model again."""
    from pynotes.gbdt.grower import TreeGrower
    monkeypatch.setattr(TreeGrower, "LAYOUT_TIMING_MIN_SECONDS", 0.0)
    monkeypatch.setattr(TreeGrower, "ROW_WISE_MARGIN", margin)
    X, y = make_classification(n_samples=5000, n_features=10, random_state=0)
    options = [{"force_col_wise": True}, {"force_row_wise": True}, {}]
    models = [GBDTClassifier(n_estimators=3, max_depth=4, **o).fit(X, y) for o in options]
    assert [m.histogram_layout_ for m in models] == ["col-wise", "row-wise", auto_layout]
    assert [m.histogram_layout_seconds_ for m in models[:2]] == [None, None]
    seconds = models[2].histogram_layout_seconds_
    assert sorted(seconds) == ["col-wise", "row-wise"] and all(t > 0 for t in seconds.values())
    for m in models[1:]:
        for a, b in zip(models[0]._ensemble.tensors("cpu")[:4], m._ensemble.tensors("cpu")):
            assert torch.equal(a, b)
        assert np.array_equal(models[0].predict_proba(X), m.predict_proba(X))
    # A first tree too short to time stays col-wise, untimed in row-wise.
    monkeypatch.setattr(TreeGrower, "LAYOUT_TIMING_MIN_SECONDS", 1e9)
    model = GBDTClassifier(n_estimators=2, max_depth=3).fit(X, y)
    assert model.histogram_layout_ == "col-wise"
    assert model.histogram_layout_seconds_["row-wise"] is None
    with pytest.raises(ValueError, match="force_row_wise must be a bool"):
        GBDTClassifier(force_row_wise="yes").fit(X[:100], y[:100])
    with pytest.raises(ValueError, match="force_col_wise must be a bool"):
        GBDTClassifier(force_col_wise=1).fit(X[:100], y[:100])
    with pytest.raises(ValueError, match="cannot both be True"):
        GBDTClassifier(force_row_wise=True, force_col_wise=True).fit(X[:100], y[:100])


def test_quantized_grow_tree():
    """Integer histograms: the same tree for any thread count, leaf sums from the exact
    gradients, and splits that agree with float64 histograms where the signal is clear."""
    generator = torch.Generator().manual_seed(0)
    bins = random_bins(20000, 6, 64, missing=0.05)
    grad = torch.randn(20000, generator=generator) + 2 * (bins[:, 0] < 20).float()
    hess = torch.rand(20000, generator=generator) + 0.1
    args = (bins, grad, hess, 5, 64)
    before = torch.get_num_threads()
    try:
        trees = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            trees.append(ops.grow_tree(*args, quantize_bins=16, seed=3))
    finally:
        torch.set_num_threads(before)
    for a, b in zip(*trees):
        assert torch.equal(a, b)
    feature, split_bin, _, _, sums, leaf, _ = trees[0]
    assert feature[0] == 0 and abs(int(split_bin[0]) - 19) <= 1  # the signal's threshold
    exact = ops.grow_tree(*args)
    assert torch.equal(feature[0], exact[0][0])
    for depth in (5, 1, 0):  # (0: the root is the leaf)
        if depth != 5:
            _, _, _, _, sums, leaf, _ = ops.grow_tree(bins, grad, hess, depth, 64,
                                                      quantize_bins=16, seed=3)
        for n in torch.unique(leaf).tolist():  # renewed: the float sums of each leaf's rows
            rows = leaf == n
            torch.testing.assert_close(sums[n], torch.stack([grad[rows].double().sum(),
                                                             hess[rows].double().sum()]))
    sums = trees[0][4]
    other_seed = ops.grow_tree(*args, quantize_bins=16, seed=4)
    assert not torch.equal(other_seed[4], sums)  # the rounding follows the seed
    with pytest.raises(ValueError, match=r"quantize_bins must be 0 \(off\) or in \[2, 1024\]"):
        ops.grow_tree(*args, quantize_bins=1)
    with _ext.force_fallback(), pytest.raises(NotImplementedError, match="CPU extension only"):
        ops.grow_tree(*args, quantize_bins=16)


@needs_extension
def test_grow_tree_opcheck_and_bad_input():
    bins = random_bins(300, 4, 16)
    grad, hess = torch.randn(300), torch.rand(300)
    torch.library.opcheck(torch.ops.pynotes.gbdt_grow_tree.default,
                          (bins, grad, hess, None, 3, 16, 1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match=r"feature_mask.size\(0\) must be bins.size\(1\) = 4"):
        ops.grow_tree(bins, grad, hess, 3, 16, feature_mask=torch.ones(5, dtype=torch.bool))
    for grow in (ops.grow_tree, grow_tree_by_levels):  # one limit for the kernel and the loop
        with pytest.raises(ValueError, match=r"max_depth must be in \[0, 20\], got 21"):
            grow(bins, grad, hess, 21, 16, 1.0, 0.0, 1.0, None)
    with pytest.raises(ValueError, match=r"hess.size\(0\) must be bins.size\(0\)"):
        ops.grow_tree(bins, grad, hess[:-1], 3, 16)
    with pytest.raises(TypeError, match="hess must have dtype Float, got Double"):
        ops.grow_tree(bins, grad, hess.double(), 3, 16)


# -- the trainer ------------------------------------------------------------------------------

def split(X, y, seed=0):
    return train_test_split(X, y, test_size=0.25, random_state=seed, stratify=y)


XGB_SETTINGS = dict(n_estimators=100, max_depth=6, learning_rate=0.3, reg_lambda=1.0)


def xgb_classifier():
    return xgboost.XGBClassifier(tree_method="hist", max_bin=256, n_jobs=2, **XGB_SETTINGS)


@needs_xgboost
@pytest.mark.parametrize("dataset", ["breast_cancer", "digits", "synthetic", "missing"])
def test_classifier_matches_xgboost(dataset):
    if dataset == "breast_cancer":
        X, y = load_breast_cancer(return_X_y=True)
    elif dataset == "digits":
        X, y = load_digits(return_X_y=True)
    else:
        X, y = make_classification(n_samples=4000, n_features=20, n_informative=8,
                                   random_state=1)
        if dataset == "missing":
            X[np.random.default_rng(0).random(X.shape) < 0.2] = np.nan
    X_train, X_test, y_train, y_test = split(X, y)
    ours = GBDTClassifier(**XGB_SETTINGS).fit(X_train, y_train)
    theirs = xgb_classifier().fit(X_train, y_train)
    acc_ours = accuracy_score(y_test, ours.predict(X_test))
    acc_theirs = accuracy_score(y_test, theirs.predict(X_test))
    assert acc_ours >= acc_theirs - 0.005 - 1.0 / len(y_test), (acc_ours, acc_theirs)
    if len(np.unique(y)) == 2:
        auc_ours = roc_auc_score(y_test, ours.predict_proba(X_test)[:, 1])
        auc_theirs = roc_auc_score(y_test, theirs.predict_proba(X_test)[:, 1])
        assert auc_ours >= auc_theirs - 0.005, (auc_ours, auc_theirs)


@needs_xgboost
def test_regressor_matches_xgboost():
    X, y = make_regression(n_samples=3000, n_features=10, noise=5.0, random_state=0)
    X_train, X_test, y_train, y_test = train_test_split(X, y, random_state=0)
    ours = GBDTRegressor(**XGB_SETTINGS).fit(X_train, y_train)
    theirs = xgboost.XGBRegressor(tree_method="hist", max_bin=256, n_jobs=2,
                                  **XGB_SETTINGS).fit(X_train, y_train)
    rmse = lambda p: float(np.sqrt(np.mean((p - y_test) ** 2)))  # noqa: E731
    assert rmse(ours.predict(X_test)) <= 1.05 * rmse(theirs.predict(X_test))  # 59.8 vs 58.8 here


def test_constant_and_duplicate_features():
    X, y = make_classification(n_samples=600, n_features=5, random_state=0)
    X = np.hstack([X, np.full((600, 1), 3.0), X[:, :1]])  # a constant and a duplicate
    model = GBDTClassifier(n_estimators=20).fit(X, y)
    assert model.feature_importances_[5] == 0.0
    assert model.feature_importances_.sum() == pytest.approx(1.0)
    assert model.score(X, y) > 0.9


def test_save_and_load_round_trip_predictions_exactly(tmp_path):
    X, y = load_digits(return_X_y=True)
    X = X.astype(np.float64)
    X[::5, 3] = np.nan
    model = GBDTClassifier(n_estimators=8, max_depth=4, subsample=0.8, colsample_bytree=0.7,
                           random_state=3).fit(X, y)
    path = tmp_path / "model.json"
    model.save_model(path)
    loaded = GBDTClassifier().load_model(path)
    assert np.array_equal(loaded.predict_proba(X), model.predict_proba(X))
    assert loaded.get_params() == model.get_params()
    assert json.loads(path.read_text())["format"] == "pynotes.gbdt"
    regressor = GBDTRegressor(n_estimators=5).fit(X, y.astype(float))
    regressor.save_model(path)
    assert np.array_equal(GBDTRegressor().load_model(path).predict(X), regressor.predict(X))
    with pytest.raises(ValueError, match="is not a saved GBDTClassifier"):
        GBDTClassifier().load_model(path)


def test_training_is_deterministic():
    X, y = make_classification(n_samples=2000, n_features=8, random_state=0)
    settings = dict(n_estimators=10, subsample=0.7, colsample_bytree=0.6, random_state=5)
    a = GBDTClassifier(**settings).fit(X, y).predict_proba(X)
    b = GBDTClassifier(**settings).fit(X, y).predict_proba(X)
    assert np.array_equal(a, b)


def test_sample_weight_equals_repeated_rows():
    rng = np.random.default_rng(0)
    X = rng.integers(0, 20, size=(300, 4)).astype(float)  # few distinct values: same cuts
    y = X[:, 0] * 2 - X[:, 1] + rng.normal(size=300)
    weight = rng.integers(1, 3, size=300)
    weighted = GBDTRegressor(n_estimators=10).fit(X, y, sample_weight=weight)
    repeated = GBDTRegressor(n_estimators=10).fit(np.repeat(X, weight, 0), np.repeat(y, weight))
    np.testing.assert_allclose(weighted.predict(X), repeated.predict(X), rtol=1e-5, atol=1e-5)


def test_early_stopping_and_progress(capsys):
    X, y = make_classification(n_samples=1500, n_features=10, flip_y=0.3, random_state=0)
    X_train, X_val, y_train, y_val = split(X, y)
    model = GBDTClassifier(n_estimators=200, learning_rate=0.5, early_stopping_rounds=5,
                           verbose=True).fit(X_train, y_train, eval_set=[(X_val, y_val)])
    scores = model.evals_result_["validation_0"]["logloss"]
    assert model.best_iteration_ == int(np.argmin(scores))
    assert len(scores) == model.best_iteration_ + 6 < 200
    assert len(model._ensemble.feature) == model.best_iteration_ + 1
    assert "logloss" in capsys.readouterr().err


def test_quantized_gradients_train_as_well():
    X, y = make_classification(n_samples=6000, n_features=12, n_informative=6, random_state=2)
    X_train, X_test, y_train, y_test = split(X, y)
    settings = dict(n_estimators=60, max_depth=5, learning_rate=0.2)
    exact = GBDTClassifier(**settings).fit(X_train, y_train)
    quantized = GBDTClassifier(use_quantized_grad=True, **settings).fit(X_train, y_train)
    auc = lambda m: roc_auc_score(y_test, m.predict_proba(X_test)[:, 1])  # noqa: E731
    assert auc(quantized) >= auc(exact) - 0.01, (auc(quantized), auc(exact))
    one_thread = GBDTClassifier(use_quantized_grad=True, n_jobs=1, **settings)
    assert np.array_equal(one_thread.fit(X_train, y_train).predict_proba(X_test),
                          quantized.predict_proba(X_test))
    with pytest.raises(ValueError, match="num_grad_quant_bins must be an int in"):
        GBDTClassifier(use_quantized_grad=True, num_grad_quant_bins=1).fit(X_train, y_train)


def test_early_stopping_needs_an_eval_set():
    X, y = make_classification(n_samples=200, n_features=4, random_state=0)
    with pytest.raises(ValueError, match="early_stopping_rounds=3 needs a validation set"):
        GBDTClassifier(n_estimators=5, early_stopping_rounds=3).fit(X, y)


def test_pipeline_and_cross_val_score():
    X, y = load_breast_cancer(return_X_y=True)
    pipeline = make_pipeline(StandardScaler(), GBDTClassifier(n_estimators=10, n_jobs=1))
    scores = cross_val_score(pipeline, X, y, cv=3)
    assert scores.mean() > 0.9
    assert GBDTClassifier(n_estimators=3).fit(X, y.astype(str)).predict(X[:2]).dtype.kind == "U"


def test_fallback_trains_the_same_model():
    X, y = make_classification(n_samples=400, n_features=6, random_state=0)
    model = GBDTClassifier(n_estimators=5, max_depth=3).fit(X, y)
    with _ext.force_fallback():
        fallback = GBDTClassifier(n_estimators=5, max_depth=3).fit(X, y)
    np.testing.assert_allclose(fallback.predict_proba(X), model.predict_proba(X), atol=1e-6)


BAD_FIT = [
    ("nan_label", lambda m, X, y: m.fit(X, np.where(np.arange(len(y)) == 3, np.nan, y)),
     "Input y contains NaN"),
    ("inf_label", lambda m, X, y: m.fit(X, np.where(np.arange(len(y)) == 3, np.inf, y)),
     "Input y contains infinity"),
    ("length_mismatch", lambda m, X, y: m.fit(X, y[:-1]), "inconsistent numbers of samples"),
    ("non_numeric_X", lambda m, X, y: m.fit(np.full(X.shape, "a"), y), "could not convert"),
    ("max_bins_1", lambda m, X, y: m.set_params(max_bins=1).fit(X, y),
     r"max_bins must be an int in \[2, 256\], got 1"),
    ("max_bins_257", lambda m, X, y: m.set_params(max_bins=257).fit(X, y),
     r"max_bins must be an int in \[2, 256\], got 257"),
    ("max_depth_21", lambda m, X, y: m.set_params(max_depth=21).fit(X, y),  # the op's limit
     r"max_depth must be an int in \[0, 20\], got 21"),
]


@pytest.mark.parametrize("estimator", [GBDTClassifier, GBDTRegressor])
@pytest.mark.parametrize("call,message", [c[1:] for c in BAD_FIT], ids=[c[0] for c in BAD_FIT])
def test_bad_input(estimator, call, message):
    X, y = make_classification(n_samples=100, n_features=4, random_state=0)
    with pytest.raises(ValueError, match=message):
        call(estimator(n_estimators=2), X, y.astype(float))


@pytest.mark.parametrize("frame", [False, True])
def test_infinite_values_go_past_every_cut(frame):
    """As in scikit-learn's HistGradientBoosting (and LightGBM): -inf and +inf are features'
    smallest and largest values, below and above every cut point, in fit and predict."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(3000, 3))
    X[:100, 0], X[100:200, 0], X[200:300, 1] = np.inf, -np.inf, -np.inf
    y = np.clip(X[:, 0], -3, 3) + 0.01 * rng.normal(size=len(X))
    if frame:
        pd = pytest.importorskip("pandas")
        X = pd.DataFrame(X, columns=["a", "b", "c"])
    model = GBDTRegressor(n_estimators=60, learning_rate=0.3).fit(X, y)
    rows = np.array([[np.inf, 0, 0], [1e30, 0, 0], [-np.inf, 0, 0], [-2.9, 0, 0],
                     [0, -np.inf, 0], [0, 0, 0]])
    if frame:
        rows = pd.DataFrame(rows, columns=X.columns)
    got = model.predict(rows)
    assert got[0] == pytest.approx(3, abs=0.2) and got[0] == got[1]  # above every cut
    assert got[2] == pytest.approx(-3, abs=0.2) and got[2] < got[3]  # its own lowest bin
    assert got[4] == pytest.approx(got[5], abs=0.2)
    assert np.isfinite(model.predict(X)).all()


def test_classifier_label_errors():
    X, y = make_classification(n_samples=100, n_features=4, random_state=0)
    with pytest.raises(ValueError, match=r"y must have at least 2 classes, got 1 class: \[1\]"):
        GBDTClassifier(n_estimators=2).fit(X, np.ones(100, dtype=int))
    with pytest.raises(ValueError, match="labels that are not classes seen in fit: \\[7\\]"):
        GBDTClassifier(n_estimators=2).fit(X, y, eval_set=[(X, np.full(100, 7))])
    with pytest.raises(ValueError, match="Unknown label type"):
        GBDTClassifier(n_estimators=2).fit(X, np.linspace(0, 1, 100))
    model = GBDTClassifier(n_estimators=2).fit(X, y)
    with pytest.raises(ValueError, match="X has 3 features, but GBDTClassifier is expecting 4"):
        model.predict(X[:, :3])


@pytest.mark.skipif(not _ext.extension_loaded(), reason="extension not built")
def test_op_bad_input():
    bins = random_bins(10, 3, 16)
    g, h = torch.randn(10), torch.rand(10)
    node = torch.zeros(10, dtype=torch.int32)
    with pytest.raises(ValueError, match=r"node must hold values in \[0, 1\), got 4"):
        ops.build_histogram(bins, g, h, node + 4, torch.tensor([0], dtype=torch.int32), 1, 16)
    with pytest.raises(ValueError, match=r"slot_of_node must hold values in \[-1, 1\), got 3"):
        ops.build_histogram(bins, g, h, node, torch.tensor([3], dtype=torch.int32), 1, 16)
    with pytest.raises(ValueError, match=r"bins must hold values in \[0, 8\)"):
        ops.build_histogram(bins, g, h, node, torch.tensor([0], dtype=torch.int32), 1, 8)
    with pytest.raises(ValueError, match="node 1 is a split but its children"):
        ops.advance_nodes(bins, node, torch.tensor([0, 1, -1], dtype=torch.int32),
                          torch.zeros(3, dtype=torch.int32), torch.zeros(3, dtype=torch.bool), 15)
    with pytest.raises(ValueError, match=r"feature must hold values in \[-1, 3\), got 5"):
        ops.predict_trees(torch.randn(10, 3), torch.tensor([[5, -1, -1]], dtype=torch.int32),
                          torch.zeros(1, 3), torch.zeros(1, 3, dtype=torch.bool),
                          torch.zeros(1, 3), torch.zeros(1, dtype=torch.long),
                          torch.zeros(1, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"missing_bin must be in \(cuts.size\(1\), 255\]"):
        ops.bin_features(torch.randn(4, 3), torch.zeros(3, 20), 16)


def test_predict_one_row_leaves_base_alone():
    """Regression: the output of a one-row prediction once aliased (and grew) base."""
    X, y = make_classification(n_samples=200, n_features=6, n_classes=3, n_informative=3,
                               random_state=0)
    model = GBDTClassifier(n_estimators=3).fit(X, y)
    full = model.predict_proba(X)
    rows = np.vstack([model.predict_proba(X[i:i + 1]) for i in range(10)])
    np.testing.assert_array_equal(rows, full[:10])


def _fitted_trees(n_estimators=20, max_depth=5):
    """A multiclass model fitted on rows with NaNs, its ensemble's tensors and test rows."""
    X, y = make_classification(n_samples=400, n_features=7, n_classes=3, n_informative=4,
                               random_state=1)
    X[::7, 2] = np.nan
    model = GBDTClassifier(n_estimators=n_estimators, max_depth=max_depth).fit(X, y)
    *trees, _ = model._ensemble.tensors("cpu")
    return model, [t.clone() for t in trees], model._ensemble.base, X


@needs_extension
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_few_rows_walk_equals_blocks(dtype):
    """Fewer than 16 rows walk many trees at once: each row's sums are the bits of the same
    row in a large batch (the rows' walk), and the reference's."""
    _, (feature, threshold, default_left, value, group), base, X = _fitted_trees()
    threshold = threshold.to(dtype)
    x = torch.from_numpy(X).to(dtype)
    big = ops.predict_trees(x[:200], feature, threshold, default_left, value, group, base)
    for rows in (1, 2, 7, 15):
        for start in (0, 3, 150):
            few = ops.predict_trees(x[start:start + rows], feature, threshold, default_left,
                                    value, group, base)
            torch.testing.assert_close(few, big[start:start + rows], rtol=0, atol=0)
    expected = reference.predict_trees(x[:15], feature, threshold, default_left, value, group,
                                       base)
    torch.testing.assert_close(big[:15], expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("depth,nodes", [(2, 7), (3, 12), (8, 511), (10, 2047)])
def test_block_walk_matches_the_reference(depth, nodes):
    """Batches walk 64 rows at once, the upper levels' nodes read from registers and deeper
    ones gathered (AVX-512): the reference's sums for shallow and deep trees, a heap cut short
    (12 nodes), NaN rows sent the default way, and batches that end mid-block."""
    generator = torch.Generator().manual_seed(depth)
    features, trees = 9, 5
    tables = [random_tree(depth, features, 2, generator) for _ in range(trees)]
    feature = torch.stack([t[0] for t in tables])[:, :nodes].contiguous()
    feature[:, (nodes - 2) // 2:] = -1  # splits only where both children are in the tree
    default_left = torch.stack([t[2] for t in tables])[:, :nodes].contiguous()
    threshold = torch.randn(trees, nodes, generator=generator)
    value = torch.randn(trees, nodes, generator=generator)
    group = torch.tensor([0, 1, 1, 0, 1])
    base = torch.tensor([0.25, -0.5], dtype=torch.float64)
    x = torch.randn(400, features, generator=generator)
    x[torch.rand(x.shape, generator=generator) < 0.1] = torch.nan
    expected = reference.predict_trees(x, feature, threshold, default_left, value, group, base)
    for rows in (16, 63, 64, 65, 129, 400):
        got = ops.predict_trees(x[:rows], feature, threshold, default_left, value, group, base)
        torch.testing.assert_close(got, expected[:rows], rtol=1e-12, atol=1e-12)


@needs_extension
def test_predict_checks_an_ensemble_changed_after_its_check():
    """A few-row prediction skips checking an ensemble it has checked; a change through torch
    (a new version) is checked again, and one through a NumPy view is caught by the walk."""
    _, (feature, threshold, default_left, value, group), base, X = _fitted_trees()
    x = torch.from_numpy(X[:1]).float()
    args = (threshold, default_left, value, group, base)
    expected = ops.predict_trees(x, feature, *args)
    root = feature[0, 0].item()
    feature[0, 0] = 99
    with pytest.raises(ValueError, match=r"feature must hold values in \[-1, 7\), got 99"):
        ops.predict_trees(x, feature, *args)
    feature[0, 0] = root
    torch.testing.assert_close(ops.predict_trees(x, feature, *args), expected, rtol=0, atol=0)
    for name, table, bad in (("feature", feature, 99), ("group", group, 3)):
        view = table.numpy()  # writes here do not change the tensor's version
        kept = view[0].copy()
        view[0] = bad
        with pytest.raises(ValueError, match=f"{name} must hold values in"):
            ops.predict_trees(x, feature, *args)
        view[0] = kept
    torch.testing.assert_close(ops.predict_trees(x, feature, *args), expected, rtol=0, atol=0)


def test_predict_numpy_rows_as_validated():
    """float32/float64 C-contiguous NumPy rows skip scikit-learn's validation: the same
    probabilities as any other input, and the same errors."""
    model, _, _, X = _fitted_trees(n_estimators=5)
    full = model.predict_proba(X[:20].tolist())  # (a list: scikit-learn's validation)
    for rows in (X[:20], X[:20].astype(np.float32), np.asfortranarray(X[:20])):
        np.testing.assert_array_equal(model.predict_proba(rows), full)
    readonly = X[:20].astype(np.float32)
    readonly.flags.writeable = False
    np.testing.assert_array_equal(model.predict_proba(readonly), full)
    for i in range(3):
        np.testing.assert_array_equal(model.predict_proba(X[i:i + 1]), full[i:i + 1])
    np.testing.assert_array_equal(model.predict(X[:20]), model.classes_[full.argmax(1)])
    infinite = X[:20].copy()
    infinite[1, 3], infinite[2, 0] = np.inf, -np.inf
    np.testing.assert_array_equal(model.predict_proba(infinite),
                                  model.predict_proba(infinite.tolist()))
    with pytest.raises(ValueError, match="features"):
        model.predict_proba(X[:2, :5])
    with pytest.raises(ValueError, match="0 sample"):
        model.predict_proba(X[:0])
    regressor = GBDTRegressor(n_estimators=5).fit(X, np.arange(len(X)) % 5)
    np.testing.assert_array_equal(regressor.predict(X[:3]), regressor.predict(X[:3].tolist()))


@parametrize_with_checks(
    [GBDTClassifier(n_estimators=5), GBDTRegressor(n_estimators=5)],
    expected_failed_checks=lambda estimator: {
        "check_sample_weight_equivalence_on_dense_data":
            "cut points are quantiles of the unweighted rows, so repeating rows moves them; "
            "with at most max_bins - 1 distinct values per feature weights equal repetition "
            "(test_sample_weight_equals_repeated_rows)"})
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def test_empty_inputs(device):
    bins = torch.zeros(0, 3, dtype=torch.uint8, device=device)
    empty = torch.zeros(0, device=device)
    node = torch.zeros(0, dtype=torch.int32, device=device)
    hist = ops.build_histogram(bins, empty, empty, node,
                               torch.zeros(1, dtype=torch.int32, device=device), 1, 16)
    assert hist.shape == (1, 3, 16, 2) and not hist.any()
    splits = ops.find_best_splits(torch.zeros(2, 0, 16, 2, dtype=torch.float64, device=device))
    assert (splits.feature == -1).all() and not splits.left_sum.any()
    x = torch.zeros(0, 3, device=device)
    assert ops.quantize(x, 16)[0].shape == (0, 3)


@needs_extension
@pytest.mark.parametrize("loss", ["squared_error", "logistic"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("rows", [0, 1, 37, 5003])
def test_boost_step_equals_the_objective(loss, weighted, rows):
    """The CPU pass between trees (margin += value[leaf], then the gradients) gives the
    margins exactly and the gradients of objectives.py's torch formulas (the sigmoid within
    an ulp: torch's kernel takes its scalar path on other rows)."""
    from pynotes.gbdt.objectives import Objective
    generator = torch.Generator().manual_seed(rows)
    margin = torch.randn(1, rows, dtype=torch.float64, generator=generator).mul_(4).T
    y = torch.randint(0, 2, (rows,), generator=generator).float() if loss == "logistic" \
        else torch.randn(rows, generator=generator)
    weight = torch.rand(rows, generator=generator) if weighted else None
    value = torch.randn(31, generator=generator)
    leaf = torch.randint(0, 31, (rows,), dtype=torch.int32, generator=generator)
    for trees in ((), [(0, value, leaf)]):
        expected_margin = margin.clone()
        with _ext.force_fallback():
            expected = Objective(loss).gradients(
                expected_margin, y, weight, [torch.empty_like(margin, dtype=torch.float32)
                                             for _ in range(2)], trees)
        got_margin = margin.clone()
        out = [torch.full_like(margin, float("nan"), dtype=torch.float32) for _ in range(2)]
        got = Objective(loss).gradients(got_margin, y, weight, out, trees)
        assert got[0].data_ptr() == out[0].data_ptr() and got[1].data_ptr() == out[1].data_ptr()
        torch.testing.assert_close(got_margin, expected_margin, rtol=0, atol=0)
        tolerance = dict(rtol=0, atol=0) if loss == "squared_error" else dict(rtol=2e-7,
                                                                                 atol=6e-8)
        for g, e in zip(got, expected):
            torch.testing.assert_close(g, e, **tolerance)


@needs_extension
def test_boost_step_bad_input():
    rows = 10
    margin, y = torch.zeros(rows, dtype=torch.float64), torch.zeros(rows)
    grad, hess = torch.empty(rows), torch.empty(rows)
    value, leaf = torch.zeros(4), torch.zeros(rows, dtype=torch.int32)
    step = _ext._C.gbdt_boost_step
    with pytest.raises(RuntimeError, match="margin must be a contiguous 1-D Double"):
        step(margin.float(), value, leaf, y, None, grad, hess, "logistic")
    with pytest.raises(RuntimeError, match="y must be .* of 10 elements"):
        step(margin, value, leaf, y[:9], None, grad, hess, "logistic")
    with pytest.raises(RuntimeError, match="hess must be a contiguous"):
        step(margin, value, leaf, y, None, grad, torch.empty(rows, 2)[:, 0], "logistic")
    with pytest.raises(RuntimeError, match="value and leaf come together"):
        step(margin, value, None, y, None, grad, hess, "logistic")
    with pytest.raises(ValueError, match="loss must be 'squared_error' or 'logistic'"):
        step(margin, value, leaf, y, None, grad, hess, "softmax")
    leaf[7] = 4
    with pytest.raises(IndexError, match=r"leaf must hold node indices in \[0, 4\)"):
        step(margin, value, leaf, y, None, grad, hess, "logistic")
    leaf[7] = -1
    with pytest.raises(IndexError, match=r"leaf must hold node indices in \[0, 4\)"):
        step(margin, value, leaf, y, None, grad, hess, "squared_error")
