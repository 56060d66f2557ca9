"""Categorical features in gradient boosting: the kernels' set splits against a Python oracle,
prediction against the reference walk, and the trainer's handling of pandas categories,
categorical_features, unseen categories and saved models."""
import numpy as np
import pytest
import torch

from pynotes import _ext
from pynotes.ops import gbdt as ops
from pynotes.reference import gbdt as reference

pytest.importorskip("sklearn")
from pynotes.gbdt import GBDTClassifier, GBDTRegressor  # noqa: E402

needs_extension = pytest.mark.skipif(not _ext.extension_loaded(), reason="extension not built")
SMOOTH = 10.0  # gbdt.h, kCategorySmooth


def bitset(categories):
    words = [0] * 8
    for c in categories:
        words[c >> 5] |= 1 << (c & 31)
    return [w - (1 << 32) if w >= 1 << 31 else w for w in words]  # as int32


def categorical_oracle(hist, rows, reg_lambda, gamma, min_child_weight):
    """The best categorical split of one feature's histogram (num_bins, 2) float64 of a node
    of `rows` rows, written from the docs of gbdt.h: categories with support
    H * rows / H_total >= 10 sorted by G / (H + 10), each prefix of that order tried with the
    missing bin right, then left. Returns (gain, left categories, default_left) or None."""
    hist = hist.tolist()
    g_total, h_total = sum(g for g, _ in hist), sum(h for _, h in hist)
    g_miss, h_miss = hist[-1]
    support = [b for b in range(len(hist) - 1) if hist[b][1] * rows / h_total >= SMOOTH]
    order = sorted(support, key=lambda b: (hist[b][0] / (hist[b][1] + SMOOTH), b))

    def score(g, h):
        return g * g / (h + reg_lambda)
    best = None
    for k in range(len(order)):
        gl = sum(hist[b][0] for b in order[:k + 1])
        hl = sum(hist[b][1] for b in order[:k + 1])
        for left in ([False, True] if (g_miss, h_miss) != (0, 0) else [False]):
            g, h = (gl + g_miss, hl + h_miss) if left else (gl, hl)
            if min(h, h_total - h) < min_child_weight or h <= 0 or h_total - h <= 0:
                continue
            gain = 0.5 * (score(g, h) + score(g_total - g, h_total - h)
                          - score(g_total, h_total)) - gamma
            if best is None or gain > best[0]:
                best = (gain, sorted(order[:k + 1]), left)
    return best


@needs_extension
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_root_split_matches_the_oracle(seed, dtype):
    """A one-level tree on categorical features: the split the oracle finds, its left set,
    missing direction, gain and children's sums."""
    generator = torch.Generator().manual_seed(seed)
    rows, features, num_bins = 3000, 4, 24
    bins = torch.randint(0, num_bins - 1, (rows, features), generator=generator,
                         dtype=torch.uint8)
    bins[torch.rand(rows, features, generator=generator) < 0.05] = num_bins - 1
    bins[:, 1] = torch.where(bins[:, 1] < 20, bins[:, 1] % 5, bins[:, 1])  # rare categories
    effect = torch.randn(num_bins, generator=generator)
    grad = (effect[bins[:, 2].long()] + torch.randn(rows, generator=generator)).to(dtype)
    hess = (torch.rand(rows, generator=generator) + 0.5).to(dtype)
    categorical = torch.ones(features, dtype=torch.bool)
    feature, split_bin, default_left, gain, sums, leaf, cat_left = ops.grow_tree(
        bins, grad, hess, 1, num_bins, 1.0, 0.0, 1.0, categorical=categorical)
    node = torch.zeros(rows, dtype=torch.int32)
    hist = ops.build_histogram(bins, grad, hess, node, torch.zeros(1, dtype=torch.int32), 1,
                               num_bins)[0]
    candidates = [categorical_oracle(hist[f], rows, 1.0, 0.0, 1.0) for f in range(features)]
    best_f = max(range(features), key=lambda f: (candidates[f][0], -f))
    expected_gain, left_set, missing_left = candidates[best_f]
    assert int(feature[0]) == best_f == 2 and int(split_bin[0]) == 0
    torch.testing.assert_close(gain[0].item(), expected_gain, rtol=1e-9, atol=0)
    assert cat_left[0].tolist() == bitset(left_set) and bool(default_left[0]) == missing_left
    assert not cat_left[1:].any()
    goes_left = torch.isin(bins[:, best_f].long(), torch.tensor(left_set))
    goes_left = torch.where(bins[:, best_f] == num_bins - 1, missing_left, goes_left)
    assert torch.equal(leaf, torch.where(goes_left, 1, 2).int())
    torch.testing.assert_close(sums[1], torch.stack([grad[goes_left].double().sum(),
                                                     hess[goes_left].double().sum()]))


