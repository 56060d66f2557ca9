"""pynotes: fused PyTorch operators with C++ (CPU) and CUDA kernels.

    import pynotes
    y = pynotes.ops.group_norm(x, num_groups=32, weight=w, bias=b, activation="silu")
    layer = pynotes.nn.GroupNorm(32, 256)          # drop-in for torch.nn.GroupNorm
    pynotes.backend_info()                         # how the kernels were built
    pynotes.memory.enable_cpu_cache()              # large CPU blocks reused, not re-faulted

Every op has a pure-PyTorch reference (pynotes.reference, the same results): it runs
when the compiled extension is missing, for CUDA tensors in a CPU-only build, and everywhere
when PYNOTES_FORCE_FALLBACK=1.
"""
from pynotes._ext import backend_info
from pynotes import graph, memory, nn, ops, reference

__version__ = "0.1.0"
__all__ = ["backend_info", "gbdt", "graph", "memory", "nn", "ops", "reference", "__version__"]


def __getattr__(name):
    if name == "gbdt":  # the estimators need scikit-learn: imported on first use
        import importlib
        return importlib.import_module("pynotes.gbdt")
    raise AttributeError(f"module 'pynotes' has no attribute {name!r}")
