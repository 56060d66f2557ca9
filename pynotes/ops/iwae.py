import math

import torch

from pynotes import _ext
from pynotes.ops import _autocast, _autograd
from pynotes.reference import iwae as reference


def iwae_bound(log_w, dim=0, keepdim=False):
    """The importance-weighted bound (Burda et al., 2016) over the K samples along `dim`:
    log (1/K) sum_k exp(log_w[k]) = logsumexp(log_w, dim) - log K.

    One pass over log_w (a running max-shifted sum); the backward is the normalized weights
    softmax(log_w, dim) times the incoming gradient, recomputed in one pass from log_w and the
    bound, so nothing K-sized is saved. -inf entries are zero weights: an all -inf slice gives
    a -inf bound and zero gradient (not NaN); NaN or +inf entries give NaN. float16/bfloat16
    accumulate in float32; any rank and dim, contiguous or not. Differentiable twice and more,
    and under torch.func (pynotes.ops._autograd).
    """
    log_w = _cast_log_w("iwae_bound", log_w)
    if not _ext.use_extension(log_w):
        return reference.iwae_bound(log_w, dim, keepdim)
    if _autograd.needs_autograd(log_w):
        return _autograd.apply(IwaeBoundFunction, log_w, dim, keepdim)
    return torch.ops.pynotes.iwae_bound(log_w, dim, keepdim)


def importance_weights(log_w, dim=0):
    """(bound, normalized_weights, ess) over `dim` in one op: the IWAE bound (differentiable, as
    iwae_bound), w~ = softmax(log_w, dim) (shaped like log_w) and the effective sample size
    1 / sum w~^2 (0 for an all -inf slice); weights and ess carry no gradient."""
    log_w = _cast_log_w("importance_weights", log_w)
    if not _ext.use_extension(log_w):
        return reference.importance_weights(log_w, dim)
    if _autograd.needs_autograd(log_w):
        return _autograd.apply(ImportanceWeightsFunction, log_w, dim)
    return torch.ops.pynotes.importance_weights(log_w, dim)


def _cast_log_w(op, log_w):
    if not isinstance(log_w, torch.Tensor):
        return log_w
    return _autocast.cast(op, log_w, (log_w,))[0]


@_autograd.with_eager_form
class IwaeBoundFunction(torch.autograd.Function):
    """iwae_bound's autograd (see pynotes.ops._autograd): the backward kernel recomputes the
    normalized weights from log_w and the bound."""
    generate_vmap_rule = True

    @staticmethod
    def forward(log_w, dim, keepdim):
        with _autograd.below_autograd():
            return torch.ops.pynotes.iwae_bound(log_w, dim, keepdim)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0], output)
        ctx.save_for_forward(inputs[0])
        ctx.options = inputs[1:]

    @staticmethod
    def backward(ctx, grad):
        log_w, bound = ctx.saved_tensors
        dim, keepdim = ctx.options
        if torch.is_grad_enabled():  # the backward is differentiated too
            return _autograd.reference_vjp(lambda *a: (reference.iwae_bound(*a),),
                                           (log_w, dim, keepdim), (grad,), ctx.needs_input_grad)
        return torch.ops.pynotes.iwae_bound_backward(grad, log_w, bound, dim, keepdim), None, None

    @staticmethod
    def jvp(ctx, t_log_w, _t_dim, _t_keepdim):
        (log_w,) = ctx.saved_tensors
        return _autograd.reference_jvp(lambda *a: (reference.iwae_bound(*a),),
                                       (log_w, *ctx.options), (t_log_w, None, None))[0]


def _weights_bound(log_w, dim):
    return (reference.importance_weights(log_w, dim)[0],)


@_autograd.with_eager_form
class ImportanceWeightsFunction(torch.autograd.Function):
    """importance_weights' autograd: d bound / d log_w is the normalized weights, which the
    forward returns; weights and ess carry no gradient."""
    generate_vmap_rule = True

    @staticmethod
    def forward(log_w, dim):
        with _autograd.below_autograd():
            return torch.ops.pynotes.importance_weights(log_w, dim)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.mark_non_differentiable(output[1], output[2])
        ctx.save_for_backward(inputs[0], output[1])
        ctx.save_for_forward(inputs[0])
        ctx.dim = inputs[1] % inputs[0].dim()

    @staticmethod
    def backward(ctx, grad, _grad_weights, _grad_ess):
        log_w, weights = ctx.saved_tensors
        if torch.is_grad_enabled():  # the backward is differentiated too
            return _autograd.reference_vjp(_weights_bound, (log_w, ctx.dim), (grad,),
                                           ctx.needs_input_grad)
        return weights * grad.unsqueeze(ctx.dim), None

    @staticmethod
    def jvp(ctx, t_log_w, _t_dim):
        (log_w,) = ctx.saved_tensors
        (t_bound,) = _autograd.reference_jvp(_weights_bound, (log_w, ctx.dim), (t_log_w, None))
        return t_bound, None, None


