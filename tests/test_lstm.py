"""pynotes LSTM cell and layer against torch.nn.LSTMCell / torch.nn.LSTM with copied weights."""
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import pynotes
from pynotes import _ext
from pynotes.reference import lstm as reference
from conftest import tolerance

# (batch, input_size, hidden_size): single elements, odd sizes, sizes that are not a multiple
# of a SIMD width, and one wide enough to split rows over threads.
CELL_SIZES = [(1, 1, 1), (5, 7, 13), (3, 16, 33), (64, 24, 160)]

# nn.LSTM configurations: (num_layers, bidirectional, proj_size, batch_first, bias).
LSTM_CONFIGS = [
    (1, False, 0, False, True),
    (2, True, 0, False, True),
    (2, True, 5, True, True),
    (1, False, 3, False, False),
    (3, False, 0, True, True),
]


@pytest.fixture(params=["engine", "engine-after-matmul", "engine-input-per-step",
                        "engine-w-hh-rows", "per-step", "per-step-mkl", "per-step-onednn",
                        "onednn-rnn"])
def recurrent_path(request, monkeypatch):
    """Runs a layer test on the CPU's recurrent engine, making the input projection itself
    (float32, float64) before the steps or in each step's products, or after one matrix
    product made it, or reading w_hh as stored (float32 at batch 1); on the per-step
    products, with the weight re-packed every step, packed once for MKL's GEMM (float32) or
    for oneDNN's linear where torch has them (common/matmul.cpp, RepeatedMatmul); and, for
    inference over dense sequences, on torch's oneDNN RNN layer (training and packed sequences
    then take the products). Each is the default for some shapes (lstm_ops.cpp,
    choose_path)."""
    engine = {"engine": "1", "engine-after-matmul": "after-matmul",
              "engine-input-per-step": "input-per-step", "engine-w-hh-rows": "w-hh-rows",
              "onednn-rnn": "onednn"}.get(request.param, "0")
    monkeypatch.setenv("PYNOTES_LSTM_ENGINE", engine)
    monkeypatch.setenv("PYNOTES_PACKED_MATMUL", request.param.removeprefix("per-step-")
                       if request.param.startswith("per-step-") else "0")
    return request.param


@pytest.fixture(params=["measured", "fused", "products"])
def cell_form(request, monkeypatch):
    """Runs a cell test with the form chosen by measurement, and with each form forced: one
    fused kernel with its products (CPU, float32/float64), or two products and the step kernel
    (lstm_ops.cpp, cell_fused)."""
    if request.param != "measured":
        monkeypatch.setenv("PYNOTES_LSTM_CELL", request.param)
    return request.param


def copy_of(reference_module, module_type, *args, **kwargs):
    module = module_type(*args, **kwargs).to(next(reference_module.parameters()))
    module.load_state_dict(reference_module.state_dict())
    return module


def assert_close(actual, expected, dtype):
    torch.testing.assert_close(actual, expected.to(actual.dtype), **tolerance(dtype))


def grads_of(outputs, inputs):
    """Gradients of a random projection of the outputs (every output element matters)."""
    loss = sum((o * torch.randn_like(o)).sum() for o in outputs)
    return torch.autograd.grad(loss, inputs)


def seeded_grads(outputs, inputs, seed):
    torch.manual_seed(seed)
    return grads_of(outputs, inputs)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("batch,input_size,hidden", CELL_SIZES)
@pytest.mark.usefixtures("cell_form")
def test_cell_matches_torch(device, batch, input_size, hidden, bias):
    ref = torch.nn.LSTMCell(input_size, hidden, bias=bias).to(device, torch.float64)
    cell = copy_of(ref, pynotes.nn.LSTMCell, input_size, hidden, bias=bias)
    x = torch.randn(batch, input_size, dtype=torch.float64, device=device, requires_grad=True)
    h = torch.randn(batch, hidden, dtype=torch.float64, device=device, requires_grad=True)
    c = torch.randn(batch, hidden, dtype=torch.float64, device=device, requires_grad=True)
    expected, actual = ref(x, (h, c)), cell(x, (h, c))
    for a, e in zip(actual, expected):
        assert_close(a, e, torch.float64)
    inputs = [x, h, c]
    for a, e in zip(seeded_grads(actual, inputs + list(cell.parameters()), 1),
                    seeded_grads(expected, inputs + list(ref.parameters()), 1)):
        assert_close(a, e, torch.float64)


