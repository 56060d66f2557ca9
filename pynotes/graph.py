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

from pynotes import _ext
from pynotes.reference import graph as reference_graph


class Adjacency:
    """A sparse N x N matrix in CSR by target node and its transpose (see the module doc).

    Attributes: num_nodes; rowptr (N + 1, int64) and col (nnz); weight (nnz) or None; scale
    (N) or None; and the transpose rowptr_t, col_t with perm_t (its entry k is entry perm_t[k]
    of the CSR). col, col_t and perm_t are int32 when num_nodes + num_edges < 2**31, else
    int64. weight and scale are float32 unless the edge weights were float64; the ops convert
    them to x's accumulation type.
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
        if key in self._converted:
            return self._converted[key]
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        values = lambda t: None if t is None else t.to(device, dtype)  # noqa: E731
        converted = Adjacency(
            self.num_nodes, move(self.rowptr), move(self.col), values(self.weight),
            values(self.scale), move(self.rowptr_t), move(self.col_t), move(self.perm_t), dtype)
        # Kept for the next call, except while tracing (torch.compile / export), whose tensors
        # exist only in the trace; nor when the values are part of an autograd graph.
        traced = torch.compiler.is_compiling() or any(
            t is not None and t.requires_grad for t in (converted.weight, converted.scale))
        if not traced:
            self._converted[key] = converted
        return converted

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

    edge_index: int64 (2, E), row 0 source nodes, row 1 targets; or a sparse adjacency in
    PyG's adj_t convention (adj_t[i, j] is the weight of the edge j -> i): a torch.sparse COO
    or CSR tensor, or a torch_sparse.SparseTensor. num_nodes: defaults to the largest index + 1
    (give it under torch.compile / torch.export). edge_weight: (E,) floating, or None for all
    ones. add_self_loops: for edge_index, replace the self loops already present by one loop
    per node; a node that had loops keeps the weight of its last one (1 without edge_weight),
    the others get 1 (2 with `improved`), as PyG's add_remaining_self_loops; for a SparseTensor
    the diagonal is replaced by 1 (2), as PyG's fill_diag; for a torch.sparse adj_t one loop
    per node is added to what is there, as PyG's add_self_loops.
    Degrees are in-degrees, summed over each node's incoming entries. dtype: of the values
    when there are no edge weights (default float32; the layers pass x's dtype).

    Unlike PyG's edge_index path, `improved=True` also applies without edge weights (PyG then
    ignores it; its SparseTensor path and the paper apply it).
    """
    op = "gcn_norm"
    edge_index, num_nodes, edge_weight, loops = _as_edges(op, edge_index, num_nodes,
                                                          edge_weight, "replace")
    return _build(op, edge_index, num_nodes, edge_weight, loops if add_self_loops else "keep",
                  2.0 if improved else 1.0, "target", dtype)


def cheb_norm(edge_index, num_nodes=None, edge_weight=None, dtype=None):
    """D^-1/2 A D^-1/2 without self loops and with out-degrees, as PyG's ChebConv normalizes
    ("sym"): its scaled Laplacian with lambda_max = 2 is L~ = -cheb_norm(...). edge_index as
    in gcn_norm (a sparse adj_t too)."""
    op = "cheb_norm"
    edge_index, num_nodes, edge_weight, _ = _as_edges(op, edge_index, num_nodes, edge_weight,
                                                      "drop")
    return _build(op, edge_index, num_nodes, edge_weight, "drop", 1.0, "source", dtype)


def cheb_laplacian(edge_index, num_nodes=None, edge_weight=None, normalization="sym",
                   lambda_max=2.0, batch=None, dtype=None):
    """The operator PyG's ChebConv propagates with, L~ = 2 L / lambda_max - I, as an
    adjacency (gcn_propagate(x, adj) = L~ x). L is the Laplacian of the graph without its self
    loops, with out-degrees D: D - A (normalization None), I - D^-1/2 A D^-1/2 ("sym") or
    I - D^-1 A ("rw"). lambda_max: a number, or a tensor of one per graph with `batch` (each
    node's graph), as PyG's. cheb_norm is the faster build for "sym" with lambda_max = 2."""
    op = "cheb_laplacian"
    if normalization not in (None, "sym", "rw"):
        raise ValueError(f"{op}: normalization must be None, 'sym' or 'rw', got "
                         f"{normalization!r}")
    edge_index, num_nodes, edge_weight, _ = _as_edges(op, edge_index, num_nodes, edge_weight,
                                                      "drop")
    src, dst = edge_index
    value_dtype = _value_dtype(dtype if edge_weight is None else edge_weight.dtype)
    weight = (torch.ones(src.numel(), dtype=value_dtype, device=src.device)
              if edge_weight is None else edge_weight.to(value_dtype))
    keep = src != dst
    src, dst, weight = src[keep], dst[keep], weight[keep]
    nodes = torch.arange(num_nodes, device=src.device)
    degree = torch.zeros(num_nodes, dtype=value_dtype, device=src.device).index_add(0, src,
                                                                                   weight)
    if normalization is None:
        weight, loop = -weight, degree
    else:
        inverse = degree.pow(-0.5) if normalization == "sym" else degree.reciprocal()
        inverse = inverse.masked_fill(inverse == float("inf"), 0)
        weight = -inverse[src] * weight * (inverse[dst] if normalization == "sym" else 1)
        loop = torch.ones(num_nodes, dtype=value_dtype, device=src.device)
    src, dst = torch.cat([src, nodes]), torch.cat([dst, nodes])
    weight = torch.cat([weight, loop])
    lambda_max = torch.as_tensor(lambda_max, dtype=value_dtype, device=src.device)
    if batch is not None and lambda_max.numel() > 1:
        lambda_max = lambda_max[batch[src]]
    weight = 2.0 * weight / lambda_max
    weight = weight.masked_fill(weight == float("inf"), 0) - (src == dst).to(value_dtype)
    return adjacency(torch.stack([src, dst]), num_nodes, weight, dtype)


