"""Sequence classification with pynotes.nn.LSTM on scikit-learn's digits (bundled, offline).

Each 8x8 image is read as a sequence of 8 rows of 8 pixels; a 1-layer LSTM and a linear head
on its last hidden state predict the digit. The same model is trained with torch.nn.LSTM and
with pynotes.nn.LSTM from the same seed (same initial weights, same batches), and the script
prints test accuracy and training time of both.

    pip install scikit-learn && python examples/lstm_digits.py
"""
import argparse
import time

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import pynotes


def train(lstm_type, data, args):
    x_train, x_test, y_train, y_test = data
    torch.manual_seed(args.seed)
    lstm = lstm_type(8, args.hidden)
    head = torch.nn.Linear(args.hidden, 10)
    params = list(lstm.parameters()) + list(head.parameters())
    optimizer = torch.optim.Adam(params, lr=args.lr)
    generator = torch.Generator().manual_seed(args.seed)
    start = time.perf_counter()
    for _ in range(args.epochs):
        for batch in torch.randperm(len(x_train), generator=generator).split(args.batch_size):
            _, (h, _) = lstm(x_train[batch].transpose(0, 1))  # (8 steps, batch, 8)
            loss = torch.nn.functional.cross_entropy(head(h[-1]), y_train[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    seconds = time.perf_counter() - start
    with torch.no_grad():
        _, (h, _) = lstm(x_test.transpose(0, 1))
        accuracy = (head(h[-1]).argmax(1) == y_test).float().mean().item()
    return accuracy, seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    digits = load_digits()
    x = torch.tensor(digits.images / 16.0, dtype=torch.float32)  # (1797, 8 rows, 8 pixels)
    y = torch.tensor(digits.target)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25,
                                                        random_state=args.seed, stratify=y)
    data = (x_train, x_test, y_train, y_test)
    print(f"digits: {len(x_train)} train / {len(x_test)} test sequences of 8 x 8; hidden "
          f"{args.hidden}, {args.epochs} epochs, batch {args.batch_size}, "
          f"{torch.get_num_threads()} threads")
    results = {}
    for name, lstm_type in (("torch.nn.LSTM", torch.nn.LSTM), ("pynotes.nn.LSTM", pynotes.nn.LSTM)):
        accuracy, seconds = train(lstm_type, data, args)
        results[name] = seconds
        print(f"{name:16s} test accuracy {accuracy:.4f}   training {seconds:.2f} s")
    print(f"speedup {results['torch.nn.LSTM'] / results['pynotes.nn.LSTM']:.2f}x")


if __name__ == "__main__":
    main()
