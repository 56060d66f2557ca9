"""Sparse graph adjacencies for GCN-style propagation, built once from a PyG edge_index.

    adj = pynotes.graph.gcn_norm(edge_index, num_nodes)  # D^-1/2 (A + I) D^-1/2
    out = pynotes.ops.gcn_propagate(x, adj)               # = adj @ x

An edge (src, dst) in edge_index (int64, shape (2, E)) sends src's features to dst, as in PyG
(flow "source_to_target"). The adjacency is stored as CSR by target node, the layout the kernels
read, plus its transpose for the backward. Row i's entry e (a source node col[e]) has the value

    scale[i] * weight[e] * scale[col[e]]

where `scale` is D^-1/2 and `weight` the edge weights; either may be None (all ones). For a
graph without edge weights only the degrees are stored and the values are computed on the fly,
which moves fewer bytes than reading a stored value per entry (benchmarks/gcn.py measures
both); with edge weights the normalized values are stored, and they stay differentiable in
edge_weight.
"""
import torch

_INT32_MAX = 2**31 - 1


class Adjacency:
    """A sparse N x N matrix in CSR by target node and its transpose (see the module doc).

    Attributes: num_nodes; rowptr (N + 1, int64) and col (nnz; int32 when N < 2**31, else
    int64); weight (nnz) or None; scale (N) or None; and the transpose rowptr_t, col_t with
    perm_t (its entry k is entry perm_t[k] of the CSR). weight and scale are float32 unless
    the edge weights were float64; the ops convert them to x's accumulation type.
    """

    def __init__(self, num_nodes, rowptr, col, weight, scale, rowptr_t, col_t, perm_t,
                 dtype=torch.float32):
        self.num_nodes = num_nodes
        self._dtype = dtype  # the values' dtype when there are neither weight nor scale
        self.rowptr, self.col, self.weight, self.scale = rowptr, col, weight, scale
        self.rowptr_t, self.col_t, self.perm_t = rowptr_t, col_t, perm_t
        self._converted = {}

    @property
    def nnz(self):
        return self.col.numel()

    @property
    def device(self):
        return self.rowptr.device

    @property
    def dtype(self):
        """dtype of the stored values (weight and scale)."""
        values = self.weight if self.weight is not None else self.scale
        return values.dtype if values is not None else self._dtype

    def to(self, device=None, dtype=None):
        """A copy on `device` with its values in `dtype` (floating); self when nothing changes."""
        device = self.device if device is None else torch.device(device)
        dtype = self.dtype if dtype is None else dtype
        if device == self.device and dtype == self.dtype:
            return self
        if not dtype.is_floating_point:
            raise TypeError(f"Adjacency.to: dtype must be floating-point, got {dtype}")
        key = (device, dtype)
        if key not in self._converted:
            move = lambda t: None if t is None else t.to(device)  # noqa: E731
            values = lambda t: None if t is None else t.to(device, dtype)  # noqa: E731
            self._converted[key] = Adjacency(
                self.num_nodes, move(self.rowptr), move(self.col), values(self.weight),
                values(self.scale), move(self.rowptr_t), move(self.col_t), move(self.perm_t),
                dtype)
        return self._converted[key]

    def row_index(self):
        """The target node (CSR row) of each entry."""
        counts = self.rowptr.diff()
        return torch.repeat_interleave(torch.arange(self.num_nodes, device=self.device), counts)

    def values(self):
        """Each entry's value, in CSR order."""
        n = self.nnz
        value = self.weight if self.weight is not None else \
            torch.ones(n, dtype=self.dtype, device=self.device)
        if self.scale is not None:
            value = self.scale[self.row_index()] * value * self.scale[self.col.long()]
        return value

    def to_sparse_csr(self):
        """The matrix as a torch sparse CSR tensor (values materialized)."""
        return torch.sparse_csr_tensor(self.rowptr, self.col.long(), self.values(),
                                       (self.num_nodes, self.num_nodes))

    def to_dense(self):
        dense = torch.zeros(self.num_nodes, self.num_nodes, dtype=self.dtype, device=self.device)
        return dense.index_put_((self.row_index(), self.col.long()), self.values(),
                                accumulate=True)

    def __repr__(self):
        kind = ("D^-1/2 on the fly" if self.scale is not None else
                "stored values" if self.weight is not None else "all values 1")
        return (f"Adjacency(num_nodes={self.num_nodes}, nnz={self.nnz}, {kind}, "
                f"dtype={self.dtype}, device={self.device})")


