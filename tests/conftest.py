"""Shared test parametrization: devices, dtypes with their tolerances, output poisoning."""
import os

import pytest
import torch

import pynotes

# PYNOTES_TEST_DEVICES=cpu,cuda lists the CUDA cases on a machine without a GPU too (what
# benchmarks/gpu_check.sh's self-test collects); they skip there.
DEVICES = (os.environ["PYNOTES_TEST_DEVICES"].split(",") if os.environ.get("PYNOTES_TEST_DEVICES")
           else ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
# CUDA tests run only where the CUDA kernels were built (otherwise they would test the fallback).
CUDA_KERNELS = pynotes.backend_info()["with_cuda"]

FLOAT_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]

# Tolerances against a float64 oracle, per dtype of the op's inputs.
TOLERANCES = {
    torch.float64: dict(atol=1e-10, rtol=1e-9),
    torch.float32: dict(atol=2e-5, rtol=2e-5),
    torch.float16: dict(atol=4e-3, rtol=4e-3),
    torch.bfloat16: dict(atol=3e-2, rtol=3e-2),
}


def tolerance(dtype):
    return TOLERANCES[dtype]


def pytest_generate_tests(metafunc):
    if "device" in metafunc.fixturenames:
        metafunc.parametrize("device", DEVICES)


@pytest.fixture(autouse=True)
def poison_uninitialized_memory():
    """Every torch.empty (the kernels' outputs included) is filled with NaN, so an element a
    kernel forgets to write shows up as NaN instead of passing by luck."""
    previous = torch.are_deterministic_algorithms_enabled()
    previous_fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    yield
    torch.use_deterministic_algorithms(previous)
    torch.utils.deterministic.fill_uninitialized_memory = previous_fill


@pytest.fixture(autouse=True)
def skip_cuda_without_kernels(request):
    if "device" in request.fixturenames and request.getfixturevalue("device") == "cuda":
        if not torch.cuda.is_available():
            pytest.skip("no CUDA device")
        if not CUDA_KERNELS:
            pytest.skip("pynotes was built without CUDA kernels")


@pytest.fixture(autouse=True)
def fresh_seed():
    """Fresh random inputs every run; the seed is printed (pytest shows it for a failing test)
    and PYNOTES_TEST_SEED replays it."""
    seed = int(os.environ.get("PYNOTES_TEST_SEED", int.from_bytes(os.urandom(4), "little")))
    torch.manual_seed(seed)
    print(f"PYNOTES_TEST_SEED={seed}")
