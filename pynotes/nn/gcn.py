"""Graph convolutions on pynotes.ops.gcn_propagate, with PyG's arguments and parameters."""
import math

import torch

from pynotes import graph
from pynotes.ops.gcn import gcn_propagate


def _glorot_(weight):
    # PyG's glorot: U(-a, a), a = sqrt(6 / (fan_in + fan_out)).
    bound = math.sqrt(6.0 / (weight.shape[0] + weight.shape[1]))
    torch.nn.init.uniform_(weight, -bound, bound)


def _check_x(layer, x, in_channels):
    if not isinstance(x, torch.Tensor) or x.dim() not in (2, 3) or x.shape[-1] != in_channels \
            or (x.is_sparse and x.dim() != 2):
        raise ValueError(f"{layer}: x must have shape (num_nodes, in_channels = {in_channels}), "
                         "or (batch, num_nodes, in_channels) for one graph of every batch "
                         f"entry (PyG's static graphs), got {tuple(getattr(x, 'shape', ()))}")


def _propagate(x, adj):
    """gcn_propagate over the nodes of x: (num_nodes, features), or (batch, num_nodes,
    features), every batch entry on the same graph (as one (num_nodes, batch * features))."""
    if x.dim() == 2:
        return gcn_propagate(x, adj)
    batch, nodes, features = x.shape
    out = gcn_propagate(x.transpose(0, 1).reshape(nodes, batch * features), adj)
    return out.reshape(nodes, batch, features).transpose(0, 1)


def _check_prebuilt(layer, adj, x, edge_weight):
    if edge_weight is not None:
        raise ValueError(f"{layer}: edge_weight must be None when edge_index is an Adjacency "
                         "(its weights were given when it was built)")
    if adj.num_nodes != x.shape[-2]:
        raise ValueError(f"{layer}: x must have num_nodes = {adj.num_nodes} rows (the "
                         f"adjacency's), got {x.shape[-2]}")


def _refuse_script(layer):
    """torch.jit.script calls this first: the layers' graph handling is Python (PyG's own
    layers compile through its templates), so they trace, compile and export instead."""
    raise RuntimeError(f"{type(layer).__name__}: torch.jit.script is not supported (torch "
                       "deprecates it); use torch.compile, torch.export or torch.jit.trace")


class GCNConv(torch.nn.Module):
    """The graph convolution of Kipf & Welling (2017), a drop-in for
    torch_geometric.nn.GCNConv: X' = D^-1/2 (A + I) D^-1/2 X W^T + b.

    Same arguments, parameters (lin.weight (out, in), bias) and, with the same weights, the
    same output. forward(x, edge_index, edge_weight=None) takes a PyG edge_index (2, E), a
    sparse adj_t, or an Adjacency prebuilt with pynotes.graph.gcn_norm to skip the per-call
    normalization; x (num_nodes, in_channels), torch.sparse too, or (batch, num_nodes,
    in_channels) for one graph shared by the batch. flow="target_to_source" sends each edge's
    message from edge_index[1] to edge_index[0], as in PyG.
    cached=True keeps the normalized adjacency of the first call (transductive learning).
    The linear transform runs before propagation when out_channels <= in_channels and after
    it otherwise, so the sparse product always runs on the narrower width.

    add_self_loops defaults to `normalize`, as in PyG. With improved=True and no edge weights
    the self loops get weight 2 (PyG's edge_index path then ignores `improved`).
    """

    def __init__(self, in_channels, out_channels, improved=False, cached=False,
                 add_self_loops=None, normalize=True, bias=True, flow="source_to_target"):
        super().__init__()
        if add_self_loops is None:
            add_self_loops = normalize
        if add_self_loops and not normalize:
            raise ValueError("GCNConv: add_self_loops=True needs normalize=True (as in PyG)")
        if flow not in ("source_to_target", "target_to_source"):
            raise ValueError(f"GCNConv: flow must be 'source_to_target' or 'target_to_source', "
                             f"got {flow!r}")
        self.flow = flow
        self.in_channels, self.out_channels = in_channels, out_channels
        self.improved, self.cached = improved, cached
        self.add_self_loops, self.normalize = add_self_loops, normalize
        self.lin = torch.nn.Linear(in_channels, out_channels, bias=False)
        self.bias = torch.nn.Parameter(torch.empty(out_channels)) if bias else None
        self._cached_adj = None
        self.reset_parameters()

    def reset_parameters(self):
        _glorot_(self.lin.weight)
        if self.bias is not None:
            torch.nn.init.zeros_(self.bias)
        self._cached_adj = None

    def adjacency(self, edge_index, num_nodes, edge_weight=None, dtype=None):
        """The normalized adjacency forward() propagates with (built, or the cached one)."""
        if isinstance(edge_index, graph.Adjacency):
            return edge_index
        if self._cached_adj is not None:
            return self._cached_adj
        if self.flow == "target_to_source" and not graph.is_sparse_adjacency(edge_index):
            edge_index = edge_index.flip(0)  # messages from edge_index[1] to edge_index[0]
        if self.normalize:
            adj = graph.gcn_norm(edge_index, num_nodes, edge_weight, self.add_self_loops,
                                 self.improved, dtype)
        else:
            adj = graph.adjacency(edge_index, num_nodes, edge_weight, dtype)
        if self.cached:
            self._cached_adj = adj
        return adj

    def forward(self, x, edge_index, edge_weight=None):
        _check_x("GCNConv", x, self.in_channels)
        if isinstance(edge_index, graph.Adjacency):
            _check_prebuilt("GCNConv", edge_index, x, edge_weight)
        adj = self.adjacency(edge_index, x.shape[-2], edge_weight, x.dtype)
        if x.is_sparse:  # (torch.sparse features: the product first)
            out = gcn_propagate(torch.sparse.mm(x, self.lin.weight.t()), adj)
        elif self.out_channels <= self.in_channels:
            out = _propagate(self.lin(x), adj)
        else:
            out = self.lin(_propagate(x, adj))
        return out + self.bias if self.bias is not None else out

    def __repr__(self):
        return f"{self.__class__.__name__}({self.in_channels}, {self.out_channels})"

    def __prepare_scriptable__(self):
        _refuse_script(self)


