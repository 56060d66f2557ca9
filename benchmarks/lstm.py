"""LSTM cell and layer against torch.nn.LSTMCell and torch.nn.LSTM (oneDNN on CPU, cuDNN on
GPU) in the same dtype. Forward runs under no_grad; forward+backward takes the gradients of the
input, the initial state (cell) and every parameter. haste (lmnt-com/haste) is not an anchor:
it has no wheels and builds only with CUDA.

The full CPU run is the layer sweep: T in {50, 200}, B in {1, 8, 32, 64, 256}, H = I in
{128, 256, 512, 1024}, 1 and 2 layers, float32 and bfloat16, then a few shapes on 1 thread
(scaling). Each row's note gives pynotes' FLOP rate (the products' multiply-adds x 2: 3 products'
worth for training), as a fraction of this run's measured GEMM rate in that dtype, and the rate
at which the steps stream the recurrent weights (W_hh bytes x steps / time): at small batches
the weights' cache bandwidth bounds the step, at large batches the FLOPs do. bfloat16 rows also
give the speedup over torch.nn.LSTM in float32 (the float32 row of the same shape, same run)."""
import itertools

import torch

import pynotes
from benchmarks.common import Result, time_pair, timed_pair

# (batch, input_size, hidden_size)
QUICK_CELLS = [(64, 256, 512)]
FULL_CELLS = QUICK_CELLS + [(32, 128, 128), (128, 512, 1024)]
# (seq_len, batch, input_size = hidden_size, num_layers, dtype, threads: None = all)
QUICK_LAYERS = [(64, 32, 256, 1, torch.float32, None), (100, 1, 256, 1, torch.float32, None)]
SWEEP = [(t, b, h, n, dtype, None) for dtype, t, n, b, h in itertools.product(
    (torch.float32, torch.bfloat16), (50, 200), (1, 2), (1, 8, 32, 64, 256), (128, 256, 512, 1024))]
SCALING = [(50, b, h, 1, torch.float32, 1) for b, h in ((1, 256), (8, 512), (32, 256), (256, 256))]
FULL_GPU_LAYERS = [(64, b, h, n, torch.float32, None)
                   for b, h, n in ((32, 256, 1), (32, 256, 2), (64, 512, 1), (64, 512, 2))]


def full_layers(device):
    return SWEEP + SCALING if device == "cpu" else FULL_GPU_LAYERS


def bench_cells(device, cells):
    results = []
    for batch, input_size, hidden in cells:
        theirs = torch.nn.LSTMCell(input_size, hidden, device=device)
        ours = pynotes.nn.LSTMCell(input_size, hidden, device=device)
        ours.load_state_dict(theirs.state_dict())
        x = torch.randn(batch, input_size, device=device, requires_grad=True)
        state = tuple(torch.randn(batch, hidden, device=device, requires_grad=True)
                      for _ in range(2))
        grads = [torch.randn(batch, hidden, device=device) for _ in range(2)]
        case = f"B={batch} I={input_size} H={hidden}"
        with torch.no_grad():
            ms = time_pair(lambda: theirs(x, state), lambda: ours(x, state), device)
        results.append(Result("lstm_cell", case, "forward", "torch LSTMCell", *ms))

        def train_step(cell):
            hy, cy = cell(x, state)
            torch.autograd.grad([hy, cy], [x, *state, *cell.parameters()], grads)
        ms = time_pair(lambda: train_step(theirs), lambda: train_step(ours), device)
        results.append(Result("lstm_cell", case, "forward+backward", "torch LSTMCell", *ms))
    return results


def gemm_gflops(device, dtype):
    """FLOP rate of one large matrix product in dtype: this machine's practical compute roof.
    On the CPU the faster of torch.mm (MKL where torch has it) and oneDNN's matmul, which
    pynotes' products choose between: MKL's float32 GEMM ran at 93 GFLOP/s on 2 cores of an
    AMD EPYC where oneDNN's and torch's LSTM reached 190, so torch.mm alone understates it."""
    a = torch.randn(2048, 2048, device=device, dtype=dtype)
    b = torch.randn(2048, 2048, device=device, dtype=dtype)
    onednn = getattr(torch.ops.mkldnn, "_linear_pointwise", None) if device == "cpu" else None
    if onednn is not None and torch.backends.mkldnn.is_available():
        try:  # oneDNN refuses every dtype on some CPUs (an AVX2-only AMD EPYC, Zen 3)
            onednn(a[:1, :1], b[:1, :1], None, "none", [], "")
        except RuntimeError:
            onednn = None
    if onednn is not None:
        # a @ b^T, as torch.nn.functional.linear would; the same FLOPs as a @ b.
        ms = time_pair(lambda: torch.mm(a, b),
                       lambda: onednn(a, b, None, "none", [], ""), device, warmup=2, rounds=7)
    else:
        ms = time_pair(lambda: torch.mm(a, b), lambda: None, device, warmup=2, rounds=7)[:1]
    return 2 * 2048**3 / (min(ms) * 1e-3) / 1e9


