"""Every public op and layer in every mode users run it in (after PyTorch's OpInfo): eager in
each dtype, torch.autocast, second derivatives (gradgradcheck), torch.func (grad, jacrev, jvp,
vmap), torch.export and torch.compile(fullgraph=True). Each cell passes against the torch (or PyG-style)
equivalent, or raises the error the table names; docs/modes.md lists those errors."""
import contextlib
import copy
import math
import warnings
from dataclasses import dataclass, field

import pytest
import torch
import torch.nn.functional as F

import pynotes
from pynotes import _ext
from conftest import FLOAT_DTYPES, tolerance

pytestmark = pytest.mark.skipif(not _ext.extension_loaded(), reason="extension not built")

HALF = (torch.float16, torch.bfloat16)


@dataclass
class Case:
    name: str
    make: object          # (device, dtype) -> args
    fn: object            # the pynotes function: args -> tensor or tuple of tensors
    ref: object           # its torch equivalent, same args
    dtypes: tuple = tuple(FLOAT_DTYPES)
    differentiable: bool = True  # in its floating-point tensor arguments
    half_tolerance: float = 1.0  # a factor on conftest's float16/bfloat16 tolerances
    # mode -> (exception, message regex) it raises, or a reason the mode does not apply
    errors: dict = field(default_factory=dict)
    setup: object = contextlib.nullcontext  # a context some modes need (allow_rnn)


def rand(*shape, device, dtype, scale=1.0):
    return (torch.randn(*shape, dtype=torch.float64) * scale).to(device, dtype)


def requiring_grad(args):
    """args with every floating-point tensor a leaf that requires grad."""
    return tuple(a.detach().clone().requires_grad_()
                 if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)


def graph(device, nodes=12, edges=40):
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, nodes, (2, edges), generator=g).to(device)


def propagate_ref(x, adj):
    """adj @ x by torch ops (PyG's message passing), the values in x's dtype."""
    messages = x[adj.col.long()] * adj.values().to(x.dtype)[:, None]
    return messages.new_zeros(x.shape).index_add(0, adj.row_index(), messages)


def jvi_ref(x):
    k = x.shape[0]
    loo = torch.stack([torch.logsumexp(torch.cat([x[:i], x[i + 1:]]), 0) - math.log(k - 1)
                       for i in range(k)])
    return k * (torch.logsumexp(x, 0) - math.log(k)) - (k - 1) * loo.mean(0)


def lstm_ref(x, h, c, w_ih, w_hh, b_ih, b_hh):
    out, hy, cy = torch._VF.lstm(x, (h[None], c[None]), [w_ih, w_hh, b_ih, b_hh], True, 1, 0.0,
                                 False, False, False)
    return out, hy[0], cy[0]


def lstm_args(device, dtype, steps=None):
    b, i, h = 3, 5, 4
    x = rand(*((steps,) if steps else ()), b, i, device=device, dtype=dtype)
    return (x, rand(b, h, device=device, dtype=dtype), rand(b, h, device=device, dtype=dtype),
            rand(4 * h, i, device=device, dtype=dtype), rand(4 * h, h, device=device, dtype=dtype),
            rand(4 * h, device=device, dtype=dtype), rand(4 * h, device=device, dtype=dtype))


class Layer:
    """A pynotes layer and its torch twin with the same parameters, called on args."""

    def __init__(self, ours, theirs, call=lambda m, *a: m(*a)):
        self.ours, self.theirs, self.call = ours, theirs, call
        ours.load_state_dict(theirs.state_dict())

    def on(self, device, dtype):
        self.ours.to(device, dtype)
        self.theirs.to(device, dtype)
        # The twin in float64 too (made here, outside any torch.func transform).
        self.theirs64 = copy.deepcopy(self.theirs).double()
        return self

    def fn(self, *args):
        return self.call(self.ours, *args)

    def ref(self, *args):
        float64 = any(isinstance(a, torch.Tensor) and a.dtype == torch.float64 for a in args)
        return self.call(self.theirs64 if float64 else self.theirs, *args)


def layer_case(name, build, make, **kw):
    """A Case over a Layer built per (device, dtype)."""
    state = {}

    def make_args(device, dtype):
        state["layer"] = build().on(device, dtype)
        return make(device, dtype)
    return Case(name, make_args, lambda *a: state["layer"].fn(*a),
                lambda *a: state["layer"].ref(*a), **kw)


