"""Bad input stops at the boundary with an error naming the argument, on both paths (the
compiled kernels and the pure-PyTorch fallback)."""
import pytest
import torch

import pynotes
from pynotes import _ext


def x_(shape=(2, 6, 4), dtype=torch.float32, device="cpu"):
    return torch.randn(shape, device=device).to(dtype)


# (id, call, exception, message pattern)
GROUP_NORM_CASES = [
    ("channels_not_divisible", lambda d: pynotes.ops.group_norm(x_(device=d), 4), ValueError,
     r"num_groups \(4\) must divide the number of channels input.size\(1\) \(6\)"),
    ("num_groups_zero", lambda d: pynotes.ops.group_norm(x_(device=d), 0), ValueError,
     "num_groups must be positive"),
    ("rank_1", lambda d: pynotes.ops.group_norm(x_((6,), device=d), 2), ValueError,
     r"input must have shape \(N, C, \*\) with at least 2 dimensions"),
    ("integer_input", lambda d: pynotes.ops.group_norm(torch.ones(2, 6, 4, dtype=torch.int64,
                                                                  device=d), 2),
     TypeError, "input must be a floating-point tensor"),
    ("weight_shape", lambda d: pynotes.ops.group_norm(x_(device=d), 2, torch.ones(5, device=d)),
     ValueError, r"weight must have shape \(6,\)"),
    ("bias_shape", lambda d: pynotes.ops.group_norm(x_(device=d), 2, None,
                                                    torch.ones(6, 1, device=d)),
     ValueError, r"bias must have shape \(6,\)"),
    ("weight_dtype", lambda d: pynotes.ops.group_norm(x_(device=d), 2,
                                                      torch.ones(6, dtype=torch.float64,
                                                                 device=d)),
     TypeError, "weight must have the dtype of input"),
    ("weight_dtype_half_input", lambda d: pynotes.ops.group_norm(
        x_(device=d).bfloat16(), 2, torch.ones(6, dtype=torch.float64, device=d)),
     TypeError, r"weight must have the dtype of input \(.*\) or float32, got (Double|.*64)"),
    ("negative_eps", lambda d: pynotes.ops.group_norm(x_(device=d), 2, eps=-1.0), ValueError,
     "eps must be non-negative"),
    ("nan_eps", lambda d: pynotes.ops.group_norm(x_(device=d), 2, eps=float("nan")), ValueError,
     "eps must be non-negative"),
    ("unknown_activation", lambda d: pynotes.ops.group_norm(x_(device=d), 2, activation="relu"),
     ValueError, "activation must be None or 'silu'"),
]


@pytest.mark.parametrize("fallback", [False, True], ids=["extension", "fallback"])
@pytest.mark.parametrize("call,error,message", [c[1:] for c in GROUP_NORM_CASES],
                         ids=[c[0] for c in GROUP_NORM_CASES])
def test_group_norm_bad_input(device, call, error, message, fallback):
    with _ext.force_fallback(fallback), pytest.raises(error, match=message):
        call(device)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a second device")
@pytest.mark.parametrize("fallback", [False, True], ids=["extension", "fallback"])
def test_group_norm_weight_on_another_device(fallback):
    with _ext.force_fallback(fallback), \
            pytest.raises(RuntimeError, match="weight must be on the same device as input"):
        pynotes.ops.group_norm(x_(device="cuda"), 2, torch.ones(6))


def test_module_rejects_bad_configuration():
    with pytest.raises(ValueError, match=r"num_channels \(6\) must be divisible by num_groups \(4\)"):
        pynotes.nn.GroupNorm(4, 6)
    with pytest.raises(ValueError, match="activation must be None or 'silu'"):
        pynotes.nn.GroupNorm(2, 6, activation="gelu")
    with pytest.raises(ValueError, match=r"weight must have shape \(8,\)"):
        pynotes.nn.GroupNorm(2, 6)(x_((2, 8, 4)))  # input with the wrong channel count


@pytest.mark.skipif(not pynotes.backend_info()["extension_loaded"], reason="extension not built")
def test_group_norm_backward_op_bad_input(device):
    x = x_((2, 6, 4), device=device)
    _, mean, rstd = torch.ops.pynotes.group_norm(x, 2, None, None, 1e-5, False)
    op = torch.ops.pynotes.group_norm_backward
    with pytest.raises(ValueError, match="grad_output must have the shape of input"):
        op(torch.ones(2, 6, 5, device=device), x, mean, rstd, 2, None, None, False)
    with pytest.raises(TypeError, match="grad_output must have the same dtype as input"):
        op(torch.ones(2, 6, 4, dtype=torch.float64, device=device), x, mean, rstd, 2, None, None,
           False)
    with pytest.raises(ValueError, match=r"mean must have shape \(2, 2\)"):
        op(torch.ones_like(x), x, mean[:1], rstd, 2, None, None, False)
    with pytest.raises(TypeError, match="rstd must have dtype Float"):
        op(torch.ones_like(x), x, mean, rstd.double(), 2, None, None, False)


