"""GCN propagation: the adjacency builders, the op (forward, backward, determinism,
registration) and the layers against PyG, each checked against a dense float64 computation."""
import pytest
import torch

import pynotes
from pynotes import _ext, graph
from conftest import tolerance

try:
    import torch_geometric.nn as pyg_nn
except ImportError:  # an optional test dependency
    pyg_nn = None

needs_extension = pytest.mark.skipif(not _ext.extension_loaded(), reason="extension not built")
needs_pyg = pytest.mark.skipif(pyg_nn is None, reason="torch_geometric is not installed")


def random_graph(num_nodes, num_edges, device="cpu", loops=True):
    """Random directed edges: duplicates, and (with `loops`) self loops, included."""
    edge_index = torch.randint(0, num_nodes, (2, num_edges), device=device)
    if loops and num_edges >= 2 and num_nodes:
        edge_index[1, :2] = edge_index[0, :2]  # at least two self loops
    return edge_index


def dense_adjacency(edge_index, num_nodes, edge_weight=None):
    """A[target, source] summed over edges (duplicates add up), float64."""
    weight = torch.ones(edge_index.shape[1], dtype=torch.float64) if edge_weight is None \
        else edge_weight.detach().double().cpu()
    a = torch.zeros(num_nodes, num_nodes, dtype=torch.float64)
    return a.index_put_((edge_index[1].cpu(), edge_index[0].cpu()), weight, accumulate=True)


def dense_gcn_norm(edge_index, num_nodes, edge_weight=None, add_self_loops=True,
                   improved=False):
    """Kipf & Welling with PyG's self-loop rule, written out densely."""
    a = dense_adjacency(edge_index, num_nodes, edge_weight)
    if add_self_loops:
        weight = torch.ones(edge_index.shape[1], dtype=torch.float64) if edge_weight is None \
            else edge_weight.detach().double().cpu()
        loop = torch.full((num_nodes,), 2.0 if improved else 1.0, dtype=torch.float64)
        for e in range(edge_index.shape[1]):  # the last existing loop of a node wins
            s, t = int(edge_index[0, e]), int(edge_index[1, e])
            if s == t:
                loop[s] = weight[e]
        a.fill_diagonal_(0.0)
        a += torch.diag(loop)
    degree = a.sum(1)
    dis = torch.where(degree > 0, degree.clamp_min(1e-300).rsqrt(), 0.0)
    return dis[:, None] * a * dis[None, :]


def dense_cheb_norm(edge_index, num_nodes, edge_weight=None):
    a = dense_adjacency(edge_index, num_nodes, edge_weight)
    a.fill_diagonal_(0.0)
    degree = a.sum(0)  # out-degree: the source's column
    dis = torch.where(degree > 0, degree.clamp_min(1e-300).rsqrt(), 0.0)
    return dis[:, None] * a * dis[None, :]


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("add_self_loops,improved", [(True, False), (True, True), (False, False)])
def test_gcn_norm_matches_dense(device, weighted, add_self_loops, improved):
    n, e = 23, 90  # some nodes isolated or without incoming edges
    edge_index = random_graph(n, e, device)
    w = torch.rand(e, device=device, dtype=torch.float64) + 0.1 if weighted else None
    adj = graph.gcn_norm(edge_index, n, w, add_self_loops, improved, dtype=torch.float64)
    expected = dense_gcn_norm(edge_index, n, w, add_self_loops, improved)
    torch.testing.assert_close(adj.to_dense().cpu(), expected, **tolerance(torch.float64))
    assert (adj.scale is None) == (weighted or improved)  # on the fly only without weights
    assert adj.col.dtype == torch.int32 and adj.rowptr[-1] == adj.nnz


def test_cheb_and_plain_adjacency_match_dense(device):
    n, e = 19, 70
    edge_index = random_graph(n, e, device)
    w = torch.rand(e, device=device, dtype=torch.float64)
    for weight in (None, w):
        torch.testing.assert_close(
            graph.cheb_norm(edge_index, n, weight, torch.float64).to_dense().cpu(),
            dense_cheb_norm(edge_index, n, weight))
        torch.testing.assert_close(
            graph.adjacency(edge_index, n, weight, torch.float64).to_dense().cpu(),
            dense_adjacency(edge_index, n, weight))


