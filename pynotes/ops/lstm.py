import torch

from pynotes import _ext
from pynotes.ops import _autocast, _autograd
from pynotes.reference import lstm as reference


def lstm_cell(input, hx, cx, w_ih, w_hh, b_ih=None, b_hh=None):
    """One LSTM step for a batch, as torch.nn.LSTMCell: returns (hy, cy).

    input (B, I), hx and cx (B, H), w_ih (4H, I), w_hh (4H, H), optional b_ih and b_hh (4H),
    gates in PyTorch's order (i, f, g, o). The two matrix products run in ATen's BLAS; biases,
    activations and the state updates are one fused kernel forward and one backward.
    float32/float64 on CPU, also float16/bfloat16 on CUDA (cell state in float32).
    Differentiable twice and more, and under torch.func (pynotes.ops._autograd).
    """
    args = _autocast.cast("lstm_cell", input, (input, hx, cx, w_ih, w_hh, b_ih, b_hh))
    if not _ext.use_extension(input):
        return reference.lstm_cell(*args)
    if _autograd.needs_autograd(*args):
        hy, cy, _ = _autograd.apply(LstmCellFunction, *args)
    else:
        hy, cy, _ = torch.ops.pynotes.lstm_cell(*args)
    return hy, cy


def lstm_layer(input, hx, cx, w_ih, w_hh, b_ih=None, b_hh=None, w_hr=None, batch_sizes=None,
               reverse=False):
    """One LSTM layer and direction over a whole sequence in one call: (output, hy, cy).

    input is (T, B, I) time-major, or packed (N, I) data with CPU int64 batch_sizes (T) as in
    torch.nn.utils.rnn.PackedSequence; output is (T, B, P) or (N, P). hx (B, P), cx (B, H);
    w_hr (P, H) projects h as torch.nn.LSTM's proj_size does (P = H without it). reverse runs
    the sequence backwards (the second direction of a bidirectional LSTM).

    The input projection of all steps is one matrix product, then each step one recurrent
    product and the fused pointwise kernel; the backward runs through time in the same way and
    computes the weight gradients as a few large products after the loop. Differentiable twice
    and more, and under torch.func (pynotes.ops._autograd).
    """
    args = _autocast.cast("lstm_layer", input,
                          (input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, reverse))
    if not _ext.use_extension(input):
        return reference.lstm_layer(*args)
    if _autograd.needs_autograd(*args):
        return tuple(_autograd.apply(LstmLayerFunction, *args)[:3])
    return tuple(torch.ops.pynotes.lstm_layer(*args))


def _needed(flag, grad):
    return grad if flag else None


@_autograd.with_eager_form
class LstmCellFunction(torch.autograd.Function):
    """lstm_cell's autograd (see pynotes.ops._autograd). Outputs (hy, cy, workspace); the
    workspace (the activated gates) carries no gradient."""
    generate_vmap_rule = True

    @staticmethod
    def forward(input, hx, cx, w_ih, w_hh, b_ih, b_hh):
        with _autograd.below_autograd():
            return torch.ops.pynotes.lstm_cell(input, hx, cx, w_ih, w_hh, b_ih, b_hh)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.mark_non_differentiable(output[2])
        ctx.set_materialize_grads(False)  # the op takes absent gradients (no zero-filling)
        ctx.save_for_backward(*inputs, output[2])
        ctx.save_for_forward(*inputs)

    @staticmethod
    def backward(ctx, grad_hy, grad_cy, _grad_workspace):
        *inputs, workspace = ctx.saved_tensors
        needs = ctx.needs_input_grad
        if torch.is_grad_enabled():  # the backward is differentiated too
            return _autograd.reference_vjp(reference.lstm_cell, inputs, (grad_hy, grad_cy),
                                           needs)
        input, hx, cx, w_ih, w_hh = inputs[:5]
        mask = [needs[0], needs[1], needs[3] or needs[4], needs[5] or needs[6]]
        d_input, d_hx, d_cx, d_w_ih, d_w_hh, d_bias = torch.ops.pynotes.lstm_cell_backward(
            grad_hy, grad_cy, workspace, input, hx, cx, w_ih, w_hh, mask)
        return (_needed(needs[0], d_input), _needed(needs[1], d_hx), _needed(needs[2], d_cx),
                _needed(needs[3], d_w_ih), _needed(needs[4], d_w_hh), _needed(needs[5], d_bias),
                _needed(needs[6], d_bias))

    @staticmethod
    def jvp(ctx, *tangents):
        hy, cy = _autograd.reference_jvp(reference.lstm_cell, ctx.saved_tensors[:7], tangents)
        return hy, cy, None


