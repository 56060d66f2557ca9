"""Categorical features: each one's categories in bin order, learnt in fit (of every process's
rows in a distributed fit), and the float codes (bins) that replace their values; which features
are categorical (categorical_features, as scikit-learn's HistGradientBoosting resolves it)."""
import numpy as np


def is_frame(X):
    return hasattr(X, "iloc") and hasattr(X, "dtypes") and hasattr(X, "columns")


class Categories:
    """One categorical feature's categories in bin order, and the codes (bins) of values."""

    def __init__(self, values):
        values = list(values)
        self.values = np.asarray(values, dtype=np.float64 if all_numbers(values) else object)
        self._order = np.argsort(self.values, kind="stable")
        self._sorted = self.values[self._order]
        self._lookup = None  # (pandas dtype, the codes of its categories): the last one seen

    def __getstate__(self):
        return {**self.__dict__, "_lookup": None}  # (a cache: not part of the model)

    @classmethod
    def fit(cls, column, max_codes, collective):
        """The categories of a training column (pandas categorical, or any array): at most
        max_codes, the most frequent (the others will count as missing), in the column's
        category order or sorted; of every process's column (distributed.Collective or Alone)."""
        values, counts, ordered = cls._count(column)
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
        present = present[~missing(present)]
        try:
            values, counts = np.unique(present.astype(np.float64) if all_numbers(present)
                                       else present, return_counts=True)
        except TypeError as e:
            raise ValueError(f"categories of mixed types that do not sort: {e}") from None
        return np.asarray(values, dtype=object), counts, False

    def codes(self, column):
        """float32 codes of a column; NaN for missing values and categories not seen in fit."""
        if getattr(column.dtype, "name", "") == "category":
            # The codes of the dtype's categories, kept for the next call: a one-row
            # prediction would spend most of its time computing them again.
            lookup = self._lookup  # (read once: another thread may replace it)
            if lookup is None or lookup[0] is not column.dtype:
                lookup = (column.dtype, np.append(
                    self.codes(np.asarray(column.cat.categories, dtype=object)),
                    np.float32(np.nan)))
                self._lookup = lookup
            return lookup[1][column.array.codes]  # code -1 (missing): the NaN appended
        column = np.asarray(column, dtype=object)
        out = np.full(column.shape[0], np.nan, dtype=np.float32)
        present = ~missing(column)
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


def missing(values):
    """Where an object array holds NaN or None."""
    return np.array([v is None or (isinstance(v, (float, np.floating)) and v != v)
                     for v in values], dtype=bool)


def all_numbers(values):
    """Whether every value is a number (not a bool): such categories are kept as float64."""
    return all(isinstance(v, (int, float, np.integer, np.floating)) and
               not isinstance(v, (bool, np.bool_)) for v in values)


def categorical_mask(estimator, X):
    """is_categorical_ of a training X: categorical_features resolved (None, "from_dtype",
    indices, names or a mask), as scikit-learn's HistGradientBoosting; None where X has no
    categorical feature by the spec's form alone (X is then left to validate_data)."""
    name = type(estimator).__name__
    spec = estimator.categorical_features
    columns = list(X.columns) if is_frame(X) else None
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
                     f"names or a mask of features, got {estimator.categorical_features!r}")


def encode(estimator, X, reset):
    """X with its categorical features replaced by their float codes (NaN: missing or
    unseen); in fit the categories are learnt first. A numeric X without categorical
    features comes back as it is."""
    name = type(estimator).__name__
    frame = is_frame(X)
    if reset:
        mask = categorical_mask(estimator, X)
        estimator.is_categorical_ = mask  # None: none (set by _features once X is validated)
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
        if mask.any() and str(estimator.device).startswith("cuda"):
            raise ValueError(f"{name}: categorical features train on the CPU only; use "
                             "device='cpu' (the model then predicts on either)")
        estimator._categories = [None] * mask.size
    mask = getattr(estimator, "is_categorical_", None)  # (absent in models pickled before it)
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
    elif not reset and hasattr(estimator, "feature_names_in_") and \
            all(isinstance(c, str) for c in X.columns) and \
            X.columns.tolist() != estimator.feature_names_in_.tolist():
        # (before the codes, which are taken by position: scikit-learn's check comes later)
        raise ValueError(f"{name}: the feature names should match those that were passed "
                         f"during fit, {estimator.feature_names_in_.tolist()}, in their "
                         f"order; got {X.columns.tolist()}")
    out = X.copy() if frame else X
    for f in np.flatnonzero(mask):
        column = X.iloc[:, f] if frame else X[:, f]
        label = repr(X.columns[f]) if frame else str(f)
        try:
            if reset:
                estimator._categories[f] = Categories.fit(column, estimator.max_bins - 1,
                                                          estimator._collective)
            codes = estimator._categories[f].codes(column)
        except ValueError as e:
            raise ValueError(f"{name}: categorical feature {label}: {e}") from None
        if frame:
            out[X.columns[f]] = codes
        else:
            out[:, f] = codes
    return out if frame else out.astype(np.float32)
