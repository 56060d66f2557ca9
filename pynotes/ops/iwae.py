import math

import torch

from pynotes import _ext
from pynotes.reference import iwae as reference


def iwae_bound(log_w, dim=0, keepdim=False):
    """The importance-weighted bound (Burda et al., 2016) over the K samples along `dim`:
    log (1/K) sum_k exp(log_w[k]) = logsumexp(log_w, dim) - log K.

    One pass over log_w (a running max-shifted sum); the backward is the normalized weights
    softmax(log_w, dim) times the incoming gradient, recomputed in one pass from log_w and the
    bound, so nothing K-sized is saved. -inf entries are zero weights: an all -inf slice gives
    a -inf bound and zero gradient (not NaN); NaN or +inf entries give NaN. float16/bfloat16
    accumulate in float32; any rank and dim, contiguous or not.
    """
    if _ext.use_extension(log_w):
        return torch.ops.pynotes.iwae_bound(log_w, dim, keepdim)
    return reference.iwae_bound(log_w, dim, keepdim)


def importance_weights(log_w, dim=0):
    """(bound, normalized_weights, ess) over `dim` in one op: the IWAE bound (differentiable, as
    iwae_bound), w~ = softmax(log_w, dim) (shaped like log_w) and the effective sample size
    1 / sum w~^2 (0 for an all -inf slice); weights and ess carry no gradient."""
    if _ext.use_extension(log_w):
        return torch.ops.pynotes.importance_weights(log_w, dim)
    return reference.importance_weights(log_w, dim)


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
    is_top = torch.zeros_like(x, dtype=torch.bool).scatter_(dim, top.indices, True)
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