class DenseGCN(torch.nn.Module):
    """GCNConv as the dense formula with PyG's parameters (no PyG needed)."""

    def __init__(self, conv):
        super().__init__()
        self.lin, self.bias = conv.lin, conv.bias

    def forward(self, x, edge_index):
        adj = pynotes.graph.gcn_norm(edge_index, x.shape[0], dtype=x.dtype)
        return propagate_ref(self.lin(x), adj) + self.bias


class DenseCheb(torch.nn.Module):
    def __init__(self, conv):
        super().__init__()
        self.lins, self.bias = conv.lins, conv.bias

    def forward(self, x, edge_index):
        adj = pynotes.graph.cheb_norm(edge_index, x.shape[0], dtype=x.dtype)
        tx0, tx1 = x, -propagate_ref(x, adj)
        out = self.lins[0](tx0) + self.lins[1](tx1)
        tx2 = -2.0 * propagate_ref(tx1, adj) - tx0
        return out + self.lins[2](tx2) + self.bias


def conv_layer(conv, dense):
    return Layer(conv, dense(conv))


NOT_DIFFERENTIABLE = (RuntimeError, "is not differentiable")
EAGER_ONLY = (RuntimeError, "quantize: runs eagerly only")
GBDT = dict(dtypes=(torch.float32, torch.float64), differentiable=False,
            errors={"create_graph": NOT_DIFFERENTIABLE, "func_grad": NOT_DIFFERENTIABLE})


def gbdt_inputs(device, dtype):
    g = torch.Generator().manual_seed(2)
    bins = torch.randint(0, 8, (40, 3), generator=g, dtype=torch.uint8).to(device)
    grad = rand(40, device=device, dtype=dtype)
    hess = (torch.rand(40, generator=g, dtype=torch.float64) + 0.1).to(device, dtype)
    node = torch.zeros(40, dtype=torch.int32, device=device)
    slot = torch.zeros(1, dtype=torch.int32, device=device)
    return bins, grad, hess, node, slot


def split_inputs(device, dtype):
    """Histograms of 2 slots x 3 features x 8 bins, float64 whatever the case's dtype (the
    op's only type: sums of float32 gradients are kept in float64)."""
    g = torch.Generator().manual_seed(3)
    hist = torch.rand(2, 3, 8, 2, generator=g, dtype=torch.float64)
    hist[..., 0] -= 0.5
    return (hist.to(device),)


def level_inputs(device, dtype):
    bins, *_ = gbdt_inputs(device, dtype)
    node = torch.zeros(40, dtype=torch.int32, device=device)
    split = torch.tensor([1, -1, -1], dtype=torch.int32, device=device)
    return bins, node, split, torch.full_like(split, 3), torch.zeros(3, dtype=torch.bool,
                                                                      device=device)


def tree_inputs(device, dtype):
    x = rand(20, 3, device=device, dtype=dtype)
    feature = torch.tensor([[0, 1, -1, -1, -1, -1, -1]], dtype=torch.int32, device=device)
    threshold = torch.tensor([[0.0, 0.5, 0, 0, 0, 0, 0]], dtype=dtype, device=device)
    left = torch.zeros(1, 7, dtype=torch.bool, device=device)
    value = rand(1, 7, device=device, dtype=torch.float32)
    group = torch.zeros(1, dtype=torch.long, device=device)
    base = torch.zeros(1, dtype=torch.float64, device=device)
    return x, feature, threshold, left, value, group, base


def grow_tree_by_levels(*args):
    from pynotes.gbdt.grower import grow_tree_by_levels
    return grow_tree_by_levels(*args)


def reference_fn(name):
    from pynotes.reference import gbdt
    return getattr(gbdt, name)


