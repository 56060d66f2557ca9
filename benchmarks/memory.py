"""Ops whose tensors outgrow the last-level cache, under each way of managing CPU memory.

A freshly mapped block costs a page fault per 4 KiB page on first write, and glibc's defaults
(a dynamic mmap threshold) decide call by call whether a large block is fresh. So each state
runs in its own process (environment variables and LD_PRELOAD act at start-up), timing torch
and pynotes alike:
- glibc defaults: what a user gets with no settings;
- MALLOC_MMAP_THRESHOLD_=1GB: a fixed threshold (large blocks from glibc's heap);
- mallopt no mmap, no trim: how the other benchmark modules run (benchmarks/common.py);
- THP_MEM_ALLOC_ENABLE=1: torch's allocator asks for transparent huge pages;
- jemalloc / tcmalloc through LD_PRELOAD (PyTorch's CPU performance guide), where installed;
- pynotes.memory.enable_cpu_cache(): the opt-in cache of large blocks (pynotes/memory.py).
Each row's case names its state; % of copy BW is against the copy bandwidth measured by the
parent process.
"""
import ctypes.util
import glob
import json
import os
import subprocess
import sys

import torch

from benchmarks.common import Result

# (N, C, H = W, G, layout): beyond a 32 MB last-level cache in float32.
QUICK_GROUP_NORM = [(1, 512, 128, 32, "NCHW")]
FULL_GROUP_NORM = QUICK_GROUP_NORM + [(1, 512, 128, 32, "channels_last"),
                                      (1, 128, 512, 32, "NCHW"), (2, 256, 256, 32, "NCHW")]
# (T, B, I = H): the layer's T x B x 4H workspaces are allocated per call.
FULL_LSTM = [(32, 256, 256)]


def _preload(name):
    """The path of lib<name>.so for LD_PRELOAD, or None where it is not installed."""
    paths = sorted(glob.glob(f"/usr/lib/*/lib{name}.so*") + glob.glob(f"/usr/lib/lib{name}.so*"))
    if paths:
        return paths[0]
    found = ctypes.util.find_library(name)
    return found if found and os.path.isabs(found) else None


def states(quick):
    """(label, extra environment, what the child does in-process) for each state measured."""
    rows = [("glibc defaults", {}, None),
            ("pynotes.memory cache", {}, "pynotes_cache"),
            ("mallopt no mmap/trim", {}, "keep_freed_memory")]
    if quick:
        return rows
    rows.insert(1, ("MALLOC_MMAP_THRESHOLD_=1GB", {"MALLOC_MMAP_THRESHOLD_": str(2**30)}, None))
    rows.append(("THP_MEM_ALLOC_ENABLE=1", {"THP_MEM_ALLOC_ENABLE": "1"}, None))
    for lib in ("jemalloc", "tcmalloc"):
        path = _preload(lib)
        if path:
            rows.append((f"{lib} (LD_PRELOAD)", {"LD_PRELOAD": path}, None))
    return rows


def cases(device, quick=True):
    if device != "cpu":
        return []
    shapes = QUICK_GROUP_NORM if quick else FULL_GROUP_NORM
    return [f"{label}: group_norm {n}x{c}x{hw}x{hw} G={g} {layout} forward and forward+backward"
            for label, _, _ in states(quick) for n, c, hw, g, layout in shapes] + (
        [] if quick else [f"{label}: lstm T={t} B={b} I=H={h} inference"
                          for label, _, _ in states(quick) for t, b, h in FULL_LSTM])


def run(device, quick=True):
    if device != "cpu":
        return []
    results = []
    for label, env, action in states(quick):
        child_env = {**os.environ, **env}
        proc = subprocess.run([sys.executable, "-m", "benchmarks.memory", "--child",
                               action or "none", "quick" if quick else "full"],
                              env=child_env, capture_output=True, text=True, timeout=1200)
        if proc.returncode != 0:
            raise RuntimeError(f"benchmarks.memory child ({label}) failed:\n{proc.stderr}")
        for row in json.loads(proc.stdout.strip().splitlines()[-1]):
            op, case, variant, anchor, anchor_ms, pynotes_ms, min_bytes = row
            results.append(Result(op, f"{case} [{label}]", variant, anchor, anchor_ms,
                                  pynotes_ms, min_bytes))
    return results


def _child(action, quick):
    import pynotes
    from benchmarks.common import keep_freed_memory, time_pair
    if action == "keep_freed_memory":
        assert keep_freed_memory()
    elif action == "pynotes_cache":
        pynotes.memory.enable_cpu_cache()
    torch.manual_seed(0)
    rows = []
    for n, c, hw, g, layout in (QUICK_GROUP_NORM if quick else FULL_GROUP_NORM):
        x = torch.randn(n, c, hw, hw)
        if layout == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
        theirs, ours = torch.nn.GroupNorm(g, c), pynotes.nn.GroupNorm(g, c)
        case = f"{n}x{c}x{hw}x{hw} G={g} float32 {layout}"
        nbytes = x.numel() * x.element_size()
        with torch.no_grad():
            ms = time_pair(lambda: theirs(x), lambda: ours(x), "cpu", rounds=21)
        rows.append(("group_norm", case, "forward", "torch GroupNorm", *ms, 2 * nbytes))
        xg, grad = x.detach().requires_grad_(), torch.randn_like(x)

        def train_step(module):
            torch.autograd.grad(module(xg), [xg, *module.parameters()], grad)
        ms = time_pair(lambda: train_step(theirs), lambda: train_step(ours), "cpu", rounds=11)
        rows.append(("group_norm", case, "forward+backward", "torch GroupNorm", *ms, 5 * nbytes))
    for t, b, h in ([] if quick else FULL_LSTM):
        theirs, ours = torch.nn.LSTM(h, h), pynotes.nn.LSTM(h, h)
        ours.load_state_dict(theirs.state_dict())
        x = torch.randn(t, b, h)
        with torch.no_grad():
            ms = time_pair(lambda: theirs(x), lambda: ours(x), "cpu", warmup=2, rounds=9)
        rows.append(("lstm", f"T={t} B={b} I=H={h} float32", "inference", "torch LSTM", *ms, 0))
    print(json.dumps(rows))


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        _child(None if sys.argv[2] == "none" else sys.argv[2], sys.argv[3] == "quick")
    else:
        sys.exit("usage: python -m benchmarks.memory --child ACTION quick|full (run by "
                 "python -m benchmarks --ops memory)")
