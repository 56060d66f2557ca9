"""Loads the compiled extension (pynotes._C) once and decides, per call, who runs an op."""
import contextlib
import os
import warnings

import torch

_TRUE = ("1", "true", "yes", "on")
_force_fallback = os.environ.get("PYNOTES_FORCE_FALLBACK", "0").lower() in _TRUE

try:
    from pynotes import _C  # loading it registers the torch.ops.pynotes.* operators
    _load_error = None
except ImportError as error:  # not built, or built against another torch
    _C = None
    _load_error = error
    if not _force_fallback:
        warnings.warn(f"pynotes: the compiled extension did not load ({error}); ops run their "
                      "pure-PyTorch reference implementations", RuntimeWarning, stacklevel=2)

_build = _C.build_info() if _C is not None else {}
_warned_no_cuda = False


def extension_loaded() -> bool:
    return _C is not None


def use_extension(tensor: torch.Tensor) -> bool:
    """True when the compiled kernels handle `tensor`'s device; False selects the reference."""
    global _warned_no_cuda
    if _force_fallback or _C is None:
        return False
    if tensor.device.type == "cpu":
        return True
    if tensor.device.type == "cuda":
        if _build["with_cuda"]:
            return True
        if not _warned_no_cuda:
            _warned_no_cuda = True
            warnings.warn("pynotes was built without CUDA kernels: CUDA tensors use the "
                          "pure-PyTorch reference implementations", RuntimeWarning, stacklevel=3)
    return False


@contextlib.contextmanager
def force_fallback(enabled: bool = True):
    """Within the block, run the reference implementations (as PYNOTES_FORCE_FALLBACK=1 does)."""
    global _force_fallback
    previous, _force_fallback = _force_fallback, enabled
    try:
        yield
    finally:
        _force_fallback = previous


def backend_info() -> dict:
    """How the kernels were built and what they run with.

    Keys: extension_loaded, force_fallback, with_cuda, cuda_version, cuda_archs,
    cpu_capability (SIMD instruction set of the CPU kernels in use), num_threads (CPU threads
    the kernels use), torch_version, torch_cuda_version, choices (what was measured on this
    machine so far: "matmul", the float32 CPU product backend per shape class, fixed by
    PYNOTES_MATMUL=aten|onednn, with "onednn_float32", whether torch's oneDNN matmul runs
    float32 on this CPU at all (else every product is at::mm); "packed_matmul", how the
    LSTM layer's per-step products run per shape class: their weight packed once for MKL's
    packed GEMM (float32) or for oneDNN's linear, or re-packed every call ("unpacked"), fixed
    by PYNOTES_PACKED_MATMUL=mkl|onednn|0, with "mkl_packed_gemm", whether torch's MKL has a
    packed GEMM at all; "lstm_engine", the LSTM layer's
    recurrent path per shape class (the engine also timed after a matrix product made the
    input projection, making it in each step, and at batch 1 in float32 reading w_hh as
    stored), fixed by PYNOTES_LSTM_ENGINE=1|after-matmul|input-per-step|w-hh-rows|0|onednn,
    with
    "lstm_backward", the training layer's backward path per class (the engine or per-step
    products, by the backward's measured cost), "lstm_onednn_rnn", the inference cost of
    torch's own oneDNN RNN layer per class, which an
    inference layer takes where it is cheapest; "lstm_cell", how the LSTM cell runs per shape
    class (one fused kernel or two products and the step kernel), fixed by
    PYNOTES_LSTM_CELL=fused|products; "group_norm_sums", how
    the channels-last group norm backward takes its per-channel sums per shape class, fixed by
    PYNOTES_GROUP_NORM_SUMS=rows|columns; "group_norm_walks", how the channels-last float32/
    float64 forward walks its rows per shape class, fixed by PYNOTES_GROUP_NORM_COLUMNS=0|1;
    "group_norm_stream", whether the float32/float64 kernels write their output with
    non-temporal stores per shape class, layout and pass, fixed by
    PYNOTES_GROUP_NORM_STREAM=0|1;
    "cpu_cache", pynotes.memory's state), and load_error
    when the extension did not load.
    """
    info = {
        "extension_loaded": _C is not None,
        "force_fallback": _force_fallback,
        "with_cuda": False,
        "cuda_version": None,
        "cuda_archs": [],
        "cpu_capability": None,
        "num_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "torch_cuda_version": torch.version.cuda,
    }
    if _C is not None:
        info.update(_C.build_info())  # num_threads read now: torch.set_num_threads may change it
        info["choices"] = {"matmul": _C.matmul_choices(),
                           "onednn_float32": _C.onednn_runs_float32(),
                           "packed_matmul": _C.packed_matmul_choices(),
                           "mkl_packed_gemm": _C.mkl_packed_gemm_available(),
                           "lstm_engine": _C.lstm_engine_choices(),
                           "lstm_backward": _C.lstm_backward_choices(),
                           "lstm_onednn_rnn": _C.lstm_onednn_rnn_costs(),
                           "lstm_cell": _C.lstm_cell_choices(),
                           "group_norm_sums": _C.group_norm_sums_choices(),
                           "group_norm_walks": _C.group_norm_forward_walks(),
                           "group_norm_stream": _C.group_norm_stream_choices(),
                           "cpu_cache": _C.cpu_cache_stats()}
    else:
        info["load_error"] = str(_load_error)
    return info