def test_transpose_is_consistent(device):
    adj = graph.gcn_norm(random_graph(31, 150, device), 31, torch.rand(150, device=device))
    row = adj.row_index()
    assert torch.equal(adj.col_t.long(), row[adj.perm_t])
    assert torch.equal(adj.rowptr_t.diff(), torch.bincount(adj.col.long(), minlength=31))
    assert torch.equal(adj.col.long()[adj.perm_t].diff().clamp_max(0),
                       torch.zeros(adj.nnz - 1, dtype=torch.long, device=device))


@pytest.mark.parametrize("features", [1, 3, 16, 37, 130])
@pytest.mark.parametrize("kind", ["on_the_fly", "stored", "plain"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_propagate_matches_dense(device, features, kind, dtype):
    check_propagate(device, features, kind, dtype)


@pytest.mark.parametrize("features", [1, 8, 37, 130])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_propagate_half(device, features, dtype):
    for kind in ("on_the_fly", "stored"):
        check_propagate(device, features, kind, dtype)


def check_propagate(device, features, kind, dtype):
    n, e = 41, 260
    edge_index = random_graph(n, e, device)
    if kind == "on_the_fly":
        adj = graph.gcn_norm(edge_index, n, dtype=torch.float64)
    elif kind == "stored":
        adj = graph.gcn_norm(edge_index, n, torch.rand(e, device=device, dtype=torch.float64))
    else:
        adj = graph.adjacency(edge_index, n)
    x = torch.randn(n, features, device=device).to(dtype)
    out = pynotes.ops.gcn_propagate(x, adj)
    expected = adj.to_dense().double().cpu() @ x.double().cpu()
    assert out.dtype == dtype and out.shape == x.shape
    torch.testing.assert_close(out.double().cpu(), expected, **tolerance(dtype))


def test_propagate_shapes_and_layouts(device):
    n = 17
    adj = graph.gcn_norm(random_graph(n, 60, device), n, dtype=torch.float64)
    dense = adj.to_dense()
    base = torch.randn(9, n, device=device, dtype=torch.float64)
    x = base.t()  # non-contiguous
    torch.testing.assert_close(pynotes.ops.gcn_propagate(x, adj), dense @ x)
    v = torch.randn(n, device=device, dtype=torch.float64)  # (N,) and (N, a, b)
    torch.testing.assert_close(pynotes.ops.gcn_propagate(v, adj), dense @ v)
    t = torch.randn(n, 2, 3, device=device, dtype=torch.float64)
    torch.testing.assert_close(pynotes.ops.gcn_propagate(t, adj),
                               (dense @ t.reshape(n, 6)).reshape(n, 2, 3))
    # float32 x with float64-built values: converted to x's accumulation type.
    x32 = torch.randn(n, 5, device=device)
    torch.testing.assert_close(pynotes.ops.gcn_propagate(x32, adj), dense.float() @ x32)


@pytest.mark.parametrize("num_nodes,num_edges,features", [(0, 0, 4), (5, 0, 3), (1, 0, 2),
                                                           (1, 3, 2), (6, 10, 0)])
def test_propagate_degenerate_graphs(device, num_nodes, num_edges, features):
    edge_index = random_graph(num_nodes, num_edges, device) if num_edges else \
        torch.empty(2, 0, dtype=torch.long, device=device)
    x = torch.randn(num_nodes, features, device=device, dtype=torch.float64, requires_grad=True)
    for adj in (graph.gcn_norm(edge_index, num_nodes, dtype=torch.float64),
                graph.gcn_norm(edge_index, num_nodes, add_self_loops=False)):
        out = pynotes.ops.gcn_propagate(x, adj)
        expected = adj.to_dense().double() @ x.detach()
        torch.testing.assert_close(out.detach(), expected)
        out.sum().backward()
        torch.testing.assert_close(x.grad, adj.to_dense().double().t() @ torch.ones_like(out))
        x.grad = None


@pytest.mark.parametrize("weighted", [False, True])
def test_gradients_match_dense_autograd(device, weighted):
    n, e, f = 29, 140, 7
    edge_index = random_graph(n, e, device)
    w = (torch.rand(e, device=device, dtype=torch.float64) + 0.1).requires_grad_(weighted)
    x = torch.randn(n, f, device=device, dtype=torch.float64, requires_grad=True)
    g = torch.randn(n, f, device=device, dtype=torch.float64)
    adj = graph.gcn_norm(edge_index, n, w if weighted else None, dtype=torch.float64)
    grads = torch.autograd.grad(pynotes.ops.gcn_propagate(x, adj), [x, w] if weighted else [x],
                                g, retain_graph=True)  # adj.weight's graph is used below
    # The same computation in dense float64 torch ops, differentiated by autograd.
    a = torch.zeros(n, n, dtype=torch.float64, device=device).index_put(
        (adj.row_index(), adj.col.long()), adj.values(), accumulate=True)
    expected = torch.autograd.grad(a @ x, [x, w] if weighted else [x], g)
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want)


@needs_extension
def test_gradcheck(device):
    n, e = 11, 40
    edge_index = random_graph(n, e, device)
    x = torch.randn(n, 5, device=device, dtype=torch.float64, requires_grad=True)
    w = (torch.rand(e, device=device, dtype=torch.float64) + 0.1).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x, w: pynotes.ops.gcn_propagate(x, graph.gcn_norm(edge_index, n, w)), (x, w))
    adj = graph.gcn_norm(edge_index, n, dtype=torch.float64)  # on the fly
    assert torch.autograd.gradcheck(lambda x: pynotes.ops.gcn_propagate(x, adj), (x,))
    # The raw op, weight and x together, with int64 columns.
    plain = graph.adjacency(edge_index, n)
    args = (plain.rowptr, plain.col.long(), w, None, plain.rowptr_t, plain.col_t.long(),
            plain.perm_t)
    assert torch.autograd.gradcheck(
        lambda x, w: torch.ops.pynotes.gcn_propagate(x, args[0], args[1], w, *args[3:]), (x, w))


