"""Pure-PyTorch graph_csr (the CSR the GCN ops take, from a PyG edge_index): the fallback, the
CUDA path (GPU sorts are fast) and the oracle of the CPU kernel (csrc/gcn/gcn_graph_cpu.cpp).
Same arguments and outputs as torch.ops.pynotes.graph_csr."""
import torch

INT32_MAX = 2**31 - 1
SELF_LOOPS = ("keep", "drop", "replace", "append")


def _rowptr(counts):
    rowptr = counts.new_zeros(counts.numel() + 1)
    torch.cumsum(counts, 0, out=rowptr[1:])
    return rowptr


def index_dtype(num_nodes, num_edges):
    """The dtype of graph_csr's col, col_t, perm_t and edge_id."""
    return torch.int32 if num_nodes + num_edges <= INT32_MAX else torch.int64


def graph_csr(edge_index, num_nodes, self_loops, edge_ids=True, caller="graph_csr"):
    """(rowptr, col, edge_id, rowptr_t, col_t, perm_t) of edge_index (2, E): CSR by target node
    with each row's edges in edge order (then its added loop), edge_id the edge of each entry
    (-1 for an added loop; with "replace", a node's loop has the id of its last existing one;
    empty without edge_ids), and the transpose, its rows in CSR order, whose entry k is entry
    perm_t[k]."""
    if self_loops not in SELF_LOOPS:
        raise ValueError(f"{caller}: self_loops must be 'keep', 'drop', 'replace' or 'append', "
                         f"got {self_loops!r}")
    if edge_index.numel() > 0:
        low, high = int(edge_index.min()), int(edge_index.max())
        if low < 0 or high >= num_nodes:
            raise ValueError(f"{caller}: edge_index must hold node indices in [0, num_nodes = "
                             f"{num_nodes}), got {low if low < 0 else high}")
    dtype = index_dtype(num_nodes, edge_index.shape[1])
    src, dst = edge_index
    device = edge_index.device
    ids = torch.arange(src.numel(), device=device)
    if self_loops in ("drop", "replace"):
        is_loop = src == dst
        keep = ~is_loop
        src, dst, kept = src[keep], dst[keep], ids[keep]
    else:
        kept = ids
    if self_loops in ("replace", "append"):
        nodes = torch.arange(num_nodes, device=device)
        loop_id = torch.full((num_nodes,), -1, dtype=torch.long, device=device)
        if self_loops == "replace":  # the last loop of each node (deterministic)
            loop_id.scatter_reduce_(0, edge_index[0][is_loop], ids[is_loop], reduce="amax")
        src, dst, kept = torch.cat([src, nodes]), torch.cat([dst, nodes]), torch.cat([kept, loop_id])
    # CSR by target; a stable sort keeps each row's entries in edge order.
    perm = torch.argsort(dst, stable=True)
    rowptr = _rowptr(torch.bincount(dst, minlength=num_nodes))
    col, row, edge_id = src[perm], dst[perm], kept[perm]
    # The transpose: CSR by source over the same entries, in CSR order within each source.
    perm_t = torch.argsort(col, stable=True)
    rowptr_t = _rowptr(torch.bincount(col, minlength=num_nodes))
    col_t = row[perm_t]
    if not edge_ids:
        edge_id = edge_id[:0]
    return (rowptr, col.to(dtype), edge_id.to(dtype), rowptr_t, col_t.to(dtype), perm_t.to(dtype))


def normalized_values(rowptr, col, edge_id, edge_weight, fill, by_source, dtype):
    """(values, degree) as graph_values computes them, in torch ops: differentiable in
    edge_weight (twice and more), for the CUDA path and as the CPU kernel's oracle."""
    known = edge_id >= 0
    if edge_weight is None:
        weight = torch.where(known, 1.0, fill).to(dtype)
    else:
        weight = torch.where(known, edge_weight[edge_id.clamp_min(0)], fill)
    num_nodes = rowptr.numel() - 1
    row = torch.repeat_interleave(torch.arange(num_nodes, device=rowptr.device), rowptr.diff(),
                                  output_size=col.shape[0])
    degree = weight.new_zeros(num_nodes).index_add(0, col if by_source else row, weight)
    positive = degree > 0
    scale = torch.where(positive, torch.where(positive, degree, 1.0).rsqrt(), 0.0)
    return scale[row] * weight * scale[col], degree


def graph_values(rowptr, col, edge_id, rowptr_t, perm_t, edge_weight, fill, by_source, dtype,
                 caller="graph_values"):
    """torch.ops.pynotes.graph_values in torch ops (the CUDA path)."""
    values, degree = normalized_values(rowptr, col, edge_id, edge_weight, fill, by_source, dtype)
    negative = degree < 0
    if bool(negative.any()):
        node = int(negative.nonzero()[0, 0])
        raise ValueError(f"{caller}: edge_weight gives node {node} a negative degree; the "
                         "normalization takes degree^-1/2")
    return values