CASES = [
    Case("group_norm", lambda d, t: (rand(2, 6, 5, 3, device=d, dtype=t),
                                     rand(6, device=d, dtype=t), rand(6, device=d, dtype=t)),
         lambda x, w, b: pynotes.ops.group_norm(x, 3, w, b),
         lambda x, w, b: F.group_norm(x, 3, w, b), half_tolerance=2),
    Case("group_norm_silu", lambda d, t: (rand(2, 6, 5, 3, device=d, dtype=t),
                                          rand(6, device=d, dtype=t), rand(6, device=d, dtype=t)),
         lambda x, w, b: pynotes.ops.group_norm(x, 3, w, b, activation="silu"),
         lambda x, w, b: F.silu(F.group_norm(x, 3, w, b)), half_tolerance=2),
    layer_case("GroupNorm(conv)", lambda: Layer(
        pynotes.nn.GroupNorm(2, 4), torch.nn.GroupNorm(2, 4),
        call=lambda m, x, conv_w: m(F.conv2d(x, conv_w, padding=1))),
        lambda d, t: (rand(2, 3, 5, 5, device=d, dtype=t), rand(4, 3, 3, 3, device=d, dtype=t)),
        half_tolerance=4),
    Case("lstm_cell", lambda d, t: lstm_args(d, t),
         lambda *a: pynotes.ops.lstm_cell(*a),
         lambda x, h, c, *w: torch._VF.lstm_cell(x, (h, c), *w), half_tolerance=2),
    Case("lstm_layer", lambda d, t: lstm_args(d, t, steps=4),
         lambda *a: pynotes.ops.lstm_layer(*a), lstm_ref, half_tolerance=2),
    layer_case("LSTM", lambda: Layer(pynotes.nn.LSTM(5, 4, 2), torch.nn.LSTM(5, 4, 2),
                                     call=lambda m, x: m(x)[0]),
               lambda d, t: (rand(4, 3, 5, device=d, dtype=t),), half_tolerance=3,
               setup=lambda: torch._dynamo.config.patch(allow_rnn=True)),
    layer_case("LSTMCell", lambda: Layer(pynotes.nn.LSTMCell(5, 4), torch.nn.LSTMCell(5, 4)),
               lambda d, t: (rand(3, 5, device=d, dtype=t),), half_tolerance=2),
    Case("gcn_propagate", lambda d, t: (rand(12, 3, device=d, dtype=t),
                                        pynotes.graph.gcn_norm(graph(d), 12,
                                                               dtype=torch.float64)),
         lambda x, adj: pynotes.ops.gcn_propagate(x, adj), propagate_ref),
    layer_case("GCNConv", lambda: conv_layer(pynotes.nn.GCNConv(6, 4), DenseGCN),
               lambda d, t: (rand(12, 6, device=d, dtype=t), graph(d)), half_tolerance=2),
    layer_case("ChebConv", lambda: conv_layer(pynotes.nn.ChebConv(6, 4, K=3), DenseCheb),
               lambda d, t: (rand(12, 6, device=d, dtype=t), graph(d)), half_tolerance=4),
    Case("iwae_bound", lambda d, t: (rand(7, 4, device=d, dtype=t, scale=3),),
         lambda x: pynotes.ops.iwae_bound(x, 0),
         lambda x: torch.logsumexp(x, 0) - math.log(x.shape[0])),
    Case("importance_weights", lambda d, t: (rand(7, 4, device=d, dtype=t, scale=3),),
         lambda x: pynotes.ops.importance_weights(x, 0)[0],
         lambda x: torch.logsumexp(x, 0) - math.log(x.shape[0])),
    Case("jvi_bound", lambda d, t: (rand(7, 4, device=d, dtype=t, scale=3),),
         lambda x: pynotes.ops.jvi_bound(x), jvi_ref, half_tolerance=4),
    Case("IWAELoss", lambda d, t: (rand(7, 4, device=d, dtype=t, scale=3),),
         lambda x: pynotes.nn.IWAELoss()(x),
         lambda x: -(torch.logsumexp(x, 0) - math.log(x.shape[0])).mean()),
    Case("quantize", lambda d, t: (rand(50, 3, device=d, dtype=t),),
         lambda x: pynotes.ops.quantize(x, 16)[0], lambda x: pynotes.ops.quantize(x, 16)[0],
         dtypes=(torch.float32, torch.float64), differentiable=False,
         errors={"create_graph": "integer outputs (bins): no derivatives to take",
                 **{m: EAGER_ONLY for m in ("func_grad", "vmap", "export", "compile")}}),
    Case("build_histogram", gbdt_inputs, lambda *a: pynotes.ops.build_histogram(*a, 1, 8),
         lambda *a: reference_fn("build_histogram")(*a, 1, 8), **GBDT),
    Case("predict_trees", tree_inputs, lambda *a: pynotes.ops.predict_trees(*a),
         lambda *a: reference_fn("predict_trees")(*a, 255), **GBDT),
    Case("find_best_splits", split_inputs, lambda h: pynotes.ops.find_best_splits(h),
         lambda h: reference_fn("find_best_splits")(h), **GBDT),
    Case("advance_nodes", level_inputs, lambda *a: pynotes.ops.advance_nodes(*a, 7),
         lambda *a: reference_fn("advance_nodes")(*a, 7),
         **{**GBDT, "errors": {m: "integer inputs and outputs: no derivatives to take"
                               for m in ("create_graph", "func_grad")}}),
    Case("grow_tree", lambda d, t: gbdt_inputs(d, t)[:3],
         lambda *a: pynotes.ops.grow_tree(*a, 2, 8),
         lambda *a: grow_tree_by_levels(*a, 2, 8, 1.0, 0.0, 1.0, None), **GBDT),
]
IDS = [c.name for c in CASES]