def lstm_args(device, batch=3, input_size=5, hidden=4, **replace):
    """Valid lstm_cell / lstm_layer arguments (layer input (2, batch, input_size)), with some
    replaced."""
    args = dict(input=torch.randn(2, batch, input_size, device=device),
                hx=torch.randn(batch, hidden, device=device),
                cx=torch.randn(batch, hidden, device=device),
                w_ih=torch.randn(4 * hidden, input_size, device=device),
                w_hh=torch.randn(4 * hidden, hidden, device=device),
                b_ih=torch.randn(4 * hidden, device=device))
    args.update(replace)
    return args


def cell(device, **replace):
    args = lstm_args(device, **replace)
    if "input" not in replace:
        args["input"] = args["input"][0]
    return pynotes.ops.lstm_cell(**args)


def layer(device, **replace):
    return pynotes.ops.lstm_layer(**lstm_args(device, **replace))


# (id, call, exception, message pattern)
LSTM_CASES = [
    ("cell_input_features", lambda d: cell(d, input=torch.randn(3, 6, device=d)), ValueError,
     r"lstm_cell: input has 6 features but w_ih \(16, 5\) expects input_size = 5"),
    ("layer_input_features", lambda d: layer(d, input=torch.randn(2, 3, 7, device=d)),
     ValueError, r"lstm_layer: input has 7 features but w_ih \(16, 5\) expects input_size = 5"),
    ("hx_shape", lambda d: layer(d, hx=torch.randn(3, 5, device=d)), ValueError,
     r"hx must have shape \(batch, hidden_size\) = \(3, 4\), got \(3, 5\)"),
    ("cx_shape", lambda d: cell(d, cx=torch.randn(2, 4, device=d)), ValueError,
     r"cx must have shape \(batch, hidden_size\) = \(3, 4\), got \(2, 4\)"),
    ("w_hh_shape", lambda d: layer(d, w_hh=torch.randn(16, 3, device=d)), ValueError,
     r"w_hh must have shape \(4 \* hidden_size, hidden_size\) = \(16, 4\)"),
    ("w_ih_not_4h", lambda d: cell(d, w_ih=torch.randn(15, 5, device=d)), ValueError,
     r"w_ih must have shape \(4 \* hidden_size, input_size\), got \(15, 5\)"),
    ("bias_shape", lambda d: cell(d, b_ih=torch.randn(12, device=d)), ValueError,
     r"b_ih must have shape \(4 \* hidden_size\) = \(16,\), got \(12,\)"),
    ("weight_dtype", lambda d: layer(d, w_ih=torch.randn(16, 5, dtype=torch.float64, device=d)),
     TypeError, "w_ih must have the same dtype as input"),
    ("hx_dtype", lambda d: cell(d, hx=torch.randn(3, 4, dtype=torch.float64, device=d)),
     TypeError, "hx must have the same dtype as input"),
    ("integer_input", lambda d: cell(d, input=torch.ones(3, 5, dtype=torch.int64, device=d)),
     TypeError, "input must be a floating-point tensor"),
    ("cell_rank", lambda d: cell(d, input=torch.randn(1, 3, 5, device=d)), ValueError,
     r"lstm_cell: input must be 2-D \(batch, input_size\), got 3-D"),
    ("layer_rank", lambda d: layer(d, input=torch.randn(3, 5, device=d)), ValueError,
     r"lstm_layer: input must be 3-D \(seq_len, batch, input_size\)"),
    ("batch_sizes_increasing", lambda d: layer(d, input=torch.randn(5, 5, device=d),
                                               batch_sizes=torch.tensor([2, 3])),
     ValueError, "batch_sizes must be positive and non-increasing"),
    ("batch_sizes_sum", lambda d: layer(d, input=torch.randn(5, 5, device=d),
                                        batch_sizes=torch.tensor([3, 3])),
     ValueError, "packed input has 5 rows but batch_sizes sum to 6"),
]


@pytest.mark.parametrize("fallback", [False, True], ids=["extension", "fallback"])
@pytest.mark.parametrize("call,error,message", [c[1:] for c in LSTM_CASES],
                         ids=[c[0] for c in LSTM_CASES])
def test_lstm_bad_input(device, call, error, message, fallback):
    with _ext.force_fallback(fallback), pytest.raises(error, match=message):
        call(device)


