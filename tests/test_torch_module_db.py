"""Torch's own tests of the modules pynotes replaces, run against the drop-ins: every sample
input of torch.nn.GroupNorm, LSTMCell and LSTM in torch's module_db (its constructor
arguments, a state_dict copied from torch's module, the same forward input; outputs and
gradients compared) and every error input (the same exception type)."""
import pytest
import torch
from torch.utils._pytree import tree_flatten, tree_map

pytest.importorskip("expecttest")  # torch.testing._internal imports it
from torch.testing._internal.common_modules import ModuleErrorEnum, module_db  # noqa: E402

import pynotes.nn  # noqa: E402

DROP_INS = {torch.nn.GroupNorm: pynotes.nn.GroupNorm, torch.nn.LSTMCell: pynotes.nn.LSTMCell,
            torch.nn.LSTM: pynotes.nn.LSTM}
INFOS = [info for info in module_db if info.module_cls in DROP_INS]
TOLERANCE = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=1e-4,
                                                                              atol=1e-5)}


def test_module_db_has_every_drop_in():
    assert {info.module_cls for info in INFOS} == set(DROP_INS)


def fresh(value):
    """The forward input again, with its own leaves (grad for the same requires_grad)."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone().requires_grad_(value.requires_grad)
    return value


def run(module, forward_input):
    args, kwargs = tree_map(fresh, (forward_input.args, forward_input.kwargs))
    out = module(*args, **kwargs)
    outputs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
    inputs = [t for t in tree_flatten((args, kwargs))[0]
              if isinstance(t, torch.Tensor) and t.requires_grad]
    leaves = inputs + [p for p in module.parameters()]
    loss = sum((o * torch.linspace(-1, 1, o.numel(), dtype=o.dtype).view_as(o)).sum()
               for o in outputs if o.is_floating_point())
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    return outputs, grads


@pytest.mark.parametrize("info", INFOS, ids=lambda info: info.name)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_module_samples(info, dtype, training):
    samples = info.module_inputs_func(info, device="cpu", dtype=dtype, requires_grad=True,
                                      training=training)
    assert samples
    for sample in samples:
        ctor = sample.constructor_input
        theirs = info.module_cls(*ctor.args, **ctor.kwargs).to(dtype).train(training)
        ours = DROP_INS[info.module_cls](*ctor.args, **ctor.kwargs).to(dtype).train(training)
        ours.load_state_dict(theirs.state_dict())
        (expected, expected_grads), (got, got_grads) = (run(m, sample.forward_input)
                                                        for m in (theirs, ours))
        where = f"{info.name}{ctor.args}{ctor.kwargs}"
        assert len(got) == len(expected), where
        for g, e in zip(got, expected):
            torch.testing.assert_close(g, e, **TOLERANCE[dtype], msg=lambda m: f"{where}: {m}")
        for g, e in zip(got_grads, expected_grads):
            assert (g is None) == (e is None), where
            if e is not None:
                torch.testing.assert_close(g, e, **TOLERANCE[dtype],
                                           msg=lambda m: f"{where} gradient: {m}")


@pytest.mark.parametrize("info", [i for i in INFOS if i.module_error_inputs_func],
                         ids=lambda info: info.name)
def test_module_error_inputs(info):
    """The original's exception type (pynotes' messages may say more)."""
    errors = info.module_error_inputs_func(info, device="cpu", dtype=torch.float32,
                                           requires_grad=False, training=True)
    assert errors
    for error in errors:
        sample = error.module_error_input
        ctor, forward = sample.constructor_input, sample.forward_input
        where = f"{info.name}{ctor.args}{ctor.kwargs}: {error.error_regex}"
        with pytest.raises(error.error_type) as raised:
            module = DROP_INS[info.module_cls](*ctor.args, **ctor.kwargs)
            assert error.error_on == ModuleErrorEnum.FORWARD_ERROR, f"{where}: constructed"
            module(*forward.args, **forward.kwargs)
        assert isinstance(raised.value, error.error_type), where
