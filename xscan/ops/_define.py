"""One ``torch.library`` custom-op pair (forward, backward) per scan, dispatched by backend name.

The forward op ``xscan::<name>`` and its backward ``xscan::<name>_backward`` both take, after the
op's arguments, two that the public wrapper fixes before the call: ``fp32_output``
(``xscan.fp32_output``: fp16/bf16 inputs give fp32 outputs) and the backend name. Under
``torch.compile`` both are constants of the graph, and the backward runs on the same backend as its
forward.

Checkpoints: the forward op's last output is the state at every chunk start that a backend's forward
saves for its backward (``CpuExecutor.checkpoints``, ``xscan.backends.cuda.checkpoints``), so that
the backward does not rerun the forward's recurrence to find them. The forward's last argument
``save_checkpoints`` (default false; the public wrapper sets it when autograd will need a backward)
asks for them; without it, or on a backend that keeps none, that output is empty. The backward op
takes them as its last argument (``None`` or empty: the backend recomputes them), and its gradients
are those of the op's other outputs only.

A kernel backend gets the op's ``ScanSpec`` (the op module's ``plan``); the reference gets the
arguments. Backends return gradients by argument name (``{"u": ..., "dt": ...}``); absent optional
arguments have none. The backward op's own backward (double backward: gradient penalties,
Hessian-vector products) differentiates the reference backend's backward, which is written in
differentiable PyTorch: correct on every backend, at the reference's speed.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Callable

import torch

from .. import _registry

_lib = torch.library.Library("xscan", "DEF")
def output_dtype(dtype: torch.dtype, fp32_output: bool) -> torch.dtype:
    """The dtype of the outputs for per-token inputs of ``dtype``: the same, or fp32 for fp16/bf16
    inputs under ``xscan.fp32_output()``."""
    return torch.float32 if fp32_output and dtype in (torch.float16, torch.bfloat16) else dtype


def _fresh(outputs, inputs) -> list:
    """Outputs that own their memory (a custom op's contract, and what the fake kernels promise): a
    backend may hand back views of one buffer, or of the inputs."""
    seen = {t.untyped_storage().data_ptr() for t in inputs if isinstance(t, torch.Tensor) and t.numel()}
    fresh = []
    for t in outputs:
        if t is not None and t.numel():
            storage = t.untyped_storage()
            if storage.data_ptr() in seen or storage.nbytes() != t.numel() * t.element_size():
                t = t.clone()
            seen.add(t.untyped_storage().data_ptr())
        fresh.append(t)
    return fresh


def define(name: str, args: Sequence[tuple[str, str]], outputs: int, fake: Callable, check: Callable,
           plan: Callable, tokens: Sequence[str], keep: Callable = lambda a: ()) -> Callable:
    """Define ``xscan::<name>`` with ``args`` as (argument name, schema type) pairs, ``outputs``
    tensors out, ``fake(*args)`` giving their shapes in the per-token inputs' dtype,
    ``check(*args)`` raising a clear error for arguments the kernels cannot take (run by the op
    itself too, so that a direct ``torch.ops.xscan`` call is as safe as the public function),
    ``plan(*args, out_dtype)`` the op's ScanSpec, ``tokens`` the per-token arguments' names (what
    autocast casts) and ``keep(args)`` those of them that are weights in a call (autocast leaves
    them as they are). Returns ``call(args, device)``, which picks the backend for ``device`` and runs
    the op."""
    params = ", ".join(f"{t} {n}" for n, t in args) + ", bool fp32_output, str backend"
    returns = "(" + ", ".join(["Tensor"] * (outputs + 1)) + ")"  # the outputs, then the checkpoints
    _lib.define(f"{name}({params}, bool save_checkpoints=False) -> {returns}")
    _lib.define(f"{name}_backward(Tensor[] grads, {params}, Tensor? checkpoints=None) -> Tensor[]")
    names = [n for n, _ in args]
    tensor_slots = [i for i, (_, t) in enumerate(args) if t.startswith("Tensor")]

    def by_slot(grads: dict, inputs) -> list:
        """Gradients by name -> one per tensor argument (None where absent or not returned)."""
        unknown = set(grads) - {names[i] for i in tensor_slots}
        if unknown:
            raise RuntimeError(f"xscan.{name}: a backend returned gradients for unknown arguments {sorted(unknown)}")
        return [None if inputs[i] is None else grads.get(names[i]) for i in tensor_slots]

    def fake_outputs(a, fp32_output: bool) -> list:
        """The outputs' shapes and dtypes: the op's outputs in the output dtype, a last state as it is."""
        out = fake(*a)
        out = list(out) if outputs > 1 else [out]
        want = output_dtype(a[0].dtype, fp32_output)
        return [o.new_empty(o.shape, dtype=want if o.dtype == a[0].dtype else o.dtype) for o in out]

    def checkpoints_for(b, a, spec: Callable, save: bool) -> torch.Tensor:
        """The buffer backend ``b``'s forward fills with its checkpoints (``executor.checkpoints(spec())``
        gives their shape and dtype), empty where it is not to save any or keeps none."""
        layout = b.executor.checkpoints(spec()) if save and b.executor is not None else None
        shape, dtype = layout or ((0,), torch.float32)
        return a[0].new_empty(shape, dtype=dtype)

    def run(a, fp32_output: bool, backend: str, save: bool) -> tuple[list, torch.Tensor]:
        """The backend's forward of the op on arguments ``a``: its outputs and its checkpoints."""
        b = _registry.backend(backend)
        out_dtype = output_dtype(a[0].dtype, fp32_output)
        if b.executor is None:
            out = b.ops[name][0](*a, out_dtype=out_dtype)
            return (list(out) if outputs > 1 else [out]), checkpoints_for(b, a, None, False)
        spec = plan(*a, out_dtype)
        states = checkpoints_for(b, a, lambda: spec, save)
        return b.executor.forward(spec, states if states.numel() else None), states

    def run_backward(a, fp32_output: bool, backend: str, grads: list, states) -> dict:
        """The backend's backward of the op on arguments ``a``, from the forward's checkpoints if any."""
        b = _registry.backend(backend)
        if b.executor is None:
            return b.ops[name][1](grads, *a)
        spec = plan(*a, output_dtype(a[0].dtype, fp32_output))
        return b.executor.backward(spec, grads, states if states is not None and states.numel() else None)

    def split(a, default):
        """(op arguments, fp32_output, backend, last): a kernel gets the last, defaulted argument
        (save_checkpoints, checkpoints) only where its caller passed it."""
        n = len(args)
        return a[:n], a[n], a[n + 1], a[n + 2] if len(a) > n + 2 else default

    def forward(*a):
        a, fp32_output, backend, save = split(a, False)
        check(*a)
        out, states = run(a, fp32_output, backend, save)
        return tuple(_fresh([o.contiguous() for o in out] + [states], a))

    def fake_forward(*a):
        a, fp32_output, backend, save = split(a, False)
        check(*a)
        spec = lambda: plan(*a, output_dtype(a[0].dtype, fp32_output))  # noqa: E731
        return (*fake_outputs(a, fp32_output), checkpoints_for(_registry.backend(backend), a, spec, save))

    def check_grads(grads, a):
        """The backward's arguments: the forward's, and one gradient per output of its shape."""
        check(*a)
        out = fake(*(x.to("meta") if isinstance(x, torch.Tensor) else x for x in a))
        shapes = [o.shape for o in (out if outputs > 1 else (out,))]
        if [g.shape for g in grads] != shapes:
            raise ValueError(f"xscan.{name}_backward: grads must have the outputs' shapes "
                             f"{[tuple(s) for s in shapes]}, got {[tuple(g.shape) for g in grads]}")

    def backward(grads, *a):
        a, fp32_output, backend, states = split(a, None)
        check_grads(grads, a)
        result = by_slot(run_backward(a, fp32_output, backend, list(grads), states), a)
        result = _fresh([None if g is None else g.contiguous() for g in result], (*grads, *a))
        return [grads[0].new_empty(0) if g is None else g for g in result]

    def fake_backward(grads, *a):
        check_grads(grads, split(a, None)[0])
        empty = grads[0].new_empty(0)
        return [empty if a[i] is None else a[i].new_empty(a[i].shape) for i in tensor_slots]

    def setup_context(ctx, inputs, output):
        *outs, states = output
        ctx.mark_non_differentiable(states)
        # no zero-filled gradient for the checkpoints: the other outputs' are filled in by autograd()
        ctx.set_materialize_grads(False)
        ctx.output_types = [(o.shape, o.dtype) for o in outs]
        ctx.save_for_backward(*(inputs[i] for i in tensor_slots), states)
        slots = set(tensor_slots)
        ctx.inputs = [None if i in slots else v for i, v in enumerate(inputs[:len(args) + 2])]
        ctx.n_inputs = len(inputs)

    def saved_inputs(ctx, tensors) -> list:
        inputs = list(ctx.inputs)
        for i, t in zip(tensor_slots, tensors):
            inputs[i] = t
        return inputs

    def autograd(ctx, *grads):
        *saved, states = ctx.saved_tensors
        inputs = saved_inputs(ctx, saved)
        grads = [states.new_zeros(shape, dtype=dtype) if g is None else g
                 for g, (shape, dtype) in zip(grads, ctx.output_types)]
        result = getattr(torch.ops.xscan, f"{name}_backward")(grads, *inputs, states)
        out = [None] * ctx.n_inputs
        for i, g in zip(tensor_slots, result):
            if inputs[i] is not None and ctx.needs_input_grad[i]:
                out[i] = g
        return tuple(out)

    def setup_double_backward(ctx, inputs, output):
        grads, *rest = inputs
        rest, ctx.n_inputs = rest[:len(args) + 2], len(rest)  # less the checkpoints: the reference needs none
        ctx.n_grads = len(grads)
        ctx.save_for_backward(*grads, *(rest[i] for i in tensor_slots))
        slots = set(tensor_slots)
        ctx.inputs = [None if i in slots else v for i, v in enumerate(rest)]

    def double_backward(ctx, cotangents):
        """Differentiate the reference backward at the saved point: d<backward(g, x), v> / d(g, x)."""
        saved = ctx.saved_tensors
        grads, inputs = saved[:ctx.n_grads], saved_inputs(ctx, saved[ctx.n_grads:])
        create_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            grad_leaves = [g.detach().requires_grad_() for g in grads]
            leaves = [x.detach().requires_grad_() if isinstance(x, torch.Tensor) else x for x in inputs]
            *plain, _, _ = leaves
            result = by_slot(_registry.backend("reference").ops[name][1](grad_leaves, *plain), plain)
            pairs = [(g, v) for g, v in zip(result, cotangents) if g is not None and v is not None and v.numel()]
            wrt = grad_leaves + [leaves[i] for i in tensor_slots if leaves[i] is not None]
            d = torch.autograd.grad([g for g, _ in pairs], wrt, [v for _, v in pairs], allow_unused=True,
                                    create_graph=create_graph) if pairs else [None] * len(wrt)
        d_grads, d_inputs = list(d[:len(grad_leaves)]), iter(d[len(grad_leaves):])
        out = [None] * ctx.n_inputs  # none for the checkpoints
        for i in tensor_slots:
            if inputs[i] is not None:
                out[i] = next(d_inputs)
        return (d_grads, *out)

    token_slots = [names.index(t) for t in tokens]

    def autocast_cast(a, device_type: str) -> list:
        """Under torch.autocast the per-token inputs go to the autocast dtype (the kernels compute
        in fp32 whatever they get; outputs come in that dtype); A, D, delta_bias and the weights
        among the per-token arguments (``keep``) keep theirs."""
        dtype = torch.get_autocast_dtype(device_type)
        kept = {names.index(n) for n in keep(a)}
        return [x.to(dtype) if i in token_slots and i not in kept and isinstance(x, torch.Tensor)
                and x.is_floating_point() and x.device.type == device_type else x for i, x in enumerate(a)]

    def autocast(device_type: str):
        key = torch._C.DispatchKeySet(getattr(torch._C.DispatchKey, "Autocast" + device_type.upper()))

        def kernel(*a):
            with torch._C._ExcludeDispatchKeyGuard(key):  # as torch.library.register_autocast does
                return op(*autocast_cast(a, device_type))
        return kernel

    qualname = f"xscan::{name}"
    _lib.impl(name, forward, "CompositeExplicitAutograd")
    for device_type in ("cpu", "cuda"):
        _lib.impl(name, autocast(device_type), "Autocast" + device_type.upper())
    _lib.impl(f"{name}_backward", backward, "CompositeExplicitAutograd")
    torch.library.register_fake(qualname, fake_forward, lib=_lib)
    torch.library.register_fake(f"{qualname}_backward", fake_backward, lib=_lib)
    torch.library.register_autograd(qualname, autograd, setup_context=setup_context, lib=_lib)
    torch.library.register_autograd(f"{qualname}_backward", double_backward, setup_context=setup_double_backward,
                                    lib=_lib)
    op = getattr(torch.ops.xscan, name)  # bound late: the autocast kernels above call it
    return DefinedOp(name, op, autocast_cast)


def device_of(x) -> torch.device:
    """Where an op's first argument lives (CPU for a non-tensor, which the checks then refuse)."""
    return x.device if isinstance(x, torch.Tensor) else torch.device("cpu")


class DefinedOp:
    """A defined op as the public functions use it."""

    def __init__(self, name: str, op, autocast_cast: Callable):
        self.name, self.op, self._autocast_cast = name, op, autocast_cast

    def autocast(self, args: tuple, device: torch.device) -> tuple:
        """``args`` as the op will take them under torch.autocast (the per-token inputs in the
        autocast dtype), so that the public function checks what runs; ``args`` outside autocast."""
        if device.type in ("cpu", "cuda") and torch.is_autocast_enabled(device.type):
            return tuple(self._autocast_cast(args, device.type))
        return args

    def __call__(self, args: tuple, device: torch.device):
        """The op's outputs (one tensor, or a tuple); the forward saves checkpoints for the backward
        when autograd will run one."""
        save = torch.is_grad_enabled() and any(isinstance(a, torch.Tensor) and a.requires_grad for a in args)
        *out, _ = self.op(*args, _registry.fp32_output_enabled(), _registry.select(self.name, device), save)
        return tuple(out) if len(out) > 1 else out[0]