@pytest.mark.skipif(not pynotes.backend_info()["extension_loaded"], reason="extension not built")
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a second device")
@pytest.mark.parametrize("fallback", [False, True], ids=["extension", "fallback"])
def test_lstm_weight_on_another_device(fallback):
    with _ext.force_fallback(fallback), \
            pytest.raises(RuntimeError, match="w_hh must be on the same device as input"):
        layer("cuda", w_hh=torch.randn(16, 4))


def test_lstm_modules_reject_bad_input():
    with pytest.raises(RuntimeError, match="input.size\\(-1\\) must be equal to input_size"):
        pynotes.nn.LSTM(5, 4)(torch.randn(2, 3, 6))
    with pytest.raises(RuntimeError, match="Expected hidden\\[0\\] size"):
        pynotes.nn.LSTM(5, 4)(torch.randn(2, 3, 5), (torch.zeros(1, 2, 4), torch.zeros(1, 3, 4)))
    with pytest.raises(ValueError, match="LSTM: Expected input to be 2D or 3D, got 4D"):
        pynotes.nn.LSTM(5, 4)(torch.randn(2, 3, 5, 1))
    with pytest.raises(ValueError, match="LSTMCell: Expected input to be 1D or 2D, got 3D"):
        pynotes.nn.LSTMCell(5, 4)(torch.randn(2, 3, 5))
    # torch's RuntimeError, and ValueError as pynotes' op checks raise
    for error in (RuntimeError, ValueError):
        with pytest.raises(error, match="input has inconsistent input_size: got 6 expected 5"):
            pynotes.nn.LSTMCell(5, 4)(torch.randn(3, 6))
        with pytest.raises(error, match="Input batch size 3 doesn't match hidden1 batch size 2"):
            pynotes.nn.LSTMCell(5, 4)(torch.randn(3, 5), (torch.zeros(3, 4), torch.zeros(2, 4)))


def edges(device, rows=((0, 1, 2), (1, 2, 3))):
    return torch.tensor(rows, device=device)


def norm(device, num_nodes=4, edge_index=None, **kwargs):
    return pynotes.graph.gcn_norm(edges(device) if edge_index is None else edge_index,
                                  num_nodes, **kwargs)


# (id, call, exception, message pattern): graph building and propagation.
GCN_CASES = [
    ("index_too_large", lambda d: norm(d, 3), ValueError,
     r"edge_index must hold node indices in \[0, num_nodes = 3\), got 3"),
    ("index_negative", lambda d: norm(d, edge_index=edges(d, ((0, -1), (1, 2)))), ValueError,
     r"edge_index must hold node indices in \[0, num_nodes = 4\), got -1"),
    ("edge_index_shape", lambda d: norm(d, edge_index=edges(d, ((0, 1), (1, 2), (2, 0)))),
     ValueError, r"edge_index must have shape \(2, num_edges\), got \(3, 2\)"),
    ("edge_index_dtype", lambda d: norm(d, edge_index=edges(d).float()), TypeError,
     "edge_index must be an int64 tensor, got torch.float32"),
    ("num_nodes_negative", lambda d: norm(d, -1), ValueError,
     "num_nodes must be a non-negative int, got -1"),
    ("edge_weight_shape", lambda d: norm(d, edge_weight=torch.ones(2, device=d)), ValueError,
     r"edge_weight must have shape \(num_edges,\) = \(3,\), got \(2,\)"),
    ("edge_weight_integer", lambda d: norm(d, edge_weight=torch.ones(3, dtype=torch.long,
                                                                     device=d)),
     TypeError, "edge_weight must be a floating-point tensor"),
    ("edge_weight_nan", lambda d: norm(d, edge_weight=torch.tensor([1.0, float("nan"), 1.0],
                                                                   device=d)),
     ValueError, "edge_weight must be finite"),
    ("negative_degree", lambda d: norm(d, edge_weight=torch.tensor([1.0, -3.0, 1.0], device=d)),
     ValueError, "edge_weight gives node 2 a negative degree"),
    ("cheb_negative_degree", lambda d: pynotes.graph.cheb_norm(
        edges(d), 4, torch.tensor([1.0, -3.0, 1.0], device=d)),
     ValueError, "cheb_norm: edge_weight gives node 1 a negative degree"),
    ("x_rows", lambda d: pynotes.ops.gcn_propagate(torch.randn(5, 2, device=d), norm(d)),
     ValueError, r"x must have shape \(num_nodes, \*\) with num_nodes = 4, got \(5, 2\)"),
    ("x_integer", lambda d: pynotes.ops.gcn_propagate(torch.ones(4, 2, dtype=torch.long,
                                                                 device=d), norm(d)),
     TypeError, "x must be a floating-point tensor"),
    ("adj_type", lambda d: pynotes.ops.gcn_propagate(torch.randn(4, 2, device=d), edges(d)),
     TypeError, "adj must be a pynotes.graph.Adjacency"),
]