def bench_layers(device, layers):
    results, float32_anchor_ms, roofs = [], {}, {}
    previous_threads = torch.get_num_threads()
    for seq, batch, hidden, num_layers, dtype, threads in layers:
        torch.set_num_threads(threads or previous_threads)
        roof_key = (dtype, torch.get_num_threads())
        if roof_key not in roofs:
            roofs[roof_key] = gemm_gflops(device, dtype)
        torch.manual_seed(0)
        theirs = torch.nn.LSTM(hidden, hidden, num_layers, device=device, dtype=dtype)
        ours = pynotes.nn.LSTM(hidden, hidden, num_layers, device=device, dtype=dtype)
        ours.load_state_dict(theirs.state_dict())
        x = torch.randn(seq, batch, hidden, device=device, dtype=dtype, requires_grad=True)
        grad = torch.randn(seq, batch, hidden, device=device, dtype=dtype)
        name = str(dtype).removeprefix("torch.")
        case = (f"T={seq} B={batch} I=H={hidden} layers={num_layers} {name}"
                + (f" threads={threads}" if threads else ""))
        anchor = "torch LSTM (cuDNN)" if device == "cuda" else "torch LSTM (oneDNN)"
        # Products per step and layer: x W_ih^T and h W_hh^T, 4H x H multiply-adds each.
        flops = 2 * 2 * 4 * hidden * hidden * seq * batch * num_layers
        weight_bytes = 4 * hidden * hidden * x.element_size() * seq * num_layers

        def train_step(lstm):
            out, _ = lstm(x)
            torch.autograd.grad(out, [x, *lstm.parameters()], grad)

        # Training: 3 products' worth of FLOPs, and W_hh streamed forward and backward.
        for variant, step, passes in (("forward", None, 1), ("forward+backward", train_step, 3)):
            if step is None:
                with torch.no_grad():
                    ms = timed_pair(lambda: theirs(x), lambda: ours(x), device)
            else:
                ms = timed_pair(lambda: step(theirs), lambda: step(ours), device)
            gflops = passes * flops / (ms[1] * 1e-3) / 1e9
            streamed = (2 if step else 1) * weight_bytes / (ms[1] * 1e-3) / 1e9
            note = (f"{gflops:.0f} GFLOP/s = {100 * gflops / roofs[roof_key]:.0f}% of GEMM; "
                    f"W_hh {streamed:.0f} GB/s")
            key = (seq, batch, hidden, num_layers, threads, variant)
            if dtype == torch.float32:
                float32_anchor_ms[key] = ms[0]
            elif key in float32_anchor_ms:
                note += f"; vs torch float32 {float32_anchor_ms[key] / ms[1]:.2f}x"
            results.append(Result("lstm", case, variant, anchor, *ms, note=note))
            print(f"{case} {variant}: {ms[0] / ms[1]:.2f}x ({note})", flush=True)
    torch.set_num_threads(previous_threads)
    return results


def cases(device, quick=True):
    return ([f"lstm_cell B={b} I={i} H={h}, forward and forward+backward, vs torch LSTMCell"
             for b, i, h in (QUICK_CELLS if quick else FULL_CELLS)] +
            [f"lstm T={t} B={b} I=H={h} layers={n} {str(d).removeprefix('torch.')}"
             f"{f' threads={k}' if k else ''}, forward and forward+backward, vs torch LSTM"
             for t, b, h, n, d, k in (QUICK_LAYERS if quick else full_layers(device))])


def run(device, quick=True):
    return (bench_cells(device, QUICK_CELLS if quick else FULL_CELLS) +
            bench_layers(device, QUICK_LAYERS if quick else full_layers(device)))