@needs_extension
def test_deep_tree_partition_agrees_with_prediction():
    """The rows each leaf gets from the partition are the rows predict sends there, with
    numeric and categorical features mixed, quantized gradients too."""
    generator = torch.Generator().manual_seed(1)
    rows, features, num_bins = 20000, 6, 64
    bins = torch.randint(0, num_bins, (rows, features), generator=generator, dtype=torch.uint8)
    effect = torch.randn(features, num_bins, generator=generator)
    grad = sum(effect[f, bins[:, f].long()] for f in range(features)) \
        + torch.randn(rows, generator=generator)
    hess = torch.rand(rows, generator=generator) + 0.1
    categorical = torch.tensor([True, False, True, False, True, True])
    for quantize_bins in (0, 16):
        feature, split_bin, default_left, _, sums, leaf, cat_left = ops.grow_tree(
            bins, grad, hess, 6, num_bins, categorical=categorical, quantize_bins=quantize_bins)
        used = feature[feature >= 0].long()
        assert categorical[used].any() and (~categorical[used]).any()
        assert not cat_left[(feature < 0) | ~categorical[feature.clamp_min(0).long()]].any()
        value = torch.arange(feature.shape[0], dtype=torch.float32)  # the leaf's id
        by_bins = ops.predict_trees(bins, feature[None], split_bin[None], default_left[None],
                                    value[None], torch.zeros(1, dtype=torch.long),
                                    torch.zeros(1, dtype=torch.float64), num_bins - 1,
                                    categorical=categorical, cat_left=cat_left[None])
        assert torch.equal(by_bins[:, 0].int(), leaf)
        for n in torch.unique(leaf).tolist():
            torch.testing.assert_close(sums[n, 1], hess[leaf == n].double().sum(),
                                       rtol=1e-6 if quantize_bins == 0 else 0.2, atol=1e-6)


def random_categorical_trees(trees, depth, features, categorical, generator):
    nodes = 2 ** (depth + 1) - 1
    feature = torch.randint(0, features, (trees, nodes), generator=generator, dtype=torch.int32)
    feature[:, 2 ** depth - 1:] = -1
    feature[torch.rand(trees, nodes, generator=generator) < 0.15] = -1
    threshold = torch.randn(trees, nodes, generator=generator)
    default_left = torch.rand(trees, nodes, generator=generator) < 0.5
    cat_left = torch.randint(-2 ** 31, 2 ** 31 - 1, (trees, nodes, 8), generator=generator,
                             dtype=torch.int32)
    cat_left[~categorical[feature.clamp_min(0).long()]] = 0
    value = torch.randn(trees, nodes, generator=generator)
    return feature, threshold, default_left, value, cat_left


