"""Property tests (hypothesis): each kernel against its pure-PyTorch reference on random shapes
(zero and odd sizes included), memory layouts (strided, transposed, channels-last) and dtypes,
in float64 where the kernel accumulates in float64 and with per-dtype tolerances otherwise."""
import pytest
import torch

import pynotes
from pynotes import _ext, reference
from pynotes.reference import gbdt as gbdt_reference
from pynotes.reference import graph as graph_reference
from conftest import FLOAT_DTYPES, tolerance

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

pytestmark = pytest.mark.skipif(not _ext.extension_loaded(), reason="extension not built")
SETTINGS = settings(max_examples=30, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])
dtypes = st.sampled_from(FLOAT_DTYPES)


def laid_out(t, layout):
    """t's values in another memory layout: a transposed copy, every other column of a wider
    tensor, or (rank >= 3) channels-last."""
    if layout == "transposed" and t.dim() >= 2:
        return t.transpose(0, -1).contiguous().transpose(0, -1)
    if layout == "strided" and t.dim() >= 1:
        wide = torch.zeros(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype, device=t.device)
        wide[..., ::2] = t
        return wide[..., ::2]
    if layout == "channels_last" and t.dim() >= 3:
        return t.movedim(1, -1).contiguous().movedim(-1, 1)
    return t


layouts = st.sampled_from(["contiguous", "transposed", "strided", "channels_last"])


def close(got, expected, dtype, scale=1.0):
    tol = {k: v * scale for k, v in tolerance(dtype).items()}
    torch.testing.assert_close(got.double(), expected.double(), **tol)


@SETTINGS
@given(n=st.integers(0, 3), groups=st.integers(1, 3), per_group=st.integers(1, 3),
       spatial=st.lists(st.integers(1, 6), max_size=2), dtype=dtypes, layout=layouts,
       affine=st.booleans(), silu=st.booleans())
def test_group_norm(device, n, groups, per_group, spatial, dtype, layout, affine, silu):
    c = groups * per_group
    x = laid_out((torch.randn(n, c, *spatial) * 2 + 1).to(device, dtype), layout)
    w = torch.randn(c, device=device, dtype=dtype) if affine else None
    b = torch.randn(c, device=device, dtype=dtype) if affine else None
    act = "silu" if silu else None
    got = pynotes.ops.group_norm(x, groups, w, b, activation=act)
    as64 = (lambda t: None if t is None else t.double())
    expected = reference.group_norm(x.double(), groups, as64(w), as64(b), activation=act)
    assert got.dtype == dtype and got.shape == x.shape
    close(got, expected, dtype, 2)


@SETTINGS
@given(batch=st.integers(0, 4), inputs=st.integers(1, 9), hidden=st.integers(1, 9),
       bias=st.booleans(), dtype=dtypes, layout=layouts)
def test_lstm_cell(device, batch, inputs, hidden, bias, dtype, layout):
    def r(*s):
        return torch.randn(*s, device=device, dtype=dtype)
    args = (laid_out(r(batch, inputs), layout), r(batch, hidden), r(batch, hidden),
            laid_out(r(4 * hidden, inputs), layout), r(4 * hidden, hidden),
            r(4 * hidden) if bias else None, r(4 * hidden) if bias else None)
    got = pynotes.ops.lstm_cell(*args)
    expected = reference.lstm_cell(*(None if a is None else a.double() for a in args))
    for g, e in zip(got, expected):
        close(g, e, dtype, 2)


@SETTINGS
@given(steps=st.integers(0, 4), batch=st.integers(1, 4), inputs=st.integers(1, 7),
       hidden=st.integers(2, 7), project=st.booleans(), reverse=st.booleans(), dtype=dtypes,
       layout=layouts)
def test_lstm_layer(device, steps, batch, inputs, hidden, project, reverse, dtype, layout):
    def r(*s):
        return torch.randn(*s, device=device, dtype=dtype)
    out = hidden - 1 if project else hidden
    args = (laid_out(r(steps, batch, inputs), layout), r(batch, out), r(batch, hidden),
            r(4 * hidden, inputs), laid_out(r(4 * hidden, out), layout), r(4 * hidden),
            r(4 * hidden), r(out, hidden) if project else None)
    got = pynotes.ops.lstm_layer(*args, reverse=reverse)
    expected = reference.lstm_layer(*(None if a is None else a.double() for a in args),
                                    reverse=reverse)
    for g, e in zip(got, expected):
        close(g, e, dtype, 3)


