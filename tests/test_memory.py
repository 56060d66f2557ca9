"""pynotes.memory: the opt-in cache of large CPU blocks in front of torch's CPU allocator."""
import threading

import pytest
import torch

import pynotes
from pynotes import memory

pytestmark = pytest.mark.skipif(not pynotes.backend_info()["extension_loaded"],
                                reason="needs the compiled extension")

BIG = 1 << 20  # floats: 4 MiB


@pytest.fixture
def cache():
    memory.enable_cpu_cache(limit_bytes=64 * BIG, min_block_bytes=memory.MIN_BLOCK_BYTES)
    try:
        yield memory
    finally:
        memory.disable_cpu_cache()


def test_freed_block_is_reused(cache):
    before = cache.cpu_cache_info()
    x = torch.empty(BIG)
    ptr = x.data_ptr()
    del x
    assert cache.cpu_cache_info()["cached_bytes"] == 4 * BIG
    y = torch.empty(BIG - BIG // 16)  # up to 1/8 smaller fits the same block
    assert y.data_ptr() == ptr
    after = cache.cpu_cache_info()
    assert after["hits"] == before["hits"] + 1 and after["misses"] == before["misses"] + 1
    assert after["cached_bytes"] == 0 and after["live_blocks"] == before["live_blocks"] + 1


def test_too_small_or_too_different_is_not_reused(cache):
    x = torch.empty(BIG)
    del x
    y = torch.empty(BIG // 2)  # more than 1/8 smaller: a block of its own
    assert cache.cpu_cache_info()["cached_bytes"] == 4 * BIG
    del y
    small = torch.empty(16)
    assert cache.cpu_cache_info()["live_blocks"] == 0  # below min_block_bytes: passed through
    del small
    cache.empty_cpu_cache()
    assert cache.cpu_cache_info()["cached_bytes"] == 0


def test_limit_evicts_largest_first(cache):
    memory.enable_cpu_cache(limit_bytes=6 * BIG, min_block_bytes=memory.MIN_BLOCK_BYTES)
    blocks = [torch.empty(BIG // 4), torch.empty(BIG), torch.empty(BIG // 2)]
    del blocks
    info = cache.cpu_cache_info()
    assert info["cached_bytes"] <= 6 * BIG
    assert info["cached_bytes"] == 3 * BIG  # the 4 MiB block went back to make room
    huge = torch.empty(2 * BIG)  # larger than the limit: never cached
    del huge
    assert cache.cpu_cache_info()["cached_bytes"] == 3 * BIG


def test_results_and_lifetimes_across_enable_and_disable(cache):
    torch.manual_seed(0)
    x = torch.randn(4, 64, 32, 32)
    expected = torch.nn.functional.group_norm(x, 8)
    for _ in range(3):  # reused blocks hold stale values: every op must still write its output
        torch.testing.assert_close(pynotes.ops.group_norm(x, 8), expected)
        torch.testing.assert_close(torch.nn.functional.group_norm(x, 8), expected)
    kept = torch.full((BIG,), 3.0)  # allocated by the cache, freed after it is disabled
    memory.disable_cpu_cache()
    assert not memory.cpu_cache_info()["enabled"]
    assert memory.cpu_cache_info()["cached_bytes"] == 0
    assert kept.sum().item() == 3.0 * BIG
    live = memory.cpu_cache_info()["live_blocks"]
    del kept
    assert memory.cpu_cache_info()["live_blocks"] == live - 1


def test_threads_allocate_and_free_concurrently(cache):
    errors = []
    live = cache.cpu_cache_info()["live_blocks"]

    def work(seed):
        try:
            for i in range(50):
                t = torch.full((BIG // (1 + (seed + i) % 3),), float(seed))
                assert t[-1].item() == float(seed)
                del t
        except Exception as error:  # reported on the main thread
            errors.append(error)
    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    assert cache.cpu_cache_info()["live_blocks"] == live


def test_raw_allocations_pass_through(cache):
    # oneDNN's RNN allocates scratch through the raw allocator API; small blocks pass through.
    lstm = torch.nn.LSTM(16, 16)
    out, _ = lstm(torch.randn(5, 3, 16))
    assert out.shape == (5, 3, 16)


def test_bad_limits():
    with pytest.raises(RuntimeError, match="limit_bytes"):
        memory.enable_cpu_cache(limit_bytes=-1)
    with pytest.raises(RuntimeError, match="min_block_bytes"):
        memory.enable_cpu_cache(min_block_bytes=0)
    assert not memory.cpu_cache_info()["enabled"]
