"""The extension's build facts, and every per-ISA copy of the CPU kernels."""
import os
import subprocess
import sys

import pytest
import torch

import pynotes


def test_backend_info_reports_the_build():
    info = pynotes.backend_info()
    for key in ("extension_loaded", "with_cuda", "cuda_version", "cuda_archs", "cpu_capability",
                "num_threads", "torch_version"):
        assert key in info
    assert info["torch_version"] == torch.__version__
    if info["extension_loaded"]:
        assert info["cpu_capability"] in ("DEFAULT", "AVX2", "AVX512")
        assert info["num_threads"] == torch.get_num_threads()
        if info["with_cuda"]:
            assert info["cuda_version"] and info["cuda_archs"]


# Runs in a fresh process so ATEN_CPU_CAPABILITY picks the kernel copy at load time.
CHECK_KERNELS = """
import torch, torch.nn.functional as F, pynotes
assert pynotes.backend_info()["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
for shape, g, layout in [((16, 32, 5, 3), 16, torch.contiguous_format),
                         ((1, 4, 9, 7), 2, torch.contiguous_format),
                         ((3, 24, 5, 7), 6, torch.channels_last),
                         ((16, 8, 3, 5), 4, torch.channels_last)]:
    for dtype, tol in [(torch.float32, 2e-5), (torch.float64, 1e-10), (torch.bfloat16, 3e-2)]:
        x = torch.randn(shape).to(dtype).contiguous(memory_format=layout).requires_grad_()
        w = torch.randn(shape[1]).to(dtype).requires_grad_()
        out = pynotes.ops.group_norm(x, g, w, None, activation="silu")
        gx, gw = torch.autograd.grad(out, (x, w), torch.ones_like(out))
        x64, w64 = (t.detach().double().requires_grad_() for t in (x, w))
        ref = F.silu(F.group_norm(x64, g, w64))
        ex, ew = torch.autograd.grad(ref, (x64, w64), torch.ones_like(ref))
        for a, b in ((out, ref), (gx, ex), (gw, ew)):
            torch.testing.assert_close(a.double(), b, atol=tol, rtol=tol)
"""


@pytest.mark.parametrize("capability", ["default", "avx2", "avx512"])
def test_each_cpu_kernel_build_is_correct(capability):
    if not pynotes.backend_info()["extension_loaded"]:
        pytest.skip("extension not built")
    env = {**os.environ, "ATEN_CPU_CAPABILITY": capability}
    chosen = subprocess.run([sys.executable, "-c",
                             "import torch; print(torch.backends.cpu.get_cpu_capability())"],
                            capture_output=True, text=True, env=env, check=True).stdout.strip()
    if chosen.lower() != capability:
        pytest.skip(f"this CPU cannot run {capability} (torch chose {chosen})")
    result = subprocess.run([sys.executable, "-c", CHECK_KERNELS], capture_output=True,
                            text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