def test_deterministic_bits(device):
    n, e = 3000, 60000  # large enough to run on every thread
    edge_index = random_graph(n, e, device)
    w = torch.rand(e, device=device, requires_grad=True)
    x = torch.randn(n, 33, device=device, requires_grad=True)
    g = torch.randn(n, 33, device=device)

    def run():
        out = pynotes.ops.gcn_propagate(x, graph.gcn_norm(edge_index, n, w))
        return (out, *torch.autograd.grad(out, (x, w), g))

    for a, b in zip(run(), run()):
        assert torch.equal(a, b)


@needs_extension
def test_opcheck(device):
    n, e = 13, 50
    edge_index = random_graph(n, e, device)
    for adj in (graph.gcn_norm(edge_index, n), graph.gcn_norm(edge_index, n, torch.rand(e))):
        for requires_grad in (False, True):
            x = torch.randn(n, 6, device=device, requires_grad=requires_grad)
            weight = None if adj.weight is None else \
                adj.weight.detach().clone().requires_grad_(requires_grad)
            args = (x, adj.rowptr, adj.col, weight, adj.scale, adj.rowptr_t, adj.col_t,
                    adj.perm_t)
            torch.library.opcheck(torch.ops.pynotes.gcn_propagate.default, args)
        grad = torch.randn(n, 6, device=device)
        torch.library.opcheck(torch.ops.pynotes.gcn_propagate_backward.default,
                              (grad, x.detach(), *args[1:3], None if weight is None else
                               weight.detach(), *args[4:], [True, True]))


@needs_extension
def test_compile_fullgraph(device):
    n = 20
    adj = graph.gcn_norm(random_graph(n, 80, device), n)
    x = torch.randn(n, 8, device=device, requires_grad=True)
    fn = torch.compile(lambda x: pynotes.ops.gcn_propagate(x, adj).relu().sum(),
                       backend="aot_eager", fullgraph=True)
    loss = fn(x)
    (grad,) = torch.autograd.grad(loss, x)
    x2 = x.detach().requires_grad_()
    pynotes.ops.gcn_propagate(x2, adj).relu().sum().backward()
    torch.testing.assert_close(loss, pynotes.ops.gcn_propagate(x, adj).relu().sum())
    torch.testing.assert_close(grad, x2.grad)


