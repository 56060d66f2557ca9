import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import PackedSequence

from pynotes.ops.lstm import lstm_cell, lstm_layer


class LSTMInputError(ValueError, RuntimeError):
    """A forward input whose sizes do not fit the layer: torch.nn.LSTMCell raises
    RuntimeError there, pynotes' op checks ValueError; either except clause catches it."""


class LSTMCell(torch.nn.LSTMCell):
    """Drop-in for torch.nn.LSTMCell: same arguments, parameters (weight_ih, weight_hh,
    bias_ih, bias_hh), init, state_dict, call signature and outputs, computed by the fused
    pynotes cell (one pointwise kernel after the two matrix products, forward and backward).
    """

    def forward(self, input, hx=None):
        if input.dim() not in (1, 2):
            raise ValueError(f"LSTMCell: Expected input to be 1D or 2D, got {input.dim()}D "
                             "instead")
        if hx is not None:
            for idx, value in enumerate(hx):
                if value.dim() not in (1, 2):
                    raise ValueError(f"LSTMCell: Expected hx[{idx}] to be 1D or 2D, got "
                                     f"{value.dim()}D instead")
        is_batched = input.dim() == 2
        if not is_batched:
            input = input.unsqueeze(0)
        if hx is None:
            zeros = input.new_zeros((input.shape[0], self.hidden_size))
            hx = (zeros, zeros)
        elif not is_batched:
            hx = (hx[0].unsqueeze(0), hx[1].unsqueeze(0))
        if input.shape[1] != self.input_size:  # torch's checks, in its words
            raise LSTMInputError(f"LSTMCell: input has inconsistent input_size: got "
                                 f"{input.shape[1]} expected {self.input_size}")
        for idx, value in enumerate(hx):
            if value.shape[0] != input.shape[0]:
                raise LSTMInputError(f"LSTMCell: Input batch size {input.shape[0]} doesn't "
                                     f"match hidden{idx} batch size {value.shape[0]}")
            if value.shape[1] != self.hidden_size:
                raise LSTMInputError(f"LSTMCell: hidden{idx} has inconsistent hidden_size: "
                                     f"got {value.shape[1]}, expected {self.hidden_size}")
        hy, cy = lstm_cell(input, hx[0], hx[1], self.weight_ih, self.weight_hh, self.bias_ih,
                           self.bias_hh)
        return (hy, cy) if is_batched else (hy.squeeze(0), cy.squeeze(0))


class LSTM(torch.nn.LSTM):
    """Drop-in for torch.nn.LSTM: same constructor arguments (num_layers, bias, batch_first,
    dropout, bidirectional, proj_size), parameter names, init, state_dict, call signature
    (tensor or PackedSequence input, optional (h_0, c_0)) and outputs.

    Each layer and direction is one pynotes.ops.lstm_layer call over the whole sequence (no
    Python loop over time steps); dropout between layers as torch.nn.LSTM applies it.
    """

    def _layer_weights(self, layer, direction):
        suffix = f"_l{layer}" + ("_reverse" if direction else "")
        weights = [getattr(self, "weight_ih" + suffix), getattr(self, "weight_hh" + suffix)]
        weights += ([getattr(self, "bias_ih" + suffix), getattr(self, "bias_hh" + suffix)]
                    if self.bias else [None, None])
        weights.append(getattr(self, "weight_hr" + suffix) if self.proj_size > 0 else None)
        return weights

    def forward(self, input, hx=None):
        num_directions = 2 if self.bidirectional else 1
        h_size = self.proj_size if self.proj_size > 0 else self.hidden_size
        packed = isinstance(input, PackedSequence)
        if packed:
            data, batch_sizes, sorted_indices, unsorted_indices = input
            is_batched, batch = True, int(batch_sizes[0])
        else:
            if input.dim() not in (2, 3):
                raise ValueError(f"LSTM: Expected input to be 2D or 3D, got {input.dim()}D "
                                 "instead")
            batch_sizes = sorted_indices = unsorted_indices = None
            is_batched = input.dim() == 3
            batch_dim = 0 if self.batch_first else 1
            if not is_batched:
                input = input.unsqueeze(batch_dim)
            batch = input.shape[batch_dim]
            data = input
        if hx is None:  # (the layers only read their initial states: one zero tensor may serve)
            layers = self.num_layers * num_directions
            zeros = data.new_zeros((layers, batch, self.hidden_size))
            hx = (zeros if h_size == self.hidden_size else data.new_zeros((layers, batch, h_size)),
                  zeros)
        elif not packed:
            want = 3 if is_batched else 2
            if hx[0].dim() != want or hx[1].dim() != want:
                kind = "batched 3-D" if is_batched else "unbatched 2-D"
                raise RuntimeError(f"For {kind} input, hx and cx should also be {want}-D but "
                                   f"got ({hx[0].dim()}-D, {hx[1].dim()}-D) tensors")
            if not is_batched:
                hx = (hx[0].unsqueeze(1), hx[1].unsqueeze(1))
        self.check_forward_args(data, hx, batch_sizes)
        hx = self.permute_hidden(hx, sorted_indices)
        if not packed and self.batch_first:
            data = data.transpose(0, 1)

        h_n, c_n = [], []
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(num_directions):
                index = layer * num_directions + direction
                out, h, c = lstm_layer(data, hx[0][index], hx[1][index],
                                       *self._layer_weights(layer, direction),
                                       batch_sizes=batch_sizes, reverse=direction == 1)
                outputs.append(out)
                h_n.append(h)
                c_n.append(c)
            data = outputs[0] if num_directions == 1 else torch.cat(outputs, -1)
            if self.dropout > 0 and self.training and layer < self.num_layers - 1:
                data = F.dropout(data, self.dropout, training=True)
        stack = (lambda t: t[0].unsqueeze(0)) if len(h_n) == 1 else torch.stack
        hidden = self.permute_hidden((stack(h_n), stack(c_n)), unsorted_indices)

        if packed:
            return PackedSequence(data, batch_sizes, sorted_indices, unsorted_indices), hidden
        if self.batch_first:
            data = data.transpose(0, 1)
        if not is_batched:
            data = data.squeeze(batch_dim)
            hidden = (hidden[0].squeeze(1), hidden[1].squeeze(1))
        return data, hidden
