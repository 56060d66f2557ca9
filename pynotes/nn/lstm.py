from typing import List, Optional, Tuple

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

    def forward(self, input: torch.Tensor, hx: Optional[Tuple[torch.Tensor, torch.Tensor]] = None
                ) -> Tuple[torch.Tensor, torch.Tensor]:
        if not torch.jit.is_scripting():
            if hx is not None and input.dim() == 2:
                out = self._batched_step(input, hx)
                if out is not None:
                    return out
            if input.is_complex() or self.weight_ih.is_complex():  # (no complex kernels)
                return super().forward(input, hx)
        if input.dim() not in (1, 2):
            raise ValueError(f"LSTMCell: Expected input to be 1D or 2D, got {input.dim()}D "
                             "instead")
        if hx is not None:
            for idx in range(2):
                if hx[idx].dim() not in (1, 2):
                    raise ValueError(f"LSTMCell: Expected hx[{idx}] to be 1D or 2D, got "
                                     f"{hx[idx].dim()}D instead")
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
        for idx in range(2):
            if hx[idx].shape[0] != input.shape[0]:
                raise LSTMInputError(f"LSTMCell: Input batch size {input.shape[0]} doesn't "
                                     f"match hidden{idx} batch size {hx[idx].shape[0]}")
            if hx[idx].shape[1] != self.hidden_size:
                raise LSTMInputError(f"LSTMCell: hidden{idx} has inconsistent hidden_size: "
                                     f"got {hx[idx].shape[1]}, expected {self.hidden_size}")
        if torch.jit.is_scripting():  # (TorchScript: the raw operator, differentiable once)
            hy, cy, _ = torch.ops.pynotes.lstm_cell(input, hx[0], hx[1], self.weight_ih,
                                                    self.weight_hh, self.bias_ih, self.bias_hh)
        else:
            hy, cy = lstm_cell(input, hx[0], hx[1], self.weight_ih, self.weight_hh,
                               self.bias_ih, self.bias_hh)
        return (hy, cy) if is_batched else (hy.squeeze(0), cy.squeeze(0))

    @torch.jit.unused
    def _batched_step(self, input: torch.Tensor, hx: Tuple[torch.Tensor, torch.Tensor]
                      ) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
        """The common call, straight to the op (a step of a loop pays every microsecond), or
        None where the op refuses it: forward's checks then raise torch's errors, or complex
        tensors take torch's forward."""
        try:
            return lstm_cell(input, hx[0], hx[1], self.weight_ih, self.weight_hh, self.bias_ih,
                             self.bias_hh)
        except (RuntimeError, ValueError, TypeError, IndexError):
            return None


