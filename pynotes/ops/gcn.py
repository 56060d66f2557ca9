import torch

from pynotes import _ext
from pynotes.ops import _autocast, _autograd
from pynotes.reference import graph as reference_graph
from pynotes.reference.gcn import gcn_propagate as reference_gcn_propagate
from pynotes.reference.gcn import prepare


def gcn_propagate(x, adj):
    """Sparse propagation adj @ x for GCN-style layers (Kipf & Welling, 2017).

    x: (num_nodes, *) float32/float64 (also float16/bfloat16 on CUDA, summed in float32).
    adj: a pynotes.graph.Adjacency, e.g. pynotes.graph.gcn_norm(edge_index) for
    D^-1/2 (A + I) D^-1/2. Returns a tensor shaped like x whose row i sums, over the edges
    (j -> i), value * x[j]. Differentiable in x and in the edge weights the adjacency was
    built from, twice and more, and under torch.func (pynotes.ops._autograd). No atomics: the
    same inputs give the same bits, forward and backward.
    """
    if isinstance(x, torch.Tensor):
        (x,) = _autocast.cast("gcn_propagate", x, (x,))
    if not _ext.use_extension(x):
        return reference_gcn_propagate(x, adj)
    flat, adj = prepare(x, adj)
    args = (flat, adj.rowptr, adj.col, adj.weight, adj.scale, adj.rowptr_t, adj.col_t,
            adj.perm_t)
    if _autograd.needs_autograd(flat, adj.weight):
        out = _autograd.apply(GcnPropagateFunction, *args)
    else:
        out = torch.ops.pynotes.gcn_propagate(*args)
    return out.reshape(x.shape)


def _reference(x, rowptr, col, weight, scale, rowptr_t, col_t, perm_t):
    from pynotes.graph import Adjacency
    adj = Adjacency(x.shape[0], rowptr, col, weight, scale, rowptr_t, col_t, perm_t, x.dtype)
    return (reference_gcn_propagate(x, adj),)


@_autograd.with_eager_form
class GcnPropagateFunction(torch.autograd.Function):
    """gcn_propagate's autograd (see pynotes.ops._autograd): gradients for x and the per-entry
    weights; the backward kernel is the same product on the transposed CSR (and an SDDMM for
    the weights)."""
    generate_vmap_rule = True

    @staticmethod
    def forward(*args):
        with _autograd.below_autograd():
            return torch.ops.pynotes.gcn_propagate(*args)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)
        ctx.save_for_forward(*inputs)

    @staticmethod
    def backward(ctx, grad):
        inputs = ctx.saved_tensors
        needs = ctx.needs_input_grad
        if torch.is_grad_enabled():  # the backward is differentiated too
            return _autograd.reference_vjp(_reference, inputs, (grad,), needs)
        x, *adj = inputs
        dx, dweight = torch.ops.pynotes.gcn_propagate_backward(
            grad, x if needs[3] else None, *adj, [needs[0], needs[3]])
        return (dx if needs[0] else None, None, None, dweight if needs[3] else None, None,
                None, None, None)

    @staticmethod
    def jvp(ctx, *tangents):
        return _autograd.reference_jvp(_reference, ctx.saved_tensors, tangents)[0]


if _ext.extension_loaded():
    @torch.library.register_fake("pynotes::gcn_propagate")
    def _gcn_propagate_fake(x, rowptr, col, weight, scale, rowptr_t, col_t, perm_t):
        return x.new_empty(x.shape)

    @torch.library.register_fake("pynotes::gcn_propagate_backward")
    def _gcn_propagate_backward_fake(grad_output, x, rowptr, col, weight, scale, rowptr_t,
                                     col_t, perm_t, output_mask):
        acc = torch.float64 if grad_output.dtype == torch.float64 else torch.float32
        return (grad_output.new_empty(grad_output.shape) if output_mask[0] else None,
                grad_output.new_empty(col.shape, dtype=acc) if output_mask[1] else None)

    @torch.library.register_vmap("pynotes::gcn_propagate")
    def _gcn_propagate_vmap(info, in_dims, x, *adj):
        if in_dims[0] is None or any(d is not None for d in in_dims[1:]):
            return _autograd.loop_vmap_rule(torch.ops.pynotes.gcn_propagate)(
                info, in_dims, x, *adj)
        # One graph: the vmapped samples are more feature columns of each node.
        columns = x.movedim(in_dims[0], 1)
        out = torch.ops.pynotes.gcn_propagate(columns.reshape(columns.shape[0], -1), *adj)
        return out.reshape(columns.shape).movedim(1, 0), 0

    torch.library.register_vmap(
        "pynotes::gcn_propagate_backward",
        _autograd.loop_vmap_rule(torch.ops.pynotes.gcn_propagate_backward))

    @torch.library.register_fake("pynotes::graph_csr")
    def _graph_csr_fake(edge_index, num_nodes, self_loops, edge_ids=True, caller="graph_csr"):
        edges = edge_index.shape[1]
        nnz = {"keep": edges, "append": edges + num_nodes}.get(self_loops)
        if nnz is None:  # loops dropped: as many entries as edges that are not loops
            nnz = torch.library.get_ctx().new_dynamic_size()
        index = reference_graph.index_dtype(num_nodes, edges)

        def new(size, dtype):
            return edge_index.new_empty((size,), dtype=dtype)
        return (new(num_nodes + 1, torch.int64), new(nnz, index), new(nnz if edge_ids else 0, index),
                new(num_nodes + 1, torch.int64), new(nnz, index), new(nnz, index))

    @torch.library.register_fake("pynotes::graph_values")
    def _graph_values_fake(rowptr, col, edge_id, rowptr_t, perm_t, edge_weight, fill,
                           by_source, dtype, caller="graph_values"):
        return col.new_empty(col.shape, dtype=dtype)

    # On CUDA the graph builders are the reference's torch ops (GPU sorts are fast).
    _GRAPH_CUDA = torch.library.Library("pynotes", "IMPL")
    for _name in ("graph_csr", "graph_values"):
        _GRAPH_CUDA.impl(_name, getattr(reference_graph, _name), "CUDA")
        torch.library.register_vmap(
            f"pynotes::{_name}", _autograd.loop_vmap_rule(getattr(torch.ops.pynotes, _name)))