def test_fallback_matches_extension(device):
    n, e = 37, 200
    edge_index = random_graph(n, e, device)
    x = torch.randn(n, 19, device=device, dtype=torch.float64)
    for adj in (graph.gcn_norm(edge_index, n, dtype=torch.float64),
                graph.gcn_norm(edge_index, n, torch.rand(e, device=device, dtype=torch.float64))):
        with _ext.force_fallback():
            expected = pynotes.ops.gcn_propagate(x, adj)
        torch.testing.assert_close(pynotes.ops.gcn_propagate(x, adj), expected)


def copy_into(ours, theirs):
    """Same parameters in both layers (PyG's state_dict loads into ours and back)."""
    torch.nn.init.normal_(theirs.bias)
    ours.load_state_dict(theirs.state_dict())
    theirs.load_state_dict(ours.state_dict())


@needs_pyg
@pytest.mark.parametrize("config", [
    dict(), dict(improved=True), dict(add_self_loops=False), dict(normalize=False),
    dict(bias=False), dict(cached=True)])
@pytest.mark.parametrize("channels", [(6, 4), (4, 9)])  # transform before / after propagating
@pytest.mark.parametrize("weighted", [False, True])
def test_gcnconv_matches_pyg(device, config, channels, weighted):
    n, e = 30, 120
    edge_index = random_graph(n, e, device)
    w = torch.rand(e, device=device, dtype=torch.float64) if weighted else None
    ours = pynotes.nn.GCNConv(*channels, **config).double().to(device)
    theirs = pyg_nn.GCNConv(*channels, **config).double().to(device)
    if ours.bias is not None:
        copy_into(ours, theirs)
    else:
        ours.load_state_dict(theirs.state_dict())
    x = torch.randn(n, channels[0], device=device, dtype=torch.float64, requires_grad=True)
    # PyG's edge_index path applies `improved` only with explicit weights.
    pyg_w = w if w is not None or not config.get("improved") else \
        torch.ones(e, device=device, dtype=torch.float64)
    for _ in range(2):  # the second call uses the cache when cached=True
        out, expected = ours(x, edge_index, w), theirs(x, edge_index, pyg_w)
        torch.testing.assert_close(out, expected)
    g = torch.randn_like(out)
    ours_grads = torch.autograd.grad(out, [x, *ours.parameters()], g)
    theirs_grads = torch.autograd.grad(expected, [x, *theirs.parameters()], g)
    for a, b in zip(ours_grads, theirs_grads):
        torch.testing.assert_close(a, b)


@needs_pyg
@pytest.mark.parametrize("K", [1, 2, 4])
@pytest.mark.parametrize("weighted", [False, True])
def test_chebconv_matches_pyg(device, K, weighted):
    n, e = 25, 100
    edge_index = random_graph(n, e, device)
    w = torch.rand(e, device=device, dtype=torch.float64) if weighted else None
    ours = pynotes.nn.ChebConv(5, 3, K).double().to(device)
    theirs = pyg_nn.ChebConv(5, 3, K).double().to(device)
    copy_into(ours, theirs)
    x = torch.randn(n, 5, device=device, dtype=torch.float64, requires_grad=True)
    out, expected = ours(x, edge_index, w), theirs(x, edge_index, w)
    torch.testing.assert_close(out, expected)
    g = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad(out, [x, *ours.parameters()], g),
                    torch.autograd.grad(expected, [x, *theirs.parameters()], g)):
        torch.testing.assert_close(a, b)
    assert repr(ours) == repr(theirs)


def assert_same_layer(ours, theirs, inputs, ours_inputs=None):
    """Outputs and gradients (inputs that need them, parameters) of two layers."""
    out, expected = ours(*(ours_inputs or inputs)), theirs(*inputs)
    torch.testing.assert_close(out, expected)
    g = torch.randn_like(out)
    leaves = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    ours_leaves = [t for t in (ours_inputs or inputs)
                   if isinstance(t, torch.Tensor) and t.requires_grad]
    for a, b in zip(torch.autograd.grad(out, [*ours_leaves, *ours.parameters()], g,
                                        allow_unused=True),
                    torch.autograd.grad(expected, [*leaves, *theirs.parameters()], g,
                                        allow_unused=True)):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b)


