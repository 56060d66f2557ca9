import torch

from pynotes import _ext
from pynotes.reference import lstm as reference


def lstm_cell(input, hx, cx, w_ih, w_hh, b_ih=None, b_hh=None):
    """One LSTM step for a batch, as torch.nn.LSTMCell: returns (hy, cy).

    input (B, I), hx and cx (B, H), w_ih (4H, I), w_hh (4H, H), optional b_ih and b_hh (4H),
    gates in PyTorch's order (i, f, g, o). The two matrix products run in ATen's BLAS; biases,
    activations and the state updates are one fused kernel forward and one backward.
    float32/float64 on CPU, also float16/bfloat16 on CUDA (cell state in float32).
    """
    if _ext.use_extension(input):
        hy, cy, _ = torch.ops.pynotes.lstm_cell(input, hx, cx, w_ih, w_hh, b_ih, b_hh)
        return hy, cy
    return reference.lstm_cell(input, hx, cx, w_ih, w_hh, b_ih, b_hh)


def lstm_layer(input, hx, cx, w_ih, w_hh, b_ih=None, b_hh=None, w_hr=None, batch_sizes=None,
               reverse=False):
    """One LSTM layer and direction over a whole sequence in one call: (output, hy, cy).

    input is (T, B, I) time-major, or packed (N, I) data with CPU int64 batch_sizes (T) as in
    torch.nn.utils.rnn.PackedSequence; output is (T, B, P) or (N, P). hx (B, P), cx (B, H);
    w_hr (P, H) projects h as torch.nn.LSTM's proj_size does (P = H without it). reverse runs
    the sequence backwards (the second direction of a bidirectional LSTM).

    The input projection of all steps is one matrix product, then each step one recurrent
    product and the fused pointwise kernel; the backward runs through time in the same way and
    computes the weight gradients as a few large products after the loop.
    """
    if _ext.use_extension(input):
        return tuple(torch.ops.pynotes.lstm_layer(input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr,
                                                  batch_sizes, reverse))
    return reference.lstm_layer(input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes,
                                reverse)


def _cell_dtype(dtype):
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _rows(input):
    return input.shape[0] * input.shape[1] if input.dim() == 3 else input.shape[0]


if _ext.extension_loaded():
    @torch.library.register_fake("pynotes::lstm_cell")
    def _lstm_cell_fake(input, hx, cx, w_ih, w_hh, b_ih=None, b_hh=None):
        batch, hidden = input.shape[0], w_ih.shape[0] // 4
        return (input.new_empty((batch, hidden)), input.new_empty((batch, hidden)),
                input.new_empty((batch, 4 * hidden)))

    @torch.library.register_fake("pynotes::lstm_cell_backward")
    def _lstm_cell_backward_fake(grad_hy, grad_cy, workspace, input, hx, cx, w_ih, w_hh,
                                 output_mask):
        def like(needed, t):
            return t.new_empty(t.shape) if needed else None
        return (like(output_mask[0], input), like(output_mask[1], hx), cx.new_empty(cx.shape),
                like(output_mask[2], w_ih), like(output_mask[2], w_hh),
                input.new_empty((w_ih.shape[0],)) if output_mask[3] else None)

    def _layer_outputs(input, hx, cx, w_hh):
        out_size = w_hh.shape[1]
        return (input.new_empty(tuple(input.shape[:-1]) + (out_size,)), hx.new_empty(hx.shape),
                cx.new_empty(cx.shape))

    @torch.library.register_fake("pynotes::lstm_layer")
    def _lstm_layer_fake(input, hx, cx, w_ih, w_hh, b_ih=None, b_hh=None, w_hr=None,
                         batch_sizes=None, reverse=False):
        return _layer_outputs(input, hx, cx, w_hh)

    @torch.library.register_fake("pynotes::lstm_layer_train")
    def _lstm_layer_train_fake(input, hx, cx, w_ih, w_hh, b_ih=None, b_hh=None, w_hr=None,
                               batch_sizes=None, reverse=False):
        rows, hidden, out_size = _rows(input), w_ih.shape[0] // 4, w_hh.shape[1]
        return _layer_outputs(input, hx, cx, w_hh) + (
            input.new_empty((rows, 4 * hidden)),
            input.new_empty((rows, hidden), dtype=_cell_dtype(input.dtype)),
            input.new_empty((rows, out_size)),
            input.new_empty((rows if w_hr is not None else 0, hidden)))

    @torch.library.register_fake("pynotes::lstm_layer_backward")
    def _lstm_layer_backward_fake(grad_output, grad_hy, grad_cy, input, hx, w_ih, w_hh, w_hr,
                                  batch_sizes, reverse, gates, c_prev, h_prev, r, output_mask):
        def like(needed, t):
            return t.new_empty(t.shape) if needed and t is not None else None
        return (like(output_mask[0], input), hx.new_empty(hx.shape),
                hx.new_empty((hx.shape[0], w_ih.shape[0] // 4)), like(output_mask[1], w_ih),
                like(output_mask[1], w_hh),
                input.new_empty((w_ih.shape[0],)) if output_mask[2] else None,
                like(output_mask[1], w_hr))