def gcn_norm(edge_index, num_nodes=None, edge_weight=None, add_self_loops=True,
             improved=False, dtype=None):
    """D^-1/2 (A + I) D^-1/2 as in Kipf & Welling and PyG's gcn_norm.

    edge_index: int64 (2, E), row 0 source nodes, row 1 targets. num_nodes: defaults to the
    largest index + 1. edge_weight: (E,) floating, or None for all ones. add_self_loops:
    replace the self loops already present by one loop per node; a node that had loops keeps
    the weight of its last one (1 without edge_weight), the others get 1 (2 with `improved`).
    Degrees are in-degrees, summed over each node's incoming entries. dtype: of the values
    when there are no edge weights (default float32; the layers pass x's dtype).

    Unlike PyG's edge_index path, `improved=True` also applies without edge weights (PyG then
    ignores it; its SparseTensor path and the paper apply it).
    """
    op = "gcn_norm"
    dtype = _value_dtype(dtype)
    edge_index, num_nodes = _check_edge_index(op, edge_index, num_nodes)
    edge_weight = _check_edge_weight(op, edge_weight, edge_index)
    if add_self_loops:
        edge_index, edge_weight = _replace_self_loops(edge_index, edge_weight, num_nodes,
                                                      2.0 if improved else 1.0, dtype)
    return _build(op, edge_index, num_nodes, edge_weight, "target", dtype)


def cheb_norm(edge_index, num_nodes=None, edge_weight=None, dtype=None):
    """D^-1/2 A D^-1/2 without self loops and with out-degrees, as PyG's ChebConv normalizes
    ("sym"): its scaled Laplacian with lambda_max = 2 is L~ = -cheb_norm(...)."""
    op = "cheb_norm"
    dtype = _value_dtype(dtype)
    edge_index, num_nodes = _check_edge_index(op, edge_index, num_nodes)
    edge_weight = _check_edge_weight(op, edge_weight, edge_index)
    keep = edge_index[0] != edge_index[1]
    edge_index = edge_index[:, keep]
    edge_weight = None if edge_weight is None else edge_weight[keep]
    return _build(op, edge_index, num_nodes, edge_weight, "source", dtype)


def adjacency(edge_index, num_nodes=None, edge_weight=None, dtype=None):
    """A itself (no normalization, no self loops added): what GCNConv(normalize=False) uses."""
    op = "adjacency"
    dtype = _value_dtype(dtype)
    edge_index, num_nodes = _check_edge_index(op, edge_index, num_nodes)
    edge_weight = _check_edge_weight(op, edge_weight, edge_index)
    return _build(op, edge_index, num_nodes, edge_weight, None, dtype)