@pytest.mark.parametrize("fallback", [False, True], ids=["extension", "fallback"])
@pytest.mark.parametrize("call,error,message", [c[1:] for c in GCN_CASES],
                         ids=[c[0] for c in GCN_CASES])
def test_gcn_bad_input(device, call, error, message, fallback):
    with _ext.force_fallback(fallback), pytest.raises(error, match=message):
        call(device)


@pytest.mark.skipif(not pynotes.backend_info()["extension_loaded"], reason="extension not built")
def test_gcn_propagate_op_bad_input(device):
    """The raw op checks what it can without reading the graph on the GPU."""
    adj = pynotes.graph.gcn_norm(edges(device), 4, torch.rand(3, device=device))
    x = torch.randn(4, 3, device=device)
    op = torch.ops.pynotes.gcn_propagate

    def call(**replace):
        args = dict(x=x, rowptr=adj.rowptr, col=adj.col, weight=adj.weight, scale=None,
                    rowptr_t=adj.rowptr_t, col_t=adj.col_t, perm_t=adj.perm_t)
        args.update(replace)
        return op(*args.values())
    with pytest.raises(ValueError, match=r"x must have shape \(num_nodes, features\) with "
                                         r"num_nodes = rowptr.size\(0\) - 1 = 4"):
        call(x=torch.randn(4, 3, 1, device=device))
    with pytest.raises(TypeError, match="col must be a 1-D int32 or int64 tensor"):
        call(col=adj.col.float())
    with pytest.raises(TypeError, match="col_t must have the dtype of col"):
        call(col_t=adj.col_t.long())
    with pytest.raises(TypeError, match="weight must have dtype Double"):
        call(x=x.double())
    with pytest.raises(ValueError, match=r"weight must have col.size\(0\) = 7 elements, got 6"):
        call(weight=adj.weight[:-1])
    with pytest.raises(ValueError, match=r"scale must have num_nodes = 4 elements, got 3"):
        call(scale=torch.ones(3, device=device))
    with pytest.raises(ValueError, match=r"perm_t must have col.size\(0\) = 7 elements"):
        call(perm_t=adj.perm_t[:-1])
    with pytest.raises(ValueError, match="scale must not require grad"):
        call(scale=torch.ones(4, device=device, requires_grad=True))
    strided = torch.stack([adj.rowptr, adj.rowptr], 1)[:, 0]  # a view is read, not misread
    assert torch.equal(call(rowptr=strided), call())
    if device == "cpu":
        bad_rowptr = adj.rowptr.clone()
        bad_rowptr[-1] += 1
        with pytest.raises(ValueError, match="rowptr must start at 0 and end at the number of "
                                             r"entries \(7\), got 0 and 8"):
            call(rowptr=bad_rowptr)


def test_gcn_layers_reject_bad_input():
    x, edge_index = torch.randn(4, 3), edges("cpu")
    with pytest.raises(ValueError, match=r"GCNConv: x must have shape \(num_nodes, "
                                         r"in_channels = 2\), or .*got \(4, 3\)"):
        pynotes.nn.GCNConv(2, 5)(x, edge_index)
    with pytest.raises(ValueError, match="add_self_loops=True needs normalize=True"):
        pynotes.nn.GCNConv(3, 5, add_self_loops=True, normalize=False)
    with pytest.raises(ValueError, match="normalization must be None, 'sym' or 'rw', got 'lap'"):
        pynotes.nn.ChebConv(3, 5, K=2, normalization="lap")
    with pytest.raises(ValueError, match="normalization='rw' needs lambda_max"):
        pynotes.nn.ChebConv(3, 5, K=2, normalization="rw")(x, edge_index)
    with pytest.raises(ValueError, match="a prebuilt Adjacency is cheb_norm's"):
        pynotes.nn.ChebConv(3, 5, K=2)(x, norm("cpu"), lambda_max=3.0)
    with pytest.raises(ValueError, match="K must be a positive int, got 0"):
        pynotes.nn.ChebConv(3, 5, K=0)
    with pytest.raises(ValueError, match="edge_weight must be None when edge_index is an "
                                         "Adjacency"):
        pynotes.nn.GCNConv(3, 5)(x, norm("cpu"), torch.ones(3))
    with pytest.raises(ValueError, match=r"x must have num_nodes = 4 rows"):
        pynotes.nn.ChebConv(3, 5, K=2)(torch.randn(6, 3), pynotes.graph.cheb_norm(edge_index, 4))
