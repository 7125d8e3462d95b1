"""Backward through autograd of a differentiable forward (the reference backend's backward)."""
from __future__ import annotations

import torch


def autograd_backward(forward):
    """``forward(*args) -> tensor or tuple`` -> ``backward(grads, *args) -> [grad per tensor arg]``."""

    def backward(grads, *args):
        with torch.enable_grad():
            leaves = [a.detach().requires_grad_() if isinstance(a, torch.Tensor) else a for a in args]
            outs = forward(*leaves)
            outs = outs if isinstance(outs, tuple) else (outs,)
            wrt = [x for x in leaves if isinstance(x, torch.Tensor)]
            got = torch.autograd.grad(outs, wrt, grads, allow_unused=True)
        return [torch.zeros_like(x) if g is None else g for x, g in zip(wrt, got)]

    return backward
