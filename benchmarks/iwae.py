"""Log-sum-exp importance weighting against the torch composite of the notes, float32, reduced
over K (dim 0) of (K, B):

- iwae_bound vs torch.logsumexp(log_w, 0) - log K, forward and forward+backward;
- importance_weights vs the composite that also needs the weights and the ESS:
  logsumexp for the bound, softmax(log_w, 0).detach() for the weights, 1 / sum w^2, backward
  through the bound.

Minimal bytes: forward reads log_w once and writes the (B,) results; forward+backward also
reads log_w and writes its gradient once more (the bound's gradient is B-sized).
"""
import math

import torch

import pynotes
from benchmarks.common import Result, time_pair

QUICK = [(5000, 1000), (64, 65536), (5, 100)]
# On a GPU also one past its caches (256 MB float32; the bandwidth target is for large inputs).
CUDA_QUICK = QUICK + [(1024, 65536)]


def shapes(device):
    return CUDA_QUICK if device == "cuda" else QUICK


def cases(device, quick=True):
    return [f"{op} K={k} B={b}, forward and forward+backward, vs {anchor}"
            for k, b in shapes(device)
            for op, anchor in (("iwae_bound", "torch.logsumexp"),
                               ("importance_weights", "logsumexp + softmax composite"))]


def composite_weights(log_w):
    bound = torch.logsumexp(log_w, 0) - math.log(log_w.shape[0])
    weights = torch.softmax(log_w, 0).detach()
    return bound, weights, 1 / (weights * weights).sum(0)


def run(device, quick=True):
    results = []
    for k, b in shapes(device):
        x = torch.randn(k, b, device=device, requires_grad=True)
        grad = torch.randn(b, device=device)
        case = f"K={k} B={b}"
        element = x.element_size()
        fwd_bytes = k * b * element + b * element
        train_bytes = fwd_bytes + 2 * k * b * element
        rounds = 21 if device == "cpu" else 51
        # (op, anchor, theirs, ours): each returns the bound first.
        pairs = [
            ("iwae_bound", "torch.logsumexp",
             lambda: (torch.logsumexp(x, 0) - math.log(k),),
             lambda: (pynotes.ops.iwae_bound(x, 0),)),
            ("importance_weights", "logsumexp + softmax composite",
             lambda: composite_weights(x), lambda: pynotes.ops.importance_weights(x, 0)),
        ]
        for op, anchor, theirs, ours in pairs:
            with torch.no_grad():
                ms = time_pair(theirs, ours, device, warmup=3, rounds=rounds)
            results.append(Result(op, case, "forward", anchor, *ms, fwd_bytes))
            ms = time_pair(lambda f=theirs: torch.autograd.grad(f()[0], x, grad),
                           lambda f=ours: torch.autograd.grad(f()[0], x, grad), device,
                           warmup=3, rounds=rounds)
            results.append(Result(op, case, "forward+backward", anchor, *ms, train_bytes))
    return results