@pytest.mark.parametrize("binned,depth", [(False, 5), (False, 8), (True, 5)])
def test_predict_matches_the_reference_walk(device, binned, depth):
    """Categorical splits in the kernel against the pure-PyTorch walk: codes in and out of a
    left set, NaN, codes past 255, negative and fractional values (missing), bins; nodes
    down to level 5 and deeper (read from registers and gathered by the CPU's SIMD walk)."""
    generator = torch.Generator().manual_seed(2)
    rows, features, trees = 500, 5, 7
    categorical = torch.tensor([True, False, True, True, False])
    feature, threshold, default_left, value, cat_left = random_categorical_trees(
        trees, depth, features, categorical, generator)
    if binned:
        x = torch.randint(0, 256, (rows, features), generator=generator, dtype=torch.uint8)
        threshold = torch.randint(0, 255, threshold.shape, generator=generator,
                                  dtype=torch.int32)
    else:
        x = torch.randn(rows, features, generator=generator)
        codes = torch.randint(0, 256, (rows, features), generator=generator).float()
        x = torch.where(categorical, codes, x)
        odd = torch.rand(rows, features, generator=generator)
        x[odd < 0.05] = torch.nan
        x[(odd > 0.05) & (odd < 0.08)] = -1.0
        x[(odd > 0.08) & (odd < 0.1)] = 300.0
        x[(odd > 0.1) & (odd < 0.12)] += 0.5
    group = torch.zeros(trees, dtype=torch.long)
    base = torch.zeros(1, dtype=torch.float64)
    args = [t.to(device) for t in (x, feature, threshold, default_left, value, group, base)]
    cats = dict(categorical=categorical.to(device), cat_left=cat_left.to(device))
    expected = reference.predict_trees(*[t.cpu() for t in args], 255, categorical=categorical,
                                 cat_left=cat_left)
    got = ops.predict_trees(*args, 255, **cats)
    torch.testing.assert_close(got.cpu(), expected, rtol=1e-12, atol=1e-12)
    if device == "cpu" and not binned:
        # the rows 64 at a time and one at a time take the same paths
        torch.testing.assert_close(ops.predict_trees(args[0][:1], *args[1:], 255, **cats),
                                   expected[:1], rtol=1e-12, atol=1e-12)


@needs_extension
def test_opcheck_and_bad_input():
    generator = torch.Generator().manual_seed(3)
    bins = torch.randint(0, 16, (200, 3), generator=generator, dtype=torch.uint8)
    grad, hess = torch.randn(200, generator=generator), torch.rand(200, generator=generator)
    categorical = torch.tensor([True, False, True])
    torch.library.opcheck(torch.ops.pynotes.gbdt_grow_tree.default,
                          (bins, grad, hess, None, 3, 16, 1.0, 0.0, 1.0, 0, 0, categorical))
    feature, threshold, default_left, value, cat_left = random_categorical_trees(
        2, 3, 3, categorical, generator)
    x = torch.randint(0, 20, (50, 3), generator=generator).float()
    rest = (value, torch.zeros(2, dtype=torch.long), torch.zeros(1, dtype=torch.float64), 255)
    torch.library.opcheck(torch.ops.pynotes.gbdt_predict.default,
                          (x, feature, threshold, default_left, *rest, categorical, cat_left))
    with pytest.raises(ValueError, match="categorical and cat_left come together"):
        ops.predict_trees(x, feature, threshold, default_left, *rest, categorical=categorical)
    with pytest.raises(ValueError, match=r"cat_left must have shape \(trees, nodes, 8\)"):
        ops.predict_trees(x, feature, threshold, default_left, *rest, categorical=categorical,
                          cat_left=cat_left[..., :4])
    with pytest.raises(ValueError, match=r"categorical.size\(0\) must be the number of "
                                         r"features = 3"):
        ops.grow_tree(bins, grad, hess, 3, 16, categorical=categorical[:2])
    with pytest.raises(TypeError, match="categorical must have dtype Bool"):
        ops.grow_tree(bins, grad, hess, 3, 16, categorical=categorical.int())
    with _ext.force_fallback(), pytest.raises(NotImplementedError,
                                              match="categorical features run on the CPU"):
        ops.grow_tree(bins, grad, hess, 3, 16, categorical=categorical)
    with pytest.raises(ValueError, match=r"categorical feature 0 must hold integer codes"):
        ops.quantize(torch.tensor([[0.0], [1.5]]), 16, categorical=torch.tensor([True]))


# -- the trainer ------------------------------------------------------------------------------

def category_frame(rows=3000, seed=0):
    """A DataFrame of a numeric column, a 12-level string category whose set {b, e, f, k}
    drives the label, and an integer-coded column; and the label."""
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(seed)
    levels = np.array(list("abcdefghijkl"), dtype=object)
    codes = rng.integers(0, 12, rows)
    x0 = rng.normal(size=rows)
    frame = pd.DataFrame({"x0": x0, "letter": pd.Categorical(levels[codes], categories=levels),
                          "code": rng.integers(0, 30, rows)})
    y = (np.isin(codes, [1, 4, 5, 10]) ^ (rng.random(rows) < 0.05)).astype(int)
    return frame, y


