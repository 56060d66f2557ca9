"""Pure-PyTorch GCN propagation: the fallback and the oracle for the kernels."""
import torch

OP = "gcn_propagate"


def prepare(x, adj):
    """Checks x against adj; returns x as (num_nodes, features) and adj with x's device and
    accumulation dtype (the kernels' contract)."""
    from pynotes.graph import Adjacency
    if not isinstance(adj, Adjacency):
        raise TypeError(f"{OP}: adj must be a pynotes.graph.Adjacency (from gcn_norm, cheb_norm "
                        f"or adjacency), got {type(adj).__name__}")
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"{OP}: x must be a floating-point tensor (float32, float64, float16 "
                        f"or bfloat16), got {getattr(x, 'dtype', type(x).__name__)}")
    if x.dim() == 0 or x.shape[0] != adj.num_nodes:
        raise ValueError(f"{OP}: x must have shape (num_nodes, *) with num_nodes = "
                         f"{adj.num_nodes}, got {tuple(x.shape)}")
    if adj.device != x.device:
        raise RuntimeError(f"{OP}: adj must be on the same device as x ({x.device}), got "
                           f"{adj.device}; move it with adj.to(x.device)")
    if adj.scale is not None and adj.scale.requires_grad and torch.is_grad_enabled():
        raise ValueError(f"{OP}: scale must not require grad (it is the constant D^-1/2; put "
                         "learned factors in weight)")
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    features = 1
    for size in x.shape[1:]:
        features *= size
    return x.reshape(x.shape[0], features), adj.to(dtype=acc)


def gcn_propagate(x, adj):
    """adj @ x, with x of shape (num_nodes, *); differentiable in x and adj.weight."""
    flat, adj = prepare(x, adj)
    acc = adj.dtype
    col = adj.col.long()
    factor = adj.weight if adj.weight is not None else \
        torch.ones(adj.nnz, dtype=acc, device=x.device)
    if adj.scale is not None:
        factor = factor * adj.scale[col]
    messages = flat.to(acc)[col] * factor[:, None]
    out = torch.zeros(flat.shape, dtype=acc, device=x.device)
    out = out.index_add(0, adj.row_index(), messages)
    if adj.scale is not None:
        out = out * adj.scale[:, None]
    return out.to(x.dtype).reshape(x.shape)
