"""The contract every operator in torch.ops.pynotes keeps, checked op by op: a fake kernel
(torch.compile, export), a vmap rule, an Autograd-key kernel (its derivative, or the refusal of
a not-differentiable op) unless it is a backward or training-forward op that only the public
function's autograd.Function calls, the autocast rules of _autocast.py, a public function, a
pure-PyTorch reference, a case in tests/test_modes.py and a benchmark. A new op fails here
until its row below is added and every part exists."""
import importlib
import inspect
import pathlib

import pytest
import torch

import pynotes.graph
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
    if autograd != INTERNAL and op not in _autocast.POLICIES:
        missing.append("its entry in _autocast.POLICIES ({} where no autocast list has it)")
    for device in ("cpu", "cuda"):  # (no rule: on none of torch's autocast lists)
        rule = _autocast.POLICIES.get(op, {}).get(device)
        if (rule is not None) != has_kernel(op, f"Autocast{device.upper()}"):
            missing.append(f"its {device} autocast rule ({rule or 'none'}, as _autocast.py "
                           "says) registered")
    function, oracle = resolve("pynotes", public), resolve("pynotes", reference)
    if not callable(function):
        missing.append(f"its public function pynotes.{public}")
    if not callable(oracle):
        missing.append(f"its reference pynotes.{reference}")
    elif callable(function) and function.__name__ == oracle.__name__ and \
            inspect.signature(function) != inspect.signature(oracle):
        missing.append(f"its reference with the public function's signature {public}"
                       f"{inspect.signature(function)}")
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


def _gcn_args(device):
    g = torch.Generator().manual_seed(4)
    edge_index = torch.randint(0, 9, (2, 30), generator=g).to(device)
    weight = torch.rand(30, generator=g, dtype=torch.float64).to(device)
    adj = pynotes.graph.gcn_norm(edge_index, 9, weight)
    x = torch.randn(9, 4, generator=g, dtype=torch.float64).to(device)
    return (x, adj.rowptr, adj.col, adj.weight.detach(), adj.scale, adj.rowptr_t, adj.col_t,
            adj.perm_t)


def _parity_cases():
    """Per differentiable op: (its Python autograd.Function, raw float64 arguments on a
    device, the outputs that carry gradients)."""
    gcn, group_norm, iwae, lstm = (importlib.import_module(f"pynotes.ops.{family}")
                                   for family in ("gcn", "group_norm", "iwae", "lstm"))
    from test_modes import RAW_OPS
    return {
        "group_norm": (group_norm.GroupNormFunction, lambda d: (
            RAW_OPS["group_norm"](d)[0], 2, *(torch.randn(4, dtype=torch.float64, device=d)
                                              for _ in range(2)), 1e-5, True), (0,)),
        "lstm_cell": (lstm.LstmCellFunction, RAW_OPS["lstm_cell"], (0, 1)),
        "lstm_layer": (lstm.LstmLayerFunction,  # (w_hr, batch_sizes, reverse)
                       lambda d: (*RAW_OPS["lstm_layer"](d), None, None, True), (0, 1, 2)),
        "gcn_propagate": (gcn.GcnPropagateFunction, _gcn_args, (0,)),
        "iwae_bound": (iwae.IwaeBoundFunction,
                       lambda d: (*RAW_OPS["iwae_bound"](d), 1, False), (0,)),
        "importance_weights": (iwae.ImportanceWeightsFunction,
                               lambda d: (*RAW_OPS["importance_weights"](d), 1), (0,)),
    }


PARITY = _parity_cases()


def test_every_differentiable_op_has_a_parity_case():
    assert set(PARITY) == {op for op, row in CONTRACT.items() if row[2] == DIFFERENTIABLE}


@pytest.mark.parametrize("op", sorted(PARITY))
def test_cpp_and_python_autograd_agree(device, op):
    """The raw op differentiates through its C++ Autograd kernel, the public function through
    its Python autograd.Function: the same outputs and first derivatives in float64."""
    from pynotes.ops import _autograd
    function, make, outputs = PARITY[op]
    args = make(device)
    results = []
    for run in (lambda a: getattr(torch.ops.pynotes, op)(*a),
                lambda a: _autograd.apply(function, *a)):
        leaves = [a.detach().clone().requires_grad_() if _autograd.differentiable(a) else a
                  for a in args]
        out = run(leaves)
        out = out if isinstance(out, (tuple, list)) else (out,)
        g = torch.Generator().manual_seed(5)
        grads = [torch.randn(out[i].shape, generator=g, dtype=out[i].dtype).to(device)
                 for i in outputs]
        wrt = [a for a in leaves if isinstance(a, torch.Tensor) and a.requires_grad]
        results.append(([out[i].detach() for i in outputs],
                        torch.autograd.grad([out[i] for i in outputs], wrt, grads)))
    (raw_out, raw_grads), (py_out, py_grads) = results
    for a, b in zip(raw_out + list(raw_grads), py_out + list(py_grads), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
