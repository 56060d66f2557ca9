"""The trained model: trees as flat tensors in heap order (Ensemble), its margins, and the JSON
that save_model writes and load_model reads."""
import json

import numpy as np
import torch
from sklearn.utils.validation import check_is_fitted

from pynotes.gbdt.categories import Categories
from pynotes.gbdt.objectives import Objective
from pynotes.ops import gbdt as ops

FORMAT = "pynotes.gbdt"


class Ensemble:
    """Trees as (trees, nodes) tensors in heap order, plus each tree's output column; with
    categorical features (categorical: a bool per feature) each tree's (nodes, 8) bitsets of
    the categories its categorical splits send left."""
    _PER_TREE = ("feature", "threshold", "default_left", "value", "group", "cat_left")

    def __init__(self, nodes, groups, base, categorical=None):
        self.nodes, self.groups, self.base = nodes, groups, base
        self.categorical = categorical if categorical is not None and bool(categorical.any()) \
            else None
        for name in self._PER_TREE:
            setattr(self, name, [])
        self._stacked = None  # (device, tensors) of every tree, for repeated predictions

    def add(self, feature, threshold, default_left, value, group, cat_left=None):
        self._stacked = None
        self.feature.append(feature.int().cpu())
        self.threshold.append(threshold.float().cpu())
        self.default_left.append(default_left.bool().cpu())
        self.value.append(value.float().cpu())
        self.group.append(group)
        if self.categorical is not None:
            self.cat_left.append(cat_left.int().cpu())

    def truncate(self, trees):
        self._stacked = None
        for name in self._PER_TREE:
            setattr(self, name, getattr(self, name)[:trees])

    def tensors(self, device, first=0):
        if first == 0 and self._stacked is not None and self._stacked[0] == device:
            return self._stacked[1]

        def stack(items, dtype):
            kept = items[first:]
            return (torch.stack(kept) if kept else
                    torch.zeros(0, self.nodes, dtype=dtype)).to(device)
        categories = (None, None)
        if self.categorical is not None:
            kept = self.cat_left[first:]
            categories = (self.categorical.to(device), (
                torch.stack(kept) if kept else
                torch.zeros(0, self.nodes, 8, dtype=torch.int32)).to(device))
        stacked = (stack(self.feature, torch.int32), stack(self.threshold, torch.float32),
                   stack(self.default_left, torch.bool), stack(self.value, torch.float32),
                   torch.tensor(self.group[first:], dtype=torch.long, device=device), categories)
        if first == 0:
            self._stacked = (device, stacked)
        return stacked

    def margins(self, x, device, first=0, base=None):
        base = self.base if base is None else base
        *trees, (categorical, cat_left) = self.tensors(device, first)
        return ops.predict_trees(x, *trees, base.to(device), categorical=categorical,
                                 cat_left=cat_left)

    def to_json(self):
        data = {"nodes": self.nodes, "groups": self.groups, "base": self.base.tolist(),
                "feature": [t.tolist() for t in self.feature],
                "threshold": [t.tolist() for t in self.threshold],
                "default_left": [t.tolist() for t in self.default_left],
                "value": [t.tolist() for t in self.value], "group": list(self.group)}
        if self.categorical is not None:
            # Per tree, [node, bitset words] of each categorical split.
            data["categorical"] = self.categorical.tolist()
            data["cat_left"] = [[[n, bits[n].tolist()] for n in
                                 torch.nonzero(bits.any(1)).flatten().tolist()]
                                for bits in self.cat_left]
        return data

    @classmethod
    def from_json(cls, data):
        categorical = torch.tensor(data["categorical"]) if "categorical" in data else None
        ensemble = cls(data["nodes"], data["groups"], torch.tensor(data["base"],
                                                                   dtype=torch.float64),
                       categorical)
        for i, (f, t, d, v, g) in enumerate(zip(data["feature"], data["threshold"],
                                                data["default_left"], data["value"],
                                                data["group"])):
            cat_left = None
            if categorical is not None:
                cat_left = torch.zeros(data["nodes"], 8, dtype=torch.int32)
                for node, words in data["cat_left"][i]:
                    cat_left[node] = torch.tensor(words, dtype=torch.int32)
            ensemble.add(torch.tensor(f), torch.tensor(t), torch.tensor(d), torch.tensor(v), g,
                         cat_left)
        return ensemble


def save(estimator, path):
    """Writes a fitted estimator (parameters and trees) to path as JSON; load reads it back."""
    check_is_fitted(estimator, "_ensemble")
    params = estimator.get_params()
    if not isinstance(params["categorical_features"], (str, type(None))):
        params["categorical_features"] = np.asarray(params["categorical_features"]).tolist()
    data = {"format": FORMAT, "version": 1, "estimator": type(estimator).__name__,
            "params": params, "objective": estimator._objective.name,
            "n_features_in": int(estimator.n_features_in_),
            "feature_importances": estimator.feature_importances_.tolist(),
            "best_iteration": estimator.best_iteration_,
            "ensemble": estimator._ensemble.to_json(),
            "is_categorical": estimator.is_categorical_.tolist(),
            "categories": [c.values.tolist() if c is not None else None
                           for c in estimator._categories]}
    if hasattr(estimator, "classes_"):
        data["classes"] = estimator.classes_.tolist()
    if hasattr(estimator, "feature_names_in_"):
        data["feature_names"] = estimator.feature_names_in_.tolist()
    with open(path, "w") as f:
        json.dump(data, f)


def load(estimator, path):
    """Restores into estimator a model that save wrote (of the same estimator class)."""
    with open(path) as f:
        data = json.load(f)
    if data.get("format") != FORMAT or data.get("estimator") != type(estimator).__name__:
        raise ValueError(f"{type(estimator).__name__}.load_model: {path} is not a saved "
                         f"{type(estimator).__name__}")
    estimator.set_params(**data["params"])
    estimator._objective = Objective(data["objective"])
    estimator.n_features_in_ = data["n_features_in"]
    estimator.feature_importances_ = np.asarray(data["feature_importances"])
    estimator.best_iteration_ = data["best_iteration"]
    estimator._ensemble = Ensemble.from_json(data["ensemble"])
    features = estimator.n_features_in_
    estimator.is_categorical_ = np.asarray(data.get("is_categorical", [False] * features),
                                           dtype=bool)
    estimator._categories = [Categories(c) if c is not None else None
                             for c in data.get("categories", [None] * features)]
    if "classes" in data:
        estimator.classes_ = np.asarray(data["classes"])
    if "feature_names" in data:
        estimator.feature_names_in_ = np.asarray(data["feature_names"], dtype=object)
    elif hasattr(estimator, "feature_names_in_"):
        del estimator.feature_names_in_
    return estimator