def adjacency(edge_index, num_nodes=None, edge_weight=None, dtype=None):
    """A itself (no normalization, no self loops added): what GCNConv(normalize=False) uses.
    edge_index as in gcn_norm (a sparse adj_t too)."""
    op = "adjacency"
    edge_index, num_nodes, edge_weight, _ = _as_edges(op, edge_index, num_nodes, edge_weight,
                                                      "keep")
    return _build(op, edge_index, num_nodes, edge_weight, "keep", 1.0, None, dtype)


def is_sparse_adjacency(adj):
    """A torch.sparse COO/CSR tensor or a torch_sparse.SparseTensor (duck-typed: .coo() and
    .sparse_sizes(), so torch_sparse is not imported here)."""
    if isinstance(adj, torch.Tensor):
        return adj.layout in (torch.sparse_coo, torch.sparse_csr, torch.sparse_csc,
                              torch.sparse_bsr, torch.sparse_bsc)
    return callable(getattr(adj, "coo", None)) and callable(getattr(adj, "sparse_sizes", None))


def _as_edges(op, edge_index, num_nodes, edge_weight, loops):
    """(edge_index, num_nodes, edge_weight, self-loop mode) for an edge_index or a sparse
    adj_t: its columns are the sources, its rows the targets, its values the edge weights;
    adding self loops to a torch.sparse adj_t appends them (PyG's add_self_loops)."""
    if not is_sparse_adjacency(edge_index):
        edge_index, num_nodes = _check_edge_index(op, edge_index, num_nodes)
        return edge_index, num_nodes, _check_edge_weight(op, edge_weight, edge_index), loops
    adj = edge_index
    if edge_weight is not None:
        raise ValueError(f"{op}: edge_weight must be None with a sparse adjacency (its values "
                         "are the edge weights)")
    if isinstance(adj, torch.Tensor):
        size = tuple(adj.shape)
        if adj.layout == torch.sparse_coo:
            adj = adj.coalesce()  # duplicates summed, as PyG's to_edge_index
            (row, col), value = adj.indices(), adj.values()
        elif adj.layout == torch.sparse_csr:
            row = torch.repeat_interleave(
                torch.arange(size[0], device=adj.device), adj.crow_indices().diff(),
                output_size=adj.col_indices().numel())
            col, value = adj.col_indices(), adj.values()
        else:
            raise TypeError(f"{op}: a sparse adjacency must be COO or CSR (PyG's adj_t), got "
                            f"{adj.layout}")
        mode = "append" if loops == "replace" else loops
    else:  # torch_sparse.SparseTensor: PyG's fill_diag drops the diagonal, then adds loops
        size = tuple(adj.sparse_sizes())
        row, col, value = adj.coo()
        if loops == "replace":
            keep = row != col
            row, col = row[keep], col[keep]
            value = None if value is None else value[keep]
            mode = "append"
        else:
            mode = loops
    if len(size) != 2 or size[0] != size[1]:
        raise ValueError(f"{op}: a sparse adjacency must be square (num_nodes, num_nodes), got "
                         f"{size}")
    if num_nodes is not None and num_nodes != size[0]:
        raise ValueError(f"{op}: num_nodes ({num_nodes}) must be the sparse adjacency's size "
                         f"({size[0]})")
    edge_index = torch.stack([col.long(), row.long()])
    edge_index, num_nodes = _check_edge_index(op, edge_index, size[0])
    return edge_index, num_nodes, _check_edge_weight(op, value, edge_index), mode


