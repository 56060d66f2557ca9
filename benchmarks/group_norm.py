"""GroupNorm (and GroupNorm + SiLU) against torch.nn.GroupNorm (then F.silu), eager, and the
fused op also against torch.compile (inductor) of GroupNorm then SiLU.

The full CPU run is the sweep N in {1, 2}, C in {64, 128, 256, 512}, H = W in {128, 256, 512},
G in {16, 32}, both layouts, forward and forward+backward (input, weight and bias gradients),
after the earlier shapes. Tensors beyond the last-level cache are timed in the steady state of
a training loop (freed memory kept, see benchmarks/common.py); benchmarks/memory.py times the
same ops under glibc's defaults and the other allocator settings.
"""
import itertools

import torch
import torch.nn.functional as F

import pynotes
from benchmarks.common import Result, release_freed_memory, timed_pair

# (N, C, spatial, G): the reference shape first; then a larger, a small-batch and a
# 1-D (sequence) shape for the full run.
QUICK_SHAPES = [(8, 256, (32, 32), 32)]
FULL_SHAPES = QUICK_SHAPES + [(4, 512, (64, 64), 32), (16, 384, (1024,), 32)]
SWEEP = [(n, c, (hw, hw), g) for n, c, hw, g in itertools.product(
    (1, 2), (64, 128, 256, 512), (128, 256, 512), (16, 32))]
# On a GPU, tensors past its caches too (the bandwidth target is for tensors over 64 MB): the
# quick run adds one of 128 MB (float32).
CUDA_QUICK_SHAPES = QUICK_SHAPES + [(16, 512, (64, 64), 32)]
CUDA_SHAPES = FULL_SHAPES + [(1, 128, (128, 128), 32), (16, 512, (64, 64), 32),
                             (2, 256, (256, 256), 32)]


def shapes_and_dtypes(device, quick, dtypes=(torch.float32,)):
    if device == "cuda":
        if quick:
            return CUDA_QUICK_SHAPES, tuple(dtypes)
        return CUDA_SHAPES, tuple(dtypes) + (torch.bfloat16,)
    return (QUICK_SHAPES if quick else FULL_SHAPES + SWEEP), tuple(dtypes)


def compiled_anchor(device, quick):
    """Whether the fused op is also timed against torch.compile: in the full runs (compiling
    costs seconds per shape and layout)."""
    return not quick


def cases(device, quick=True):
    shapes, dtypes = shapes_and_dtypes(device, quick)
    also = ", and GroupNorm+SiLU vs torch.compile" if compiled_anchor(device, quick) else ""
    return [f"group_norm(+silu) {n}x{c}x{'x'.join(map(str, spatial))} G={g} {str(dtype)[6:]} "
            "NCHW and channels_last, forward and forward+backward, vs torch GroupNorm (then SiLU)"
            f"{also}" for n, c, spatial, g in shapes for dtype in dtypes]


def layouts(ndim):
    fmt = {4: torch.channels_last, 5: torch.channels_last_3d}.get(ndim)
    return [("NCHW", lambda t: t.contiguous()),
            ("channels_last", (lambda t: t.contiguous(memory_format=fmt)) if fmt else
             (lambda t: t.transpose(1, -1).contiguous().transpose(1, -1)))]


def run(device, quick=True, dtypes=(torch.float32,)):
    results = []
    shapes, dtypes = shapes_and_dtypes(device, quick, dtypes)
    for n, c, spatial, g in shapes:
        for dtype in dtypes:
            for layout_name, to_layout in layouts(2 + len(spatial)):
                x = to_layout(torch.randn(n, c, *spatial, device=device, dtype=dtype))
                grad = to_layout(torch.randn_like(x))
                xg = x.detach().requires_grad_()
                case = f"{n}x{c}x{'x'.join(map(str, spatial))} G={g} {str(dtype)[6:]} {layout_name}"
                numel_bytes = x.numel() * x.element_size()

                def train_step(fn, params):
                    torch.autograd.grad(fn(xg), [xg, *params], grad)

                def add(op, ours, params, anchor_fn, anchor_params, anchor):
                    with torch.no_grad():
                        ms = timed_pair(lambda: anchor_fn(x), lambda: ours(x), device)
                    results.append(Result(op, case, "forward", anchor, *ms,
                                          min_bytes=2 * numel_bytes))
                    ms = timed_pair(lambda: train_step(anchor_fn, anchor_params),
                                    lambda: train_step(ours, params), device)
                    results.append(Result(op, case, "forward+backward", anchor, *ms,
                                          min_bytes=5 * numel_bytes))
                    for r in results[-2:]:  # progress, for sweeps that run an hour
                        print(f"{op} {case} {r.variant} vs {anchor}: {r.speedup:.2f}x", flush=True)

                for silu in (False, True):
                    theirs = torch.nn.GroupNorm(g, c, device=device, dtype=dtype)
                    ours = pynotes.nn.GroupNorm(g, c, device=device, dtype=dtype,
                                                activation="silu" if silu else None)
                    params = list(ours.parameters())
                    if not silu:
                        add("group_norm", ours, params, theirs, list(theirs.parameters()),
                            "torch GroupNorm")
                        continue
                    eager = lambda t, m=theirs: F.silu(m(t))  # noqa: E731
                    add("group_norm+silu", ours, params, eager, list(theirs.parameters()),
                        "GroupNorm then SiLU")
                    if compiled_anchor(device, quick):
                        # A fresh compile per shape and layout (forward and backward graphs):
                        # past dynamo's recompile limit the anchor would silently run eager.
                        torch._dynamo.reset()
                        with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
                            add("group_norm+silu", ours, params, torch.compile(eager),
                                list(theirs.parameters()), "torch.compile(GroupNorm then SiLU)")
                del x, grad, xg
                torch._dynamo.reset()
                release_freed_memory()
    return results
