"""GCN propagation against PyG and torch.sparse, float32.

Graph: a power-law graph with a fixed seed (in-degrees of the sampled sources follow a Zipf
law; made symmetric), about 2M nonzeros with the self loops on CPU (100k nodes) and an
arxiv-sized one on GPU (170k nodes, about 2.5M nonzeros).

Rows:
- gcn_propagate vs PyG: pynotes.ops.gcn_propagate(x, adj) against PyG's message passing with
  the normalization precomputed (what GCNConv(cached=True) runs per call), and against
  torch.sparse.mm on a CSR tensor with precomputed values. Forward+backward takes dL/dx.
- gcn_propagate vs pynotes stored values: on-the-fly D^-1/2 (the default for unweighted
  graphs) against per-entry stored values: the measurement behind that default.
- GCNConv: pynotes.nn.GCNConv(cached=True) against torch_geometric.nn.GCNConv(cached=True),
  F -> F channels, forward+backward with the parameters' gradients.
- gcn_norm: building the normalized adjacency of a new graph, as mini-batch training does
  for every sampled subgraph (20k nodes / 200k edges and 100k / 1M, unweighted and weighted),
  against PyG's gcn_norm; and GCNConv uncached (the normalization in every step) against PyG's.
Minimal bytes (for % of bandwidth): per sparse product, rowptr, int32 columns, D^-1/2, one
read of x and one write of the output; forward+backward is two products.
"""
import torch

import pynotes
from benchmarks.common import Result, time_pair
from pynotes import graph

try:
    import torch_geometric.nn as pyg_nn
    from torch_geometric.nn.conv.gcn_conv import gcn_norm as pyg_gcn_norm
except ImportError:
    pyg_nn = None


def power_law_graph(num_nodes, num_edges, exponent=0.9, seed=0):
    """An undirected power-law graph as edge_index (2, ~2 * num_edges), without self loops."""
    gen = torch.Generator().manual_seed(seed)
    popularity = torch.arange(1, num_nodes + 1, dtype=torch.float64).pow(-exponent)
    ids = torch.randperm(num_nodes, generator=gen)
    src = ids[torch.multinomial(popularity, num_edges, replacement=True, generator=gen)]
    dst = torch.randint(0, num_nodes, (num_edges,), generator=gen)
    keep = src != dst
    src, dst = src[keep], dst[keep]
    return torch.stack([torch.cat([src, dst]), torch.cat([dst, src])])


def sizes(device):
    # (num_nodes, sampled edges): ~2.0M / ~2.5M nonzeros after symmetrizing and self loops.
    return (169_343, 1_160_000) if device == "cuda" else (100_000, 950_000)


def product_bytes(adj, features):
    n = adj.num_nodes
    return 8 * (n + 1) + adj.col.element_size() * adj.nnz + 4 * n + 2 * 4 * n * features


# (nodes, directed edges) of the sampled subgraphs the normalization is timed on.
NORM_GRAPHS = [(20_000, 200_000), (100_000, 1_000_000)]


def widths(device, quick):
    return [16, 64] if quick and device == "cpu" else [16, 64, 256]


def cases(device, quick=True):
    num_nodes, num_edges = sizes(device)
    return [f"gcn_propagate N={num_nodes // 1000}k, {num_edges} sampled edges, F={f}, forward and "
            "forward+backward, vs PyG propagate, torch.sparse.mm and stored values; GCNConv "
            "forward+backward vs PyG GCNConv" for f in widths(device, quick)] + [
        f"gcn_norm N={n // 1000}k E={e // 1000}k, unweighted and weighted, vs PyG gcn_norm"
        for n, e in NORM_GRAPHS] + ["GCNConv uncached N=100k E=1000k F=64 forward+backward vs "
                                    "PyG GCNConv"]


