"""One ``torch.library`` custom-op pair (forward, backward) per scan, dispatched by backend name.

The forward op ``xscan::<name>`` and its backward ``xscan::<name>_backward`` both take the backend as
their last (string) argument, chosen by the public wrapper before the call: under ``torch.compile`` it
is a constant of the graph, and the backward runs on the same backend as its forward.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from .. import _registry

_lib = torch.library.Library("xscan", "DEF")


def define(name: str, args: Sequence[tuple[str, str]], outputs: int, fake: Callable) -> Callable:
    """Define ``xscan::<name>`` with ``args`` as (argument name, schema type) pairs, ``outputs``
    tensors out, ``fake(*args)`` giving their shapes. Returns a caller ``f(*args, backend)``."""
    params = ", ".join(f"{t} {n}" for n, t in args) + ", str backend"
    returns = "Tensor" if outputs == 1 else "(" + ", ".join(["Tensor"] * outputs) + ")"
    _lib.define(f"{name}({params}) -> {returns}")
    _lib.define(f"{name}_backward(Tensor[] grads, {params}) -> Tensor[]")
    tensor_slots = [i for i, (_, t) in enumerate(args) if t.startswith("Tensor")]

    def forward(*a):
        *a, backend = a
        out = _registry.backend(backend).forwards[name](*a)
        if outputs == 1:
            return out.contiguous()
        return tuple(o.contiguous() for o in out)

    def backward(grads, *a):
        *a, backend = a
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
    torch.library.register_fake(qualname, lambda *a: fake(*a[:-1]), lib=_lib)
    torch.library.register_fake(f"{qualname}_backward", fake_backward, lib=_lib)
    torch.library.register_autograd(qualname, autograd, setup_context=setup_context, lib=_lib)
    return getattr(torch.ops.xscan, name)
