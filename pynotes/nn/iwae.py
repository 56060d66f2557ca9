import torch

from pynotes.ops.iwae import iwae_bound


class IWAELoss(torch.nn.Module):
    """The negative importance-weighted bound -(logsumexp(log_w, dim) - log K), reduced over
    the remaining dims ("mean", "sum" or "none"), as in the IWAE training loop:

        log_w = log p(x, z_k) - log q(z_k | x)   # (K, batch)
        loss = pynotes.nn.IWAELoss()(log_w)      # K = 1 is the VAE's negative ELBO
    """

    def __init__(self, dim=0, reduction="mean"):
        super().__init__()
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"IWAELoss: reduction must be 'mean', 'sum' or 'none', got "
                             f"{reduction!r}")
        self.dim, self.reduction = dim, reduction

    def forward(self, log_w):
        loss = -iwae_bound(log_w, self.dim)
        if self.reduction == "mean":
            return loss.mean()
        return loss.sum() if self.reduction == "sum" else loss

    def extra_repr(self):
        return f"dim={self.dim}, reduction={self.reduction!r}"