def floating(out):
    outs = out if isinstance(out, (tuple, list)) else (out,)
    return [o for o in outs if isinstance(o, torch.Tensor) and o.is_floating_point()]


def assert_matches(out, expected, dtype, case):
    tol = dict(tolerance(dtype))
    if dtype in HALF:
        tol = {k: v * case.half_tolerance for k, v in tol.items()}
    for a, e in zip(floating(out), floating(expected), strict=True):
        torch.testing.assert_close(a.double(), e.double(), **tol)


def as_float64(args):
    return tuple(a.detach().double().requires_grad_(a.requires_grad)
                 if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)


def differentiable(args):
    return [i for i, a in enumerate(args) if isinstance(a, torch.Tensor) and a.requires_grad]


@contextlib.contextmanager
def expected(case, mode):
    """Runs the cell, expecting the error the table names for it (if any)."""
    rule = case.errors.get(mode)
    if isinstance(rule, str):
        pytest.skip(rule)
    if rule is None:
        yield
    else:
        with pytest.raises(rule[0], match=rule[1]):
            yield


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_eager(device, case):
    for dtype in case.dtypes:
        args = case.make(device, dtype)
        out = case.fn(*args)
        assert [o.dtype for o in floating(out)] == [o.dtype for o in floating(case.ref(*args))]
        assert_matches(out, case.ref(*as_float64(args)), dtype, case)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_autocast(device, case):
    """Output dtypes and values as the torch equivalent's under autocast (float32 inputs)."""
    low = torch.bfloat16 if device == "cpu" else torch.float16
    args = case.make(device, torch.float32)
    with torch.autocast(device, dtype=low):
        out = case.fn(*args)
        try:
            expected_out = case.ref(*args)
        except RuntimeError as e:  # torch's bfloat16 LSTM is oneDNN's, which needs AVX-512
            if device == "cpu" and "could not create a primitive descriptor" in str(e):
                pytest.skip(f"torch's own op cannot run under autocast on this CPU: {e}")
            raise
    assert [o.dtype for o in floating(out)] == [o.dtype for o in floating(expected_out)]
    assert_matches(out, expected_out, low, case)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_create_graph(device, case):
    args = requiring_grad(case.make(device, torch.float64))
    wrt = differentiable(args)

    def fn(*values):
        full = list(args)
        for i, v in zip(wrt, values):
            full[i] = v
        return tuple(floating(case.fn(*full)))
    with expected(case, "create_graph"):
        assert torch.autograd.gradgradcheck(fn, [args[i] for i in wrt])


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_func_grad(device, case):
    args = requiring_grad(case.make(device, torch.float64))
    wrt = tuple(differentiable(args))

    def loss(fn):
        return lambda *a: sum((o * o).sum() for o in floating(fn(*a)))
    with expected(case, "func_grad"):
        got = torch.func.grad(loss(case.fn), argnums=wrt)(*args)
        want = torch.func.grad(loss(case.ref), argnums=wrt)(*args)
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(g, w)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_func_jacrev_and_jvp(device, case):
    """Reverse-mode Jacobians and forward-mode tangents (torch.func.jacrev, torch.func.jvp)."""
    args = requiring_grad(case.make(device, torch.float64))
    wrt = differentiable(args)
    if not case.differentiable:
        pytest.skip("not differentiable (test_func_grad names the error)")

    def partial(fn):
        def run(*values):
            full = list(args)
            for i, v in zip(wrt, values):
                full[i] = v
            return tuple(floating(fn(*full)))
        return run
    primals = tuple(args[i].detach() for i in wrt)
    tangents = tuple(torch.randn_like(p) for p in primals)
    for got, want in zip(torch.func.jacrev(partial(case.fn), argnums=0)(*primals),
                         torch.func.jacrev(partial(case.ref), argnums=0)(*primals)):
        torch.testing.assert_close(got, want)
    _, got = torch.func.jvp(partial(case.fn), primals, tangents)
    _, want = torch.func.jvp(partial(case.ref), primals, tangents)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_vmap(device, case):
    """vmap over a stack of first arguments: its batching rule, no per-sample fallback."""
    args = case.make(device, torch.float32)
    first = torch.stack([case.make(device, torch.float32)[0].detach() for _ in range(3)])
    in_dims = (0,) + (None,) * (len(args) - 1)
    with expected(case, "vmap"), warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*performance drop.*")
        got = torch.func.vmap(case.fn, in_dims)(first, *args[1:])
        for i in range(3):
            one = case.fn(first[i], *args[1:])
            for a, e in zip(floating(got), floating(one), strict=True):
                torch.testing.assert_close(a[i], e, **tolerance(torch.float32))


