"""Pure-PyTorch LSTM: the fallback of pynotes.ops.lstm_cell / lstm_layer (same arguments, same
checks and messages) and the plain statement of what the kernels compute.

PyTorch's gate order (i, f, g, o) and weight layout: w_ih (4H, I), w_hh (4H, P), biases (4H),
w_hr (P, H) for a projection (P = H without one).
"""
import torch
import torch.nn.functional as F

from pynotes.reference._checks import check_like


def _check_shape(op, name, t, expected, meaning):
    if tuple(t.shape) != tuple(expected):
        raise ValueError(f"{op}: {name} must have shape {meaning} = {tuple(expected)}, "
                         f"got {tuple(t.shape)}")


def check_lstm_args(op, input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, batch):
    """Checks an LSTM op's arguments; returns (input_size, hidden_size, size of h)."""
    if not input.is_floating_point():
        raise TypeError(f"{op}: input must be a floating-point tensor, got {input.dtype}")
    check_like(op, "w_ih", w_ih, input)
    check_like(op, "w_hh", w_hh, input)
    if w_ih.dim() != 2 or w_ih.shape[0] == 0 or w_ih.shape[0] % 4:
        raise ValueError(f"{op}: w_ih must have shape (4 * hidden_size, input_size), got "
                         f"{tuple(w_ih.shape)}")
    hidden, input_size = w_ih.shape[0] // 4, w_ih.shape[1]
    if input.shape[-1] != input_size:
        raise ValueError(f"{op}: input has {input.shape[-1]} features but w_ih "
                         f"{tuple(w_ih.shape)} expects input_size = {input_size}")
    out = hidden
    if w_hr is not None:
        check_like(op, "w_hr", w_hr, input)
        if w_hr.dim() != 2 or w_hr.shape[0] == 0 or w_hr.shape[1] != hidden:
            raise ValueError(f"{op}: w_hr must have shape (proj_size, hidden_size = {hidden}), "
                             f"got {tuple(w_hr.shape)}")
        out = w_hr.shape[0]
    h_meaning = "proj_size" if w_hr is not None else "hidden_size"
    _check_shape(op, "w_hh", w_hh, (4 * hidden, out), f"(4 * hidden_size, {h_meaning})")
    for name, b in (("b_ih", b_ih), ("b_hh", b_hh)):
        if b is not None:
            check_like(op, name, b, input)
            _check_shape(op, name, b, (4 * hidden,), "(4 * hidden_size)")
    check_like(op, "hx", hx, input)
    check_like(op, "cx", cx, input)
    _check_shape(op, "hx", hx, (batch, out), f"(batch, {h_meaning})")
    _check_shape(op, "cx", cx, (batch, hidden), "(batch, hidden_size)")
    return input_size, hidden, out


def lstm_steps(op, input, batch_sizes):
    """Rows of each time step in the (N, *) layout and the batch size."""
    if batch_sizes is None:
        if input.dim() != 3:
            raise ValueError(f"{op}: input must be 3-D (seq_len, batch, input_size), or 2-D "
                             f"packed data with batch_sizes, got {input.dim()}-D")
        return [input.shape[1]] * input.shape[0], input.shape[1]
    if input.dim() != 2:
        raise ValueError(f"{op}: with batch_sizes, input must be 2-D packed data "
                         f"(sum(batch_sizes), input_size), got {input.dim()}-D")
    if batch_sizes.dim() != 1 or batch_sizes.dtype != torch.int64 or batch_sizes.is_cuda:
        raise ValueError(f"{op}: batch_sizes must be a 1-D int64 CPU tensor")
    rows = batch_sizes.tolist()
    if any(n <= 0 for n in rows) or any(b > a for a, b in zip(rows, rows[1:])):
        raise ValueError(f"{op}: batch_sizes must be positive and non-increasing (sequences "
                         f"sorted longest first, as pack_padded_sequence makes them), got {rows}")
    if sum(rows) != input.shape[0]:
        raise ValueError(f"{op}: packed input has {input.shape[0]} rows but batch_sizes sum to "
                         f"{sum(rows)}")
    return rows, (rows[0] if rows else 0)


def _cell(input, hx, cx, w_ih, w_hh, b_ih, b_hh):
    i, f, g, o = (F.linear(input, w_ih, b_ih) + F.linear(hx, w_hh, b_hh)).chunk(4, 1)
    cy = torch.sigmoid(f) * cx + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(cy), cy


def lstm_cell(input, hx, cx, w_ih, w_hh, b_ih=None, b_hh=None):
    """One LSTM step for a batch: (hy, cy), as torch.nn.LSTMCell."""
    if input.dim() != 2:
        raise ValueError(f"lstm_cell: input must be 2-D (batch, input_size), got "
                         f"{input.dim()}-D")
    check_lstm_args("lstm_cell", input, hx, cx, w_ih, w_hh, b_ih, b_hh, None, input.shape[0])
    return _cell(input, hx, cx, w_ih, w_hh, b_ih, b_hh)


def lstm_layer(input, hx, cx, w_ih, w_hh, b_ih=None, b_hh=None, w_hr=None, batch_sizes=None,
               reverse=False):
    """One layer and direction over a sequence: (output, hy, cy).

    input is (T, B, I) time-major, or packed (N, I) data with its CPU int64 batch_sizes as in
    torch.nn.utils.rnn.PackedSequence. Step t runs the first batch_sizes[t] sequences; the
    others keep their state, so hy / cy hold each sequence's state after its last step.
    """
    rows, batch = lstm_steps("lstm_layer", input, batch_sizes)
    input_size, _, out_size = check_lstm_args("lstm_layer", input, hx, cx, w_ih, w_hh, b_ih,
                                              b_hh, w_hr, batch)
    x = input.reshape(-1, input_size)
    offsets = [sum(rows[:t]) for t in range(len(rows))]
    outputs = [None] * len(rows)
    h, c = hx, cx
    for t in (reversed(range(len(rows))) if reverse else range(len(rows))):
        n, o = rows[t], offsets[t]
        h_t, c_t = _cell(x[o:o + n], h[:n], c[:n], w_ih, w_hh, b_ih, b_hh)
        if w_hr is not None:
            h_t = F.linear(h_t, w_hr)
        outputs[t] = h_t
        h, c = torch.cat([h_t, h[n:]]), torch.cat([c_t, c[n:]])
    output = torch.cat(outputs) if outputs else x.new_empty((0, out_size))
    if input.dim() == 3:
        output = output.reshape(input.shape[0], input.shape[1], out_size)
    return output, h, c
