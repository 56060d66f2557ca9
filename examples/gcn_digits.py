"""Semi-supervised node classification with pynotes.nn.GCNConv on scikit-learn's digits
(bundled, offline).

The 1797 images are the nodes of a k-nearest-neighbour graph (Euclidean distance on the 64
pixels, made symmetric); only a few labelled nodes per class are trained on, and a 2-layer
GCN (Kipf & Welling) spreads their labels over the graph. The same model is trained with
pynotes.nn.GCNConv and, when it is installed, torch_geometric.nn.GCNConv from the same seed,
and the script prints test accuracy and training time of each.

    pip install scikit-learn && python examples/gcn_digits.py
"""
import argparse
import time

import torch
from sklearn.datasets import load_digits

import pynotes

try:
    import torch_geometric.nn as pyg_nn
except ImportError:
    pyg_nn = None


def knn_graph(x, k):
    """edge_index (2, E) of the k nearest neighbours of every node, in both directions."""
    distance = torch.cdist(x, x)
    distance.fill_diagonal_(float("inf"))
    neighbours = distance.topk(k, largest=False).indices  # (N, k)
    src = neighbours.reshape(-1)
    dst = torch.arange(x.shape[0]).repeat_interleave(k)
    edge_index = torch.stack([torch.cat([src, dst]), torch.cat([dst, src])])
    return torch.unique(edge_index, dim=1)  # a neighbour both ways appears once


class GCN(torch.nn.Module):
    def __init__(self, conv_type, in_channels, hidden, classes, dropout):
        super().__init__()
        self.conv1 = conv_type(in_channels, hidden, cached=True)
        self.conv2 = conv_type(hidden, classes, cached=True)
        self.dropout = dropout

    def forward(self, x, edge_index):
        x = torch.nn.functional.dropout(x, self.dropout, self.training)
        x = self.conv1(x, edge_index).relu()
        x = torch.nn.functional.dropout(x, self.dropout, self.training)
        return self.conv2(x, edge_index)


def train(conv_type, data, args):
    x, edge_index, y, train_mask = data
    torch.manual_seed(args.seed)
    model = GCN(conv_type, x.shape[1], args.hidden, 10, args.dropout)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=5e-4)
    start = time.perf_counter()
    for _ in range(args.epochs):
        model.train()
        loss = torch.nn.functional.cross_entropy(model(x, edge_index)[train_mask], y[train_mask])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    seconds = time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        predicted = model(x, edge_index).argmax(1)
    accuracy = (predicted[~train_mask] == y[~train_mask]).float().mean().item()
    return accuracy, seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--k", type=int, default=10, help="neighbours per node")
    parser.add_argument("--labels-per-class", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--dropout", type=float, default=0.5)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    digits = load_digits()
    x = torch.tensor(digits.data / 16.0, dtype=torch.float32)  # (1797, 64)
    y = torch.tensor(digits.target)
    edge_index = knn_graph(x, args.k)
    generator = torch.Generator().manual_seed(args.seed)
    train_mask = torch.zeros(len(y), dtype=torch.bool)
    for c in range(10):  # a few labelled nodes per class
        nodes = (y == c).nonzero().flatten()
        chosen = torch.randperm(len(nodes), generator=generator)[:args.labels_per_class]
        train_mask[nodes[chosen]] = True
    data = (x, edge_index, y, train_mask)
    print(f"digits kNN graph: {x.shape[0]} nodes, {edge_index.shape[1]} edges (k={args.k}); "
          f"{int(train_mask.sum())} labelled nodes, {int((~train_mask).sum())} test nodes; "
          f"2-layer GCN, hidden {args.hidden}, {args.epochs} epochs, "
          f"{torch.get_num_threads()} threads")
    runs = [("pynotes.nn.GCNConv", pynotes.nn.GCNConv)]
    if pyg_nn is not None:
        runs.append(("torch_geometric.nn.GCNConv", pyg_nn.GCNConv))
    for name, conv_type in runs:
        accuracy, seconds = train(conv_type, data, args)
        print(f"{name:28s} test accuracy {accuracy:.4f}, training {seconds:.2f} s")


if __name__ == "__main__":
    main()
