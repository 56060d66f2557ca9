"""The contract every operator in torch.ops.pynotes keeps, checked op by op: a fake kernel
(torch.compile, export), a vmap rule, an Autograd-key kernel (its derivative, or the refusal of
a not-differentiable op) unless it is a backward or training-forward op that only the public
function's autograd.Function calls, the autocast rules of _autocast.py, a public function, a
pure-PyTorch reference, a case in tests/test_modes.py and a benchmark. A new op fails here
until its row below is added and every part exists."""
import importlib
import pathlib

import pytest
import torch

import pynotes
from pynotes import _ext
from pynotes.ops import _autocast

pytestmark = pytest.mark.skipif(not _ext.extension_loaded(), reason="extension not built")

ROOT = pathlib.Path(__file__).resolve().parents[1]
DIFFERENTIABLE, NOT_DIFFERENTIABLE, INTERNAL = "derivative", "refuses gradients", "internal"

# op: (public function, reference, Autograd kernel, test_modes case, benchmark: file and what
# it times there; the GBDT level ops run in the estimators' fit and predict). The
# references are pure PyTorch (pynotes.reference), but for grow_tree: the loop of the level ops
# (the CUDA and fallback path), which run their references under PYNOTES_FORCE_FALLBACK=1.
# An INTERNAL op is called by its public function's autograd.Function (its backward, or the
# forward that keeps the backward's workspace); the reference of its result is the public
# function's reference, differentiated.
CONTRACT = {
    "group_norm": ("ops.group_norm", "reference.group_norm.group_norm",
                   DIFFERENTIABLE, "group_norm", "group_norm:GroupNorm"),
    "group_norm_backward": ("ops.group_norm", "reference.group_norm.group_norm",
                            INTERNAL, "group_norm", "group_norm:GroupNorm"),
    "lstm_cell": ("ops.lstm_cell", "reference.lstm.lstm_cell",
                  DIFFERENTIABLE, "lstm_cell", "lstm:LSTMCell"),
    "lstm_cell_backward": ("ops.lstm_cell", "reference.lstm.lstm_cell",
                           INTERNAL, "lstm_cell", "lstm:LSTMCell"),
    "lstm_layer": ("ops.lstm_layer", "reference.lstm.lstm_layer",
                   DIFFERENTIABLE, "lstm_layer", "lstm:pynotes.nn.LSTM("),
    "lstm_layer_train": ("ops.lstm_layer", "reference.lstm.lstm_layer",
                         INTERNAL, "lstm_layer", "lstm:pynotes.nn.LSTM("),
    "lstm_layer_backward": ("ops.lstm_layer", "reference.lstm.lstm_layer",
                            INTERNAL, "lstm_layer", "lstm:pynotes.nn.LSTM("),
    "gcn_propagate": ("ops.gcn_propagate", "reference.gcn.gcn_propagate",
                      DIFFERENTIABLE, "gcn_propagate", "gcn:gcn_propagate"),
    "gcn_propagate_backward": ("ops.gcn_propagate", "reference.gcn.gcn_propagate",
                               INTERNAL, "gcn_propagate", "gcn:gcn_propagate"),
    "graph_csr": ("graph.gcn_norm", "reference.graph.graph_csr",
                  NOT_DIFFERENTIABLE, "GCNConv", "gcn:gcn_norm"),
    "graph_values": ("graph.gcn_norm", "reference.graph.graph_values",
                     NOT_DIFFERENTIABLE, "GCNConv", "gcn:gcn_norm"),
    "iwae_bound": ("ops.iwae_bound", "reference.iwae.iwae_bound",
                   DIFFERENTIABLE, "iwae_bound", "iwae:iwae_bound"),
    "iwae_bound_backward": ("ops.iwae_bound", "reference.iwae.iwae_bound",
                            INTERNAL, "iwae_bound", "iwae:iwae_bound"),
    "importance_weights": ("ops.importance_weights", "reference.iwae.importance_weights",
                           DIFFERENTIABLE, "importance_weights", "iwae:importance_weights"),
    "gbdt_bin": ("ops.bin_features", "reference.gbdt.bin_features",
                 NOT_DIFFERENTIABLE, "quantize", "gbdt:GBDTClassifier"),
    "gbdt_histogram": ("ops.build_histogram", "reference.gbdt.build_histogram",
                       NOT_DIFFERENTIABLE, "build_histogram", "gbdt:build_histogram"),
    "gbdt_best_splits": ("ops.find_best_splits", "reference.gbdt.find_best_splits",
                         NOT_DIFFERENTIABLE, "find_best_splits", "gbdt:GBDTClassifier"),
    "gbdt_advance": ("ops.advance_nodes", "reference.gbdt.advance_nodes",
                     NOT_DIFFERENTIABLE, "advance_nodes", "gbdt:GBDTClassifier"),
    "gbdt_predict": ("ops.predict_trees", "reference.gbdt.predict_trees",
                     NOT_DIFFERENTIABLE, "predict_trees", "gbdt:GBDTClassifier"),
    "gbdt_grow_tree": ("ops.grow_tree", "gbdt.grower.grow_tree_by_levels",
                       NOT_DIFFERENTIABLE, "grow_tree", "gbdt:GBDTClassifier"),
}