def pyg_pair(device, layer, *args, **kwargs):
    ours = getattr(pynotes.nn, layer)(*args, **kwargs).double().to(device)
    theirs = getattr(pyg_nn, layer)(*args, **kwargs).double().to(device)
    copy_into(ours, theirs)
    return ours, theirs


@needs_pyg
def test_gcnconv_pyg_cases(device):
    """The cases of PyG's test_gcn_conv.py beyond those above: flow, static graphs (x of
    (batch, nodes, features) and one edge_index), torch.sparse features."""
    n = 12
    edge_index = random_graph(n, 40, device)
    x = torch.randn(n, 6, device=device, dtype=torch.float64, requires_grad=True)
    for channels in ((6, 4), (6, 9)):
        ours, theirs = pyg_pair(device, "GCNConv", *channels, flow="target_to_source")
        assert_same_layer(ours, theirs, (x, edge_index))
        ours.flow = theirs.flow = "source_to_target"  # an attribute, read per call
        assert_same_layer(ours, theirs, (x, edge_index.flip(0)))
        static = torch.randn(3, n, 6, device=device, dtype=torch.float64, requires_grad=True)
        assert_same_layer(ours, theirs, (static, edge_index))
        assert ours(static, edge_index).shape == (3, n, channels[1])
    with pytest.raises(ValueError, match="flow must be"):
        pynotes.nn.GCNConv(6, 4, flow="both")
    if device == "cpu":  # (PyG's sparse-feature case)
        ours, theirs = pyg_pair(device, "GCNConv", 16, 32)
        sparse = torch.sparse_coo_tensor([[0, 0], [0, 1]], [1.0, 1.0], (4, 16),
                                         dtype=torch.float64)
        edges = torch.tensor([[0, 0, 0, 1, 2, 3], [1, 2, 3, 0, 0, 0]])
        torch.testing.assert_close(ours(sparse, edges), theirs(sparse, edges))
        torch.testing.assert_close(ours(sparse, edges), ours(sparse.to_dense(), edges))


