"""pynotes group norm against torch.nn.functional.group_norm (+ silu) in float64."""
import mmap
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import pynotes
from pynotes import _ext
from pynotes.reference import group_norm as reference_group_norm
from conftest import FLOAT_DTYPES, tolerance

# (shape, num_groups). Chosen to reach every kernel path for any thread count up to 64:
# many groups (a task per group), few groups (tasks over channel chunks, one and several
# chunks per channel), ranks 2 to 5, odd sizes and sizes that are not a multiple of a SIMD width.
SHAPES = [
    ((3, 12), 2),
    ((2, 6, 7), 2),
    ((1, 4, 4, 4), 2),
    ((5, 10, 13, 17), 5),
    ((16, 32, 3, 5), 16),
    ((2, 12, 3, 5, 2), 3),
    ((1, 1, 9, 11), 1),
    ((1, 2, 161, 131), 1),
]


def activation_of(silu):
    return "silu" if silu else None


def torch_group_norm(x, num_groups, weight, bias, eps, silu):
    """The anchor: torch's own group norm (then SiLU), in float64."""
    as64 = (lambda t: None if t is None else t.double())
    y = F.group_norm(as64(x), num_groups, as64(weight), as64(bias), eps)
    return F.silu(y) if silu else y


def make_inputs(shape, dtype, device, affine=True, requires_grad=False):
    x = (torch.randn(shape, dtype=torch.float64) * 2 + 0.5).to(device, dtype)
    c = shape[1]
    w = torch.randn(c, dtype=torch.float64).to(device, dtype) if affine else None
    b = torch.randn(c, dtype=torch.float64).to(device, dtype) if affine else None
    if requires_grad:
        for t in (x, w, b):
            if t is not None:
                t.requires_grad_()
    return x, w, b


def grads(out, inputs, grad_out):
    leaves = [t for t in inputs if t is not None]
    return torch.autograd.grad(out, leaves, grad_out)


@pytest.mark.parametrize("silu", [False, True])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape,num_groups", SHAPES)
def test_forward_matches_torch(device, shape, num_groups, dtype, silu):
    x, w, b = make_inputs(shape, dtype, device)
    out = pynotes.ops.group_norm(x, num_groups, w, b, eps=1e-5, activation=activation_of(silu))
    assert out.dtype == dtype and out.shape == x.shape
    expected = torch_group_norm(x, num_groups, w, b, 1e-5, silu)
    torch.testing.assert_close(out.double(), expected, **tolerance(dtype))


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("silu", [False, True])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape,num_groups", SHAPES)
def test_backward_matches_torch(device, shape, num_groups, dtype, silu, affine):
    x, w, b = make_inputs(shape, dtype, device, affine, requires_grad=True)
    out = pynotes.ops.group_norm(x, num_groups, w, b, activation=activation_of(silu))
    grad_out = torch.randn_like(out)
    got = grads(out, (x, w, b), grad_out)

    x64, w64, b64 = (None if t is None else t.detach().double().requires_grad_()
                     for t in (x, w, b))
    expected = grads(torch_group_norm(x64, num_groups, w64, b64, 1e-5, silu), (x64, w64, b64),
                     grad_out.double())
    tol = tolerance(dtype)
    # The weight and bias gradients each sum N * spatial rounded terms per channel (21k in
    # shape7: torch's own float32 kernel is off by up to 4e-5 there, ours by 2e-5 typically and
    # 1.06e-4 once in `make test`), an error that grows as the square root of the terms; in half
    # types the input gradient's group sums are rounded too.
    terms = x.numel() // x.shape[1]
    loose = dict(atol=tol["atol"] * 4 * max(1.0, (terms / 1000) ** 0.5), rtol=tol["rtol"] * 2)
    half = dtype in (torch.float16, torch.bfloat16)
    for name, g, e in zip(("input", "weight", "bias"), got, expected):
        assert g.dtype == dtype
        torch.testing.assert_close(g.double(), e, **(tol if name == "input" and not half
                                                     else loose),
                                   msg=lambda m: f"grad {name}: {m}")


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("silu", [False, True])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("shape,num_groups", [((2, 4, 3, 5), 2), ((8, 8, 3, 3), 4)])
def test_gradcheck(device, shape, num_groups, layout, silu, affine):
    x, w, b = make_inputs(shape, torch.float64, device, affine)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    inputs = tuple(t.requires_grad_() for t in (x, w, b) if t is not None)

    def fn(*args):
        return pynotes.ops.group_norm(args[0], num_groups, *(args[1:] or (None, None)),
                                      activation=activation_of(silu))
    assert torch.autograd.gradcheck(fn, inputs)


