"""An importance-weighted autoencoder (Burda et al., 2016) on scikit-learn's digits (bundled,
offline), trained with pynotes.nn.IWAELoss for k = 1 (the VAE's ELBO), 5 and 50 samples.

The 8x8 images (pixels scaled to [0, 1]) are modelled with a Bernoulli decoder and a Gaussian
encoder with an 8-dimensional latent. Each model is trained from the same seed; the script
prints, on the test images, the ELBO and the importance-weighted bound with 1000 samples
(nats per image, higher is better): the bound tightens as k grows.

    pip install scikit-learn && python examples/iwae_digits.py
"""
import argparse
import math
import time

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import pynotes


class IWAE(torch.nn.Module):
    def __init__(self, pixels=64, hidden=128, latent=8):
        super().__init__()
        self.encoder = torch.nn.Sequential(torch.nn.Linear(pixels, hidden), torch.nn.Tanh(),
                                           torch.nn.Linear(hidden, 2 * latent))
        self.decoder = torch.nn.Sequential(torch.nn.Linear(latent, hidden), torch.nn.Tanh(),
                                           torch.nn.Linear(hidden, pixels))

    def log_weights(self, x, k):
        """log p(x, z_i) - log q(z_i | x) for k samples z_i ~ q(z | x): (k, batch)."""
        mean, log_std = self.encoder(x).chunk(2, dim=1)
        std = log_std.exp()
        z = mean + std * torch.randn(k, *mean.shape)
        log_q = (-0.5 * ((z - mean) / std) ** 2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        log_prior = (-0.5 * z ** 2 - 0.5 * math.log(2 * math.pi)).sum(-1)
        logits = self.decoder(z)
        log_likelihood = -torch.nn.functional.binary_cross_entropy_with_logits(
            logits, x.expand_as(logits), reduction="none").sum(-1)
        return log_likelihood + log_prior - log_q


def train(k, data, args):
    x_train, x_test = data
    torch.manual_seed(args.seed)
    model = IWAE()
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    loss_fn = pynotes.nn.IWAELoss()
    start = time.perf_counter()
    for _ in range(args.epochs):
        for batch in torch.randperm(len(x_train)).split(args.batch_size):
            loss = loss_fn(model.log_weights(x_train[batch], k))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    seconds = time.perf_counter() - start
    with torch.no_grad():
        torch.manual_seed(args.seed + 1)
        log_w = torch.cat([model.log_weights(x_test, 100) for _ in range(10)])  # 1000 samples
        elbo = log_w.mean(0).mean().item()
        bound = pynotes.ops.iwae_bound(log_w, 0).mean().item()
    return elbo, bound, seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--k", type=int, nargs="+", default=[1, 5, 50])
    args = parser.parse_args()

    digits = load_digits()
    x = torch.tensor(digits.data / 16.0, dtype=torch.float32)
    x_train, x_test = train_test_split(x, test_size=0.25, random_state=args.seed)
    print(f"digits: {len(x_train)} train / {len(x_test)} test images of 64 pixels; latent 8, "
          f"{args.epochs} epochs, batch {args.batch_size}, {torch.get_num_threads()} threads")
    print("  k | test ELBO | test IWAE bound (k=1000) | training")
    for k in args.k:
        elbo, bound, seconds = train(k, (x_train, x_test), args)
        print(f"{k:3d} | {elbo:9.3f} | {bound:24.3f} | {seconds:6.1f} s")


if __name__ == "__main__":
    main()