class Wrapped(torch.nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *args):
        return self.fn(*args)


def detached(args):
    return tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_export(device, case):
    args = detached(case.make(device, torch.float32))
    tensor_args = [a for a in args if isinstance(a, torch.Tensor)]
    if len(tensor_args) != len(args):  # an Adjacency argument: exported as a constant
        fn, args = (lambda adj: lambda x: case.fn(x, adj))(args[1]), args[:1]
    else:
        fn = case.fn
    with expected(case, "export"), case.setup():
        program = torch.export.export(Wrapped(fn), args)
        for a, e in zip(floating(program.module()(*args)), floating(fn(*args)), strict=True):
            torch.testing.assert_close(a, e)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_compile(device, case):
    """torch.compile(fullgraph=True) forward and, where differentiable, backward."""
    args = case.make(device, torch.float32)
    if case.differentiable:
        args = requiring_grad(args)
    wrt = differentiable(args)

    def outputs_and_grads(fn):
        out = floating(fn(*args))
        if wrt and all(o.requires_grad for o in out):
            out += torch.autograd.grad(sum(o.sum() for o in out), [args[i] for i in wrt])
        return out
    with expected(case, "compile"), case.setup():
        torch._dynamo.reset()
        compiled = torch.compile(case.fn, fullgraph=True, backend="aot_eager")
        for a, e in zip(outputs_and_grads(compiled), outputs_and_grads(case.fn), strict=True):
            torch.testing.assert_close(a, e, **tolerance(torch.float32))


RAW_OPS = {
    "group_norm": lambda d: (rand(2, 4, 3, device=d, dtype=torch.float64), 2, None, None, 1e-5,
                             False),
    "lstm_cell": lambda d: lstm_args(d, torch.float64),
    "lstm_layer": lambda d: lstm_args(d, torch.float64, steps=3),
    "iwae_bound": lambda d: (rand(5, 3, device=d, dtype=torch.float64),),
    "importance_weights": lambda d: (rand(5, 3, device=d, dtype=torch.float64),),
}


@pytest.mark.parametrize("name", sorted(RAW_OPS))
def test_raw_ops_refuse_double_backward(device, name):
    """torch.ops.pynotes.* differentiate once through their C++ autograd; under create_graph
    they raise instead of returning gradients that would differentiate as constants."""
    args = requiring_grad(RAW_OPS[name](device))
    out = getattr(torch.ops.pynotes, name)(*args)
    first = out[0] if isinstance(out, (tuple, list)) else out
    with pytest.raises(RuntimeError, match=f"pynotes::{name}: the backward of the raw "
                                           "operator is not differentiable"):
        torch.autograd.grad(first.sum(), args[differentiable(args)[0]], create_graph=True)