def test_string_categories_split_as_a_set():
    """One tree of depth 1 finds the set {b, e, f, k}: as numbers the codes would need many
    splits."""
    X, y = category_frame()
    model = GBDTClassifier(n_estimators=1, max_depth=1, learning_rate=1.0).fit(X, y)
    assert model.is_categorical_.tolist() == [False, True, False]
    assert model.feature_importances_.argmax() == 1
    proba = model.predict_proba(X)[:, 1]
    in_set = X["letter"].isin(list("befk")).to_numpy()
    assert proba[in_set].min() > proba[~in_set].max()
    ordinal = X.assign(letter=X["letter"].cat.codes)
    numeric = GBDTClassifier(n_estimators=1, max_depth=1, learning_rate=1.0,
                             categorical_features=None).fit(ordinal, y)
    assert numeric.score(ordinal, y) < model.score(X, y) - 0.1


def test_unseen_and_missing_categories_go_the_default_way():
    pd = pytest.importorskip("pandas")
    X, y = category_frame()
    model = GBDTClassifier(n_estimators=20, max_depth=3).fit(X, y)
    probe = X.iloc[:5].copy()
    unseen = probe.assign(letter=pd.Categorical(["zz"] * 5))
    missing = probe.assign(letter=pd.Categorical([None] * 5, categories=["a"]))
    np.testing.assert_array_equal(model.predict_proba(unseen), model.predict_proba(missing))
    # the same rows with the categories in another order predict the same
    reordered = probe.assign(letter=probe["letter"].cat.reorder_categories(
        list(reversed(probe["letter"].cat.categories))))
    np.testing.assert_array_equal(model.predict_proba(reordered), model.predict_proba(probe))
    as_strings = probe.assign(letter=probe["letter"].astype(object))
    model_strings = GBDTClassifier(n_estimators=20, max_depth=3,
                                   categorical_features=["letter"]).fit(
        X.assign(letter=X["letter"].astype(object)), y)
    np.testing.assert_array_equal(model_strings.predict_proba(as_strings),
                                  model.predict_proba(probe))


def test_categorical_features_forms_agree():
    """Names, indices and a mask name the same features, on a frame or an array of codes."""
    X, y = category_frame()
    X = X.assign(letter=X["letter"].cat.codes)
    expected = None
    for spec in (["letter", "code"], [1, 2], np.array([False, True, True])):
        for data in (X, X.to_numpy()):
            if isinstance(spec, list) and isinstance(spec[0], str) and data is not X:
                continue
            model = GBDTRegressor(n_estimators=10, max_depth=3, categorical_features=spec)
            got = model.fit(data, y).predict(data)
            assert model.is_categorical_.tolist() == [False, True, True]
            if expected is None:
                expected = got
            np.testing.assert_array_equal(got, expected)
    assert not GBDTRegressor(n_estimators=2).fit(X.to_numpy(), y).is_categorical_.any()


@pytest.mark.parametrize("spec,message", [
    ("yes", "categorical_features must be None, 'from_dtype', or indices"),
    ([0, 3], r"categorical_features indices must be in \[0, 3\)"),
    ([True, False], "mask must have one bool per feature"),
    (["nope"], r"names not among X's columns: \['nope'\]"),
])
def test_bad_categorical_features(spec, message):
    X, y = category_frame(300)
    with pytest.raises(ValueError, match=message):
        GBDTClassifier(n_estimators=2, categorical_features=spec).fit(X, y)


def test_bad_categorical_input():
    X, y = category_frame(300)
    with pytest.raises(ValueError, match=r"columns \['letter'\] are not numeric"):
        GBDTClassifier(n_estimators=2, categorical_features=None).fit(X, y)
    with pytest.raises(ValueError, match="need X to be a DataFrame"):
        GBDTClassifier(n_estimators=2, categorical_features=["letter"]).fit(X.to_numpy(), y)
    with pytest.raises(ValueError, match="categorical features train on the CPU only"):
        GBDTClassifier(n_estimators=2, device="cuda").fit(X, y)
    codes = X.assign(letter=X["letter"].cat.codes)
    model = GBDTClassifier(n_estimators=2, categorical_features=[2]).fit(codes, y)
    with pytest.raises(ValueError, match="categorical feature 'code': values of type str"):
        model.predict(codes.assign(code="x"))


