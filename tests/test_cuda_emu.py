"""The CUDA kernels of csrc/*/*_cuda.cu, as written, on tools/cuda_emu's CPU emulator.

torch.ops.pynotes_emu.X runs op X's CUDA kernels (and their host code) on CPU tensors; each
is compared with the CPU kernels (torch.ops.pynotes.X) and a float64 reference, with the
tolerances of the CUDA tests: every op family forward and backward, the four float dtypes,
channels-last, misaligned and strided inputs, odd and zero sizes, in three thread orders
(forward, reverse, seeded random) and, where the host code splits work by it, on 1 and 132
SMs. Outputs start as NaN (conftest). The fault tests switch on one injected bug at a time
(tools/cuda_emu/generate.py, FAULTS) and check that the tests they name then fail.

`make test-cuda-emu` builds the emulated extension (with AddressSanitizer and UBSan) and runs
this module; elsewhere it skips.
"""
import json
import math
import os
import re
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import pynotes
from conftest import FLOAT_DTYPES, tolerance
from pynotes.reference import gbdt as reference_gbdt
from pynotes.reference import iwae as reference_iwae
from pynotes.reference import lstm as reference_lstm

EMU_LIB = os.environ.get("PYNOTES_CUDA_EMU")
if not EMU_LIB:
    pytest.skip("the emulated CUDA kernels are not built here: make test-cuda-emu",
                allow_module_level=True)
sys.path.insert(0, EMU_LIB)
import pynotes_cuda_emu as emu  # noqa: E402  (registers torch.ops.pynotes_emu)

with open(os.path.join(EMU_LIB, os.pardir, "manifest.json")) as _f:
    MANIFEST = json.load(_f)
FAULT = os.environ.get("PYNOTES_CUDA_EMU_FAULT", "")
emu.set_fault(FAULT)

GPU = torch.ops.pynotes_emu  # the CUDA kernels, emulated
CPU = torch.ops.pynotes
ORDERS = ["forward", "reverse", "random"]
SMS = 132  # an H100's


@pytest.fixture(params=ORDERS)
def order(request):
    """Runs the test in one thread order; every launch must be followed by its check."""
    configure(request.param)
    yield request.param
    unchecked = emu.take_unchecked_launches()
    assert not unchecked, f"launches without C10_CUDA_KERNEL_LAUNCH_CHECK: {unchecked}"


def configure(order, sms=SMS):
    emu.configure(sms=sms, order=order, seed=int(torch.randint(2 ** 31, ())))


def close(got, expected, dtype, what, terms=1):
    """Within the CUDA tests' tolerance of a float64 reference; against the CPU kernels (an
    approximation too) within twice that. An output that sums `terms` values of random sign
    (a weight gradient) is of order sqrt(terms): its absolute tolerance grows alike."""
    tol = dict(tolerance(dtype))
    tol["atol"] *= math.sqrt(terms)
    if what.endswith("vs CPU"):
        tol = {k: 2 * v for k, v in tol.items()}
    torch.testing.assert_close(got.double(), expected.double(), **tol, equal_nan=True,
                               msg=lambda m: f"{what}: {m}")