def jvi_bound(log_w, order=1, dim=0):
    """The jackknife variational inference estimator of order 1 (Nowozin, 2018, "Debiasing
    evidence approximations: on importance-weighted autoencoders and jackknife variational
    inference", ICLR):

        L^J_1 = K L_K - (K - 1) mean_i L_(K-1)^(-i),

    with L_K the IWAE bound on all K samples and L_(K-1)^(-i) the bound on the K - 1 samples
    without sample i. Its bias is O(K^-2) where the IWAE bound's is O(K^-1); it is not a
    lower bound. The leave-one-out sums are taken without cancellation (the largest weight's
    from the others directly). Differentiable. Only order 1 is implemented; order must be in
    [1, K - 1].
    """
    log_w = _cast_log_w("jvi_bound", log_w)
    dim = reference.check("jvi_bound", log_w, dim)
    k = log_w.shape[dim]
    if not isinstance(order, int) or isinstance(order, bool) or not 1 <= order < k:
        raise ValueError(f"jvi_bound: order must be an int in [1, K - 1] = [1, {k - 1}], got "
                         f"{order!r}")
    if order != 1:
        raise ValueError(f"jvi_bound: only order 1 is implemented, got {order}")
    x = log_w.float() if log_w.dtype in (torch.float16, torch.bfloat16) else log_w
    full = iwae_bound(x, dim)
    top = x.max(dim, keepdim=True)
    shift = torch.where(torch.isfinite(top.values), top.values, 0.0).detach()
    e = torch.exp(x - shift)
    position = torch.arange(k, device=x.device).view([k] + [1] * (x.dim() - 1 - dim))
    is_top = position == top.indices  # the first largest of each slice (no in-place scatter)
    total = e.sum(dim, keepdim=True)
    others_of_top = torch.where(is_top, 0.0, e).sum(dim, keepdim=True)
    leave_one_out = torch.where(is_top, others_of_top, total - e)
    loo_bound = torch.log(leave_one_out) + shift - math.log(k - 1)
    return (k * full - (k - 1) * loo_bound.mean(dim)).to(log_w.dtype)


if _ext.extension_loaded():
    def _reduced(log_w, dim, keepdim):
        dim = dim % log_w.dim()
        shape = list(log_w.shape)
        if keepdim:
            shape[dim] = 1
        else:
            del shape[dim]
        return shape

    @torch.library.register_fake("pynotes::iwae_bound")
    def _iwae_bound_fake(log_w, dim=0, keepdim=False):
        return log_w.new_empty(_reduced(log_w, dim, keepdim))

    @torch.library.register_fake("pynotes::iwae_bound_backward")
    def _iwae_bound_backward_fake(grad, log_w, bound, dim, keepdim):
        return log_w.new_empty(log_w.shape)

    @torch.library.register_fake("pynotes::importance_weights")
    def _importance_weights_fake(log_w, dim=0):
        reduced = _reduced(log_w, dim, False)
        return log_w.new_empty(reduced), log_w.new_empty(log_w.shape), log_w.new_empty(reduced)

    # Batching rules: the vmapped dimension is one more (leading) dimension of every tensor,
    # and `dim` shifts past it. (The dispatcher drops trailing arguments equal to their
    # defaults: the rules restate them.)
    def _leading(info, in_dims, tensors):
        return [t.movedim(d, 0) if d is not None else t.expand(info.batch_size, *t.shape)
                for t, d in zip(tensors, in_dims)]

    def _shifted(dim):
        return dim + 1 if dim >= 0 else dim

    @torch.library.register_vmap("pynotes::iwae_bound")
    def _iwae_bound_vmap(info, in_dims, log_w, dim=0, keepdim=False):
        (log_w,) = _leading(info, in_dims[:1], (log_w,))
        return torch.ops.pynotes.iwae_bound(log_w, _shifted(dim), keepdim), 0

    @torch.library.register_vmap("pynotes::iwae_bound_backward")
    def _iwae_bound_backward_vmap(info, in_dims, grad, log_w, bound, dim, keepdim):
        grad, log_w, bound = _leading(info, in_dims[:3], (grad, log_w, bound))
        return torch.ops.pynotes.iwae_bound_backward(grad, log_w, bound, _shifted(dim),
                                                     keepdim), 0

    @torch.library.register_vmap("pynotes::importance_weights")
    def _importance_weights_vmap(info, in_dims, log_w, dim=0):
        (log_w,) = _leading(info, in_dims[:1], (log_w,))
        return torch.ops.pynotes.importance_weights(log_w, _shifted(dim)), (0, 0, 0)