def opcheck_samples(device):
    samples = []
    for shape, g, layout, silu, affine in [((2, 6, 5, 3), 3, torch.contiguous_format, False, True),
                                           ((2, 6, 5, 3), 2, torch.channels_last, True, True),
                                           ((3, 4, 7), 1, torch.contiguous_format, True, False),
                                           ((8, 16, 2, 2), 8, torch.contiguous_format, False, True)]:
        x, w, b = make_inputs(shape, torch.float32, device, affine)
        x = x.contiguous(memory_format=layout)
        samples.append((x, g, w, b, 1e-5, silu))
    return samples


def test_opcheck_forward(device):
    for x, g, w, b, eps, silu in opcheck_samples(device):
        for t in (x, w, b):
            if t is not None:
                t.requires_grad_()
        torch.library.opcheck(torch.ops.pynotes.group_norm.default, (x, g, w, b, eps, silu))


def test_opcheck_backward(device):
    for x, g, w, b, eps, silu in opcheck_samples(device):
        _, mean, rstd = torch.ops.pynotes.group_norm(x, g, w, b, eps, silu)
        grad = torch.randn_like(x)
        torch.library.opcheck(torch.ops.pynotes.group_norm_backward.default,
                              (grad, x, mean, rstd, g, w, b, silu))


def test_compiles_without_graph_breaks(device):
    x, w, b = make_inputs((4, 8, 6, 6), torch.float32, device, requires_grad=True)

    def fn(x, w, b):
        return pynotes.ops.group_norm(x, 4, w, b, activation="silu") * 2

    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
    grad_out = torch.randn(4, 8, 6, 6, device=device)
    out = compiled(x, w, b)
    torch.testing.assert_close(out, fn(x, w, b))
    for g, e in zip(grads(out, (x, w, b), grad_out), grads(fn(x, w, b), (x, w, b), grad_out)):
        torch.testing.assert_close(g, e)


# (N, C, *) stored channels-last, for ranks 3 to 5.
LAYOUTS = {
    "channels_last_1d": lambda t: t.transpose(1, 2).contiguous().transpose(1, 2),
    "channels_last": lambda t: t.contiguous(memory_format=torch.channels_last),
    "channels_last_3d": lambda t: t.contiguous(memory_format=torch.channels_last_3d),
}
# (batch is a parameter: at 3 and 16 the kernels take tasks over row chunks / per sample)
LAYOUT_SHAPES = {"channels_last_1d": (0, 12, 37), "channels_last": (0, 12, 7, 5),
                 "channels_last_3d": (0, 12, 3, 4, 5)}


@pytest.mark.parametrize("silu", [False, True])
@pytest.mark.parametrize("num_groups", [1, 3, 12])
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("batch", [3, 16])
def test_channels_last_keeps_layout(device, batch, layout, num_groups, silu):
    x, w, b = make_inputs((batch,) + LAYOUT_SHAPES[layout][1:], torch.float32, device)
    x = LAYOUTS[layout](x).requires_grad_()
    assert not x.is_contiguous()
    w.requires_grad_()
    b.requires_grad_()
    out = pynotes.ops.group_norm(x, num_groups, w, b, activation=activation_of(silu))
    assert out.stride() == x.stride()
    torch.testing.assert_close(out.double(), torch_group_norm(x, num_groups, w, b, 1e-5, silu),
                               **tolerance(torch.float32))
    grad_out = torch.randn_like(out)
    got = grads(out, (x, w, b), grad_out)
    assert got[0].stride() == x.stride()
    x64, w64, b64 = (t.detach().double().requires_grad_() for t in (x, w, b))
    expected = grads(torch_group_norm(x64, num_groups, w64, b64, 1e-5, silu), (x64, w64, b64),
                     grad_out.double())
    for g, e in zip(got, expected):
        torch.testing.assert_close(g.double(), e, **tolerance(torch.float32))


