import torch

from pynotes import _ext
from pynotes.ops import _autocast, _autograd
from pynotes.reference.group_norm import group_norm as reference_group_norm
from pynotes.reference.group_norm import empty_like_output, parse_activation


def group_norm(input, num_groups, weight=None, bias=None, eps=1e-5, activation=None):
    """Group normalization (Wu & He, 2018) over input of shape (N, C, *), optionally fused with
    SiLU (activation="silu"), as used in diffusion U-Nets.

    Same semantics as torch.nn.functional.group_norm (biased variance; weight and bias of shape
    (C,)), followed by torch.nn.functional.silu when asked. Accepts float32, float64, float16
    and bfloat16 (statistics in float32); NCHW-contiguous and channels-last inputs are read in
    place and the output keeps the input's memory format. Differentiable in input, weight and
    bias, twice and more (pynotes.ops._autograd), and under torch.func.
    """
    silu = parse_activation(activation)
    if isinstance(input, torch.Tensor):
        input, weight, bias = _autocast.cast("group_norm", input, (input, weight, bias))
    if not _ext.use_extension(input):
        return reference_group_norm(input, num_groups, weight, bias, eps, activation)
    if _autograd.needs_autograd(input, weight, bias):
        return _autograd.apply(GroupNormFunction, input, num_groups, weight, bias, eps, silu)[0]
    return torch.ops.pynotes.group_norm(input, num_groups, weight, bias, eps, silu)[0]


def _reference(input, num_groups, weight, bias, eps, silu):
    return (reference_group_norm(input, num_groups, weight, bias, eps,
                                 "silu" if silu else None),)


@_autograd.with_eager_form
class GroupNormFunction(torch.autograd.Function):
    """group_norm's autograd (see pynotes.ops._autograd). Outputs (y, mean, rstd); mean and
    rstd carry no gradient."""
    generate_vmap_rule = True

    @staticmethod
    def forward(input, num_groups, weight, bias, eps, silu):
        with _autograd.below_autograd():
            return torch.ops.pynotes.group_norm(input, num_groups, weight, bias, eps, silu)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, num_groups, weight, bias, eps, silu = inputs
        _, mean, rstd = output
        ctx.mark_non_differentiable(mean, rstd)
        ctx.save_for_backward(input, weight, bias, mean, rstd)
        ctx.save_for_forward(input, weight, bias)
        ctx.options = (num_groups, eps, silu)

    @staticmethod
    def backward(ctx, grad_y, _grad_mean, _grad_rstd):
        input, weight, bias, mean, rstd = ctx.saved_tensors
        num_groups, eps, silu = ctx.options
        needs = ctx.needs_input_grad
        if torch.is_grad_enabled():  # the backward is differentiated too
            return _autograd.reference_vjp(_reference, (input, num_groups, weight, bias, eps,
                                                        silu), (grad_y,), needs)
        dx, dw, db = torch.ops.pynotes.group_norm_backward(grad_y, input, mean, rstd, num_groups,
                                                           weight, bias, silu)
        return (dx if needs[0] else None, None, dw if needs[2] else None,
                db if needs[3] else None, None, None)

    @staticmethod
    def jvp(ctx, t_input, _t_groups, t_weight, t_bias, _t_eps, _t_silu):
        input, weight, bias = ctx.saved_tensors[:3]
        num_groups, eps, silu = ctx.options
        (t_y,) = _autograd.reference_jvp(_reference, (input, num_groups, weight, bias, eps, silu),
                                         (t_input, None, t_weight, t_bias, None, None))
        return t_y, None, None


if _ext.extension_loaded():
    @torch.library.register_fake("pynotes::group_norm")
    def _group_norm_fake(input, num_groups, weight=None, bias=None, eps=1e-5, silu=False):
        stats_dtype = torch.float64 if input.dtype == torch.float64 else torch.float32
        mean = input.new_empty((input.shape[0], num_groups), dtype=stats_dtype)
        return empty_like_output(input), mean, torch.empty_like(mean)

    @torch.library.register_fake("pynotes::group_norm_backward")
    def _group_norm_backward_fake(grad_output, input, mean, rstd, num_groups, weight, bias, silu):
        channels = input.shape[1]

        def like(param):  # the gradient of a parameter has its dtype (float32 with half input)
            return input.new_empty((channels,), dtype=input.dtype if param is None else param.dtype)
        return empty_like_output(input), like(weight), like(bias)

    @torch.library.register_vmap("pynotes::group_norm")
    def _group_norm_vmap(info, in_dims, input, num_groups, weight=None, bias=None, eps=1e-5,
                         silu=False):
        # The dispatcher drops trailing arguments equal to their defaults.
        x_dim, _, w_dim, b_dim = (tuple(in_dims) + (None,) * 4)[:4]
        if x_dim is None or w_dim is not None or b_dim is not None:
            return _autograd.loop_vmap_rule(torch.ops.pynotes.group_norm)(
                info, in_dims, input, num_groups, weight, bias, eps, silu)
        # Samples of the vmapped dimension are more samples of the batch.
        outputs = torch.ops.pynotes.group_norm(_autograd.fold_vmap_dim(input, x_dim, 0),
                                               num_groups, weight, bias, eps, silu)
        return tuple(_autograd.unfold_vmap_dim(t, info.batch_size, 0) for t in outputs), (0, 0, 0)

    torch.library.register_vmap("pynotes::group_norm_backward",
                                _autograd.loop_vmap_rule(torch.ops.pynotes.group_norm_backward))
