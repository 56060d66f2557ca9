"""What users of torch.nn.GroupNorm, LSTMCell, LSTM and PyG's GCNConv, ChebConv rely on beyond
the originals' test suites: the same constructor draw and repr, module hooks, torch.jit.trace
and torch.jit.script (where pynotes supports it, else a clear error), complex inputs. The table
of differences is in docs/modes.md."""
import copy

import pytest
import torch

import pynotes.nn
from pynotes import _ext

# torch.jit.trace and torch.jit.script record the pynotes operators: the built extension
needs_operators = pytest.mark.skipif(not _ext.use_extension(torch.zeros(1)),
                                     reason="extension not built, or the fallback forced")
EDGES = torch.tensor([[0, 1, 1, 2, 3, 0, 4], [1, 0, 2, 1, 0, 3, 2]])


def torch_layers():
    """(name, constructor taking the module namespace, input maker) of the torch drop-ins."""
    return [
        ("GroupNorm", lambda nn: nn.GroupNorm(4, 8),
         lambda dtype: (torch.randn(2, 8, 5, 3, dtype=dtype),)),
        ("LSTMCell", lambda nn: nn.LSTMCell(6, 5),
         lambda dtype: (torch.randn(3, 6, dtype=dtype),)),
        ("LSTM", lambda nn: nn.LSTM(6, 5, num_layers=2, bidirectional=True, proj_size=3),
         lambda dtype: (torch.randn(4, 3, 6, dtype=dtype),)),
    ]


def graph_layers():
    return [
        ("GCNConv", lambda nn: nn.GCNConv(6, 5), lambda dtype: (torch.randn(5, 6, dtype=dtype),
                                                                 EDGES)),
        ("ChebConv", lambda nn: nn.ChebConv(6, 5, K=3),
         lambda dtype: (torch.randn(5, 6, dtype=dtype), EDGES)),
    ]


ALL = torch_layers() + graph_layers()


def first(output):
    return output[0] if isinstance(output, tuple) else output


def original_namespace(name):
    """torch.nn, or PyG's nn for the graph layers (skipped where PyG is missing)."""
    if name in ("GCNConv", "ChebConv"):
        return pytest.importorskip("torch_geometric.nn")
    return torch.nn


@pytest.mark.parametrize("name,make,inputs", ALL, ids=[a[0] for a in ALL])
def test_same_draw_repr_and_reset_as_the_original(name, make, inputs):
    namespace = original_namespace(name)
    torch.manual_seed(3)
    original = make(namespace)
    torch.manual_seed(3)
    ours = make(pynotes.nn)
    assert repr(ours) == repr(original)
    for reset in (False, True):
        if reset:
            torch.manual_seed(4)
            original.reset_parameters()
            torch.manual_seed(4)
            ours.reset_parameters()
        theirs = original.state_dict()
        assert list(ours.state_dict()) == list(theirs)
        for key, value in ours.state_dict().items():
            assert torch.equal(value, theirs[key]), key


@pytest.mark.parametrize("name,make,inputs", ALL, ids=[a[0] for a in ALL])
def test_hooks_see_the_call(name, make, inputs):
    layer = make(pynotes.nn)
    seen = []
    layer.register_forward_pre_hook(lambda module, args: seen.append("pre"))
    layer.register_forward_hook(lambda module, args, out: seen.append("forward"))
    layer.register_full_backward_hook(lambda module, grad_in, grad_out: seen.append("backward"))
    args = [t.requires_grad_() if t.is_floating_point() else t for t in inputs(torch.float32)]
    first(layer(*args)).sum().backward()
    assert seen == ["pre", "forward", "backward"]


@needs_operators
@pytest.mark.parametrize("name,make,inputs", ALL, ids=[a[0] for a in ALL])
def test_jit_trace_records_the_operators(name, make, inputs):
    torch.manual_seed(0)
    layer = make(pynotes.nn).double()
    args = inputs(torch.float64)
    traced = torch.jit.trace(layer, args)  # (its check reruns the layer and compares)
    assert "pynotes::" in str(traced.inlined_graph)
    x = args[0].clone().requires_grad_()
    eager_x = x.detach().clone().requires_grad_()
    out, expected = first(traced(x, *args[1:])), first(layer(eager_x, *args[1:]))
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
    grad, = torch.autograd.grad((out * weights).sum(), x)
    expected_grad, = torch.autograd.grad((expected * weights).sum(), eager_x)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-10, atol=1e-12)


@needs_operators
@pytest.mark.parametrize("name,make,inputs", torch_layers(), ids=[a[0] for a in torch_layers()])
def test_jit_script_as_the_original(name, make, inputs, tmp_path):
    torch.manual_seed(0)
    original = make(torch.nn).double()
    ours = make(pynotes.nn).double()
    ours.load_state_dict(original.state_dict())
    path = tmp_path / "layer.pt"
    torch.jit.script(ours).save(str(path))
    scripted = torch.jit.load(str(path))
    assert "pynotes::" in str(scripted.inlined_graph)
    x = inputs(torch.float64)[0].requires_grad_()
    samples = [x, x[0]]  # batched and unbatched
    if name == "GroupNorm":
        samples = [x, x.to(memory_format=torch.channels_last)]
    for sample in samples:
        out, expected = first(scripted(sample)), first(original(sample))
        torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-12)
        grad, = torch.autograd.grad(out.sum(), x)
        expected_grad, = torch.autograd.grad(expected.sum(), x)
        torch.testing.assert_close(grad, expected_grad, rtol=1e-10, atol=1e-12)


@needs_operators
def test_jit_script_keeps_the_fused_activation():
    layer = pynotes.nn.GroupNorm(2, 6, activation="silu").double()
    x = torch.randn(2, 6, 4, dtype=torch.float64)
    torch.testing.assert_close(torch.jit.script(layer)(x), layer(x), rtol=0, atol=0)


@pytest.mark.parametrize("name,make,inputs", graph_layers(), ids=[a[0] for a in graph_layers()])
def test_jit_script_of_graph_layers_says_what_to_use(name, make, inputs):
    model = torch.nn.Sequential(make(pynotes.nn))  # also as a submodule
    with pytest.raises(RuntimeError, match=f"{name}: torch.jit.script is not supported.*"
                                           "torch.jit.trace"):
        torch.jit.script(model)


@pytest.mark.parametrize("name", ["LSTMCell", "LSTM"])
@pytest.mark.filterwarnings("ignore:Complex modules")
def test_complex_lstm_runs_as_torch(name):
    """torch's LSTMs take complex tensors (its generic path); pynotes' kernels are real, so the
    drop-ins hand complex inputs to torch's implementation."""
    make = dict((a[0], a[1]) for a in torch_layers())[name]
    original = make(torch.nn).to(torch.complex128)
    ours = copy.deepcopy(original)
    ours.__class__ = getattr(pynotes.nn, name)
    x = torch.randn(4, 3, 6, dtype=torch.complex128)[-1 if name == "LSTMCell" else slice(None)]
    torch.testing.assert_close(first(ours(x)), first(original(x)), rtol=0, atol=0)


@pytest.mark.parametrize("name,make,inputs", [a for a in ALL if "LSTM" not in a[0]],
                         ids=["GroupNorm", "GCNConv", "ChebConv"])
@pytest.mark.filterwarnings("ignore:Complex modules")
def test_complex_inputs_refused_by_name(name, make, inputs):
    layer = make(pynotes.nn).to(torch.complex64)
    args = inputs(torch.float32)
    with pytest.raises(TypeError, match="must be a floating-point tensor"):
        layer(args[0].to(torch.complex64), *args[1:])