@pytest.mark.skipif(not _ext.extension_loaded(), reason="extension not built")
@pytest.mark.parametrize("silu", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch", [1, 16])
def test_channels_last_backward_sums_both_ways(device, batch, dtype, silu, monkeypatch):
    """The channels-last backward takes its per-channel sums along the rows or down them,
    whichever measured faster (group_norm_cpu.cpp): both give the same bits, and torch's
    gradients. C = 40 has a SIMD tail on every ISA; at batch 1 the rows span several tasks."""
    if device != "cpu":
        pytest.skip("a CPU kernel choice")
    x, w, b = make_inputs((batch, 40, 37, 29), dtype, device)
    x = x.contiguous(memory_format=torch.channels_last)
    grad_out = torch.randn_like(x)
    _, mean, rstd = torch.ops.pynotes.group_norm(x, 8, w, b, 1e-5, silu)
    results = {}
    for sums in ("rows", "columns"):
        monkeypatch.setenv("PYNOTES_GROUP_NORM_SUMS", sums)
        results[sums] = torch.ops.pynotes.group_norm_backward(grad_out, x, mean, rstd, 8, w, b,
                                                              silu)
    for along_rows, down_columns in zip(results["rows"], results["columns"]):
        assert torch.equal(along_rows, down_columns)
    x64, w64, b64 = (t.double().requires_grad_() for t in (x, w, b))
    expected = grads(torch_group_norm(x64, 8, w64, b64, 1e-5, silu), (x64, w64, b64),
                     grad_out.double())
    torch.testing.assert_close(results["rows"][0].double(), expected[0], **tolerance(dtype))
    # The parameter gradients sum batch x 1073 terms per channel (17k at batch 16).
    param_tol = {"rtol": 2e-4, "atol": 2e-4} if dtype == torch.float32 else tolerance(dtype)
    for g, e in zip(results["rows"][1:], expected[1:]):
        torch.testing.assert_close(g.double(), e, **param_tol)


@pytest.mark.skipif(not _ext.extension_loaded(), reason="extension not built")
@pytest.mark.parametrize("silu", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("groups", [32, 2])  # a task per group, and groups split into chunks
@pytest.mark.parametrize("by_columns", ["0", "1"])  # the channels-last forward's two walks
def test_streamed_outputs_are_the_same_bits(device, groups, layout, dtype, silu, by_columns,
                                             monkeypatch):
    """Outputs may be written with non-temporal stores (measured per class;
    PYNOTES_GROUP_NORM_STREAM forces either way): the same bits as ordinary stores, and
    torch's values. With 9 x 7 spatial, some NCHW channels start on a vector boundary (those
    are streamed) and most do not (ordinary stores); channels-last rows of 64 all do (with a
    partial vector at the end of a channels-last row, the backward's last bit may differ)."""
    if device != "cpu":
        pytest.skip("a CPU kernel choice")
    if layout == "contiguous" and by_columns == "0":
        pytest.skip("a channels-last choice")
    monkeypatch.setenv("PYNOTES_GROUP_NORM_COLUMNS", by_columns)
    x, w, b = make_inputs((2, 64, 9, 7), dtype, device)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    grad_out = torch.randn_like(x)
    results = {}
    for stream in ("0", "1"):
        monkeypatch.setenv("PYNOTES_GROUP_NORM_STREAM", stream)
        y, mean, rstd = torch.ops.pynotes.group_norm(x, groups, w, b, 1e-5, silu)
        results[stream] = (y, *torch.ops.pynotes.group_norm_backward(grad_out, x, mean, rstd,
                                                                     groups, w, b, silu))
    for plain, streamed in zip(results["0"], results["1"]):
        assert torch.equal(plain, streamed)
    x64, w64, b64 = (t.double().requires_grad_() for t in (x, w, b))
    expected_y = torch_group_norm(x64, groups, w64, b64, 1e-5, silu)
    torch.testing.assert_close(results["1"][0].double(), expected_y, **tolerance(dtype))
    expected_dx = grads(expected_y, (x64,), grad_out.double())[0]
    torch.testing.assert_close(results["1"][1].double(), expected_dx, **tolerance(dtype))
    monkeypatch.setenv("PYNOTES_GROUP_NORM_STREAM", "yes")
    with pytest.raises(RuntimeError, match="PYNOTES_GROUP_NORM_STREAM must be '0' or '1'"):
        torch.ops.pynotes.group_norm(x, groups, w, b, 1e-5, silu)


@pytest.mark.skipif(not _ext.extension_loaded(), reason="extension not built")
@pytest.mark.parametrize("by_columns", ["0", "1"])
@pytest.mark.parametrize("silu", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("shape,groups,mean", [((3, 70, 5, 7), 10, 0.0), ((1, 24, 33), 4, 1e3),
                                               ((2, 130, 4, 4), 13, 0.0)])
def test_channels_last_forward_walks(device, by_columns, silu, dtype, shape, groups, mean,
                                     monkeypatch):
    """The channels-last forward walks a task's rows down columns of channels, in one pass each
    for the moments and the output, where the samples stay in cache and rows are short, and
    otherwise in two passes for the moments and row by row for the output
    (PYNOTES_GROUP_NORM_COLUMNS forces either): both as torch in float64, also for channels
    that are not whole vectors (70, 130) and |mean| >> std."""
    if device != "cpu":
        pytest.skip("a CPU kernel choice")
    if mean and dtype == torch.bfloat16:
        pytest.skip("bfloat16 keeps 3 digits: 1e3 + x is 1e3")
    monkeypatch.setenv("PYNOTES_GROUP_NORM_COLUMNS", by_columns)
    x, w, b = make_inputs(shape, dtype, device)
    x = (x.double() + mean).to(dtype)
    x = (x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else
         x.transpose(1, -1).contiguous().transpose(1, -1))
    y, mean_out, rstd = torch.ops.pynotes.group_norm(x, groups, w, b, 1e-5, silu)
    assert y.stride() == x.stride()
    x64, w64, b64 = (t.double() for t in (x, w, b))
    expected = torch_group_norm(x64, groups, w64, b64, 1e-5, silu)
    # x - mean keeps x's absolute precision, ~mean * eps, at |mean| >> std.
    tol = (dict(atol=4 * mean * torch.finfo(dtype).eps, rtol=0) if mean else
           tolerance(dtype))
    torch.testing.assert_close(y.double(), expected, **tol)
    var, expected_mean = torch.var_mean(x64.reshape(shape[0], groups, -1), dim=-1,
                                        unbiased=False)
    torch.testing.assert_close(mean_out.double(), expected_mean, **tolerance(dtype))
    torch.testing.assert_close(rstd.double(), torch.rsqrt(var + 1e-5), rtol=1e-3 if mean else
                               tolerance(dtype)["rtol"], atol=0)
    monkeypatch.setenv("PYNOTES_GROUP_NORM_COLUMNS", "yes")
    with pytest.raises(RuntimeError, match="PYNOTES_GROUP_NORM_COLUMNS must be '0' or '1'"):
        torch.ops.pynotes.group_norm(x, groups, w, b, 1e-5, silu)


@pytest.mark.skipif(not _ext.extension_loaded(), reason="extension not built")
def test_channels_last_backward_sums_choice_is_reported(device, monkeypatch):
    if device != "cpu":
        pytest.skip("a CPU kernel choice")
    monkeypatch.delenv("PYNOTES_GROUP_NORM_SUMS", raising=False)
    x, w, b = make_inputs((3, 24, 9, 7), torch.float32, device)
    x = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    pynotes.ops.group_norm(x, 6, w, b).sum().backward()
    choices = pynotes.backend_info()["choices"]["group_norm_sums"]
    mine = [c for c in choices if c["shape_class"] == (4, 32, 64) and c["dtype"] == "Float"
            and not c["silu"] and c["threads"] == torch.get_num_threads()]
    assert len(mine) == 1 and mine[0]["walk"] in ("rows", "columns"), choices
    assert (mine[0]["walk"] == "rows") == (mine[0]["rows_us"] < mine[0]["columns_us"])
    monkeypatch.setenv("PYNOTES_GROUP_NORM_SUMS", "diagonal")
    with pytest.raises(RuntimeError, match="PYNOTES_GROUP_NORM_SUMS must be 'rows' or 'columns'"):
        pynotes.ops.group_norm(x, 6, w, b).sum().backward()


@pytest.mark.skipif(not _ext.extension_loaded(), reason="extension not built")
@pytest.mark.parametrize("silu", [False, True])
def test_channels_last_forward_walk_choice(device, silu, monkeypatch):
    if device != "cpu":
        pytest.skip("a CPU kernel choice")
    monkeypatch.delenv("PYNOTES_GROUP_NORM_COLUMNS", raising=False)
    x, w, b = make_inputs((3, 40, 11, 5), torch.float32, device)
    x = (x + 30).contiguous(memory_format=torch.channels_last)  # the walks' last bits differ
    y = torch.ops.pynotes.group_norm(x, 5, w, b, 1e-5, silu)[0]  # the first call measures
    choices = pynotes.backend_info()["choices"]["group_norm_walks"]
    mine = [c for c in choices if c["shape_class"] == (4, 64, 64) and c["dtype"] == "Float"
            and c["silu"] == silu and c["threads"] == torch.get_num_threads()]
    assert len(mine) == 1 and mine[0]["walk"] in ("rows", "columns"), choices
    assert (mine[0]["walk"] == "rows") == (mine[0]["rows_us"] < mine[0]["columns_us"])
    # The measuring call's result is the chosen walk's, as every later call's is.
    assert torch.equal(y, torch.ops.pynotes.group_norm(x, 5, w, b, 1e-5, silu)[0])
    monkeypatch.setenv("PYNOTES_GROUP_NORM_COLUMNS", "1" if mine[0]["walk"] == "columns" else "0")
    assert torch.equal(y, torch.ops.pynotes.group_norm(x, 5, w, b, 1e-5, silu)[0])


@pytest.mark.skipif(not _ext.extension_loaded(), reason="extension not built")
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_stream_choice_is_measured_and_reported(device, layout, monkeypatch):
    """The first float call of a class times the kernels with and without non-temporal stores
    and keeps the faster, per layout and pass; the measuring call returns the chosen kernel's
    bits (C = 24: a partial vector per channels-last row on AVX-512, where the backward's last
    bit may differ between the two)."""
    if device != "cpu":
        pytest.skip("a CPU kernel choice")
    monkeypatch.delenv("PYNOTES_GROUP_NORM_STREAM", raising=False)
    x, w, b = make_inputs((3, 24, 13, 9), torch.float64, device)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    grad_out = torch.randn_like(x)

    def run():
        y, mean, rstd = torch.ops.pynotes.group_norm(x, 6, w, b, 1e-5, False)
        return (y, *torch.ops.pynotes.group_norm_backward(grad_out, x, mean, rstd, 6, w, b,
                                                          False))
    measured = run()  # the first call of the class measures
    choices = pynotes.backend_info()["choices"]["group_norm_stream"]
    mine = [c for c in choices if c["shape_class"] == (4, 32, 128) and c["dtype"] == "Double"
            and c["layout"] == layout and c["threads"] == torch.get_num_threads()]
    assert sorted(c["pass"] for c in mine) == ["backward", "forward"], choices
    for c in mine:
        assert c["stream"] == (c["streaming_us"] < c["cached_us"])
    for a, e in zip(measured, run()):
        assert torch.equal(a, e)
    chosen = {c["pass"]: c["stream"] for c in mine}
    monkeypatch.setenv("PYNOTES_GROUP_NORM_STREAM", "1" if chosen["forward"] else "0")
    assert torch.equal(measured[0], run()[0])
    monkeypatch.setenv("PYNOTES_GROUP_NORM_STREAM", "1" if chosen["backward"] else "0")
    assert torch.equal(measured[1], run()[1])


@pytest.mark.skipif(not _ext.extension_loaded(), reason="extension not built")
@pytest.mark.skipif(sys.platform != "linux", reason="sampled with Linux's mincore")
def test_pages_exist_tells_a_fresh_mapping_from_written_memory():
    """Group norm streams its output only onto pages already in memory (pages_exist): a fresh
    anonymous mapping's pages fault in at the first write, zeroed through the cache."""
    block = mmap.mmap(-1, 8 << 20)
    t = torch.frombuffer(block, dtype=torch.uint8)
    assert not pynotes._C.pages_exist(t)
    t[: 4 << 20].fill_(1)  # the first half: the samples at 3/4 and the end are still fresh
    assert not pynotes._C.pages_exist(t)
    t.fill_(1)
    assert pynotes._C.pages_exist(t)
    assert pynotes._C.pages_exist(torch.empty(0))
    del t
    block.close()


def test_non_contiguous_inputs(device):
    base, w, b = make_inputs((4, 16, 10, 12), torch.float32, device)
    x = base[:, ::2, ::2, 1:].requires_grad_()  # neither contiguous nor channels-last
    w = w[::2].detach().requires_grad_()
    b = b[::2].detach().requires_grad_()
    out = pynotes.ops.group_norm(x, 4, w, b, activation="silu")
    torch.testing.assert_close(out.double(), torch_group_norm(x, 4, w, b, 1e-5, True),
                               **tolerance(torch.float32))
    grad_out = torch.randn(4, 5, 8, 11, device=device).transpose(1, 2)  # not x's layout
    got = grads(out, (x, w, b), grad_out)
    x64, w64, b64 = (t.detach().double().requires_grad_() for t in (x, w, b))
    expected = grads(torch_group_norm(x64, 4, w64, b64, 1e-5, True), (x64, w64, b64),
                     grad_out.double())
    for g, e in zip(got, expected):
        torch.testing.assert_close(g.double(), e, **tolerance(torch.float32))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("groups", [32, 2])  # a task per group, and groups split into chunks
def test_non_finite_values_poison_their_group_as_in_torch(device, layout, groups):
    """An inf or NaN anywhere in a group (first element or not) makes the whole group NaN, as
    torch's group norm does; the other groups are unaffected."""
    x = torch.randn(2, 64, 24, 24, device=device)
    x[0, 3, 2, 2] = float("inf")
    x[0, 10, 0, 0] = float("-inf")
    x[1, 20, 1, 1] = float("nan")
    x = x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x
    expected = torch.nn.functional.group_norm(x, groups)
    out = pynotes.ops.group_norm(x, groups)
    assert torch.equal(out.isnan(), expected.isnan())
    torch.testing.assert_close(out, expected, equal_nan=True, **tolerance(torch.float32))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype,mean,std,atol", [(torch.float32, 100.0, 0.1, 1e-3),
                                                 (torch.float64, 1e6, 1e-2, 1e-6)])
def test_large_mean_stays_accurate(device, layout, dtype, mean, std, atol):
    """|mean| / std = 1e3 and 1e8: E[x^2] - E[x]^2 would lose the variance (float32: off by
    ~6 %, float64: all of it); Welford / two-pass moments keep it. The oracle is the reference
    (torch.var_mean, centered autograd): torch's own float64 group norm backward is off by
    O(1) here, as it computes sum(dy * x) - mean * sum(dy)."""
    x = (mean + std * torch.randn(2, 8, 24, 24, dtype=torch.float64)).to(device, dtype)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    x.requires_grad_()
    out, _, rstd = torch.ops.pynotes.group_norm(x, 4, None, None, 1e-5, False)
    x64 = x.detach().double().requires_grad_()
    expected = reference_group_norm(x64, 4, eps=1e-5)
    torch.testing.assert_close(out.double(), expected, atol=atol, rtol=0)
    var = x64.detach().reshape(2, 4, -1).var(dim=-1, unbiased=False)
    torch.testing.assert_close(rstd.double(), torch.rsqrt(var + 1e-5), rtol=10 * atol, atol=0)
    grad_out = torch.randn_like(x64)
    (gx,) = torch.autograd.grad(pynotes.ops.group_norm(x, 4), x, grad_out.to(dtype))
    (ex,) = torch.autograd.grad(expected, x64, grad_out)
    # x - mean keeps only ~|mean| / std * eps of x's precision (1e-8 relative in float64 at
    # 1e8), scaled by rstd in the gradient: 10 * atol is that floor, far below the O(1) error
    # of E[x^2] - E[x]^2 (atol alone failed for some seeds, with any kernel version).
    torch.testing.assert_close(gx.double(), ex, atol=10 * atol, rtol=10 * atol)


@pytest.mark.parametrize("shape", [(0, 8, 4, 4), (2, 8, 0), (3, 0, 5)])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_zero_size(device, shape, layout):
    g = 4 if shape[1] else 1
    x, w, b = make_inputs(shape, torch.float32, device, affine=bool(shape[1]),
                          requires_grad=True)
    if layout == "channels_last" and len(shape) == 4:
        x = x.detach().to(memory_format=torch.channels_last).requires_grad_()
    out = pynotes.ops.group_norm(x, g, w, b, activation="silu")
    assert out.shape == x.shape
    got = grads(out, (x, w, b), torch.ones_like(out))
    assert got[0].shape == x.shape
    for g_param in got[1:]:
        assert torch.equal(g_param, torch.zeros_like(g_param))


@pytest.mark.parametrize("silu", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_fallback_agrees_with_extension(device, layout, dtype, silu):
    x, w, b = make_inputs((3, 12, 9, 7), dtype, device, requires_grad=True)
    if layout == "channels_last":
        x = x.detach().to(memory_format=torch.channels_last).requires_grad_()
    grad_out = torch.randn(3, 12, 9, 7, device=device, dtype=dtype)
    results = []
    for fallback in (True, False):
        with _ext.force_fallback(fallback):
            out = pynotes.ops.group_norm(x, 3, w, b, activation=activation_of(silu))
            results.append((out, *grads(out, (x, w, b), grad_out)))
    if not _ext.extension_loaded():
        pytest.skip("extension not built: both runs used the reference")
    assert results[0][0].stride() == results[1][0].stride()  # same output layout
    for r, e in zip(*results):
        torch.testing.assert_close(r, e, **tolerance(dtype))


def run_python(code, **env):
    import os
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, **env}, timeout=120)
    assert result.returncode == 0, result.stderr
    return result


