"""One ``torch.library`` custom-op pair (forward, backward) per scan, dispatched by backend name.

The forward op ``xscan::<name>`` and its backward ``xscan::<name>_backward`` both end with two
arguments the public wrapper fixes before the call: ``fp32_output`` (``xscan.fp32_output``: fp16/bf16
inputs give fp32 outputs) and the backend name. Under ``torch.compile`` both are constants of the
graph, and the backward runs on the same backend as its forward.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from .. import _registry

_lib = torch.library.Library("xscan", "DEF")


def _widen(out, fp32_output: bool):
    """The op's outputs in their final dtypes (a no-op where the backend already wrote them so)."""
    with _registry.fp32_output(fp32_output):
        return tuple(o.to(_registry.output_dtype(o.dtype)).contiguous() for o in out)


def define(name: str, args: Sequence[tuple[str, str]], outputs: int, fake: Callable) -> Callable:
    """Define ``xscan::<name>`` with ``args`` as (argument name, schema type) pairs, ``outputs``
    tensors out, ``fake(*args)`` giving their shapes in the input dtypes. Returns
    ``call(args, device)``, which picks the backend for ``device`` and runs the op."""
    params = ", ".join(f"{t} {n}" for n, t in args) + ", bool fp32_output, str backend"
    returns = "Tensor" if outputs == 1 else "(" + ", ".join(["Tensor"] * outputs) + ")"
    _lib.define(f"{name}({params}) -> {returns}")
    _lib.define(f"{name}_backward(Tensor[] grads, {params}) -> Tensor[]")
    tensor_slots = [i for i, (_, t) in enumerate(args) if t.startswith("Tensor")]

    def forward(*a):
        *a, fp32_output, backend = a
        with _registry.fp32_output(fp32_output):  # the backend reads it through _registry.output_dtype
            out = _registry.backend(backend).forwards[name](*a)
        out = _widen(out if outputs > 1 else (out,), fp32_output)
        return out if outputs > 1 else out[0]

    def fake_forward(*a):
        *a, fp32_output, _ = a
        out = fake(*a)
        out = _widen(out if outputs > 1 else (out,), fp32_output)
        return out if outputs > 1 else out[0]

    def backward(grads, *a):
        *a, _, backend = a
        result = _registry.backend(backend).backwards[name](list(grads), *a)
        empty = grads[0].new_empty(0)
        return [empty if g is None else g.contiguous() for g in result]

    def fake_backward(grads, *a):
        empty = grads[0].new_empty(0)
        return [empty if a[i] is None else a[i].new_empty(a[i].shape) for i in tensor_slots]

    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*(inputs[i] for i in tensor_slots))
        slots = set(tensor_slots)
        ctx.inputs = [None if i in slots else v for i, v in enumerate(inputs)]

    def autograd(ctx, *grads):
        inputs = list(ctx.inputs)
        for i, t in zip(tensor_slots, ctx.saved_tensors):
            inputs[i] = t
        result = getattr(torch.ops.xscan, f"{name}_backward")(list(grads), *inputs)
        out = [None] * len(inputs)
        for i, g in zip(tensor_slots, result):
            if inputs[i] is not None and ctx.needs_input_grad[i]:
                out[i] = g
        return tuple(out)

    qualname = f"xscan::{name}"
    _lib.impl(name, forward, "CompositeExplicitAutograd")
    _lib.impl(f"{name}_backward", backward, "CompositeExplicitAutograd")
    torch.library.register_fake(qualname, fake_forward, lib=_lib)
    torch.library.register_fake(f"{qualname}_backward", fake_backward, lib=_lib)
    torch.library.register_autograd(qualname, autograd, setup_context=setup_context, lib=_lib)
    op = getattr(torch.ops.xscan, name)

    def call(args: tuple, device: torch.device):
        return op(*args, _registry.fp32_output_enabled(), _registry.select(name, device, args))

    return call