def registered_ops():
    return sorted(name for name in dir(torch.ops.pynotes)
                  if isinstance(getattr(torch.ops.pynotes, name), torch._ops.OpOverloadPacket))


def has_kernel(op, key):
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"pynotes::{op}", key)


def resolve(root, dotted):
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(f"{root}.{module}"), name, None)


def test_every_registered_op_has_a_row():
    ops = registered_ops()
    assert not set(ops) - set(CONTRACT), \
        f"ops without a row in CONTRACT: {sorted(set(ops) - set(CONTRACT))}"
    assert not set(CONTRACT) - set(ops), \
        f"rows of ops that are not registered: {sorted(set(CONTRACT) - set(ops))}"


@pytest.mark.parametrize("op", sorted(CONTRACT))
def test_op_keeps_the_contract(op):
    public, reference, autograd, case, benchmark = CONTRACT[op]
    bench_file, timed = benchmark.split(":")
    missing = []
    from torch._library.simple_registry import singleton
    if singleton.find(f"pynotes::{op}").fake_impl.kernel is None:
        missing.append("a fake kernel (torch.library.register_fake)")
    if not has_kernel(op, "FuncTorchBatched"):
        missing.append("a vmap rule (torch.library.register_vmap)")
    if (autograd != INTERNAL) != has_kernel(op, "Autograd"):
        missing.append("an Autograd kernel" if autograd != INTERNAL else
                       "no Autograd kernel (an internal op of a Function)")
    for device in ("cpu", "cuda"):  # (no rule: on none of torch's autocast lists)
        rule = _autocast.POLICIES.get(op, {}).get(device)
        if (rule is not None) != has_kernel(op, f"Autocast{device.upper()}"):
            missing.append(f"its {device} autocast rule ({rule or 'none'}, as _autocast.py "
                           "says) registered")
    if not callable(resolve("pynotes", public)):
        missing.append(f"its public function pynotes.{public}")
    if not callable(resolve("pynotes", reference)):
        missing.append(f"its reference pynotes.{reference}")
    if case not in CASE_NAMES:
        missing.append(f"a case {case!r} in tests/test_modes.py")
    bench = ROOT / "benchmarks" / f"{bench_file}.py"
    if not bench.exists() or timed not in bench.read_text():
        missing.append(f"a benchmark of {timed} in benchmarks/{bench_file}.py")
    assert not missing, f"pynotes::{op} lacks: " + "; ".join(missing)


def _case_names():
    import test_modes
    return {case.name for case in test_modes.CASES}


CASE_NAMES = _case_names()