@pytest.mark.usefixtures("cell_form")
def test_cell_float32_and_unbatched(device):
    ref = torch.nn.LSTMCell(10, 20).to(device)
    cell = copy_of(ref, pynotes.nn.LSTMCell, 10, 20)
    x = torch.randn(3, 10, device=device)
    for a, e in zip(cell(x), ref(x)):  # default zero state
        assert_close(a, e, torch.float32)
    hx = (torch.randn(20, device=device), torch.randn(20, device=device))
    for a, e in zip(cell(x[0], hx), ref(x[0], hx)):
        assert a.shape == (20,)
        assert_close(a, e, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.usefixtures("recurrent_path")
def test_cell_and_layer_half(device, dtype):
    ref = torch.nn.LSTM(16, 24, bidirectional=True).to(device, torch.float64)
    lstm = copy_of(ref, pynotes.nn.LSTM, 16, 24, bidirectional=True).to(dtype)
    x = torch.randn(9, 4, 16, device=device, dtype=torch.float64)
    out, (h, c) = lstm(x.to(dtype))
    ref_out, (ref_h, ref_c) = ref(x)
    tol = dict(atol=3e-2, rtol=3e-2) if dtype == torch.bfloat16 else dict(atol=5e-3, rtol=5e-3)
    for a, e in ((out, ref_out), (h, ref_h), (c, ref_c)):
        torch.testing.assert_close(a.double(), e, **tol)


@pytest.mark.usefixtures("cell_form")
def test_cell_gradcheck(device):
    args = [torch.randn(s, dtype=torch.float64, device=device, requires_grad=True)
            for s in [(3, 5), (3, 6), (3, 6), (24, 5), (24, 6), (24,), (24,)]]
    assert torch.autograd.gradcheck(lambda *a: pynotes.ops.lstm_cell(*a), args)
    # Only hy used: the cell gradient enters through hy alone.
    assert torch.autograd.gradcheck(lambda *a: pynotes.ops.lstm_cell(*a)[0], args)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch,input_size,hidden", [(1, 40, 37), (6, 17, 16), (9, 3, 70)])
def test_fused_cell_against_float64(device, monkeypatch, dtype, batch, input_size, hidden):
    """The fused cell (rows of 1-4 per pass, partial and several unit blocks per thread) on
    non-contiguous inputs: outputs and workspace (the activated gates) as the float64
    reference's, the same bits for 1 and 3 threads, and as the products' within rounding."""
    if device != "cpu":
        pytest.skip("the fused cell is the CPU's")
    torch.manual_seed(batch * 100 + hidden)
    x = torch.randn(input_size, batch, dtype=torch.float64).t()
    h, c = torch.randn(2, batch, hidden, dtype=torch.float64)
    w_ih = torch.randn(input_size, 4 * hidden, dtype=torch.float64).t() / input_size ** 0.5
    w_hh = torch.randn(4 * hidden, hidden, dtype=torch.float64) / hidden ** 0.5
    b_ih, b_hh = torch.randn(2, 4 * hidden, dtype=torch.float64)
    args = [t.to(dtype) for t in (x, h, c, w_ih, w_hh, b_ih, b_hh)]
    expected = reference.lstm_cell(x, h, c, w_ih, w_hh, b_ih, b_hh)
    gates = (x @ w_ih.t() + h @ w_hh.t() + b_ih + b_hh).view(batch, 4, hidden)
    activated = torch.cat([gates[:, :2].sigmoid(), gates[:, 2:3].tanh(), gates[:, 3:].sigmoid()],
                          dim=1).view(batch, 4 * hidden)
    results = {}
    previous = torch.get_num_threads()
    try:
        for form, threads in (("fused", 1), ("fused", 3), ("products", 3)):
            monkeypatch.setenv("PYNOTES_LSTM_CELL", form)
            torch.set_num_threads(threads)
            results[form, threads] = torch.ops.pynotes.lstm_cell(*args)
    finally:
        torch.set_num_threads(previous)
    for a, e in zip(results["fused", 1], [*expected, activated]):
        assert_close(a, e, dtype)
    for a, b in zip(results["fused", 1], results["fused", 3]):
        assert torch.equal(a, b)
    for a, b in zip(results["fused", 1], results["products", 3]):
        assert_close(a, b.double(), dtype)


@pytest.mark.skipif(not pynotes.backend_info()["extension_loaded"], reason="needs the extension")
def test_cell_form_is_measured_reported_and_overridable(monkeypatch):
    cell = pynotes.nn.LSTMCell(12, 20)
    with torch.no_grad():
        cell(torch.randn(3, 12))
    choices = [c for c in pynotes.backend_info()["choices"]["lstm_cell"]
               if c["shape_class"] == (4, 16, 32) and c["dtype"] == "Float"]
    assert len(choices) == 1
    c = choices[0]
    assert c["fused_us"] > 0 and c["products_us"] > 0
    assert c["form"] == ("fused" if c["fused_us"] <= c["products_us"] else "products")
    monkeypatch.setenv("PYNOTES_LSTM_CELL", "yes")
    with pytest.raises(RuntimeError, match="PYNOTES_LSTM_CELL must be 'fused' or 'products', "
                                           "got 'yes'"):
        cell(torch.randn(3, 12))


@pytest.mark.parametrize("packed,reverse,project", [(False, False, False), (False, True, True),
                                                   (True, False, True), (True, True, False)])
@pytest.mark.usefixtures("recurrent_path")
def test_layer_gradcheck(device, packed, reverse, project):
    hidden, out_size, batch_sizes = 4, 3 if project else 4, None
    if packed:
        batch_sizes = torch.tensor([3, 3, 2, 1])
        x = torch.randn(9, 2, dtype=torch.float64, device=device)
        batch = 3
    else:
        x = torch.randn(4, 2, 2, dtype=torch.float64, device=device)
        batch = 2
    make = lambda *s: torch.randn(s, dtype=torch.float64, device=device, requires_grad=True)
    args = [x.requires_grad_(), make(batch, out_size), make(batch, hidden),
            make(4 * hidden, 2), make(4 * hidden, out_size), make(4 * hidden), make(4 * hidden),
            make(out_size, hidden) if project else None]

    def layer(*a):
        return pynotes.ops.lstm_layer(*a, batch_sizes=batch_sizes, reverse=reverse)
    assert torch.autograd.gradcheck(layer, args)


# Layer sizes for both recurrent paths: batches of 1 and 2 (the engine's bfloat16 dot products
# where the CPU has AVX512-BF16), 3 and 6 (several rows per micro-kernel, a partial block), 13
# (rows in uneven groups); hidden sizes odd, below, across and over one SIMD vector and several
# per thread.
PATH_SIZES = [(1, 5), (1, 37), (2, 33), (3, 16), (6, 70), (2, 130), (13, 20)]
PATH_TOLERANCE = {torch.float32: 2e-5, torch.float16: 1e-2, torch.bfloat16: 8e-2}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("batch,hidden", PATH_SIZES)
@pytest.mark.parametrize("packed,reverse", [(False, False), (True, True)])
def test_layer_paths_against_float64(device, recurrent_path, dtype, batch, hidden, packed,
                                     reverse):
    """Forward and all gradients of one layer in dtype against the same inputs in float64; the
    error scales with the largest value of each result."""
    torch.manual_seed(batch * 1000 + hidden)
    seq, input_size = 7, 8
    batch_sizes = None
    if packed:  # lengths 7 and shorter, longest first
        lengths = sorted(torch.randint(1, seq + 1, (batch,)).tolist(), reverse=True)
        lengths[0] = seq
        batch_sizes = torch.tensor([sum(n > t for n in lengths) for t in range(seq)])
        x = torch.randn(int(batch_sizes.sum()), input_size, dtype=torch.float64)
    else:
        x = torch.randn(seq, batch, input_size, dtype=torch.float64)
    inputs = [x, torch.randn(batch, hidden), torch.randn(batch, hidden),
              0.3 * torch.randn(4 * hidden, input_size), 0.3 * torch.randn(4 * hidden, hidden),
              torch.randn(4 * hidden), torch.randn(4 * hidden)]
    inputs = [t.to(device, torch.float64) for t in inputs]
    results = []
    for t in (dtype, torch.float64):
        args = [a.to(t).requires_grad_() for a in inputs]
        out = pynotes.ops.lstm_layer(*args, batch_sizes=batch_sizes, reverse=reverse)
        torch.manual_seed(8)  # the same output weights for both dtypes (drawn in float64)
        weights = [torch.randn(o.shape, dtype=torch.float64, device=device) for o in out]
        loss = sum((o * w.to(t)).sum() for o, w in zip(out, weights))
        results.append([*out, *torch.autograd.grad(loss, args)])
    for a, e in zip(*results):
        error = (a.double() - e).abs().max().item()
        assert error <= PATH_TOLERANCE[dtype] * (1 + e.abs().max().item()), error


@pytest.mark.parametrize("config", LSTM_CONFIGS)
@pytest.mark.usefixtures("recurrent_path")
def test_lstm_matches_torch(device, config):
    num_layers, bidirectional, proj_size, batch_first, bias = config
    kwargs = dict(num_layers=num_layers, bidirectional=bidirectional, proj_size=proj_size,
                  batch_first=batch_first, bias=bias)
    ref = torch.nn.LSTM(6, 11, **kwargs).to(device, torch.float64)
    lstm = copy_of(ref, pynotes.nn.LSTM, 6, 11, **kwargs)
    seq, batch, directions = 5, 3, 2 if bidirectional else 1
    shape = (batch, seq, 6) if batch_first else (seq, batch, 6)
    x = torch.randn(shape, dtype=torch.float64, device=device, requires_grad=True)
    h0 = torch.randn(num_layers * directions, batch, proj_size or 11, dtype=torch.float64,
                     device=device, requires_grad=True)
    c0 = torch.randn(num_layers * directions, batch, 11, dtype=torch.float64, device=device,
                     requires_grad=True)
    out, (h, c) = lstm(x, (h0, c0))
    ref_out, (ref_h, ref_c) = ref(x, (h0, c0))
    for a, e in ((out, ref_out), (h, ref_h), (c, ref_c)):
        assert a.shape == e.shape
        assert_close(a, e, torch.float64)
    inputs = [x, h0, c0]
    for a, e in zip(seeded_grads([out, h, c], inputs + list(lstm.parameters()), 2),
                    seeded_grads([ref_out, ref_h, ref_c], inputs + list(ref.parameters()), 2)):
        assert_close(a, e, torch.float64)


@pytest.mark.parametrize("seq,batch,hidden", [(1, 1, 1), (1, 4, 9), (7, 1, 33), (3, 2, 130)])
@pytest.mark.usefixtures("recurrent_path")
def test_lstm_small_and_odd_sizes(device, seq, batch, hidden):
    ref = torch.nn.LSTM(5, hidden).to(device, torch.float64)
    lstm = copy_of(ref, pynotes.nn.LSTM, 5, hidden)
    x = torch.randn(seq, batch, 5, dtype=torch.float64, device=device, requires_grad=True)
    out, (h, c) = lstm(x)  # default zero state
    ref_out, (ref_h, ref_c) = ref(x)
    for a, e in ((out, ref_out), (h, ref_h), (c, ref_c)):
        assert_close(a, e, torch.float64)
    for a, e in zip(seeded_grads([out, c], [x, *lstm.parameters()], 3),
                    seeded_grads([ref_out, ref_c], [x, *ref.parameters()], 3)):
        assert_close(a, e, torch.float64)


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.usefixtures("recurrent_path")
def test_lstm_float32_train_and_eval_with_dropout(device, train):
    torch.manual_seed(0)
    ref = torch.nn.LSTM(32, 48, num_layers=2, dropout=0.5).to(device)
    lstm = copy_of(ref, pynotes.nn.LSTM, 32, 48, num_layers=2, dropout=0.5)
    x = torch.randn(20, 8, 32, device=device)
    if train:  # dropout draws differ between implementations: compare without it
        ref.dropout = lstm.dropout = 0.0
    ref.train(train)
    lstm.train(train)
    out, (h, c) = lstm(x)
    ref_out, (ref_h, ref_c) = ref(x)
    tol = dict(atol=1e-5, rtol=1e-4)
    for a, e in ((out, ref_out), (h, ref_h), (c, ref_c)):
        torch.testing.assert_close(a, e, **tol)
    if train:
        for a, e in zip(seeded_grads([out], list(lstm.parameters()), 4),
                        seeded_grads([ref_out], list(ref.parameters()), 4)):
            torch.testing.assert_close(a, e, atol=1e-4, rtol=1e-4)


def test_lstm_dropout_in_training_drops_between_layers(device):
    lstm = pynotes.nn.LSTM(4, 8, num_layers=2, dropout=0.5).to(device)
    x = torch.randn(5, 3, 4, device=device)
    torch.manual_seed(0)
    a = lstm(x)[0]
    torch.manual_seed(1)
    b = lstm(x)[0]
    assert not torch.equal(a, b)
    lstm.eval()
    assert torch.equal(lstm(x)[0], lstm(x)[0])


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.usefixtures("recurrent_path")
def test_lstm_packed_unsorted_lengths(device, bidirectional):
    kwargs = dict(num_layers=2, bidirectional=bidirectional, proj_size=4)
    ref = torch.nn.LSTM(5, 9, **kwargs).to(device, torch.float64)
    lstm = copy_of(ref, pynotes.nn.LSTM, 5, 9, **kwargs)
    x = torch.randn(6, 4, 5, dtype=torch.float64, device=device, requires_grad=True)
    lengths = torch.tensor([3, 6, 1, 4])
    directions = 2 if bidirectional else 1
    h0 = torch.randn(2 * directions, 4, 4, dtype=torch.float64, device=device)
    c0 = torch.randn(2 * directions, 4, 9, dtype=torch.float64, device=device)
    results = []
    for module in (lstm, ref):
        packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
        out, (h, c) = module(packed, (h0, c0))
        assert torch.equal(out.batch_sizes, packed.batch_sizes)
        padded, out_lengths = pad_packed_sequence(out)
        assert torch.equal(out_lengths, lengths)
        results.append((padded, h, c, seeded_grads([out.data, h, c],
                                                   [x, *module.parameters()], 5)))
    for a, e in zip(results[0][:3], results[1][:3]):
        assert_close(a, e, torch.float64)
    for a, e in zip(results[0][3], results[1][3]):
        assert_close(a, e, torch.float64)


def test_lstm_unbatched_input(device):
    ref = torch.nn.LSTM(3, 5, num_layers=2).to(device, torch.float64)
    lstm = copy_of(ref, pynotes.nn.LSTM, 3, 5, num_layers=2)
    x = torch.randn(4, 3, dtype=torch.float64, device=device)
    hx = (torch.randn(2, 5, dtype=torch.float64, device=device),
          torch.randn(2, 5, dtype=torch.float64, device=device))
    out, (h, c) = lstm(x, hx)
    ref_out, (ref_h, ref_c) = ref(x, hx)
    assert out.shape == (4, 5) and h.shape == (2, 5)
    for a, e in ((out, ref_out), (h, ref_h), (c, ref_c)):
        assert_close(a, e, torch.float64)


def test_state_dict_loads_both_ways():
    ref = torch.nn.LSTM(3, 6, num_layers=2, bidirectional=True, proj_size=2)
    lstm = pynotes.nn.LSTM(3, 6, num_layers=2, bidirectional=True, proj_size=2)
    assert list(dict(lstm.named_parameters())) == list(dict(ref.named_parameters()))
    lstm.load_state_dict(ref.state_dict())
    ref.load_state_dict(lstm.state_dict())
    cell = pynotes.nn.LSTMCell(3, 6, bias=False)
    torch.nn.LSTMCell(3, 6, bias=False).load_state_dict(cell.state_dict())
    assert cell.bias_ih is None


@pytest.mark.usefixtures("recurrent_path")
def test_layer_op_noncontiguous_inputs(device):
    x = torch.randn(3, 5, 4, dtype=torch.float64, device=device).transpose(0, 1)
    hx, cx = (torch.randn(3, 3, dtype=torch.float64, device=device).t() for _ in range(2))
    w_ih = torch.randn(4, 12, dtype=torch.float64, device=device).t()
    w_hh = torch.randn(3, 12, dtype=torch.float64, device=device).t()
    b = torch.randn(24, dtype=torch.float64, device=device)[::2]
    actual = pynotes.ops.lstm_layer(x, hx, cx, w_ih, w_hh, b, b)
    expected = reference.lstm_layer(x, hx, cx, w_ih, w_hh, b, b)
    for a, e in zip(actual, expected):
        assert_close(a, e, torch.float64)


def layer_inputs(seq, batch, inputs, hidden, last_batch=None, w_hh_scale=0.3):
    """batch_sizes (packed, the last step with last_batch rows) or None, and random inputs of
    lstm_layer: x, h0, c0, w_ih, w_hh, b_ih, b_hh."""
    batch_sizes = (torch.tensor([batch] * (seq - 1) + [last_batch])
                   if last_batch is not None else None)
    x = (torch.randn(int(batch_sizes.sum()), inputs) if batch_sizes is not None
         else torch.randn(seq, batch, inputs))
    return batch_sizes, [x, torch.randn(batch, hidden), torch.randn(batch, hidden),
                         0.3 * torch.randn(4 * hidden, inputs),
                         w_hh_scale * torch.randn(4 * hidden, hidden),
                         torch.randn(4 * hidden), torch.randn(4 * hidden)]


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("seq,batch,inputs,hidden,packed", [
    (13, 8, 67, 37, False),  # 104 rows: two groups of rows; 67 inputs: a partial chunk of k
    (5, 1, 130, 16, True),   # one row a step, three chunks of k
    (3, 2, 1, 70, False),    # a single input
    (4, 13, 70, 40, True),   # steps of 13 rows (uneven groups) and of 6
])
@pytest.mark.parametrize("where", ["1", "input-per-step", "w-hh-rows"])
def test_engine_input_projection(device, monkeypatch, threads, dtype, seq, batch, inputs,
                                 hidden, packed, where):
    """On the engine, float32 and float64 layers compute x w_ih^T themselves, each thread for
    its units, before the steps (lstm_engine_cpu_kernel.cpp, input_products; at batch 1 also
    with w_hh read as stored) or in each step's products: outputs and gradients as the float64
    reference's, for any thread count (unit slices of whole and partial SIMD vectors);
    inference gives the same outputs as training."""
    if device != "cpu":
        pytest.skip("the recurrent engine is the CPU's")
    monkeypatch.setenv("PYNOTES_LSTM_ENGINE", where)
    torch.manual_seed(seq * 100 + inputs)
    batch_sizes, tensors = layer_inputs(seq, batch, inputs, hidden,
                                        max(1, batch // 2) if packed else None)
    results = []
    for t, layer in ((dtype, pynotes.ops.lstm_layer), (torch.float64, reference.lstm_layer)):
        args = [a.to(t).requires_grad_() for a in tensors]
        previous = torch.get_num_threads()
        try:
            torch.set_num_threads(threads)
            out = layer(*args, batch_sizes=batch_sizes, reverse=packed)
            if layer is pynotes.ops.lstm_layer:
                with torch.no_grad():
                    inferred = layer(*args, batch_sizes=batch_sizes, reverse=packed)
                for a, b in zip(out[:3], inferred[:3]):
                    assert torch.equal(a, b)
            torch.manual_seed(8)  # the same output weights for both (drawn in float64)
            weights = [torch.randn(o.shape, dtype=torch.float64) for o in out]
            loss = sum((o * w.to(t)).sum() for o, w in zip(out, weights))
            results.append([*out, *torch.autograd.grad(loss, args)])
        finally:
            torch.set_num_threads(previous)
    for a, e in zip(*results):
        assert_close(a, e, dtype)


@pytest.mark.parametrize("packed", [False, True])
def test_products_project_in_chunks_of_steps(device, monkeypatch, packed):
    """At inference on the per-step products the input projection is made a few steps at a time
    (about 4 MB of gates, lstm_ops.cpp): at batch 257, hidden 260 that is 3 steps, so 7 steps
    run as 3, 3 and 1, forwards and (packed, with fewer rows in the last step) in reverse.
    Inference as the float64 reference, as training (one product) is."""
    if device != "cpu":
        pytest.skip("the chunks are the CPU's")
    monkeypatch.setenv("PYNOTES_LSTM_ENGINE", "0")
    torch.manual_seed(7)
    batch_sizes, tensors = layer_inputs(7, 257, 19, 260, 100 if packed else None, 0.1)
    results = []
    for t, layer in ((torch.float32, pynotes.ops.lstm_layer),
                     (torch.float64, reference.lstm_layer)):
        args = [a.to(t).requires_grad_() for a in tensors]
        out = layer(*args, batch_sizes=batch_sizes, reverse=packed)
        if layer is pynotes.ops.lstm_layer:
            with torch.no_grad():
                inferred = layer(*args, batch_sizes=batch_sizes, reverse=packed)
        torch.manual_seed(8)
        weights = [torch.randn(o.shape, dtype=torch.float64) for o in out]
        loss = sum((o * w.to(t)).sum() for o, w in zip(out, weights))
        results.append([*out, *torch.autograd.grad(loss, args)])
    for a, e in zip([*inferred, *results[0]], [*results[1][:3], *results[1]]):
        assert_close(a, e, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("reverse,bias", [(False, True), (True, False)])
def test_inference_on_torchs_onednn_rnn(device, monkeypatch, dtype, reverse, bias):
    """Inference layers may run torch's oneDNN RNN layer (lstm_ops.cpp): same results as the
    float64 reference; where oneDNN has no primitive for the dtype, our own path runs."""
    monkeypatch.setenv("PYNOTES_LSTM_ENGINE", "onednn")
    torch.manual_seed(3)
    seq, batch, inputs, hidden = 6, 5, 7, 33
    args = [torch.randn(seq, batch, inputs), torch.randn(batch, hidden),
            torch.randn(batch, hidden), 0.3 * torch.randn(4 * hidden, inputs),
            0.3 * torch.randn(4 * hidden, hidden)]
    args += [torch.randn(4 * hidden), torch.randn(4 * hidden)] if bias else [None, None]
    args = [None if a is None else a.to(device) for a in args]
    got = pynotes.ops.lstm_layer(*[None if a is None else a.to(dtype) for a in args],
                                 reverse=reverse)
    expected = reference.lstm_layer(*[None if a is None else a.double() for a in args],
                                    reverse=reverse)
    for g, e in zip(got, expected):
        assert g.dtype == dtype and g.shape == e.shape
        error = (g.double() - e).abs().max().item()
        assert error <= PATH_TOLERANCE[dtype] * (1 + e.abs().max().item()), error


def test_measured_packing_suits_each_weight(device, monkeypatch):
    """The per-step products' packing is measured once per shape class (common/matmul.cpp); a
    later weight of the class in a layout the chosen backend cannot pack (every other column:
    no unit stride) must still give the right result, in either order."""
    monkeypatch.setenv("PYNOTES_LSTM_ENGINE", "0")
    monkeypatch.delenv("PYNOTES_PACKED_MATMUL", raising=False)
    torch.manual_seed(5)
    seq, batch, hidden = 2, 24, 120  # a class of its own here, where MKL won on a Xeon
    x, h, c = (torch.randn(*s, device=device) for s in ((seq, batch, 4), (batch, hidden),
                                                         (batch, hidden)))
    w_ih, w_hh = torch.randn(4 * hidden, 4, device=device), torch.randn(4 * hidden, hidden,
                                                                       device=device)
    wide = torch.zeros(4 * hidden, 2 * hidden, device=device)
    wide[:, ::2] = w_hh
    expected = reference.lstm_layer(x.double(), h.double(), c.double(), w_ih.double(),
                                    w_hh.double())
    for w in (w_hh, wide[:, ::2], w_hh.t().contiguous().t(), w_hh):
        for got, e in zip(pynotes.ops.lstm_layer(x, h, c, w_ih, w), expected):
            assert_close(got, e, torch.float32)


@pytest.mark.parametrize("seq,batch", [(0, 3), (4, 0), (0, 0)])
@pytest.mark.usefixtures("recurrent_path")
def test_layer_op_zero_size(device, seq, batch):
    make = lambda *s: torch.randn(s, device=device, requires_grad=True)
    x, hx, cx = make(seq, batch, 3), make(batch, 5), make(batch, 5)
    w_ih, w_hh = make(20, 3), make(20, 5)
    out, h, c = pynotes.ops.lstm_layer(x, hx, cx, w_ih, w_hh)
    assert out.shape == (seq, batch, 5)
    assert torch.equal(h, hx) and torch.equal(c, cx)
    gx, gh, gw = torch.autograd.grad(out.sum() + h.sum() + c.sum(), [x, hx, w_ih])
    assert gx.shape == x.shape and torch.equal(gh, torch.ones_like(hx))
    assert torch.equal(gw, torch.zeros_like(w_ih))


def test_fallback_matches_extension(device):
    lstm = pynotes.nn.LSTM(6, 10, num_layers=2, bidirectional=True, proj_size=3).to(device)
    x = torch.randn(7, 2, 6, device=device, requires_grad=True)
    results = []
    for fallback in (False, True):
        with _ext.force_fallback(fallback):
            out, (h, c) = lstm(x)
            results.append((out, h, c, seeded_grads([out, h, c], [x, *lstm.parameters()], 6)))
    for a, e in zip(results[0][:3], results[1][:3]):
        assert_close(a, e, torch.float32)
    for a, e in zip(results[0][3], results[1][3]):
        torch.testing.assert_close(a, e, atol=1e-4, rtol=1e-4)


def test_repeated_backward_with_retain_graph(device):
    lstm = pynotes.nn.LSTM(3, 4).to(device, torch.float64)
    out, _ = lstm(torch.randn(5, 2, 3, dtype=torch.float64, device=device))
    first = torch.autograd.grad(out.sum(), list(lstm.parameters()), retain_graph=True)
    second = torch.autograd.grad(out.sum(), list(lstm.parameters()))
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@pytest.mark.parametrize("used", ["output", "h_n", "c_n"])
@pytest.mark.parametrize("create_graph", [False, True])
def test_gradients_through_one_output(device, used, create_graph):
    """Outputs that the loss does not use get no gradient: the autograd Functions do not
    materialize zeros for them, and the backward (and the differentiable backward of double
    backward) treats them as zero. The loss here is a random projection of one output."""
    theirs = torch.nn.LSTM(5, 6).to(device, torch.float64)
    ours = copy_of(theirs, pynotes.nn.LSTM, 5, 6)
    x = torch.randn(4, 3, 5, dtype=torch.float64, device=device, requires_grad=True)
    results = []
    for lstm in (theirs, ours):
        out, (h_n, c_n) = lstm(x)
        picked = {"output": out, "h_n": h_n, "c_n": c_n}[used]
        torch.manual_seed(1)
        loss = (picked * torch.randn_like(picked)).sum()
        g = torch.autograd.grad(loss, [x, *lstm.parameters()], create_graph=create_graph)
        if create_graph:  # a second derivative, through the first one
            g = g + torch.autograd.grad(g[0].square().sum(), [x])
        results.append(g)
    for a, e in zip(results[1], results[0]):
        torch.testing.assert_close(a, e)


def test_bias_gradient_same_bits_for_any_thread_count(device, monkeypatch):
    """The bias gradient is the column sums of dgates over T x B rows (several blocks of 128
    rows here), summed in an order that does not depend on the thread count. One step, so that
    dgates comes from the pointwise backward alone (a GEMM's bits may follow the threads), on
    the engine, whose input projection has the same bits for any thread count (the path is
    measured per thread count otherwise, and the paths' projections differ in the last bits)."""
    monkeypatch.setenv("PYNOTES_LSTM_ENGINE", "1")
    lstm = pynotes.nn.LSTM(8, 24).to(device)
    x = torch.randn(1, 333, 8, device=device)
    grads = []
    previous = torch.get_num_threads()
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            out, _ = lstm(x)
            torch.manual_seed(2)
            grads.append(torch.autograd.grad((out * torch.randn_like(out)).sum(),
                                             [lstm.bias_ih_l0])[0])
    finally:
        torch.set_num_threads(previous)
    assert torch.equal(grads[0], grads[1]) and torch.equal(grads[0], grads[2])


def test_opcheck(device):
    if not _ext.extension_loaded():
        pytest.skip("needs the compiled extension")
    make = lambda *s, g=False: torch.randn(s, device=device, requires_grad=g)
    for g in (False, True):
        cell_args = (make(3, 5, g=g), make(3, 4, g=g), make(3, 4), make(16, 5, g=g),
                     make(16, 4, g=g), make(16, g=g), make(16))
        torch.library.opcheck(torch.ops.pynotes.lstm_cell.default, cell_args)
        layer_args = (make(4, 3, 5, g=g), make(3, 2, g=g), make(3, 4), make(16, 5, g=g),
                      make(16, 2, g=g), make(16, g=g), make(16), make(2, 4, g=g))
        torch.library.opcheck(torch.ops.pynotes.lstm_layer.default, layer_args,
                              {"reverse": True})
        packed_args = (make(6, 5, g=g), make(3, 4), make(3, 4), make(16, 5, g=g),
                       make(16, 4, g=g), None, None, None, torch.tensor([3, 2, 1]))
        torch.library.opcheck(torch.ops.pynotes.lstm_layer.default, packed_args)
    hy, cy, workspace = torch.ops.pynotes.lstm_cell(*[a.detach() for a in cell_args[:5]])
    torch.library.opcheck(torch.ops.pynotes.lstm_cell_backward.default,
                          (hy, None, workspace, *[a.detach() for a in cell_args[:5]],
                           [True, False, True, True]))
    train = torch.ops.pynotes.lstm_layer_train(*[a.detach() if a is not None else None
                                                 for a in layer_args])
    torch.library.opcheck(torch.ops.pynotes.lstm_layer_train.default,
                          tuple(a.detach() for a in layer_args))
    torch.library.opcheck(
        torch.ops.pynotes.lstm_layer_backward.default,
        (train[0], None, train[2], layer_args[0].detach(), layer_args[1].detach(),
         layer_args[3].detach(), layer_args[4].detach(), layer_args[7].detach(), None, False,
         *train[3:], [True, True, False]))


def test_compile_fullgraph_forward_and_backward(device):
    lstm = pynotes.nn.LSTM(4, 6, bidirectional=True).to(device)
    x = torch.randn(5, 3, 4, device=device, requires_grad=True)
    compiled = torch.compile(lstm, backend="aot_eager", fullgraph=True)
    # Dynamo refuses every torch.nn.RNNBase subclass unless asked, torch.nn.LSTM included.
    with torch._dynamo.config.patch(allow_rnn=True):
        out, (h, c) = compiled(x)
    expected, (eh, ec) = lstm(x)
    for a, e in ((out, expected), (h, eh), (c, ec)):
        assert_close(a, e, torch.float32)
    for a, e in zip(seeded_grads([out], [x, *lstm.parameters()], 7),
                    seeded_grads([expected], [x, *lstm.parameters()], 7)):
        assert_close(a, e, torch.float32)
