"""An opt-in cache of large CPU blocks, in front of torch's CPU allocator.

    import pynotes
    pynotes.memory.enable_cpu_cache()     # or PYNOTES_CPU_CACHE=1 in the environment
    pynotes.memory.cpu_cache_info()       # hits, misses, bytes held

Why: glibc gives a large block (from 128 KiB up, growing with use) freshly mapped pages and
returns them to the OS on free, so every call that allocates a tensor beyond the last-level
cache pays a page fault per 4 KiB page on first write. For group norm at batch 1 on a 34 MB
activation that is about three quarters of the call. The cache keeps freed blocks of at least
`min_block_bytes`, up to `limit_bytes` in all (the largest are freed first beyond that), and
serves requests of the same size or up to 1/8 smaller from them: a loop over the same shapes
faults its pages in once. It serves every torch CPU allocation in the process, not only
pynotes' own. Like CUDA's caching allocator, it makes memory freed by tensors look in use to the
OS (`empty_cpu_cache` gives it back), and torch's profiler does not see reuses from it.

Alternatives measured in benchmarks/memory.py: glibc tunables (MALLOC_MMAP_THRESHOLD_ or
mallopt), jemalloc or tcmalloc through LD_PRELOAD (PyTorch's CPU performance guide), and
torch's THP_MEM_ALLOC_ENABLE=1 (huge pages: fewer faults, but every page is still cleared).
"""
import os

from pynotes import _ext

__all__ = ["enable_cpu_cache", "disable_cpu_cache", "empty_cpu_cache", "cpu_cache_info"]

MIN_BLOCK_BYTES = 128 * 1024  # glibc's initial mmap threshold: smaller blocks come from its heap


def _module():
    if _ext._C is None:
        raise RuntimeError("pynotes.memory needs the compiled extension, which did not load: "
                           f"{_ext._load_error}")
    return _ext._C


def _physical_memory_bytes():
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 8 * 1024**3


def enable_cpu_cache(limit_bytes: int = None, min_block_bytes: int = MIN_BLOCK_BYTES) -> None:
    """Installs the cache as torch's CPU allocator, or changes its limits if it already is.

    limit_bytes: most bytes kept in freed blocks (default: a quarter of physical memory).
    min_block_bytes: smaller allocations go straight to the allocator underneath.
    """
    if limit_bytes is None:
        limit_bytes = _physical_memory_bytes() // 4
    _module().cpu_cache_enable(int(limit_bytes), int(min_block_bytes))


def disable_cpu_cache() -> None:
    """Restores the allocator that was in place and frees the cached blocks."""
    _module().cpu_cache_disable()


def empty_cpu_cache() -> None:
    """Frees the cached blocks back to the allocator underneath (the cache stays on)."""
    _module().cpu_cache_empty()


def cpu_cache_info() -> dict:
    """enabled, limit_bytes, min_block_bytes, cached_bytes, cached_blocks, live_blocks (blocks
    of at least min_block_bytes handed out and not yet freed), hits, misses."""
    if _ext._C is None:
        return {"enabled": False}
    return _ext._C.cpu_cache_stats()


if os.environ.get("PYNOTES_CPU_CACHE", "0").lower() in _ext._TRUE:
    enable_cpu_cache()