def test_force_fallback_environment_variable():
    run_python("import torch, pynotes\n"
               "from pynotes import _ext\n"
               "assert pynotes.backend_info()['force_fallback']\n"
               "assert not _ext.use_extension(torch.ones(1))\n"
               "x = torch.randn(2, 4, 3)\n"
               "torch.testing.assert_close(pynotes.ops.group_norm(x, 2),\n"
               "                           torch.nn.functional.group_norm(x, 2))\n",
               PYNOTES_FORCE_FALLBACK="1")


def test_missing_extension_falls_back_with_a_warning():
    result = run_python("import sys, warnings, torch\n"
                        "sys.modules['pynotes._C'] = None  # as if it was never built\n"
                        "warnings.simplefilter('always')\n"
                        "import pynotes\n"
                        "assert not pynotes.backend_info()['extension_loaded']\n"
                        "x = torch.randn(2, 4, 3)\n"
                        "torch.testing.assert_close(pynotes.ops.group_norm(x, 2),\n"
                        "                           torch.nn.functional.group_norm(x, 2))\n")
    assert "pure-PyTorch reference" in result.stderr


def test_reference_matches_torch(device):
    x, w, b = make_inputs((3, 6, 5, 4), torch.float64, device)
    torch.testing.assert_close(reference_group_norm(x, 3, w, b, 1e-5, "silu"),
                               torch_group_norm(x, 3, w, b, 1e-5, True))


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("activation", [None, "silu"])
def test_module_is_a_drop_in_for_torch(device, affine, activation):
    theirs = torch.nn.GroupNorm(4, 12, eps=1e-4, affine=affine, device=device)
    ours = pynotes.nn.GroupNorm(4, 12, eps=1e-4, affine=affine, activation=activation,
                                device=device)
    assert isinstance(ours, torch.nn.GroupNorm)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    for p_ours, p_theirs in zip(ours.parameters(), theirs.parameters()):
        assert torch.equal(p_ours, p_theirs)  # same init
    with torch.no_grad():
        for p in theirs.parameters():
            p.normal_()
    ours.load_state_dict(theirs.state_dict())
    anchor = torch.nn.Sequential(theirs, torch.nn.SiLU()) if activation else theirs
    x = torch.randn(5, 12, 6, 7, device=device)
    for mode in (True, False):
        ours.train(mode)
        anchor.train(mode)
        torch.testing.assert_close(ours(x), anchor(x))
    theirs.load_state_dict(ours.state_dict())


