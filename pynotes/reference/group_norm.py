import math

import torch
import torch.nn.functional as F


ACTIVATIONS = (None, "silu")


def parse_activation(activation) -> bool:
    """True for "silu", False for None; anything else is an error naming the argument."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"group_norm: activation must be None or 'silu', got {activation!r}")
    return activation == "silu"


def check_group_norm_args(input, num_groups, weight, bias, eps):
    """The checks the C++ op makes, with the same messages (so both paths fail alike)."""
    if not input.is_floating_point():
        raise TypeError("group_norm: input must be a floating-point tensor (float32, float64, "
                        f"float16 or bfloat16), got {input.dtype}")
    if input.dim() < 2:
        raise ValueError("group_norm: input must have shape (N, C, *) with at least 2 "
                         f"dimensions, got shape {tuple(input.shape)}")
    channels = input.shape[1]
    if num_groups <= 0:
        raise ValueError(f"group_norm: num_groups must be positive, got {num_groups}")
    if channels % num_groups != 0:
        raise ValueError(f"group_norm: num_groups ({num_groups}) must divide the number of "
                         f"channels input.size(1) ({channels})")
    half = input.dtype in (torch.float16, torch.bfloat16)
    for name, t in (("weight", weight), ("bias", bias)):
        if t is None:
            continue
        if t.device != input.device:
            raise RuntimeError(f"group_norm: {name} must be on the same device as input "
                               f"({input.device}), got {t.device}")
        if t.dtype != input.dtype and not (half and t.dtype == torch.float32):
            raise TypeError(f"group_norm: {name} must have the dtype of input ({input.dtype})"
                            f"{' or float32' if half else ''}, got {t.dtype}")
        if t.shape != (channels,):
            raise ValueError(f"group_norm: {name} must have shape ({channels},), got "
                             f"{tuple(t.shape)}")
    if not eps >= 0:
        raise ValueError(f"group_norm: eps must be non-negative, got {eps}")


def group_norm(input, num_groups, weight=None, bias=None, eps=1e-5, activation=None):
    """Group norm over (N, C, *) then, for activation="silu", SiLU. Statistics in float32
    (float64 for float64 input) by torch.var_mean, which is accurate when |mean| >> std."""
    silu = parse_activation(activation)
    check_group_norm_args(input, num_groups, weight, bias, eps)
    n, c = input.shape[:2]
    compute_dtype = torch.float64 if input.dtype == torch.float64 else torch.float32
    if input.numel() == 0:
        return empty_like_output(input)
    per_group = c // num_groups * math.prod(input.shape[2:])
    x = input.to(compute_dtype).reshape(n, num_groups, per_group)
    var, mean = torch.var_mean(x, dim=-1, unbiased=False, keepdim=True)
    y = ((x - mean) * torch.rsqrt(var + eps)).reshape(input.shape)
    channel_shape = (1, c) + (1,) * (input.dim() - 2)
    if weight is not None:
        y = y * weight.to(compute_dtype).reshape(channel_shape)
    if bias is not None:
        y = y + bias.to(compute_dtype).reshape(channel_shape)
    if silu:
        y = F.silu(y)
    y = y.to(input.dtype)
    return empty_like_output(input).copy_(y)


def empty_like_output(x):
    """An empty tensor laid out as group norm lays out its output for input x: x's own layout
    when x is (N, C, *)-contiguous or channels-last ((N, *, C) in memory), else contiguous.
    The kernels do the same (group_norm_args.cpp); their fake kernels use this."""
    if x.dim() >= 3 and not x.is_contiguous() and \
            x.permute(0, *range(2, x.dim()), 1).is_contiguous():
        return torch.empty_like(x)
    return x.new_empty(x.shape)
