"""Argument checks shared by every public op: run before any kernel, errors name the argument."""
from __future__ import annotations

import torch

FLOATING = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class Checker:
    """Binds symbolic dimensions (``"Bt Dm L"``) across the arguments of one call and checks dtype,
    device and non-emptiness."""

    def __init__(self, op: str, **dims: int):
        self.op, self.dims, self.device = op, dict(dims), None

    def fail(self, message: str, exc=ValueError):
        raise exc(f"xscan.{self.op}: {message}")

    def expected(self, names) -> str:
        parts = [f"{n}={self.dims[n]}" if n in self.dims and not n.isdigit() else n for n in names]
        return "(" + ", ".join(parts) + ")"

    def tensor(self, name: str, t, dims: str, optional: bool = False):
        names = dims.split()
        if t is None:
            if optional:
                return None
            self.fail(f"{name} is required", TypeError)
        if not isinstance(t, torch.Tensor):
            self.fail(f"{name} must be a torch.Tensor of shape {self.expected(names)}, got {type(t).__name__}",
                      TypeError)
        if t.dtype not in FLOATING:
            self.fail(f"{name} must be a real floating tensor (float16, bfloat16, float32 or float64), "
                      f"got {t.dtype}", TypeError)
        if self.device is None:
            self.device = t.device
        elif t.device != self.device:
            self.fail(f"{name} is on {t.device} but the other inputs are on {self.device}")
        if t.dim() != len(names):
            self.fail(f"{name} must have shape {self.expected(names)}, got {tuple(t.shape)}")
        for n, size in zip(names, t.shape):
            want = int(n) if n.isdigit() else self.dims.get(n)
            if want is not None and size != want:
                self.fail(f"{name} must have shape {self.expected(names)}, got {tuple(t.shape)}")
            if want is None:
                self.dims[n] = size
            if size == 0:
                self.fail(f"{name} has a zero-size dimension {n} (shape {tuple(t.shape)}); "
                          f"xscan ops need non-empty inputs")
        return t

    def choice(self, name: str, value, options):
        if value not in options:
            self.fail(f"{name} must be one of {options}, got {value!r}")

    def divides(self, small: str, big: str, what: str):
        if self.dims[big] % self.dims[small]:
            self.fail(f"{what}: {big}={self.dims[big]} is not a multiple of {small}={self.dims[small]}")