def test_module_half_precision(device):
    layer = pynotes.nn.GroupNorm(2, 8, activation="silu", device=device, dtype=torch.bfloat16)
    x = torch.randn(2, 8, 5, 5, device=device, dtype=torch.bfloat16)
    expected = torch_group_norm(x, 2, layer.weight, layer.bias, 1e-5, True)
    torch.testing.assert_close(layer(x).double(), expected, **tolerance(torch.bfloat16))


def test_outputs_are_poisoned_before_kernels_run():
    """The autouse fixture's NaN fill is in force, so the tests above would see unwritten
    output elements."""
    assert torch.isnan(torch.empty(4)).all()


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_silu_at_extreme_values(device, dtype):
    """The fused SiLU matches F.silu where exp overflows, and at +-inf (groups of two elements
    normalize to -1, +1, so with weight 0 the pre-activation is exactly the bias)."""
    values = torch.tensor([-1e4, -200.0, -88.5, -20.0, -1.0, 0.0, 1.0, 20.0, 88.5, 200.0, 1e4,
                           float("inf"), float("-inf")], dtype=torch.float64)
    n = len(values)
    x = torch.tensor([-1.0, 1.0]).repeat(n).reshape(1, n, 2).to(device, dtype)
    bias = values.to(device, dtype)
    out = pynotes.ops.group_norm(x, n, torch.zeros_like(bias), bias, activation="silu")
    expected = F.silu(bias.double()).reshape(1, n, 1).expand(1, n, 2)
    torch.testing.assert_close(out.double(), expected, equal_nan=True, **tolerance(dtype))


