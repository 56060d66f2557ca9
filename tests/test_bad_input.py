"""Bad input stops at the boundary with an error naming the argument, on both paths (the
compiled kernels and the pure-PyTorch fallback)."""
import pytest
import torch

import pynotes
from pynotes import _ext


def x_(shape=(2, 6, 4), dtype=torch.float32, device="cpu"):
    return torch.randn(shape, device=device).to(dtype)


# (id, call, exception, message pattern)
GROUP_NORM_CASES = [
    ("channels_not_divisible", lambda d: pynotes.ops.group_norm(x_(device=d), 4), ValueError,
     r"num_groups \(4\) must divide the number of channels input.size\(1\) \(6\)"),
    ("num_groups_zero", lambda d: pynotes.ops.group_norm(x_(device=d), 0), ValueError,
     "num_groups must be positive"),
    ("rank_1", lambda d: pynotes.ops.group_norm(x_((6,), device=d), 2), ValueError,
     r"input must have shape \(N, C, \*\) with at least 2 dimensions"),
    ("integer_input", lambda d: pynotes.ops.group_norm(torch.ones(2, 6, 4, dtype=torch.int64,
                                                                  device=d), 2),
     TypeError, "input must be a floating-point tensor"),
    ("weight_shape", lambda d: pynotes.ops.group_norm(x_(device=d), 2, torch.ones(5, device=d)),
     ValueError, r"weight must have shape \(6,\)"),
    ("bias_shape", lambda d: pynotes.ops.group_norm(x_(device=d), 2, None,
                                                    torch.ones(6, 1, device=d)),
     ValueError, r"bias must have shape \(6,\)"),
    ("weight_dtype", lambda d: pynotes.ops.group_norm(x_(device=d), 2,
                                                      torch.ones(6, dtype=torch.float64,
                                                                 device=d)),
     TypeError, "weight must have the same dtype as input"),
    ("negative_eps", lambda d: pynotes.ops.group_norm(x_(device=d), 2, eps=-1.0), ValueError,
     "eps must be non-negative"),
    ("nan_eps", lambda d: pynotes.ops.group_norm(x_(device=d), 2, eps=float("nan")), ValueError,
     "eps must be non-negative"),
    ("unknown_activation", lambda d: pynotes.ops.group_norm(x_(device=d), 2, activation="relu"),
     ValueError, "activation must be None or 'silu'"),
]


@pytest.mark.parametrize("fallback", [False, True], ids=["extension", "fallback"])
@pytest.mark.parametrize("call,error,message", [c[1:] for c in GROUP_NORM_CASES],
                         ids=[c[0] for c in GROUP_NORM_CASES])
def test_group_norm_bad_input(device, call, error, message, fallback):
    with _ext.force_fallback(fallback), pytest.raises(error, match=message):
        call(device)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a second device")
@pytest.mark.parametrize("fallback", [False, True], ids=["extension", "fallback"])
def test_group_norm_weight_on_another_device(fallback):
    with _ext.force_fallback(fallback), \
            pytest.raises(RuntimeError, match="weight must be on the same device as input"):
        pynotes.ops.group_norm(x_(device="cuda"), 2, torch.ones(6))


def test_module_rejects_bad_configuration():
    with pytest.raises(ValueError, match=r"num_channels \(6\) must be divisible by num_groups \(4\)"):
        pynotes.nn.GroupNorm(4, 6)
    with pytest.raises(ValueError, match="activation must be None or 'silu'"):
        pynotes.nn.GroupNorm(2, 6, activation="gelu")
    with pytest.raises(ValueError, match=r"weight must have shape \(8,\)"):
        pynotes.nn.GroupNorm(2, 6)(x_((2, 8, 4)))  # input with the wrong channel count


@pytest.mark.skipif(not pynotes.backend_info()["extension_loaded"], reason="extension not built")
def test_group_norm_backward_op_bad_input(device):
    x = x_((2, 6, 4), device=device)
    _, mean, rstd = torch.ops.pynotes.group_norm(x, 2, None, None, 1e-5, False)
    op = torch.ops.pynotes.group_norm_backward
    with pytest.raises(ValueError, match="grad_output must have the shape of input"):
        op(torch.ones(2, 6, 5, device=device), x, mean, rstd, 2, None, None, False)
    with pytest.raises(TypeError, match="grad_output must have the same dtype as input"):
        op(torch.ones(2, 6, 4, dtype=torch.float64, device=device), x, mean, rstd, 2, None, None,
           False)
    with pytest.raises(ValueError, match=r"mean must have shape \(2, 2\)"):
        op(torch.ones_like(x), x, mean[:1], rstd, 2, None, None, False)
    with pytest.raises(TypeError, match="rstd must have dtype Float"):
        op(torch.ones_like(x), x, mean, rstd.double(), 2, None, None, False)