@SETTINGS
@given(nodes=st.integers(1, 20), edges=st.integers(0, 60), features=st.integers(1, 17),
       weighted=st.booleans(), kind=st.sampled_from(["gcn", "cheb", "plain"]), dtype=dtypes,
       layout=layouts)
def test_gcn_propagate(device, nodes, edges, features, weighted, kind, dtype, layout):
    edge_index = torch.randint(0, nodes, (2, edges), device=device)
    weight = torch.rand(edges, device=device, dtype=torch.float64) if weighted else None
    build = {"gcn": pynotes.graph.gcn_norm, "cheb": pynotes.graph.cheb_norm,
             "plain": pynotes.graph.adjacency}[kind]
    adj = build(edge_index, nodes, weight, dtype=torch.float64)
    x = laid_out(torch.randn(nodes, features, device=device).to(dtype), layout)
    got = pynotes.ops.gcn_propagate(x, adj)
    expected = adj.to_dense().double() @ x.double()
    assert got.dtype == dtype
    close(got, expected, dtype, 2)


@SETTINGS
@given(shape=st.lists(st.integers(1, 6), min_size=1, max_size=3), dim=st.integers(-3, 2),
       keepdim=st.booleans(), minus_inf=st.booleans(), dtype=dtypes, layout=layouts)
def test_iwae(device, shape, dim, keepdim, minus_inf, dtype, layout):
    dim = dim % len(shape)
    x = torch.randn(*shape, device=device, dtype=torch.float64) * 4
    if minus_inf:
        x[(0,) * len(shape)] = -torch.inf
    x = laid_out(x.to(dtype), layout)
    close(pynotes.ops.iwae_bound(x, dim, keepdim), reference.iwae_bound(x.double(), dim,
                                                                         keepdim), dtype, 2)
    got = pynotes.ops.importance_weights(x, dim)
    expected = reference.importance_weights(x.double(), dim)
    for g, e in zip(got, expected):
        close(g, e, dtype, 2)


@SETTINGS
@given(nodes=st.integers(0, 30), edges=st.integers(0, 120),
       self_loops=st.sampled_from(graph_reference.SELF_LOOPS), loops=st.booleans())
def test_graph_csr(nodes, edges, self_loops, loops):
    """The C++ counting sorts give exactly the reference's sorted CSR."""
    if nodes == 0:
        edges = 0
    edge_index = torch.randint(0, max(nodes, 1), (2, edges))
    if loops and edges:
        edge_index[1, ::3] = edge_index[0, ::3]
    got = torch.ops.pynotes.graph_csr(edge_index, nodes, self_loops, True, "t")
    expected = graph_reference.graph_csr(edge_index, nodes, self_loops, True, "t")
    for g, e in zip(got, expected):
        assert g.dtype == e.dtype
        torch.testing.assert_close(g, e, rtol=0, atol=0)
    values = torch.ops.pynotes.graph_values(*got[:2], got[2], got[3], got[5],
                                            torch.rand(edges, dtype=torch.float64), 2.0,
                                            self_loops == "drop", torch.float64, "t")
    assert values.shape == got[1].shape and torch.isfinite(values).all()


@SETTINGS
@given(rows=st.integers(0, 60), features=st.integers(1, 5), num_bins=st.integers(2, 33),
       slots=st.integers(1, 3), dtype=st.sampled_from([torch.float32, torch.float64]))
def test_histogram(device, rows, features, num_bins, slots, dtype):
    bins = torch.randint(0, num_bins, (rows, features), dtype=torch.uint8, device=device)
    grad = torch.randn(rows, device=device, dtype=dtype)
    hess = torch.rand(rows, device=device, dtype=dtype)
    node = torch.randint(0, slots, (rows,), dtype=torch.int32, device=device)
    slot_of_node = torch.arange(slots, dtype=torch.int32, device=device)
    slot_of_node[slots - 1] = -1  # a node whose rows are skipped
    args = (bins, grad, hess, node, slot_of_node, slots, num_bins)
    torch.testing.assert_close(pynotes.ops.build_histogram(*args),
                               gbdt_reference.build_histogram(*args), rtol=1e-12, atol=1e-12)