def test_many_levels_keep_the_most_frequent():
    """Past max_bins - 1 levels the rarest count as missing (the model still trains)."""
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(4)
    codes = np.minimum(rng.zipf(1.3, 5000), 400)
    X = pd.DataFrame({"c": pd.Categorical([f"v{c}" for c in codes])})
    y = (codes % 3 == 0).astype(float)
    model = GBDTRegressor(n_estimators=5, max_bins=32).fit(X, y)
    kept = set(model._categories[0].values.tolist())
    counts = X["c"].value_counts()
    assert len(kept) == 31 and kept == set(counts.index[:31])
    rare = X[~X["c"].isin(list(kept))].iloc[:3]
    np.testing.assert_array_equal(model.predict(rare),
                                  model.predict(rare.assign(c=pd.Categorical([None] * 3))))


def test_save_and_load_with_categories(tmp_path):
    X, y = category_frame()
    X_val, y_val = category_frame(500, seed=1)
    model = GBDTClassifier(n_estimators=30, max_depth=4, early_stopping_rounds=3).fit(
        X, y, eval_set=[(X_val, y_val)])
    path = tmp_path / "model.json"
    model.save_model(path)
    loaded = GBDTClassifier().load_model(path)
    np.testing.assert_array_equal(loaded.predict_proba(X_val), model.predict_proba(X_val))
    assert loaded.feature_names_in_.tolist() == ["x0", "letter", "code"]
    assert loaded.is_categorical_.tolist() == [False, True, False]
    assert model.score(X_val, y_val) > 0.9


def test_predict_frame_rows_as_validated():
    """A DataFrame of the fitted columns skips scikit-learn's validation: the same features
    (bit for bit, NaN where missing or unseen) as the full path, for numeric columns of any
    NumPy dtype, categories in any order, unseen and missing; other frames take the full
    path, with its errors. The cached codes of a dtype are not pickled."""
    import pickle
    pd = pytest.importorskip("pandas")
    X, y = category_frame()
    X = X.assign(x0=X["x0"].astype(np.float32), small=(np.arange(len(X)) % 100).astype(np.int8))
    model = GBDTClassifier(n_estimators=5, max_depth=3).fit(X, y)
    probe = X.iloc[:6].copy()
    probe.loc[probe.index[1], "x0"] = np.inf
    frames = [probe, probe.iloc[[2]], X,
              probe.assign(letter=pd.Categorical(["zz", None, "a", "b", "zz", "l"])),
              probe.assign(letter=probe["letter"].cat.reorder_categories(
                  list(reversed(probe["letter"].cat.categories)))),
              probe.assign(x0=probe["x0"].astype(np.float64), code=probe["code"] * 1.5)]
    for frame in frames:
        fast = model._frame_rows(frame)
        assert fast is not None
        full, _ = model._features(frame, reset=False)
        torch.testing.assert_close(fast, full, rtol=0, atol=0, equal_nan=True)
        torch.testing.assert_close(model._margins(frame), model._ensemble.margins(full, "cpu"),
                                   rtol=0, atol=0)
    others = [probe[["letter", "x0", "code", "small"]],  # columns in another order
              probe.assign(letter=probe["letter"].astype(object)),  # not a category column
              probe.assign(code=probe["code"].astype("Int64")),  # a pandas extension dtype
              probe.assign(extra=1.0), probe.iloc[:0]]
    for frame in others:
        assert model._frame_rows(frame) is None
    with pytest.raises(ValueError, match="feature names"):
        model.predict_proba(others[0])
    with pytest.raises(ValueError, match="0 sample"):
        model.predict_proba(others[-1])
    assert model._categories[1]._lookup is not None
    assert pickle.loads(pickle.dumps(model))._categories[1]._lookup is None