def run(device, quick=True):
    num_nodes, num_edges = sizes(device)
    edge_index = power_law_graph(num_nodes, num_edges).to(device)
    adj = graph.gcn_norm(edge_index, num_nodes)
    stored = graph.Adjacency(adj.num_nodes, adj.rowptr, adj.col, adj.values(), None,
                             adj.rowptr_t, adj.col_t, adj.perm_t)
    csr = adj.to_sparse_csr()
    norm_index, norm_weight = pyg_gcn_norm(edge_index, None, num_nodes) if pyg_nn else (None,
                                                                                         None)
    rounds = 11 if device == "cpu" else 51
    graph_name = f"N={num_nodes // 1000}k nnz={adj.nnz / 1e6:.1f}M"
    results = []
    for features in widths(device, quick):
        case = f"{graph_name} F={features}"
        x = torch.randn(num_nodes, features, device=device, requires_grad=True)
        grad = torch.randn(num_nodes, features, device=device)
        fwd_bytes = product_bytes(adj, features)
        ours = lambda a=adj: pynotes.ops.gcn_propagate(x, a)  # noqa: E731
        anchors = [("torch.sparse.mm (CSR)", lambda: torch.sparse.mm(csr, x)),
                   ("pynotes, stored values", lambda: ours(stored))]
        if pyg_nn is not None:
            conv = pyg_nn.GCNConv(features, features, cached=True).to(device)
            anchors.insert(0, ("PyG propagate (cached norm)",
                               lambda c=conv: c.propagate(norm_index, x=x,
                                                          edge_weight=norm_weight)))
        for anchor, fn in anchors:
            with torch.no_grad():
                ms = time_pair(fn, ours, device, warmup=2, rounds=rounds)
            results.append(Result("gcn_propagate", case, "forward", anchor, *ms, fwd_bytes))
            ms = time_pair(lambda: torch.autograd.grad(fn(), x, grad),
                           lambda: torch.autograd.grad(ours(), x, grad), device, warmup=2,
                           rounds=rounds)
            results.append(Result("gcn_propagate", case, "forward+backward", anchor, *ms,
                                  2 * fwd_bytes))
        if pyg_nn is not None:
            results.append(bench_layer(device, case, edge_index, x, grad, features, rounds))
    if pyg_nn is not None:
        results += bench_norm(device, rounds)
    return results


def bench_norm(device, rounds):
    """The normalization of a new graph (mini-batch training), and the uncached layer."""
    results = []
    for nodes, edges in NORM_GRAPHS:
        edge_index = power_law_graph(nodes, edges // 2, seed=1).to(device)
        weight = torch.rand(edge_index.shape[1], generator=torch.Generator().manual_seed(2))
        case = f"N={nodes // 1000}k E={edge_index.shape[1] // 1000}k"
        for w in (None, weight.to(device)):
            ms = time_pair(lambda: pyg_gcn_norm(edge_index, w, nodes),
                           lambda: graph.gcn_norm(edge_index, nodes, w), device, warmup=2,
                           rounds=rounds)
            results.append(Result("gcn_norm", case, "weighted" if w is not None else "unweighted",
                                  "PyG gcn_norm", *ms))
        if nodes == NORM_GRAPHS[-1][0]:
            features = 64
            x = torch.randn(nodes, features, device=device, requires_grad=True)
            grad = torch.randn(nodes, features, device=device)
            theirs = pyg_nn.GCNConv(features, features).to(device)
            ours = pynotes.nn.GCNConv(features, features).to(device)
            ours.load_state_dict(theirs.state_dict())

            def train_step(conv):
                torch.autograd.grad(conv(x, edge_index), [x, *conv.parameters()], grad)
            ms = time_pair(lambda: train_step(theirs), lambda: train_step(ours), device,
                           warmup=2, rounds=rounds)
            results.append(Result("GCNConv", f"{case} F={features}, uncached",
                                  "forward+backward", "PyG GCNConv", *ms))
    return results


def bench_layer(device, case, edge_index, x, grad, features, rounds):
    theirs = pyg_nn.GCNConv(features, features, cached=True).to(device)
    ours = pynotes.nn.GCNConv(features, features, cached=True).to(device)
    ours.load_state_dict(theirs.state_dict())

    def train_step(conv):
        torch.autograd.grad(conv(x, edge_index), [x, *conv.parameters()], grad)
    ms = time_pair(lambda: train_step(theirs), lambda: train_step(ours), device, warmup=2,
                   rounds=rounds)
    return Result("GCNConv", case, "forward+backward", "PyG GCNConv (cached)", *ms)