class ChebConv(torch.nn.Module):
    """The Chebyshev spectral graph convolution (Defferrard et al., 2016), a drop-in for
    torch_geometric.nn.ChebConv:

        X' = sum_k T_k(L~) X W_k^T + b,  L~ = 2 L / lambda_max - I,
        T_0 = X, T_1 = L~ X, T_k = 2 L~ T_(k-1) - T_(k-2),

    with L the graph's Laplacian (self loops dropped, out-degrees) of `normalization` None,
    "sym" or "rw" (pynotes.graph.cheb_laplacian), the same as PyG computes. Parameters
    lins.k.weight (out, in) and bias, as in PyG. forward(x, edge_index, edge_weight=None,
    batch=None, lambda_max=None): lambda_max defaults to 2 for "sym" and is required for the
    others, a number or one per graph of `batch`, as in PyG. For "sym" with lambda_max = 2,
    L~ = -D^-1/2 A D^-1/2 and edge_index may be an Adjacency prebuilt with
    pynotes.graph.cheb_norm.
    """

    def __init__(self, in_channels, out_channels, K, normalization="sym", bias=True):
        super().__init__()
        if not isinstance(K, int) or K <= 0:
            raise ValueError(f"ChebConv: K must be a positive int, got {K!r}")
        if normalization not in (None, "sym", "rw"):
            raise ValueError(f"ChebConv: normalization must be None, 'sym' or 'rw', got "
                             f"{normalization!r}")
        self.in_channels, self.out_channels, self.normalization = \
            in_channels, out_channels, normalization
        self.lins = torch.nn.ModuleList(
            [torch.nn.Linear(in_channels, out_channels, bias=False) for _ in range(K)])
        self.bias = torch.nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self):
        for lin in self.lins:
            _glorot_(lin.weight)
        if self.bias is not None:
            torch.nn.init.zeros_(self.bias)

    def forward(self, x, edge_index, edge_weight=None, batch=None, lambda_max=None):
        _check_x("ChebConv", x, self.in_channels)
        if self.normalization != "sym" and lambda_max is None:
            raise ValueError(f"ChebConv: normalization={self.normalization!r} needs lambda_max "
                             "(pass it to forward), as in PyG")
        default = lambda_max is None or (torch.as_tensor(lambda_max).numel() == 1 and
                                         float(lambda_max) == 2.0)
        if isinstance(edge_index, graph.Adjacency):
            _check_prebuilt("ChebConv", edge_index, x, edge_weight)
            if self.normalization != "sym" or not default:
                raise ValueError("ChebConv: a prebuilt Adjacency is cheb_norm's, for "
                                 "normalization 'sym' with lambda_max = 2")
        if self.normalization == "sym" and default:  # L~ T = -(cheb_norm @ T)
            adj = edge_index if isinstance(edge_index, graph.Adjacency) else \
                graph.cheb_norm(edge_index, x.shape[-2], edge_weight, x.dtype)
            laplacian = lambda t: -_propagate(t, adj)  # noqa: E731
        else:
            adj = graph.cheb_laplacian(edge_index, x.shape[-2], edge_weight, self.normalization,
                                       lambda_max, batch, x.dtype)
            laplacian = lambda t: _propagate(t, adj)  # noqa: E731
        tx0, out = x, self.lins[0](x)
        if len(self.lins) > 1:
            tx1 = laplacian(x)
            out = out + self.lins[1](tx1)
            for lin in self.lins[2:]:
                tx2 = 2.0 * laplacian(tx1) - tx0
                out = out + lin(tx2)
                tx0, tx1 = tx1, tx2
        return out + self.bias if self.bias is not None else out

    def __repr__(self):
        return (f"{self.__class__.__name__}({self.in_channels}, {self.out_channels}, "
                f"K={len(self.lins)}, normalization={self.normalization})")

    def __prepare_scriptable__(self):
        _refuse_script(self)
