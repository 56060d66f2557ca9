import inspect
from typing import Optional

import torch

from pynotes.ops.group_norm import group_norm
from pynotes.reference.group_norm import parse_activation


_TORCH_TAKES_BIAS = "bias" in inspect.signature(torch.nn.GroupNorm.__init__).parameters


class GroupNorm(torch.nn.GroupNorm):
    """Drop-in for torch.nn.GroupNorm: same arguments (bias=False too, where torch has it),
    parameters (weight, bias), init and state_dict, and the same output for the same input,
    computed by pynotes kernels.

    activation="silu" applies SiLU in the same kernel (GroupNorm then SiLU, as in diffusion
    U-Nets), saving a full read and write of the activations forward and backward.
    """

    activation: Optional[str]  # None or "silu" (checked by the constructor)

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5,
                 affine: bool = True, device=None, dtype=None, *, bias: bool = True,
                 activation=None):
        parse_activation(activation)
        if _TORCH_TAKES_BIAS:
            extra = {"bias": bias}  # False: a weight but no bias
        elif bias:
            extra = {}
        else:
            raise TypeError("GroupNorm: bias=False needs a torch whose nn.GroupNorm takes "
                            f"bias (this is {torch.__version__})")
        super().__init__(num_groups, num_channels, eps=eps, affine=affine, device=device,
                         dtype=dtype, **extra)
        self.activation = activation

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():  # (TorchScript: the raw operator, differentiable once)
            return torch.ops.pynotes.group_norm(input, self.num_groups, self.weight, self.bias,
                                                self.eps, self.activation is not None)[0]
        return group_norm(input, self.num_groups, self.weight, self.bias, self.eps,
                          self.activation)

    def extra_repr(self) -> str:
        extra = super().extra_repr()
        return extra + (f", activation={self.activation!r}" if self.activation else "")
