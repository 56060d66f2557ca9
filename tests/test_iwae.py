"""Log-sum-exp importance weighting: bound, weights, ESS and JVI against torch.logsumexp /
torch.softmax and direct float64 computations."""
import math

import pytest
import torch

import pynotes
from pynotes import _ext
from conftest import tolerance

needs_extension = pytest.mark.skipif(not _ext.extension_loaded(), reason="extension not built")

# (shape, dim): first, middle and last dims, K = 1 and large K.
CASES = [((50, 7), 0), ((3, 50, 5), 1), ((4, 37), -1), ((1, 9), 0), ((6, 1), 1),
         ((3000, 4), 0), ((2, 3000), 1), ((2, 3, 4, 5), 2)]


def oracle(x, dim):
    x = x.double()
    return torch.logsumexp(x, dim) - math.log(x.shape[dim]), torch.softmax(x, dim)


@pytest.mark.parametrize("shape,dim", CASES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_bound_weights_and_gradient(device, shape, dim, dtype):
    x = (torch.randn(shape, device=device, dtype=torch.float64) * 20).to(dtype)
    x.requires_grad_()
    bound = pynotes.ops.iwae_bound(x, dim)
    expected, softmax = oracle(x.detach(), dim)
    torch.testing.assert_close(bound.double(), expected, **tolerance(dtype))
    grad = torch.randn_like(bound)
    (gx,) = torch.autograd.grad(bound, x, grad)
    torch.testing.assert_close(gx.double(), softmax * grad.double().unsqueeze(dim % x.dim()),
                               **tolerance(dtype))
    b, w, ess = pynotes.ops.importance_weights(x.detach(), dim)
    torch.testing.assert_close(b.double(), expected, **tolerance(dtype))
    torch.testing.assert_close(w.double(), softmax, **tolerance(dtype))
    torch.testing.assert_close(ess.double(), 1 / (softmax ** 2).sum(dim), **tolerance(dtype))
    kept = pynotes.ops.iwae_bound(x.detach(), dim, keepdim=True)
    torch.testing.assert_close(kept.squeeze(dim), bound.detach())


@pytest.mark.parametrize("scale", [1e-3, 1e2, 1e4])
def test_large_magnitudes_and_many_samples(device, scale):
    x = torch.randn(100_000, 2, device=device, dtype=torch.float64) * scale
    x[5] = 1e4  # one dominant sample
    expected, softmax = oracle(x, 0)
    torch.testing.assert_close(pynotes.ops.iwae_bound(x, 0), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(pynotes.ops.importance_weights(x, 0)[1], softmax)


def test_non_contiguous_and_low_precision(device):
    base = torch.randn(30, 8, 6, device=device)
    x = base.transpose(0, 2)[:, ::2]  # (6, 4, 30), strided
    torch.testing.assert_close(pynotes.ops.iwae_bound(x, 2), oracle(x, 2)[0].float())
    for dtype in (torch.float16, torch.bfloat16):
        for dim in (1, 2):  # lanes along an inner dim, and along the contiguous last dim
            y = x.to(dtype)
            torch.testing.assert_close(pynotes.ops.iwae_bound(y, dim).double(),
                                       oracle(y, dim)[0], **tolerance(dtype))
            bound, weights, ess = pynotes.ops.importance_weights(y.contiguous(), dim)
            expected = oracle(y, dim)
            assert bound.dtype == weights.dtype == ess.dtype == dtype
            torch.testing.assert_close(bound.double(), expected[0], **tolerance(dtype))
            torch.testing.assert_close(weights.double(), expected[1], **tolerance(dtype))
            # Near |bound| = 100 the rounded bound cannot give lse back: the weights must
            # still be right (the backward recomputes lse in float).
            z = (x * 3 + 100).to(dtype).requires_grad_()
            (grad,) = torch.autograd.grad(pynotes.ops.iwae_bound(z, dim).sum(), z)
            torch.testing.assert_close(grad.double(), oracle(z.detach(), dim)[1],
                                       **tolerance(dtype))


@pytest.mark.parametrize("fallback", [False, True], ids=["kernel", "reference"])
def test_minus_inf_nan_and_plus_inf(device, fallback):
    """The kernels' conventions, which the references (fallback and oracle) follow in their
    values too; their gradient of an all -inf slice is torch.logsumexp's (NaN), not 0."""
    x = torch.randn(5, 4, device=device, dtype=torch.float64)
    x[:, 0] = -torch.inf          # an all -inf slice
    x[2, 1] = -torch.inf          # one zero weight
    x[3, 2] = torch.nan
    x[1, 3] = torch.inf
    x.requires_grad_()
    with _ext.force_fallback(fallback):
        bound = pynotes.ops.iwae_bound(x, 0)
        bound.sum().backward()
        b, w, ess = pynotes.ops.importance_weights(x.detach(), 0)
    assert bound[0] == -torch.inf
    assert torch.isnan(bound[2]) and torch.isnan(bound[3])
    torch.testing.assert_close(bound[1], oracle(x.detach()[:, 1:2], 0)[0][0])
    if not fallback:
        assert torch.equal(x.grad[:, 0], torch.zeros(5, device=device, dtype=torch.float64))
    assert x.grad[2, 1] == 0 and not torch.isnan(x.grad[:, 1]).any()
    assert torch.isnan(x.grad[:, 2]).all() and torch.isnan(x.grad[:, 3]).all()
    assert not w[:, 0].any() and ess[0] == 0
    assert torch.isnan(b[3]) and torch.isnan(w[:, 3]).all() and torch.isnan(ess[3])


def test_jvi_against_leave_one_out_sums(device):
    x = torch.randn(7, 3, device=device, dtype=torch.float64) * 5
    x[2, 0] = 40.0  # a dominant weight: its leave-one-out sum must not cancel
    k = x.shape[0]
    loo = torch.stack([torch.logsumexp(torch.cat([x[:i], x[i + 1:]]), 0) - math.log(k - 1)
                       for i in range(k)])
    expected = k * (torch.logsumexp(x, 0) - math.log(k)) - (k - 1) * loo.mean(0)
    torch.testing.assert_close(pynotes.ops.jvi_bound(x, 1, 0), expected)
    xg = x.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda t: pynotes.ops.jvi_bound(t, 1, 0), (xg,))


@needs_extension
def test_gradcheck_and_opcheck(device):
    x = torch.randn(6, 5, 3, device=device, dtype=torch.float64, requires_grad=True)
    for dim in (0, 1, 2):
        assert torch.autograd.gradcheck(lambda t: pynotes.ops.iwae_bound(t, dim), (x,))
        assert torch.autograd.gradcheck(lambda t: pynotes.ops.importance_weights(t, dim)[0], (x,))
    y = torch.randn(6, 5, device=device)
    for requires_grad in (False, True):
        z = y.clone().requires_grad_(requires_grad)
        torch.library.opcheck(torch.ops.pynotes.iwae_bound.default, (z, 1, True))
        torch.library.opcheck(torch.ops.pynotes.importance_weights.default, (z, 0))
    bound = pynotes.ops.iwae_bound(y, 0)
    torch.library.opcheck(torch.ops.pynotes.iwae_bound_backward.default,
                          (torch.randn_like(bound), y, bound, 0, False))


@needs_extension
def test_compile_fullgraph(device):
    x = torch.randn(8, 16, device=device, requires_grad=True)
    loss = pynotes.nn.IWAELoss()
    compiled = torch.compile(lambda t: loss(t * 2), backend="aot_eager", fullgraph=True)
    (grad,) = torch.autograd.grad(compiled(x), x)
    (expected,) = torch.autograd.grad(loss(x * 2), x)
    torch.testing.assert_close(grad, expected)


def test_fallback_matches_extension(device):
    x = torch.randn(9, 11, device=device, dtype=torch.float64)
    with _ext.force_fallback():
        expected = pynotes.ops.importance_weights(x, 1)
    for a, b in zip(pynotes.ops.importance_weights(x, 1), expected):
        torch.testing.assert_close(a, b)


def test_iwae_loss(device):
    x = torch.randn(5, 4, device=device, dtype=torch.float64)
    bound = oracle(x, 0)[0]
    torch.testing.assert_close(pynotes.nn.IWAELoss()(x), -bound.mean())
    torch.testing.assert_close(pynotes.nn.IWAELoss(reduction="sum")(x), -bound.sum())
    torch.testing.assert_close(pynotes.nn.IWAELoss(dim=1, reduction="none")(x.t()), -bound)
    # K = 1 is the ELBO: the bound is log_w itself.
    torch.testing.assert_close(pynotes.ops.iwae_bound(x[:1], 0), x[0])


@pytest.mark.parametrize("fallback", [False, True], ids=["extension", "fallback"])
def test_bad_input(device, fallback):
    x = torch.randn(4, 3, device=device)
    with _ext.force_fallback(fallback):
        with pytest.raises(IndexError, match=r"dim must be in \[-2, 1\] for log_w of shape"):
            pynotes.ops.iwae_bound(x, 2)
        with pytest.raises(TypeError, match="log_w must be a floating-point tensor"):
            pynotes.ops.importance_weights(torch.ones(4, 3, dtype=torch.long, device=device))
        with pytest.raises(ValueError, match="the number of samples K\\) must be at least 1"):
            pynotes.ops.iwae_bound(torch.zeros(0, 3, device=device), 0)
        with pytest.raises(ValueError, match=r"order must be an int in \[1, K - 1\] = \[1, 3\]"):
            pynotes.ops.jvi_bound(x, 0)
        with pytest.raises(ValueError, match=r"order must be an int in \[1, K - 1\] = \[1, 3\]"):
            pynotes.ops.jvi_bound(x, 4)
    with pytest.raises(ValueError, match="reduction must be 'mean', 'sum' or 'none'"):
        pynotes.nn.IWAELoss(reduction="max")
