"""Argument checks shared by every public op: run before any kernel, errors name the argument.

Every dimension is symbolic ("Bt Dm L") or a literal size ("4"); a symbolic dimension is bound by
the first argument that has it and every later argument is checked against it, so each dimension a
kernel indexes is the same in every tensor that shares it. An error names the argument that
disagrees and the one that set the size.
"""
from __future__ import annotations

import torch

FLOATING = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class Checker:
    """Binds symbolic dimensions (``"Bt Dm L"``) across the arguments of one call and checks dtype,
    device and non-emptiness. Per-token tensors (``token=True``) must share one dtype."""

    def __init__(self, op: str, **dims: int):
        self.op, self.dims, self.device = op, dict(dims), None
        self.source: dict[str, str] = {}   # dimension -> the argument that set it
        self.token_dtype = None            # (dtype, argument) of the first per-token tensor

    def fail(self, message: str, exc=ValueError):
        raise exc(f"xscan.{self.op}: {message}")

    def expected(self, names, arg: str = "") -> str:
        parts = []
        for n in names:
            if n.isdigit() or n not in self.dims:
                parts.append(n)
            elif self.source.get(n, arg) != arg:
                parts.append(f"{n}={self.dims[n]} from {self.source[n]}")
            else:
                parts.append(f"{n}={self.dims[n]}")
        return "(" + ", ".join(parts) + ")"

    def bind(self, dim: str, size: int, arg: str) -> None:
        """Set a derived dimension (``L = H * W``), attributed to ``arg``."""
        self.dims[dim], self.source[dim] = size, arg

    def tensor(self, name: str, t, dims: str, optional: bool = False, token: bool = False,
               dtypes=FLOATING):
        names = dims.split()
        if t is None:
            if optional:
                return None
            self.fail(f"{name} is required", TypeError)
        if not isinstance(t, torch.Tensor):
            self.fail(f"{name} must be a torch.Tensor of shape {self.expected(names, name)}, got {type(t).__name__}",
                      TypeError)
        if t.dtype not in dtypes:
            kinds = "a real floating tensor (float16, bfloat16, float32 or float64)" if dtypes is FLOATING else \
                f"a tensor of dtype {', '.join(str(d) for d in dtypes)}"
            self.fail(f"{name} must be {kinds}, got {t.dtype}", TypeError)
        if token:
            if self.token_dtype is None:
                self.token_dtype = (t.dtype, name)
            elif t.dtype != self.token_dtype[0]:
                self.fail(f"{name} is {t.dtype} but {self.token_dtype[1]} is {self.token_dtype[0]}: the per-token "
                          f"inputs must share one dtype (cast them first)", TypeError)
        if self.device is None:
            self.device = t.device
        elif t.device != self.device:
            self.fail(f"{name} is on {t.device} but the other inputs are on {self.device}")
        if t.dim() != len(names):
            self.fail(f"{name} must have shape {self.expected(names, name)}, got {tuple(t.shape)}")
        for n, size in zip(names, t.shape):
            want = int(n) if n.isdigit() else self.dims.get(n)
            if want is not None and size != want:
                self.fail(f"{name} must have shape {self.expected(names, name)}, got {tuple(t.shape)}")
            if want is None:
                self.bind(n, size, name)
            if size == 0:
                self.fail(f"{name} has a zero-size dimension {n} (shape {tuple(t.shape)}); "
                          f"xscan ops need non-empty inputs")
        return t

    def choice(self, name: str, value, options):
        if value not in options:
            self.fail(f"{name} must be one of {options}, got {value!r}")

    def divides(self, small: str, big: str, what: str):
        if self.dims[big] % self.dims[small]:
            self.fail(f"{what}: {big}={self.dims[big]} (from {self.source.get(big, '?')}) is not a multiple of "
                      f"{small}={self.dims[small]} (from {self.source.get(small, '?')})")
