import torch

from pynotes import _ext
from pynotes.reference.gcn import gcn_propagate as reference_gcn_propagate
from pynotes.reference.gcn import prepare


def gcn_propagate(x, adj):
    """Sparse propagation adj @ x for GCN-style layers (Kipf & Welling, 2017).

    x: (num_nodes, *) float32/float64 (also float16/bfloat16 on CUDA, summed in float32).
    adj: a pynotes.graph.Adjacency, e.g. pynotes.graph.gcn_norm(edge_index) for
    D^-1/2 (A + I) D^-1/2. Returns a tensor shaped like x whose row i sums, over the edges
    (j -> i), value * x[j]. Differentiable in x and in the edge weights the adjacency was
    built from. No atomics: the same inputs give the same bits, forward and backward.
    """
    if not _ext.use_extension(x):
        return reference_gcn_propagate(x, adj)
    flat, adj = prepare(x, adj)
    out = torch.ops.pynotes.gcn_propagate(flat, adj.rowptr, adj.col, adj.weight, adj.scale,
                                          adj.rowptr_t, adj.col_t, adj.perm_t)
    return out.reshape(x.shape)


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