@_autograd.with_eager_form
class LstmLayerFunction(torch.autograd.Function):
    """lstm_layer's autograd (see pynotes.ops._autograd): the forward is lstm_layer_train,
    whose outputs after (output, hy, cy) are what the backward kernel needs (no gradient)."""
    generate_vmap_rule = True

    @staticmethod
    def forward(*args):
        with _autograd.below_autograd():
            return torch.ops.pynotes.lstm_layer_train(*args)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.mark_non_differentiable(*output[3:])
        # Unused outputs' gradients stay None: autograd would otherwise zero-fill one for each,
        # the (rows, 4 * hidden) workspace included (1 ms a call at T32 B256 H256).
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(*inputs[:9], *output[3:])
        ctx.save_for_forward(*inputs[:9])
        ctx.reverse = inputs[9]

    @staticmethod
    def backward(ctx, grad_output, grad_hy, grad_cy, *_):
        saved = ctx.saved_tensors
        inputs, workspace = saved[:9] + (ctx.reverse,), saved[9:]
        needs = ctx.needs_input_grad
        if torch.is_grad_enabled():  # the backward is differentiated too
            return _autograd.reference_vjp(reference.lstm_layer, inputs,
                                           (grad_output, grad_hy, grad_cy), needs)
        input, hx, _, w_ih, w_hh, _, _, w_hr, batch_sizes, reverse = inputs
        mask = [needs[0], needs[3] or needs[4] or needs[7], needs[5] or needs[6]]
        d_input, d_hx, d_cx, d_w_ih, d_w_hh, d_bias, d_w_hr = \
            torch.ops.pynotes.lstm_layer_backward(grad_output, grad_hy, grad_cy, input, hx, w_ih,
                                                  w_hh, w_hr, batch_sizes, reverse, *workspace,
                                                  mask)
        return (_needed(needs[0], d_input), _needed(needs[1], d_hx), _needed(needs[2], d_cx),
                _needed(needs[3], d_w_ih), _needed(needs[4], d_w_hh), _needed(needs[5], d_bias),
                _needed(needs[6], d_bias), _needed(needs[7], d_w_hr), None, None)

    @staticmethod
    def jvp(ctx, *tangents):
        inputs = ctx.saved_tensors[:9] + (ctx.reverse,)
        out = _autograd.reference_jvp(reference.lstm_layer, inputs, tangents)
        return (*out, None, None, None, None)


def _cell_dtype(dtype):
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _rows(input):
    return input.shape[0] * input.shape[1] if input.dim() == 3 else input.shape[0]


def _batched_states(info, in_dims, states):
    """Each state with its vmapped dimension first (expanded where it had none)."""
    return [s.movedim(d, 0) if d is not None else s.expand(info.batch_size, *s.shape)
            for s, d in zip(states, in_dims)]


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

    # Batching rules: with the weights shared across the vmapped dimension, its samples are
    # more sequences of the batch; otherwise a loop.
    # (The dispatcher drops trailing arguments equal to their defaults: the rules restate
    # them.)
    @torch.library.register_vmap("pynotes::lstm_cell")
    def _lstm_cell_vmap(info, in_dims, input, hx, cx, w_ih, w_hh, b_ih=None, b_hh=None):
        if any(d is not None for d in in_dims[3:]):
            return _autograd.loop_vmap_rule(torch.ops.pynotes.lstm_cell)(
                info, in_dims, input, hx, cx, w_ih, w_hh, b_ih, b_hh)
        states = [s.flatten(0, 1) for s in _batched_states(info, in_dims[:3], (input, hx, cx))]
        outputs = torch.ops.pynotes.lstm_cell(*states, w_ih, w_hh, b_ih, b_hh)
        return tuple(t.unflatten(0, (info.batch_size, -1)) for t in outputs), (0, 0, 0)

    def _lstm_layer_vmap(op, info, in_dims, input, hx, cx, w_ih, w_hh, b_ih=None, b_hh=None,
                         w_hr=None, batch_sizes=None, reverse=False):
        """lstm_layer / lstm_layer_train over (T, V * B) time-major input."""
        rest = (w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, reverse)
        if input.dim() - (in_dims[0] is not None) != 3 or batch_sizes is not None or \
                any(d is not None for d in in_dims[3:]):
            return _autograd.loop_vmap_rule(op)(info, in_dims, input, hx, cx, *rest)
        size = info.batch_size
        x, h, c = _batched_states(info, in_dims[:3], (input, hx, cx))
        outputs = op(x.movedim(0, 1).flatten(1, 2), h.flatten(0, 1), c.flatten(0, 1), *rest)
        steps = x.shape[1]
        unfolded = [outputs[0].unflatten(1, (size, -1)).movedim(1, 0),
                    outputs[1].unflatten(0, (size, -1)), outputs[2].unflatten(0, (size, -1))]
        for rows in outputs[3:]:  # per-row workspace, rows in (T, V * B) order
            if rows.shape[0] == 0:
                unfolded.append(rows.new_empty((size,) + tuple(rows.shape)))
            else:
                unfolded.append(rows.unflatten(0, (steps, size, -1)).movedim(1, 0).flatten(1, 2))
        return tuple(unfolded), (0,) * len(unfolded)

    for _name in ("lstm_layer", "lstm_layer_train"):
        _op = getattr(torch.ops.pynotes, _name)
        torch.library.register_vmap(
            f"pynotes::{_name}",
            lambda info, in_dims, *args, _op=_op: _lstm_layer_vmap(_op, info, in_dims, *args))
    for _name in ("lstm_cell_backward", "lstm_layer_backward"):
        torch.library.register_vmap(
            f"pynotes::{_name}", _autograd.loop_vmap_rule(getattr(torch.ops.pynotes, _name)))
