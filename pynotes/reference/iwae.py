"""Pure-PyTorch log-sum-exp importance weighting: the fallback and the oracle (the composite
the notes use: torch.logsumexp for the bound, softmax for the weights)."""
import math

import torch


def check(op, log_w, dim):
    if not isinstance(log_w, torch.Tensor) or not log_w.is_floating_point():
        raise TypeError(f"{op}: log_w must be a floating-point tensor (float32, float64, float16 "
                        f"or bfloat16), got {getattr(log_w, 'dtype', type(log_w).__name__)}")
    rank = log_w.dim()
    if rank == 0 or not -rank <= dim < rank:
        raise IndexError(f"{op}: dim must be in [{-rank}, {rank - 1}] for log_w of shape "
                         f"{tuple(log_w.shape)}, got {dim}")
    dim = dim % rank
    if log_w.shape[dim] < 1:
        raise ValueError(f"{op}: log_w.size({dim}) (the number of samples K) must be at least 1")
    return dim


def _accumulate(log_w, dim):
    """log_w in its accumulation dtype, each slice with a +inf entry made NaN: the kernels'
    convention (pynotes.ops.iwae_bound), where logsumexp would give +inf. Added, not selected,
    so that gradients are NaN there too, as the kernels'."""
    x = log_w.float() if log_w.dtype in (torch.float16, torch.bfloat16) else log_w
    return x + torch.where(torch.isposinf(x).any(dim, keepdim=True), torch.nan, 0.0)


def iwae_bound(log_w, dim=0, keepdim=False):
    dim = check("iwae_bound", log_w, dim)
    k = log_w.shape[dim]
    bound = torch.logsumexp(_accumulate(log_w, dim), dim, keepdim=keepdim) - math.log(k)
    return bound.to(log_w.dtype)


def importance_weights(log_w, dim=0):
    dim = check("importance_weights", log_w, dim)
    x = _accumulate(log_w, dim)
    lse = torch.logsumexp(x, dim, keepdim=True)
    weights = torch.where(lse == -torch.inf, 0.0, torch.exp(x - lse)).detach()
    squares = (weights * weights).sum(dim)
    ess = torch.where(squares == 0, 0.0, 1.0 / squares)
    bound = (lse.squeeze(dim) - math.log(log_w.shape[dim])).to(log_w.dtype)
    return bound, weights.to(log_w.dtype), ess.to(log_w.dtype)
