import torch

from pynotes import _ext
from pynotes.reference.group_norm import group_norm as reference_group_norm
from pynotes.reference.group_norm import empty_like_output, parse_activation


def group_norm(input, num_groups, weight=None, bias=None, eps=1e-5, activation=None):
    """Group normalization (Wu & He, 2018) over input of shape (N, C, *), optionally fused with
    SiLU (activation="silu"), as used in diffusion U-Nets.

    Same semantics as torch.nn.functional.group_norm (biased variance; weight and bias of shape
    (C,)), followed by torch.nn.functional.silu when asked. Accepts float32, float64, float16
    and bfloat16 (statistics in float32); NCHW-contiguous and channels-last inputs are read in
    place and the output keeps the input's memory format. Differentiable in input, weight and
    bias.
    """
    silu = parse_activation(activation)
    if _ext.use_extension(input):
        return torch.ops.pynotes.group_norm(input, num_groups, weight, bias, eps, silu)[0]
    return reference_group_norm(input, num_groups, weight, bias, eps, activation)


if _ext.extension_loaded():
    @torch.library.register_fake("pynotes::group_norm")
    def _group_norm_fake(input, num_groups, weight=None, bias=None, eps=1e-5, silu=False):
        stats_dtype = torch.float64 if input.dtype == torch.float64 else torch.float32
        mean = input.new_empty((input.shape[0], num_groups), dtype=stats_dtype)
        return empty_like_output(input), mean, torch.empty_like(mean)

    @torch.library.register_fake("pynotes::group_norm_backward")
    def _group_norm_backward_fake(grad_output, input, mean, rstd, num_groups, weight, bias, silu):
        channels = input.shape[1]
        return (empty_like_output(input), input.new_empty((channels,)),
                input.new_empty((channels,)))