class LSTM(torch.nn.LSTM):
    """Drop-in for torch.nn.LSTM: same constructor arguments (num_layers, bias, batch_first,
    dropout, bidirectional, proj_size), parameter names, init, state_dict, call signature
    (tensor or PackedSequence input, optional (h_0, c_0)) and outputs.

    Each layer and direction is one pynotes.ops.lstm_layer call over the whole sequence (no
    Python loop over time steps); dropout between layers as torch.nn.LSTM applies it. Complex
    inputs run torch's own implementation; torch.jit.script compiles tensor inputs (not a
    PackedSequence) to the pynotes operators.
    """

    def _layer(self, data: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor, index: int,
               batch_sizes: Optional[torch.Tensor], reverse: bool
               ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One layer and direction (`index` counts them as torch.nn.LSTM's weights do)."""
        per = 2 + 2 * int(self.bias) + int(self.proj_size > 0)
        flat = self._flat_weights[index * per:(index + 1) * per]
        w_ih, w_hh = flat[0], flat[1]
        b_ih = flat[2] if self.bias else None
        b_hh = flat[3] if self.bias else None
        w_hr = flat[-1] if self.proj_size > 0 else None
        if torch.jit.is_scripting():  # (TorchScript: the raw operator, differentiable once)
            return torch.ops.pynotes.lstm_layer(data, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr,
                                                batch_sizes, reverse)
        return lstm_layer(data, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, reverse)

    def _layers(self, data: torch.Tensor, h0: List[torch.Tensor], c0: List[torch.Tensor],
                batch_sizes: Optional[torch.Tensor]
                ) -> Tuple[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        """All layers and directions over time-major or packed `data` from the initial states
        h0[i], c0[i] of layer and direction i."""
        num_directions = 2 if self.bidirectional else 1
        h_n: List[torch.Tensor] = []
        c_n: List[torch.Tensor] = []
        for layer in range(self.num_layers):
            outputs: List[torch.Tensor] = []
            for direction in range(num_directions):
                index = layer * num_directions + direction
                out, h, c = self._layer(data, h0[index], c0[index], index, batch_sizes,
                                        direction == 1)
                outputs.append(out)
                h_n.append(h)
                c_n.append(c)
            data = outputs[0] if num_directions == 1 else torch.cat(outputs, -1)
            if self.dropout > 0 and self.training and layer < self.num_layers - 1:
                data = F.dropout(data, self.dropout, training=True)
        if len(h_n) == 1:  # (a view, cheaper than stack: see _zero_states)
            return data, (h_n[0].unsqueeze(0), c_n[0].unsqueeze(0))
        return data, (torch.stack(h_n), torch.stack(c_n))

    def forward(self, input: torch.Tensor,
                hx: Optional[Tuple[torch.Tensor, torch.Tensor]] = None
                ) -> Tuple[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        if torch.jit.is_scripting():
            return self._forward_tensor(input, hx)  # (TorchScript: tensor input only)
        data = input.data if isinstance(input, PackedSequence) else input
        if data.is_complex() or self._flat_weights[0].is_complex():  # (no complex kernels)
            return super().forward(input, hx)
        if isinstance(input, PackedSequence):
            data, batch_sizes, sorted_indices, unsorted_indices = input
            if hx is None:
                self.check_input(data, batch_sizes)
                h0, c0 = self._zero_states(data, int(batch_sizes[0]))
            else:
                self.check_forward_args(data, hx, batch_sizes)
                h0, c0 = (state.unbind(0) for state in self.permute_hidden(hx, sorted_indices))
            data, hidden = self._layers(data, h0, c0, batch_sizes)
            return (PackedSequence(data, batch_sizes, sorted_indices, unsorted_indices),
                    self.permute_hidden(hidden, unsorted_indices))
        return self._forward_tensor(input, hx)

    # Small torch ops are dear after a layer call: its weights have pushed torch's code and data
    # out of the caches, and three such ops took 16-28 us against 4 us warm (Intel model 167).
    # So the states cost one or two ops (no per-layer selects of zeros, no stack of one state).
    def _zero_states(self, data: torch.Tensor, batch: int
                     ) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        """Initial states for every layer and direction: the layers only read them, so one
        zero tensor serves all."""
        layers = self.num_layers * (2 if self.bidirectional else 1)
        zeros = data.new_zeros((batch, self.hidden_size))
        h0 = data.new_zeros((batch, self.proj_size)) if self.proj_size > 0 else zeros
        return [h0] * layers, [zeros] * layers

    def _forward_tensor(self, input: torch.Tensor,
                        hx: Optional[Tuple[torch.Tensor, torch.Tensor]]
                        ) -> Tuple[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        if input.dim() not in (2, 3):
            raise ValueError(f"LSTM: Expected input to be 2D or 3D, got {input.dim()}D "
                             "instead")
        is_batched = input.dim() == 3
        batch_dim = 0 if self.batch_first else 1
        if not is_batched:
            input = input.unsqueeze(batch_dim)
        if hx is None:  # (zero states of the right size: only the input needs checking)
            self.check_input(input, None)
            h0, c0 = self._zero_states(input, input.shape[batch_dim])
        else:
            want = 3 if is_batched else 2
            if hx[0].dim() != want or hx[1].dim() != want:
                kind = "batched 3-D" if is_batched else "unbatched 2-D"
                raise RuntimeError(f"For {kind} input, hx and cx should also be {want}-D but "
                                   f"got ({hx[0].dim()}-D, {hx[1].dim()}-D) tensors")
            if not is_batched:
                hx = (hx[0].unsqueeze(1), hx[1].unsqueeze(1))
            self.check_forward_args(input, hx, None)
            h0, c0 = hx[0].unbind(0), hx[1].unbind(0)
        data = input.transpose(0, 1) if self.batch_first else input
        data, hidden = self._layers(data, h0, c0, None)
        if self.batch_first:
            data = data.transpose(0, 1)
        if not is_batched:
            data = data.squeeze(batch_dim)
            hidden = (hidden[0].squeeze(1), hidden[1].squeeze(1))
        return data, hidden
