"""LSTM cell and layer against torch.nn.LSTMCell and torch.nn.LSTM (oneDNN on CPU, cuDNN on
GPU), float32. Forward runs under no_grad; forward+backward takes the gradients of the input,
the initial state (cell) and every parameter. haste (lmnt-com/haste) is not an anchor: it has
no wheels and builds only with CUDA."""
import torch

import pynotes
from benchmarks.common import Result, time_pair

# (batch, input_size, hidden_size)
QUICK_CELLS = [(64, 256, 512)]
FULL_CELLS = QUICK_CELLS + [(32, 128, 128), (128, 512, 1024)]
# (seq_len, batch, input_size = hidden_size, num_layers)
QUICK_LAYERS = [(64, 32, 256, 1)]
FULL_LAYERS = [(64, 32, 256, 1), (64, 32, 256, 2), (64, 64, 512, 1), (64, 64, 512, 2)]


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


def bench_layers(device, layers):
    results = []
    for seq, batch, hidden, num_layers in layers:
        theirs = torch.nn.LSTM(hidden, hidden, num_layers, device=device)
        ours = pynotes.nn.LSTM(hidden, hidden, num_layers, device=device)
        ours.load_state_dict(theirs.state_dict())
        x = torch.randn(seq, batch, hidden, device=device, requires_grad=True)
        grad = torch.randn(seq, batch, hidden, device=device)
        case = f"T={seq} B={batch} I=H={hidden} layers={num_layers}"
        anchor = "torch LSTM (cuDNN)" if device == "cuda" else "torch LSTM (oneDNN)"
        rounds = 15 if device == "cpu" else 51
        with torch.no_grad():
            ms = time_pair(lambda: theirs(x), lambda: ours(x), device, rounds=rounds)
        results.append(Result("lstm", case, "forward", anchor, *ms))

        def train_step(lstm):
            out, _ = lstm(x)
            torch.autograd.grad(out, [x, *lstm.parameters()], grad)
        ms = time_pair(lambda: train_step(theirs), lambda: train_step(ours), device,
                       rounds=rounds)
        results.append(Result("lstm", case, "forward+backward", anchor, *ms))
    return results


def cases(device, quick=True):
    return ([f"lstm_cell B={b} I={i} H={h}, forward and forward+backward, vs torch LSTMCell"
             for b, i, h in (QUICK_CELLS if quick else FULL_CELLS)] +
            [f"lstm T={t} B={b} I=H={h} layers={n}, forward and forward+backward, vs torch LSTM"
             for t, b, h, n in (QUICK_LAYERS if quick else FULL_LAYERS)])


def run(device, quick=True):
    return (bench_cells(device, QUICK_CELLS if quick else FULL_CELLS) +
            bench_layers(device, QUICK_LAYERS if quick else FULL_LAYERS))