@needs_pyg
@pytest.mark.parametrize("normalization", [None, "sym", "rw"])
def test_chebconv_pyg_cases(device, normalization):
    """PyG's test_cheb_conv.py: each normalization, lambda_max as a number and one per graph
    of a batch, edge weights, static graphs."""
    n, e = 16, 60
    edge_index = random_graph(n, e, device)
    w = torch.rand(e, device=device, dtype=torch.float64, requires_grad=True)
    x = torch.randn(n, 5, device=device, dtype=torch.float64, requires_grad=True)
    batch = (torch.arange(n, device=device) >= n // 2).long()
    per_graph = torch.tensor([2.0, 3.0], device=device, dtype=torch.float64)
    for K in (1, 3):
        ours, theirs = pyg_pair(device, "ChebConv", 5, 3, K, normalization=normalization)
        assert repr(ours) == repr(theirs)
        for lambda_max in (3.0, 2.0, per_graph):
            assert_same_layer(ours, theirs, (x, edge_index, w, batch, lambda_max))
            if lambda_max is not per_graph:
                assert_same_layer(ours, theirs, (x, edge_index, None, None, lambda_max))
        if normalization == "sym":
            assert_same_layer(ours, theirs, (x, edge_index, w))
        else:
            with pytest.raises(ValueError, match="lambda_max"):
                ours(x, edge_index)
    static = torch.randn(2, n, 5, device=device, dtype=torch.float64)
    expected = torch.stack([ours(s, edge_index, w, None, 3.0) for s in static])
    torch.testing.assert_close(ours(static, edge_index, w, None, 3.0), expected)


def test_chebconv_laplacian_matches_dense(device):
    """graph.cheb_laplacian without PyG: 2 L / lambda_max - I for each normalization."""
    n = 9
    edge_index = random_graph(n, 30, device)
    w = torch.rand(30, device=device, dtype=torch.float64)
    a = dense_adjacency(edge_index, n, w).to(device)  # a[target, source]
    a.fill_diagonal_(0.0)
    degree = a.sum(0)  # out-degrees
    eye = torch.eye(n, dtype=torch.float64, device=device)
    inv_sqrt = torch.where(degree > 0, degree.clamp_min(1e-300).rsqrt(), 0.0)
    inv = torch.where(degree > 0, 1 / degree.clamp_min(1e-300), 0.0)
    laplacians = {None: torch.diag(degree) - a,
                  "sym": eye - inv_sqrt[:, None] * a * inv_sqrt[None, :],
                  "rw": eye - a * inv[None, :]}
    for normalization, lap in laplacians.items():
        adj = graph.cheb_laplacian(edge_index, n, w, normalization, 3.0)
        torch.testing.assert_close(adj.to_dense(), 2 * lap / 3.0 - eye)
    with pytest.raises(ValueError, match="normalization must be None, 'sym' or 'rw'"):
        graph.cheb_laplacian(edge_index, n, normalization="lap")


def test_layers_against_dense(device):
    """GCNConv and ChebConv without PyG: the formulas in dense float64."""
    n, e = 21, 90
    edge_index = random_graph(n, e, device)
    x = torch.randn(n, 4, device=device, dtype=torch.float64)
    conv = pynotes.nn.GCNConv(4, 3).double().to(device)
    torch.nn.init.normal_(conv.bias)
    a = dense_gcn_norm(edge_index, n).to(device)
    torch.testing.assert_close(conv(x, edge_index), a @ x @ conv.lin.weight.t() + conv.bias)
    cheb = pynotes.nn.ChebConv(4, 3, K=3).double().to(device)
    lap = -dense_cheb_norm(edge_index, n).to(device)  # L~ with lambda_max = 2
    t0, t1 = x, lap @ x
    t2 = 2 * lap @ t1 - t0
    expected = sum(t @ lin.weight.t() for t, lin in zip((t0, t1, t2), cheb.lins)) + cheb.bias
    torch.testing.assert_close(cheb(x, edge_index), expected)


def test_layers_take_a_prebuilt_adjacency(device):
    n, e = 18, 70
    edge_index = random_graph(n, e, device)
    x = torch.randn(n, 4, device=device, dtype=torch.float64)
    conv = pynotes.nn.GCNConv(4, 3).double().to(device)
    adj = graph.gcn_norm(edge_index, n, dtype=torch.float64)
    torch.testing.assert_close(conv(x, adj), conv(x, edge_index))
    cheb = pynotes.nn.ChebConv(4, 3, K=3).double().to(device)
    torch.testing.assert_close(cheb(x, graph.cheb_norm(edge_index, n, dtype=torch.float64)),
                               cheb(x, edge_index))


def sparse_adj_t(edge_index, num_nodes, weight, layout):
    """PyG's adj_t of the edges (adj_t[target, source] = weight) as a torch.sparse tensor."""
    coo = torch.sparse_coo_tensor(torch.stack([edge_index[1], edge_index[0]]), weight,
                                  (num_nodes, num_nodes))
    return coo if layout == "coo" else coo.coalesce().to_sparse_csr()


class SparseTensorLike:
    """torch_sparse.SparseTensor's interface that the layers read (coo(), sparse_sizes()), for
    testing without torch_sparse."""

    def __init__(self, row, col, value, size):
        self.row, self.col, self.value, self.size = row, col, value, size

    def coo(self):
        return self.row, self.col, self.value

    def sparse_sizes(self):
        return (self.size, self.size)


@pytest.mark.parametrize("layout", ["coo", "csr"])
def test_gcnconv_takes_sparse_adj_t(device, layout):
    """A torch.sparse adj_t: D^-1/2 (A + I) D^-1/2 with the loops added to the diagonal there
    (PyG's add_self_loops on a sparse adj_t; PyG 2.8 itself gets CSR input wrong, so CSR is
    checked against the dense formula and COO against PyG too)."""
    n, e = 16, 60
    edge_index = random_graph(n, e, device)  # self loops and duplicates included
    w = torch.rand(e, device=device, dtype=torch.float64, requires_grad=True)
    x = torch.randn(n, 5, device=device, dtype=torch.float64, requires_grad=True)
    conv = pynotes.nn.GCNConv(5, 3).double().to(device)
    torch.nn.init.normal_(conv.bias)
    out = conv(x, sparse_adj_t(edge_index, n, w, layout))
    a = torch.zeros(n, n, dtype=torch.float64, device=device).index_put(
        (edge_index[1], edge_index[0]), w, accumulate=True) + torch.eye(n, dtype=torch.float64,
                                                                        device=device)
    d = a.sum(1).rsqrt()
    expected = (d[:, None] * a * d[None]) @ x @ conv.lin.weight.t() + conv.bias
    torch.testing.assert_close(out, expected)
    g = torch.randn_like(out)
    for got, want in zip(torch.autograd.grad(out, [x, w], g, retain_graph=True),
                         torch.autograd.grad(expected, [x, w], g)):
        torch.testing.assert_close(got, want)
    if pyg_nn is not None and layout == "coo":  # (PyG's backward to the values fails in torch)
        theirs = pyg_nn.GCNConv(5, 3).double().to(device)
        theirs.load_state_dict(conv.state_dict())
        expected = theirs(x, sparse_adj_t(edge_index, n, w.detach(), layout))
        torch.testing.assert_close(out, expected)
        for got, want in zip(torch.autograd.grad(out, [x, *conv.parameters()], g),
                             torch.autograd.grad(expected, [x, *theirs.parameters()], g)):
            torch.testing.assert_close(got, want)


def test_layers_take_a_sparse_tensor(device):
    """torch_sparse.SparseTensor (its interface): the diagonal replaced by 1, as PyG's
    fill_diag; ChebConv as with edge_index and the same weights."""
    n, e = 14, 50
    edge_index = random_graph(n, e, device)
    w = torch.rand(e, device=device, dtype=torch.float64)
    adj_t = SparseTensorLike(edge_index[1], edge_index[0], w, n)
    x = torch.randn(n, 4, device=device, dtype=torch.float64)
    conv = pynotes.nn.GCNConv(4, 3).double().to(device)
    loops = edge_index[0] == edge_index[1]
    a = dense_adjacency(edge_index[:, ~loops], n, w[~loops]).to(device) + \
        torch.eye(n, dtype=torch.float64, device=device)
    d = a.sum(1).rsqrt()
    torch.testing.assert_close(conv(x, adj_t),
                               (d[:, None] * a * d[None]) @ x @ conv.lin.weight.t() + conv.bias)
    cheb = pynotes.nn.ChebConv(4, 3, K=3).double().to(device)
    torch.testing.assert_close(cheb(x, adj_t), cheb(x, edge_index, w))


def test_sparse_adj_t_errors():
    n = 5
    adj = torch.sparse_coo_tensor(torch.tensor([[0, 1], [1, 2]]), torch.ones(2), (n, n))
    with pytest.raises(ValueError, match="edge_weight must be None with a sparse adjacency"):
        graph.gcn_norm(adj, edge_weight=torch.ones(2))
    with pytest.raises(ValueError, match=r"a sparse adjacency must be square"):
        graph.gcn_norm(torch.sparse_coo_tensor(torch.tensor([[0], [1]]), torch.ones(1), (3, 4)))
    with pytest.raises(ValueError, match=r"num_nodes \(4\) must be the sparse adjacency's size"):
        graph.gcn_norm(adj, num_nodes=4)


@needs_extension
def test_export_with_dynamic_graph_sizes():
    """GCNConv exported once runs on graphs of other sizes (num_nodes and num_edges dynamic,
    bounded so that the int32 indices fit)."""
    from torch.export import Dim

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = pynotes.nn.GCNConv(8, 4)

        def forward(self, x, edge_index):
            return self.conv(x, edge_index).relu()

    model = Model()
    x, edge_index = torch.randn(30, 8), random_graph(30, 120)
    program = torch.export.export(
        model, (x, edge_index),
        dynamic_shapes={"x": {0: Dim("nodes", min=2, max=2**20)},
                        "edge_index": {1: Dim("edges", min=2, max=2**24)}})
    x2, edge_index2 = torch.randn(47, 8), random_graph(47, 333)
    torch.testing.assert_close(program.module()(x2, edge_index2), model(x2, edge_index2))
