"""The extension's build facts, and every per-ISA copy of the CPU kernels."""
import json
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
    # torch takes ATEN_CPU_CAPABILITY at its word (avx512 on an AVX2-only CPU is an illegal
    # instruction), so compare with what it picks for this CPU on its own.
    own = {k: v for k, v in os.environ.items() if k != "ATEN_CPU_CAPABILITY"}
    best = subprocess.run([sys.executable, "-c",
                           "import torch; print(torch.backends.cpu.get_cpu_capability())"],
                          capture_output=True, text=True, env=own, check=True).stdout.strip()
    order = ["default", "avx2", "avx512"]
    if best.lower() not in order or order.index(capability) > order.index(best.lower()):
        pytest.skip(f"this CPU cannot run {capability} (torch's own choice: {best})")
    env = {**os.environ, "ATEN_CPU_CAPABILITY": capability}
    result = subprocess.run([sys.executable, "-c", CHECK_KERNELS], capture_output=True,
                            text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr


# Runs in a fresh process: the choices are made once per process (and PYNOTES_MATMUL is read
# once). Each path must give torch's results; backend_info must report what was measured.
CHECK_CHOICES = """
import json, os, torch, pynotes
torch.manual_seed(0)
forced = os.environ.get("PYNOTES_MATMUL")
cell, ref = pynotes.nn.LSTMCell(48, 40), torch.nn.LSTMCell(48, 40)
ref.load_state_dict(cell.state_dict())
x, h = torch.randn(3, 48), (torch.randn(3, 40), torch.randn(3, 40))
for a, b in zip(cell(x, h), ref(x, h)):
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
layer, ref = pynotes.nn.LSTM(24, 32), torch.nn.LSTM(24, 32)
layer.load_state_dict(ref.state_dict())
x = torch.randn(9, 5, 24)
out = layer(x)[0]  # training: the forward and the backward are measured
torch.testing.assert_close(out, ref(x)[0], rtol=1e-5, atol=1e-5)
out.sum().backward()
with torch.no_grad():  # inference: torch's oneDNN RNN layer is measured too
    torch.testing.assert_close(layer(x)[0], ref(x)[0], rtol=1e-5, atol=1e-5)
choices = pynotes.backend_info()["choices"]
print(json.dumps({"matmul": choices["matmul"], "onednn_float32": choices["onednn_float32"],
                  "lstm_engine": choices["lstm_engine"],
                  "lstm_backward": choices["lstm_backward"],
                  "lstm_onednn_rnn": choices["lstm_onednn_rnn"],
                  "packed_matmul": choices["packed_matmul"],
                  "mkl_packed_gemm": choices["mkl_packed_gemm"],
                  "onednn_packed_float32": pynotes._C.onednn_packed_linear_available(torch.float32)}))
"""


@pytest.mark.skipif(not pynotes.backend_info()["extension_loaded"], reason="needs the extension")
@pytest.mark.parametrize("matmul", ["", "aten", "onednn"])
def test_measured_choices_give_the_same_results_and_are_reported(matmul):
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYNOTES_LSTM_ENGINE", "PYNOTES_PACKED_MATMUL")}
    env["PYNOTES_MATMUL"] = matmul
    proc = subprocess.run([sys.executable, "-c", CHECK_CHOICES], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    choices = json.loads(proc.stdout.strip().splitlines()[-1])
    engine = choices["lstm_engine"]
    # batch 5, hidden 32: one class, for the inference and the training forward
    assert sorted((c["shape_class"], c["train"]) for c in engine) == [([8, 32], False),
                                                                       ([8, 32], True)]
    assert all(len(c["engine_us"]) == 2 and len(c["products_us"]) == 2 for c in engine)
    backward = choices["lstm_backward"]
    assert [c["shape_class"] for c in backward] == [[8, 32]]
    assert all(len(c["engine_us"]) == 2 and len(c["products_us"]) == 2 for c in backward)
    # float32: the engine is also timed after a matrix product made the input projection, and
    # making it in each step
    assert all(len(c["engine_after_matmul_us"]) == 2 and len(c["engine_input_per_step_us"]) == 2
               for c in engine)
    # w_hh read as stored is timed at batch 1 only
    assert all(c["engine_w_hh_rows_us"] is None for c in engine)
    rnn = choices["lstm_onednn_rnn"]
    assert [c["shape_class"] for c in rnn] == ([[8, 32]] if torch.backends.mkldnn.is_available()
                                               else [])
    assert all(c["rnn_us"] is None or len(c["rnn_us"]) == 2 for c in rnn)
    if matmul:  # fixed by the environment: nothing measured
        assert choices["matmul"] == []
    elif choices["onednn_float32"]:
        assert choices["matmul"], "the float32 products measured their backends"
        assert {c["backend"] for c in choices["matmul"]} <= {"aten", "onednn"}
    else:  # oneDNN refuses float32 on this CPU: nothing to choose between
        assert choices["matmul"] == []
    # The layer's per-step products (h W_hh^T: 5 rows, N 128, K 32; backward dgates W_hh: 5
    # rows, N 32, K 128) measured packing where MKL can.
    packed = choices["packed_matmul"]
    assert [c["shape_class"] for c in packed] == ([[8, 32, 128], [8, 128, 32]]
                                                  if choices["mkl_packed_gemm"]
                                                  or choices["onednn_packed_float32"] else [])
    assert all(c["unpacked_us"] > 0 and c["backend"] in ("unpacked", "mkl", "onednn")
               for c in packed)


CHECK_BATCH_1 = """
import json, torch, pynotes
torch.manual_seed(0)
for dtype in (torch.float32, torch.float64):
    layer = pynotes.nn.LSTM(24, 32, dtype=dtype)
    ref = torch.nn.LSTM(24, 32, dtype=dtype)
    layer.load_state_dict(ref.state_dict())
    x = torch.randn(9, 1, 24, dtype=dtype)
    with torch.no_grad():
        torch.testing.assert_close(layer(x)[0], ref(x)[0])
print(json.dumps(pynotes.backend_info()["choices"]["lstm_engine"]))
"""


@pytest.mark.skipif(not pynotes.backend_info()["extension_loaded"], reason="needs the extension")
def test_batch_1_times_reading_w_hh_as_stored_in_float32():
    env = {k: v for k, v in os.environ.items() if k != "PYNOTES_LSTM_ENGINE"}
    proc = subprocess.run([sys.executable, "-c", CHECK_BATCH_1], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    engine = json.loads(proc.stdout.strip().splitlines()[-1])
    rows = {c["dtype"]: c["engine_w_hh_rows_us"] for c in engine}
    assert [c["shape_class"] for c in engine] == [[1, 32], [1, 32]]
    assert len(rows["Float"]) == 2 and rows["Double"] is None


@pytest.mark.skipif(not pynotes.backend_info()["extension_loaded"], reason="needs the extension")
def test_bad_lstm_engine_override_is_an_error(monkeypatch):
    monkeypatch.setenv("PYNOTES_LSTM_ENGINE", "yes")
    with pytest.raises(RuntimeError,
                       match="PYNOTES_LSTM_ENGINE must be '0', '1', 'after-matmul', "
                             "'input-per-step', 'w-hh-rows' or 'onednn', got 'yes'"):
        pynotes.nn.LSTM(4, 4)(torch.randn(3, 2, 4))


@pytest.mark.skipif(not pynotes.backend_info()["extension_loaded"], reason="needs the extension")
def test_bad_packed_matmul_override_is_an_error(monkeypatch):
    monkeypatch.setenv("PYNOTES_LSTM_ENGINE", "0")  # the per-step products, where it is read
    monkeypatch.setenv("PYNOTES_PACKED_MATMUL", "yes")
    with pytest.raises(RuntimeError,
                       match="PYNOTES_PACKED_MATMUL must be 'mkl', 'onednn' or '0', got 'yes'"):
        pynotes.nn.LSTM(4, 4)(torch.randn(3, 2, 4))


@pytest.mark.skipif(not pynotes.backend_info()["extension_loaded"], reason="needs the extension")
def test_mkl_packed_gemm_is_found_where_torch_has_mkl():
    # The probe (matmul.cpp) multiplies through MKL's packed GEMM and checks the result: a torch
    # with MKL that fails it would mean our declaration of MKL's interface is wrong.
    if not torch.backends.mkl.is_available():
        pytest.skip("this torch has no MKL")
    assert pynotes.backend_info()["choices"]["mkl_packed_gemm"]


@pytest.mark.skipif(not pynotes.backend_info()["extension_loaded"], reason="needs the extension")
def test_bad_matmul_override_is_an_error():
    env = {**os.environ, "PYNOTES_MATMUL": "mkl"}
    proc = subprocess.run([sys.executable, "-c", "import torch, pynotes\n"
                           "pynotes.nn.LSTMCell(4, 4)(torch.randn(2, 4))"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "PYNOTES_MATMUL must be 'aten' or 'onednn'" in proc.stderr
