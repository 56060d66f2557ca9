"""How the public ops differentiate, and how they run under torch.func.vmap.

A public op with an input that needs a gradient runs through a Python torch.autograd.Function
(setup_context style, so torch.func's grad, vjp, jacrev and vmap see it). Its forward is the
kernel op; its backward is the backward kernel op, unless the backward must itself be
differentiable: autograd enables grad mode during the backward exactly then (create_graph=True,
torch.func transforms), and the backward is the vector-Jacobian product of the op's pure-PyTorch
reference (pynotes.reference), which autograd differentiates again. So second derivatives come
from the same formulas the tests check the kernels against, and are never silently zero.
Forward mode (torch.func.jvp, jacfwd, hessian) is the reference's JVP likewise.

Outside torch.func the same Function runs in its old-style form (forward(ctx, ...)), which
costs no argument binding per call (torch binds setup_context-style arguments with
inspect.signature: ~40 us). Without a gradient, and under torch.compile / torch.export, the op
is called directly; its own Autograd-key kernel (C++, also what direct torch.ops.pynotes calls
and the CMake library use) differentiates it once and raises a clear error under
create_graph=True.

Under torch.func.vmap the ops run their batching rules (register_vmap in each family's
pynotes/ops/<family>.py): forward ops fold the vmapped dimension into a batch dimension where
that is exact; otherwise, and for the backward ops, a loop over the vmapped dimension.
"""
import torch


def needs_autograd(*tensors):
    """True when the op must run through its Python autograd.Function: under a torch.func
    transform (which refuses C++ autograd functions), or with grad mode on and an input that
    requires a gradient, but not under torch.compile or torch.jit.trace (which record the op,
    differentiated by its C++ autograd)."""
    # (inference asks first: grad mode off and no transform skips the rest)
    transforms = torch._C._are_functorch_transforms_active()
    if not transforms and not torch.is_grad_enabled():
        return False
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return False
    return transforms or any(isinstance(t, torch.Tensor) and t.requires_grad for t in tensors)


def below_autograd():
    """For a Function's forward: the op's own (C++) autograd kernel is skipped; this Function
    records the op."""
    return torch._C._AutoDispatchBelowAutograd()


def with_eager_form(function):
    """Class decorator: adds function.eager, the same autograd.Function in the old style
    (forward(ctx, *args) running forward then setup_context), for calls outside torch.func."""
    def forward(ctx, *args):
        output = function.forward(*args)
        function.setup_context(ctx, args, output)
        return output

    members = {"forward": staticmethod(forward), "backward": staticmethod(function.backward)}
    if "jvp" in vars(function):
        members["jvp"] = staticmethod(function.jvp)
    function.eager = type(function.__name__ + "Eager", (torch.autograd.Function,), members)
    return function


def apply(function, *args):
    """function.apply(*args) in the form the context needs (see with_eager_form)."""
    if torch._C._are_functorch_transforms_active():
        return function.apply(*args)
    return function.eager.apply(*args)


def differentiable(t):
    return isinstance(t, torch.Tensor) and (t.is_floating_point() or t.is_complex())


def reference_vjp(reference, inputs, cotangents, needs_input_grad):
    """Gradients of reference(*inputs) (a tuple of outputs) against `cotangents`, one per input
    (None where no gradient is needed): a differentiable backward."""
    wanted = [i for i, t in enumerate(inputs) if differentiable(t) and needs_input_grad[i]]

    def partial(*values):
        args = list(inputs)
        for i, v in zip(wanted, values):
            args[i] = v
        return reference(*args)

    outputs, pullback = torch.func.vjp(partial, *[inputs[i] for i in wanted])
    # None for an unused output where the Function does not materialize gradients
    cotangents = tuple(torch.zeros_like(o) if c is None else c
                       for o, c in zip(outputs, cotangents))
    grads = [None] * len(inputs)
    for i, g in zip(wanted, pullback(cotangents)):
        grads[i] = g
    return tuple(grads)


def reference_jvp(reference, inputs, tangents):
    """Tangents of reference(*inputs)'s outputs for the given input tangents (None: zero)."""
    moving = [i for i, t in enumerate(tangents) if t is not None and differentiable(inputs[i])]

    def partial(*values):
        args = list(inputs)
        for i, v in zip(moving, values):
            args[i] = v
        return reference(*args)

    if not moving:
        outputs = reference(*inputs)
        return tuple(torch.zeros_like(o) for o in outputs)
    _, out_tangents = torch.func.jvp(partial, tuple(inputs[i] for i in moving),
                                     tuple(tangents[i] for i in moving))
    return out_tangents


def loop_vmap_rule(op):
    """A batching rule that calls `op` once per index of the vmapped dimension and stacks the
    results (outputs that are None stay None)."""
    def rule(info, in_dims, *args):
        results = []
        for b in range(info.batch_size):
            sample = [a.select(d, b) if d is not None else a for a, d in zip(args, in_dims)]
            results.append(op(*sample))
        if not isinstance(results[0], (tuple, list)):
            return torch.stack(results), 0
        outputs, out_dims = [], []
        for k in range(len(results[0])):
            column = [r[k] for r in results]
            if column[0] is None:
                outputs.append(None)
                out_dims.append(None)
            else:
                outputs.append(torch.stack(column))
                out_dims.append(0)
        return tuple(outputs), tuple(out_dims)
    return rule


def fold_vmap_dim(t, in_dim, into):
    """t with its vmapped dimension `in_dim` merged into dimension `into` (of the unbatched
    layout), vmapped index outermost: (V, ..., n, ...) -> (..., V * n, ...)."""
    t = t.movedim(in_dim, into)
    return t.flatten(into, into + 1)


def unfold_vmap_dim(t, size, dim):
    """Inverse of fold_vmap_dim: splits dimension `dim` into (size, rest) and moves the vmapped
    dimension to the front."""
    return t.unflatten(dim, (size, -1)).movedim(dim, 0)