def _value_dtype(dtype):
    """Values are kept in the kernels' accumulation types: float64, or float32 for the rest."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check_edge_index(op, edge_index, num_nodes):
    """Type, shape and num_nodes; the indices' range is checked by graph_csr."""
    if not isinstance(edge_index, torch.Tensor):
        raise TypeError(f"{op}: edge_index must be a tensor (or a sparse adjacency), got "
                        f"{type(edge_index).__name__}")
    if edge_index.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"{op}: edge_index must be an int64 tensor, got {edge_index.dtype}")
    if edge_index.dim() != 2 or edge_index.shape[0] != 2:
        raise ValueError(f"{op}: edge_index must have shape (2, num_edges), got "
                         f"{tuple(edge_index.shape)}")
    edge_index = edge_index.long()
    if torch.jit.is_tracing() and isinstance(num_nodes, torch.Tensor):
        num_nodes = int(num_nodes)  # (x.shape[0] under torch.jit.trace: the trace keeps it)
    if num_nodes is None:
        if torch.compiler.is_compiling():
            raise ValueError(f"{op}: give num_nodes under torch.compile / torch.export (the "
                             "largest index + 1 is data-dependent)")
        num_nodes = int(edge_index.max()) + 1 if edge_index.numel() > 0 else 0
    elif isinstance(num_nodes, bool) or not isinstance(num_nodes, (int, torch.SymInt)) or \
            num_nodes < 0:
        raise ValueError(f"{op}: num_nodes must be a non-negative int, got {num_nodes!r}")
    return edge_index, num_nodes


def _check_values(condition, error, message):
    """A check on tensor values: eagerly an `error`, under torch.compile / torch.export an
    assertion in the graph (the values are not known while tracing)."""
    if torch.compiler.is_compiling():
        torch._assert_async(condition, message)
    elif not bool(condition):
        raise error(message)


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
    # Finite values: checked by _build (the graph_values kernel reads them anyway).
    # float16/bfloat16 weights are summed in float32, like the kernels' accumulation.
    return edge_weight if edge_weight.dtype == torch.float64 else edge_weight.float()


def _graph_csr(edge_index, num_nodes, self_loops, edge_ids, op):
    graph_csr = torch.ops.pynotes.graph_csr if _ext.use_extension(edge_index) else \
        reference_graph.graph_csr
    return graph_csr(edge_index, num_nodes, self_loops, edge_ids, op)


def _build(op, edge_index, num_nodes, edge_weight, self_loops, fill, degree_of, dtype):
    """The Adjacency of the edges with the self loops as `self_loops` says (added loops weigh
    `fill`), normalized by the in-degrees (degree_of "target"), out-degrees ("source") or not
    (None)."""
    dtype = _value_dtype(dtype)
    added = self_loops in ("replace", "append")
    unweighted = edge_weight is None and (fill == 1.0 or not added)
    rowptr, col, edge_id, rowptr_t, col_t, perm_t = _graph_csr(edge_index, num_nodes,
                                                               self_loops, not unweighted, op)
    if unweighted:
        # Unweighted: only D^-1/2, from exact counts (the root in float64, rounded once).
        scale = None
        if degree_of is not None:
            degree = (rowptr if degree_of == "target" else rowptr_t).diff().to(torch.float64)
            scale = _inverse_sqrt(degree).to(dtype)
        return Adjacency(num_nodes, rowptr, col, None, scale, rowptr_t, col_t, perm_t, dtype)
    if edge_weight is None:  # all ones, and the added loops weigh `fill`
        edge_weight = torch.ones(edge_index.shape[1], dtype=dtype, device=edge_index.device)
    kernel = _ext.use_extension(edge_weight) and not _needs_gradient(edge_weight) and \
        degree_of is not None
    if not kernel:
        _check_values(torch.isfinite(edge_weight).all(), ValueError,
                      f"{op}: edge_weight must be finite, got NaN or inf")
    if degree_of is None:
        weight = torch.where(edge_id >= 0, edge_weight[edge_id.clamp_min(0)], fill)
        return Adjacency(num_nodes, rowptr, col, weight, None, rowptr_t, col_t, perm_t, dtype)
    # Store the normalized values: as many bytes as the weights, and no scale to gather.
    by_source = degree_of == "source"
    if kernel:
        weight = torch.ops.pynotes.graph_values(rowptr, col, edge_id, rowptr_t, perm_t,
                                                edge_weight, fill, by_source, edge_weight.dtype,
                                                op)
    else:  # torch ops: differentiable in edge_weight, twice and more
        weight, degree = reference_graph.normalized_values(rowptr, col, edge_id, edge_weight,
                                                           fill, by_source, edge_weight.dtype)
        negative = degree < 0
        if torch.compiler.is_compiling():
            torch._assert_async(~negative.any(), f"{op}: edge_weight gives a node a negative "
                                "degree; the normalization takes degree^-1/2")
        elif bool(negative.any()):
            raise ValueError(f"{op}: edge_weight gives node {int(negative.nonzero()[0, 0])} a "
                             "negative degree; the normalization takes degree^-1/2")
    return Adjacency(num_nodes, rowptr, col, weight, None, rowptr_t, col_t, perm_t, dtype)


def _needs_gradient(edge_weight):
    """Whether the values must be differentiable in edge_weight (the kernel's are not)."""
    return (torch.is_grad_enabled() and edge_weight.requires_grad) or \
        torch._C._are_functorch_transforms_active()


def _inverse_sqrt(degree):
    """degree^-1/2, 0 for isolated nodes (degree 0)."""
    positive = degree > 0
    return torch.where(positive, torch.where(positive, degree, 1.0).rsqrt(), 0.0)
