"""GroupNorm (and GroupNorm + SiLU) against torch.nn.GroupNorm (then F.silu)."""
import torch
import torch.nn.functional as F

import pynotes
from benchmarks.common import Result, time_pair

# (N, C, spatial, G): the reference shape first; then a larger, a small-batch and a
# 1-D (sequence) shape for the full run.
QUICK_SHAPES = [(8, 256, (32, 32), 32)]
FULL_SHAPES = QUICK_SHAPES + [(4, 512, (64, 64), 32), (1, 128, (128, 128), 32),
                              (16, 384, (1024,), 32)]
# On a GPU, tensors past its caches too (the bandwidth target is for tensors over 64 MB): the
# quick run adds one of 128 MB (float32).
CUDA_QUICK_SHAPES = QUICK_SHAPES + [(16, 512, (64, 64), 32)]
CUDA_SHAPES = FULL_SHAPES + [(16, 512, (64, 64), 32), (2, 256, (256, 256), 32)]


def shapes_and_dtypes(device, quick, dtypes=(torch.float32,)):
    if device == "cuda":
        if quick:
            return CUDA_QUICK_SHAPES, tuple(dtypes)
        return CUDA_SHAPES, tuple(dtypes) + (torch.bfloat16,)
    return (QUICK_SHAPES if quick else FULL_SHAPES), tuple(dtypes)


def cases(device, quick=True):
    shapes, dtypes = shapes_and_dtypes(device, quick)
    return [f"group_norm(+silu) {n}x{c}x{'x'.join(map(str, spatial))} G={g} {str(dtype)[6:]} "
            "NCHW and channels_last, forward and forward+backward, vs torch GroupNorm (then SiLU)"
            for n, c, spatial, g in shapes for dtype in dtypes]


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
                case = f"{n}x{c}x{'x'.join(map(str, spatial))} G={g} {str(dtype)[6:]} {layout_name}"
                numel_bytes = x.numel() * x.element_size()
                for silu in (False, True):
                    theirs = torch.nn.GroupNorm(g, c, device=device, dtype=dtype)
                    ours = pynotes.nn.GroupNorm(g, c, device=device, dtype=dtype,
                                                activation="silu" if silu else None)
                    anchor_fn = (lambda t, m=theirs: F.silu(m(t))) if silu else theirs
                    anchor = "GroupNorm then SiLU" if silu else "torch GroupNorm"
                    with torch.no_grad():
                        ms = time_pair(lambda: anchor_fn(x), lambda: ours(x), device)
                    results.append(Result("group_norm+silu" if silu else "group_norm", case,
                                          "forward", anchor, *ms, min_bytes=2 * numel_bytes))
                    xg = x.detach().requires_grad_()

                    def train_step(fn, params):
                        out = fn(xg)
                        torch.autograd.grad(out, [xg, *params], grad)
                    ms = time_pair(lambda: train_step(anchor_fn, list(theirs.parameters())),
                                   lambda: train_step(ours, list(ours.parameters())), device)
                    results.append(Result("group_norm+silu" if silu else "group_norm", case,
                                          "forward+backward", anchor, *ms,
                                          min_bytes=5 * numel_bytes))
    return results