def opmath(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def as_leaf(t):
    """A float64 copy of t that requires grad (t itself stays as it is)."""
    return t.detach().to(torch.float64, copy=True).requires_grad_()


def laid_out(x, layout):
    """x as the kernels may get it: contiguous, channels-last, contiguous but off a 16-byte
    boundary (their scalar loads), or strided (copied by the op first)."""
    if layout == "channels_last":
        return x.movedim(1, -1).contiguous().movedim(-1, 1)
    if layout == "misaligned":
        out = torch.empty(x.numel() + 1, dtype=x.dtype)[1:].view(x.shape)
        return out.copy_(x)
    if layout == "strided":
        wide = torch.empty(*x.shape[:-1], 2 * x.shape[-1], dtype=x.dtype)
        wide[..., ::2] = x
        return wide[..., ::2]
    return x


# ------------------------------------------------------------------------------ group norm

# (shape, groups, sms): odd sizes, ranks 2 to 5, and "large" ones whose groups are split
# over several blocks (by SM count) with grid-stride elementwise passes on 1 SM.
GN_CASES = [((3, 12), 2, SMS), ((2, 6, 7), 2, SMS), ((1, 4, 4, 4), 2, SMS),
            ((5, 10, 13, 17), 5, SMS), ((2, 12, 3, 5, 2), 3, SMS), ((1, 1, 9, 11), 1, SMS),
            ((2, 40, 5, 7), 4, SMS),
            ((1, 8, 64, 64), 2, SMS), ((1, 8, 64, 64), 2, 1), ((1, 2, 161, 131), 1, SMS),
            ((1, 2, 161, 131), 1, 1)]
GN_LAYOUTS = ["contiguous", "channels_last", "misaligned", "strided"]


def gn_id(case):
    shape, groups, sms = case
    large = "large-" if math.prod(shape) > 20000 else ""
    return f"{large}{'x'.join(map(str, shape))}-g{groups}-sm{sms}"


def gn_params():
    return [pytest.param(*case, layout, id=f"{gn_id(case)}-{layout}")
            for case in GN_CASES for layout in GN_LAYOUTS
            if layout != "channels_last" or len(case[0]) > 2]


# (silu, affine, float32 parameters for float16/bfloat16 input: what autocast produces)
GN_VARIANTS = [(False, True, False), (True, True, True), (False, False, False),
               (True, False, False)]


def gn_inputs(shape, layout):
    """(description, dtype, silu, x, weight, bias) for every dtype and variant."""
    for dtype in FLOAT_DTYPES:
        for silu, affine, float_params in GN_VARIANTS:
            x = laid_out((torch.randn(shape, dtype=torch.float64) * 2 + 0.5).to(dtype), layout)
            half = dtype in (torch.float16, torch.bfloat16)
            pdtype = torch.float32 if float_params and half else dtype
            w = torch.randn(shape[1], dtype=pdtype) if affine else None
            b = torch.randn(shape[1], dtype=pdtype) if affine else None
            yield f"{dtype} silu={silu} affine={affine}", dtype, silu, x, w, b


def gn_reference(x, groups, w, b, silu):
    as64 = (lambda t: None if t is None else t.double())
    y = F.group_norm(as64(x), groups, as64(w), as64(b), 1e-5)
    return F.silu(y) if silu else y


@pytest.mark.parametrize("shape,groups,sms,layout", gn_params())
def test_group_norm_forward(order, shape, groups, sms, layout):
    configure(order, sms)
    for what, dtype, silu, x, w, b in gn_inputs(shape, layout):
        y, mean, rstd = GPU.group_norm(x, groups, w, b, 1e-5, silu)
        cpu_y, cpu_mean, cpu_rstd = CPU.group_norm(x, groups, w, b, 1e-5, silu)
        assert y.stride() == cpu_y.stride(), what
        close(y, gn_reference(x, groups, w, b, silu), dtype, what)
        close(y, cpu_y, dtype, what + " vs CPU")
        close(mean, cpu_mean, opmath(dtype), what + " mean")
        close(rstd, cpu_rstd, opmath(dtype), what + " rstd")


@pytest.mark.parametrize("shape,groups,sms,layout", gn_params())
def test_group_norm_backward(order, shape, groups, sms, layout):
    configure(order, sms)
    for what, dtype, silu, x, w, b in gn_inputs(shape, layout):
        _, mean, rstd = CPU.group_norm(x, groups, w, b, 1e-5, silu)
        dy = laid_out(torch.randn(shape, dtype=torch.float64).to(dtype), layout)
        got = GPU.group_norm_backward(dy, x, mean, rstd, groups, w, b, silu)
        cpu = CPU.group_norm_backward(dy, x, mean, rstd, groups, w, b, silu)
        leaves = [as_leaf(t) for t in (x, w, b) if t is not None]
        x64, w64, b64 = leaves if w is not None else (leaves[0], None, None)
        expected = torch.autograd.grad(gn_reference(x64, groups, w64, b64, silu), leaves,
                                       dy.double())
        terms = (1, x.numel() // shape[1], x.numel() // shape[1])  # dx, dweight, dbias
        for name, g, c, n in zip(("dx", "dweight", "dbias"), got, cpu, terms):
            close(g, c, dtype, f"{what} {name} vs CPU", n)
        for name, g, e, n in zip(("dx", "dweight", "dbias"), got, expected, terms):
            close(g, e, dtype, f"{what} {name}", n)


# ------------------------------------------------------------------------------------ GCN

# (nodes, edges, features): lane groups of 4 to 32, several feature blocks, one node, many
# blocks of rows, and features that are not a multiple of a 16-byte load.
GCN_CASES = [(1, 0, 3), (7, 20, 1), (50, 300, 4), (40, 200, 13), (64, 400, 33), (30, 100, 130),
             (700, 4000, 8)]


@pytest.mark.parametrize("aligned", [True, False], ids=["aligned", "misaligned"])
@pytest.mark.parametrize("index", [torch.int32, torch.int64], ids=["int32", "int64"])
@pytest.mark.parametrize("weighted", [False, True], ids=["scale", "weighted"])
@pytest.mark.parametrize("nodes,edges,features", GCN_CASES)
def test_gcn_propagate(order, nodes, edges, features, weighted, index, aligned):
    edge_index = torch.randint(0, nodes, (2, edges))
    edge_weight = torch.rand(edges) + 0.1 if weighted else None
    adj = pynotes.graph.gcn_norm(edge_index, nodes, edge_weight)
    for dtype in FLOAT_DTYPES:
        a = adj.to(dtype=opmath(dtype))
        args = (a.rowptr, a.col.to(index), a.weight, a.scale, a.rowptr_t, a.col_t.to(index),
                a.perm_t.to(index))
        x = torch.randn(nodes, features, dtype=torch.float64).to(dtype)
        x = x if aligned else laid_out(x, "misaligned")
        dense = a.to_dense().double()
        out = GPU.gcn_propagate(x, *args)
        close(out, dense @ x.double(), dtype, f"{dtype} forward")
        close(out, CPU.gcn_propagate(x, *args), dtype, f"{dtype} forward vs CPU")
        g = torch.randn(nodes, features, dtype=torch.float64).to(dtype)
        dx, dw = GPU.gcn_propagate_backward(g, x, *args, [True, weighted])
        cpu_dx, cpu_dw = CPU.gcn_propagate_backward(g, x, *args, [True, weighted])
        close(dx, dense.T @ g.double(), dtype, f"{dtype} grad x")
        close(dx, cpu_dx, dtype, f"{dtype} grad x vs CPU")
        if weighted:
            row = a.row_index().long()
            expected = (g.double()[row] * x.double()[a.col.long()]).sum(1)
            close(dw, expected, dtype, f"{dtype} grad weight")
            close(dw, cpu_dw, dtype, f"{dtype} grad weight vs CPU")


# ----------------------------------------------------------------------------------- IWAE

# (shape, dim): K along the contiguous last dim (a warp per slice) and along an outer dim
# (a thread per slice), K = 1, slices past one block, and a K past a warp's stride.
IWAE_CASES = [((7,), 0), ((5, 33), 1), ((5, 33), 0), ((2, 100, 3), 1), ((3, 1), 1),
              ((300, 40), 1), ((4, 65), -1), ((70, 9, 5), 0)]


@pytest.mark.parametrize("special", [False, True], ids=["finite", "inf-nan"])
@pytest.mark.parametrize("shape,dim", IWAE_CASES)
def test_iwae(order, shape, dim, special):
    for dtype in FLOAT_DTYPES:
        log_w = torch.randn(shape, dtype=torch.float64) * 3
        if special:  # -inf weights, a slice of only -inf, +inf, NaN
            log_w[torch.rand(shape) < 0.2] = -math.inf
            log_w.movedim(dim, -1).reshape(-1, shape[dim])[0] = -math.inf
            log_w.view(-1)[-1] = math.inf
            log_w.view(-1)[log_w.numel() // 2] = math.nan
        log_w = log_w.to(dtype)
        # float64 bound, weights and ESS with the kernels' conventions: -inf entries weigh 0,
        # a NaN or +inf entry makes its slice NaN (pynotes.ops.iwae_bound)
        expected = reference_iwae.importance_weights(log_w.double(), dim)
        what = f"{dtype}"
        for keepdim in (False, True):
            bound = GPU.iwae_bound(log_w, dim, keepdim)
            close(bound, reference_iwae.iwae_bound(log_w.double(), dim, keepdim), dtype,
                  what + " bound")
            close(bound, CPU.iwae_bound(log_w, dim, keepdim), dtype, what + " bound vs CPU")
            grad = torch.randn(bound.shape, dtype=torch.float64).to(dtype)
            got = GPU.iwae_bound_backward(grad, log_w, bound, dim, keepdim)
            kept = grad.double() if keepdim else grad.double().unsqueeze(dim)
            close(got, expected[1] * kept, dtype, what + " backward")
            close(got, CPU.iwae_bound_backward(grad, log_w, bound, dim, keepdim), dtype,
                  what + " backward vs CPU")
        got = GPU.importance_weights(log_w, dim)
        cpu = CPU.importance_weights(log_w, dim)
        for name, g, c, e in zip(("bound", "weights", "ess"), got, cpu, expected):
            close(g, e, dtype, f"{what} {name}")
            close(g, c, dtype, f"{what} {name} vs CPU")


# ----------------------------------------------------------------------------------- LSTM

def lstm_weights(input_size, hidden, proj, dtype, bias=True):
    rnd = lambda *s: (torch.randn(s, dtype=torch.float64) * 0.5).to(dtype)  # noqa: E731
    w_hr = rnd(proj, hidden) if proj else None
    out = proj or hidden
    return (rnd(4 * hidden, input_size), rnd(4 * hidden, out),
            rnd(4 * hidden) if bias else None, rnd(4 * hidden) if bias else None, w_hr)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("batch,input_size,hidden", [(1, 3, 4), (5, 7, 9), (33, 16, 17)])
def test_lstm_cell(order, batch, input_size, hidden, bias):
    for dtype in FLOAT_DTYPES:
        w_ih, w_hh, b_ih, b_hh, _ = lstm_weights(input_size, hidden, 0, dtype, bias)
        x, h, c = (torch.randn(batch, n, dtype=torch.float64).to(dtype)
                   for n in (input_size, hidden, hidden))
        hy, cy, workspace = GPU.lstm_cell(x, h, c, w_ih, w_hh, b_ih, b_hh)
        cpu_hy, cpu_cy, cpu_workspace = CPU.lstm_cell(x, h, c, w_ih, w_hh, b_ih, b_hh)
        leaves = [as_leaf(t) for t in (x, h, c, w_ih, w_hh)]
        b64 = [None if t is None else t.double() for t in (b_ih, b_hh)]
        ref_hy, ref_cy = reference_lstm.lstm_cell(*leaves, *b64)
        for name, g, cp, e in (("hy", hy, cpu_hy, ref_hy), ("cy", cy, cpu_cy, ref_cy)):
            close(g, e, dtype, f"{dtype} {name}")
            close(g, cp, dtype, f"{dtype} {name} vs CPU")
        grad_hy = torch.randn_like(hy)
        for grad_cy in (None, torch.randn_like(cy)):
            mask = [True, True, True, True]
            got = GPU.lstm_cell_backward(grad_hy, grad_cy, workspace, x, h, c, w_ih, w_hh, mask)
            cpu = CPU.lstm_cell_backward(grad_hy, grad_cy, cpu_workspace, x, h, c, w_ih, w_hh,
                                         mask)
            for name, g, cp in zip(("input", "hx", "cx", "w_ih", "w_hh", "bias"), got, cpu):
                close(g, cp, dtype, f"{dtype} grad {name}, grad_cy={grad_cy is not None}, vs CPU")


# (steps, batch, input, hidden, proj, packed, reverse)
LSTM_LAYERS = [(1, 1, 3, 4, 0, False, False), (6, 5, 7, 9, 0, False, True),
               (5, 3, 4, 6, 2, False, False), (4, 3, 5, 8, 0, True, False),
               (4, 3, 5, 8, 3, True, True)]


@pytest.mark.parametrize("steps,batch,input_size,hidden,proj,packed,reverse", LSTM_LAYERS)
def test_lstm_layer(order, steps, batch, input_size, hidden, proj, packed, reverse):
    for dtype in FLOAT_DTYPES:
        w_ih, w_hh, b_ih, b_hh, w_hr = lstm_weights(input_size, hidden, proj, dtype)
        out = proj or hidden
        if packed:  # sequences of lengths batch_sizes: step t runs the first batch_sizes[t]
            batch_sizes = torch.tensor([batch] * (steps - 2) + [batch - 1, 1])
            x = torch.randn(int(batch_sizes.sum()), input_size, dtype=torch.float64).to(dtype)
        else:
            batch_sizes = None
            x = torch.randn(steps, batch, input_size, dtype=torch.float64).to(dtype)
        h = torch.randn(batch, out, dtype=torch.float64).to(dtype)
        c = torch.randn(batch, hidden, dtype=torch.float64).to(dtype)
        args = (x, h, c, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, reverse)
        got = GPU.lstm_layer(*args)
        train = GPU.lstm_layer_train(*args)
        cpu_train = CPU.lstm_layer_train(*args)
        expected = reference_lstm.lstm_layer(
            *[t.double() if isinstance(t, torch.Tensor) and t.is_floating_point() else t
              for t in args])
        for name, g, t, cp, e in zip(("output", "hy", "cy"), got, train, cpu_train, expected):
            close(g, e, dtype, f"{dtype} {name}")
            close(t, cp, dtype, f"{dtype} {name} (train) vs CPU")
        grads = [torch.randn_like(t) for t in got]
        for grad_hy in (None, grads[1]):
            mask = [True, True, True]
            got_grads = GPU.lstm_layer_backward(grads[0], grad_hy, grads[2], x, h, w_ih, w_hh,
                                                w_hr, batch_sizes, reverse, *train[3:], mask)
            cpu_grads = CPU.lstm_layer_backward(grads[0], grad_hy, grads[2], x, h, w_ih, w_hh,
                                                w_hr, batch_sizes, reverse, *cpu_train[3:], mask)
            names = ("input", "hx", "cx", "w_ih", "w_hh", "bias", "w_hr")
            for name, g, cp in zip(names, got_grads, cpu_grads):
                if cp is None:
                    assert g is None, name
                else:
                    close(g, cp, dtype, f"{dtype} grad {name} vs CPU")


# ----------------------------------------------------------------------------------- GBDT

def random_bins(rows, features, num_bins, missing=0.1):
    bins = torch.randint(0, num_bins - 1, (rows, features), dtype=torch.uint8)
    bins[torch.rand(rows, features) < missing] = num_bins - 1
    return bins


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("rows,features,max_cuts", [(1, 1, 0), (300, 3, 1), (1000, 7, 254)])
def test_gbdt_bin(order, rows, features, max_cuts, dtype):
    x = torch.randn(rows, features, dtype=dtype)
    x[torch.rand(rows, features) < 0.1] = math.nan
    cuts = torch.cat([torch.sort(torch.randn(features, max_cuts, dtype=dtype), 1).values,
                      torch.full((features, 1), math.inf, dtype=dtype)], 1)[:, :max_cuts]
    missing_bin = max_cuts + 1
    got = GPU.gbdt_bin(x, cuts, missing_bin)
    assert torch.equal(got, CPU.gbdt_bin(x, cuts, missing_bin))
    assert torch.equal(got, reference_gbdt.bin_features(x, cuts, missing_bin))


# (rows, features, num_bins, nodes, slots): feature chunks of 8 (1, 8, 9, 17 features), 2 to
# 256 bins, rows of nodes without a slot, rows past one 4096-row part.
HIST_CASES = [(1, 1, 2, 1, 1), (500, 8, 16, 5, 3), (700, 9, 256, 12, 4), (9000, 17, 33, 3, 2),
              (300, 3, 256, 4, 0)]


def histogram_inputs(rows, features, num_bins, nodes, slots, dtype):
    bins = random_bins(rows, features, num_bins)
    grad = torch.randn(rows, dtype=dtype) * 10
    hess = torch.rand(rows, dtype=dtype)
    node = torch.randint(0, nodes, (rows,), dtype=torch.int32)
    slot_of_node = torch.full((nodes,), -1, dtype=torch.int32)
    slot_of_node[torch.randperm(nodes)[:slots]] = torch.arange(slots, dtype=torch.int32)
    return bins, grad, hess, node, slot_of_node, slots, num_bins


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("rows,features,num_bins,nodes,slots", HIST_CASES)
def test_gbdt_histogram(order, rows, features, num_bins, nodes, slots, dtype):
    """The 64-bit fixed-point histogram against the CPU's float64 sums and the reference."""
    args = histogram_inputs(rows, features, num_bins, nodes, slots, dtype)
    got = GPU.gbdt_histogram(*args)
    scale = float(args[1].abs().max()) + 1
    for expected in (CPU.gbdt_histogram(*args), reference_gbdt.build_histogram(*args)):
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12 * scale)


def test_gbdt_histogram_without_rows_in_its_slots(order):
    bins, grad, hess, node, slot_of_node, _, num_bins = histogram_inputs(200, 4, 16, 3, 0,
                                                                         torch.float32)
    node.clamp_(max=1)
    slot_of_node[2] = 0  # the only slot: a node no row is in
    args = (bins, grad, hess, node, slot_of_node, 1, num_bins)
    assert torch.equal(GPU.gbdt_histogram(*args), CPU.gbdt_histogram(*args))


def test_gbdt_histogram_bits_do_not_depend_on_the_thread_order():
    args = histogram_inputs(9000, 17, 33, 3, 2, torch.float64)
    results = []
    for order in ORDERS:
        configure(order)
        results.append(GPU.gbdt_histogram(*args))
    assert all(torch.equal(results[0], r) for r in results[1:])


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("slots,features,num_bins", [(1, 1, 2), (3, 4, 17), (9, 10, 256)])
def test_gbdt_best_splits(order, slots, features, num_bins, masked):
    hist = torch.randn(slots, features, num_bins, 2, dtype=torch.float64)
    hist[..., 1] = hist[..., 1].abs()
    hist[:, :, 3:5] = 0  # empty bins
    mask = torch.rand(features) < 0.7 if masked else None
    for reg_lambda, gamma, min_child_weight in ((1.0, 0.0, 1.0), (0.0, 0.5, 0.0)):
        args = (hist, mask, reg_lambda, gamma, min_child_weight)
        got, cpu = GPU.gbdt_best_splits(*args), CPU.gbdt_best_splits(*args)
        for g, c in zip(got, cpu):
            assert torch.equal(g, c)


def random_trees(trees, depth, features, num_bins, categorical=None):
    nodes = 2 ** (depth + 1) - 1
    feature = torch.randint(0, features, (trees, nodes), dtype=torch.int32)
    feature[:, 2 ** depth - 1:] = -1
    feature[torch.rand(trees, nodes) < 0.15] = -1
    split_bin = torch.randint(0, num_bins - 1, (trees, nodes), dtype=torch.int32)
    default_left = torch.rand(trees, nodes) < 0.5
    cat_left = None
    if categorical is not None:
        cat_left = torch.randint(-2 ** 31, 2 ** 31 - 1, (trees, nodes, 8), dtype=torch.int32)
        cat_left[~categorical[feature.clamp_min(0).long()]] = 0
    return feature, split_bin, default_left, cat_left


@pytest.mark.parametrize("rows,features,num_bins,depth", [(1, 1, 2, 0), (700, 5, 17, 4)])
def test_gbdt_advance(order, rows, features, num_bins, depth):
    bins = random_bins(rows, features, num_bins)
    feature, split_bin, default_left, _ = random_trees(1, depth, features, num_bins)
    node = torch.randint(0, feature.shape[1], (rows,), dtype=torch.int32)
    args = (bins, node, feature[0], split_bin[0], default_left[0], num_bins - 1)
    for g, c, r in zip(GPU.gbdt_advance(*args), CPU.gbdt_advance(*args),
                       reference_gbdt.advance_nodes(*args)):
        assert torch.equal(g, c) and torch.equal(g, r.to(g.dtype))


@pytest.mark.parametrize("kind", ["float32", "float64", "bins", "categorical"])
@pytest.mark.parametrize("rows,trees,depth", [(1, 1, 0), (600, 7, 5)])
def test_gbdt_predict(order, rows, trees, depth, kind):
    features, num_bins = 5, 256
    categorical = torch.tensor([True, False, True, True, False]) if kind == "categorical" else None
    feature, split_bin, default_left, cat_left = random_trees(trees, depth, features, num_bins,
                                                              categorical)
    if kind == "bins":
        x, threshold = random_bins(rows, features, num_bins), split_bin
    else:
        dtype = torch.float64 if kind == "float64" else torch.float32
        x = torch.randn(rows, features, dtype=dtype)
        threshold = torch.randn(feature.shape, dtype=dtype)
        if categorical is not None:  # codes in and out of the sets, past 255, negative, NaN
            codes = torch.randint(-2, 300, (rows, features)).to(dtype)
            x = torch.where(categorical, codes, x)
        x[torch.rand(rows, features) < 0.05] = math.nan
    value = torch.randn(feature.shape)
    group = torch.randint(0, 3, (trees,))
    base = torch.randn(3, dtype=torch.float64)
    args = (x, feature, threshold, default_left, value, group, base, num_bins - 1, categorical,
            cat_left)
    got = GPU.gbdt_predict(*args)
    torch.testing.assert_close(got, CPU.gbdt_predict(*args), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got, reference_gbdt.predict_trees(*args[:8], categorical=categorical,
                                                           cat_left=cat_left),
                               rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- zero sizes

def test_zero_sizes_launch_nothing(order):
    before = emu.launch_counts()
    calls = [
        (lambda ops: ops.group_norm(torch.randn(0, 4, 3), 2, None, None, 1e-5, False)),
        (lambda ops: ops.group_norm(torch.randn(2, 4, 0), 2, torch.ones(4), None, 1e-5, True)),
        (lambda ops: ops.iwae_bound(torch.randn(0, 5), 1, False)),
        (lambda ops: ops.importance_weights(torch.randn(3, 0), 0)),
        (lambda ops: ops.lstm_cell(torch.randn(0, 3), torch.randn(0, 4), torch.randn(0, 4),
                                   torch.randn(16, 3), torch.randn(16, 4), None, None)),
        (lambda ops: ops.gbdt_bin(torch.randn(0, 3), torch.randn(3, 2), 3)),
        (lambda ops: ops.gbdt_histogram(*histogram_inputs(0, 3, 8, 2, 1, torch.float32))),
        (lambda ops: ops.gbdt_predict(random_bins(0, 2, 8), *random_trees(2, 2, 2, 8)[:3],
                                      torch.randn(2, 7), torch.zeros(2, dtype=torch.long),
                                      torch.zeros(1, dtype=torch.float64), 7)),
    ]
    for nodes, features in ((0, 4), (5, 0)):
        adj = pynotes.graph.gcn_norm(torch.randint(0, max(nodes, 1), (2, 0)), nodes)
        args = (adj.rowptr, adj.col, adj.weight, adj.scale, adj.rowptr_t, adj.col_t, adj.perm_t)
        calls.append(lambda ops, x=torch.randn(nodes, features), args=args:
                     ops.gcn_propagate(x, *args))
    for call in calls:
        got, cpu = call(GPU), call(CPU)
        for g, c in zip(got if isinstance(got, tuple) else [got],
                        cpu if isinstance(cpu, tuple) else [cpu]):
            assert g.shape == c.shape and torch.equal(g, c)
    assert emu.launch_counts() == before


# --------------------------------------------------------------------------- fault tests

@pytest.mark.skipif(FAULT != "", reason="runs with no fault switched on")
@pytest.mark.parametrize("fault", MANIFEST["faults"], ids=lambda f: f["name"])
def test_injected_fault_is_caught(fault):
    """With the fault switched on, the tests it names fail, and their output shows how."""
    env = dict(os.environ, PYNOTES_CUDA_EMU_FAULT=fault["name"])
    proc = subprocess.run(
        # --capture=sys: a sanitizer's report (written to fd 2) reaches this process even when
        # it stops the run.
        [sys.executable, "-m", "pytest", "-q", "-rfE", "--capture=sys", "-p", "no:cacheprovider",
         __file__, "-k", fault["tests"]], env=env, capture_output=True, text=True, timeout=600,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = proc.stdout + proc.stderr
    assert proc.returncode not in (0, 5), f"{fault['description']}: not caught\n{out[-3000:]}"
    assert re.search(fault["evidence"], out), out[-3000:]
    failed = sorted(set(re.findall(r"(?:FAILED|ERROR) \S+\[[^\]]*?\b(forward|reverse|random)\b",
                                   out)))
    print(f"{fault['name']}: caught ({', '.join(failed) or 'the process stopped'})")