def _value_dtype(dtype):
    """Values are kept in the kernels' accumulation types: float64, or float32 for the rest."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check_edge_index(op, edge_index, num_nodes):
    if not isinstance(edge_index, torch.Tensor):
        raise TypeError(f"{op}: edge_index must be a tensor, got {type(edge_index).__name__}")
    if edge_index.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"{op}: edge_index must be an int64 tensor, got {edge_index.dtype}")
    if edge_index.dim() != 2 or edge_index.shape[0] != 2:
        raise ValueError(f"{op}: edge_index must have shape (2, num_edges), got "
                         f"{tuple(edge_index.shape)}")
    edge_index = edge_index.long()
    has_edges = edge_index.numel() > 0
    if num_nodes is None:
        num_nodes = int(edge_index.max()) + 1 if has_edges else 0
    elif isinstance(num_nodes, bool) or not isinstance(num_nodes, int) or num_nodes < 0:
        raise ValueError(f"{op}: num_nodes must be a non-negative int, got {num_nodes!r}")
    if has_edges:
        low, high = int(edge_index.min()), int(edge_index.max())
        if low < 0 or high >= num_nodes:
            bad = low if low < 0 else high
            raise ValueError(f"{op}: edge_index must hold node indices in [0, num_nodes = "
                             f"{num_nodes}), got {bad}")
    return edge_index, num_nodes


def _check_edge_weight(op, edge_weight, edge_index):
    if edge_weight is None:
        return None
    if not isinstance(edge_weight, torch.Tensor) or not edge_weight.is_floating_point():
        raise TypeError(f"{op}: edge_weight must be a floating-point tensor, got "
                        f"{getattr(edge_weight, 'dtype', type(edge_weight).__name__)}")
    if edge_weight.shape != (edge_index.shape[1],):
        raise ValueError(f"{op}: edge_weight must have shape (num_edges,) = "
                         f"({edge_index.shape[1]},), got {tuple(edge_weight.shape)}")
    if edge_weight.device != edge_index.device:
        raise RuntimeError(f"{op}: edge_weight must be on the same device as edge_index "
                           f"({edge_index.device}), got {edge_weight.device}")
    if not bool(torch.isfinite(edge_weight).all()):
        raise ValueError(f"{op}: edge_weight must be finite, got NaN or inf")
    # float16/bfloat16 weights are summed in float32, like the kernels' accumulation.
    return edge_weight if edge_weight.dtype == torch.float64 else edge_weight.float()


def _replace_self_loops(edge_index, edge_weight, num_nodes, fill, dtype):
    """PyG's add_remaining_self_loops: existing loops go, one loop per node comes last."""
    src, dst = edge_index
    is_loop = src == dst
    nodes = torch.arange(num_nodes, device=edge_index.device)
    loops = torch.stack([nodes, nodes])
    if edge_weight is None and fill == 1.0:
        return torch.cat([edge_index[:, ~is_loop], loops], dim=1), None
    if edge_weight is None:  # all ones: an existing loop keeps weight 1, as PyG's weighted path
        edge_weight = torch.ones(src.numel(), dtype=dtype, device=edge_index.device)
    loop_weight = torch.full((num_nodes,), fill, dtype=edge_weight.dtype,
                             device=edge_index.device)
    if bool(is_loop.any()):
        # The last loop of each node wins (deterministically, unlike an index_put).
        position = torch.arange(src.numel(), device=src.device)
        last = torch.full((num_nodes,), -1, dtype=torch.long, device=src.device)
        last.scatter_reduce_(0, src[is_loop], position[is_loop], reduce="amax")
        has_loop = last >= 0
        loop_weight = torch.where(has_loop, edge_weight[last.clamp_min(0)], loop_weight)
    return (torch.cat([edge_index[:, ~is_loop], loops], dim=1),
            torch.cat([edge_weight[~is_loop], loop_weight]))


def _rowptr(counts):
    rowptr = counts.new_zeros(counts.numel() + 1)
    torch.cumsum(counts, 0, out=rowptr[1:])
    return rowptr


def _build(op, edge_index, num_nodes, edge_weight, degree_of, dtype):
    src, dst = edge_index
    device = edge_index.device
    index_dtype = torch.int32 if num_nodes <= _INT32_MAX else torch.int64
    # CSR by target; a stable sort keeps each row's entries in edge order.
    perm = torch.argsort(dst, stable=True)
    rowptr = _rowptr(torch.bincount(dst, minlength=num_nodes))
    col = src[perm]
    row = dst[perm]
    weight = edge_weight[perm] if edge_weight is not None else None
    # The transpose: CSR by source over the same entries.
    perm_t = torch.argsort(col, stable=True)
    rowptr_t = _rowptr(torch.bincount(src, minlength=num_nodes))
    col_t = row[perm_t]

    scale = None
    if degree_of is not None:
        if degree_of == "target":
            offsets, entries = rowptr, weight
        else:
            offsets, entries = rowptr_t, weight[perm_t] if weight is not None else None
        if entries is None:
            degree = offsets.diff().to(torch.float64)
        else:
            degree = torch.segment_reduce(entries, "sum", offsets=offsets, unsafe=True)
            negative = degree < 0
            if bool(negative.any()):
                node = int(negative.nonzero()[0, 0])
                raise ValueError(f"{op}: edge_weight gives node {node} a negative degree "
                                 f"({float(degree[node]):g}); the normalization takes "
                                 "degree^-1/2")
        positive = degree > 0
        scale = torch.where(positive, torch.where(positive, degree, 1.0).rsqrt(), 0.0)
        if weight is None:  # exact counts: the root in float64, rounded once
            scale = scale.to(dtype)
        else:
            # Store the normalized values (differentiable in edge_weight): as many bytes as
            # the weights, and no scale to gather.
            weight = scale[row] * weight * scale[col]
            scale = None
    return Adjacency(num_nodes, rowptr, col.to(index_dtype), weight, scale, rowptr_t,
                     col_t.to(index_dtype), perm_t, dtype)