@pytest.mark.parametrize("silu", [False, True])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_input_with_float32_parameters(device, dtype, layout, silu):
    """What autocast produces (a half activation, float32 parameters), as ATen accepts it:
    the output in the input's dtype, the parameters' gradients in float32."""
    x = (torch.randn(4, 8, 5, 6, dtype=torch.float64) * 2 + 0.5).to(device, dtype)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    x.requires_grad_()
    w = torch.randn(8, device=device, requires_grad=True)
    b = torch.randn(8, device=device, requires_grad=True)
    out = pynotes.ops.group_norm(x, 4, w, b, activation=activation_of(silu))
    assert out.dtype == dtype
    assert out.is_contiguous(memory_format=torch.channels_last) == (layout == "channels_last")
    expected = torch_group_norm(x, 4, w, b, 1e-5, silu)
    torch.testing.assert_close(out.double(), expected, **tolerance(dtype))
    g = torch.randn_like(expected)
    got = torch.autograd.grad(out, (x, w, b), g.to(dtype))
    x64, w64, b64 = (t.detach().double().requires_grad_() for t in (x, w, b))
    want = torch.autograd.grad(torch_group_norm(x64, 4, w64, b64, 1e-5, silu), (x64, w64, b64), g)
    assert [t.dtype for t in got] == [dtype, torch.float32, torch.float32]
    loose = {k: 4 * v for k, v in tolerance(dtype).items()}  # sums of rounded half terms
    for a, e in zip(got, want):
        torch.testing.assert_close(a.double(), e, **loose)


@pytest.mark.skipif(not pynotes.backend_info()["extension_loaded"], reason="extension not built")
def test_opcheck_half_input_with_float32_parameters(device):
    for dtype in (torch.float16, torch.bfloat16):
        x = torch.randn(2, 4, 3, 3, device=device, dtype=dtype, requires_grad=True)
        w = torch.randn(4, device=device, requires_grad=True)
        b = torch.randn(4, device=device, requires_grad=True)
        torch.library.opcheck(torch.ops.pynotes.group_norm, (x, 2, w, b, 1e-5, True))
        y, mean, rstd = torch.ops.pynotes.group_norm(x, 2, w, b, 1e-5, True)
        torch.library.opcheck(torch.ops.pynotes.group_norm_backward,
                              (torch.randn_like(y), x.detach(), mean, rstd, 2, w.detach(),
                               b.detach(), True))
