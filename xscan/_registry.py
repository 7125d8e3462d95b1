"""Backends, their availability, and how each runs the ops.

A kernel backend (cpu, triton, cuda) is an ``Executor`` of ``xscan.spec.ScanSpec``s. The reference
backend runs each op's own pure-PyTorch functions instead (``ops``: op -> (forward, backward)), so
that the oracle shares nothing with the kernels' description of the ops. The ``torch.library``
custom ops in ``xscan.ops`` look a backend up by the name they were called with.
"""
from __future__ import annotations

import abc
import contextlib
import threading
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

BACKENDS = ("reference", "cpu", "triton", "cuda")
# Fastest first, per device type.
PREFERENCE = {"cpu": ("cpu", "reference"), "cuda": ("cuda", "triton", "reference")}


class Executor(abc.ABC):
    """What every kernel backend implements. Each method raises a clear error for what its kernels
    cannot take (``limits``) before any launch.

    limits(spec): that error, or nothing; checkpoints(spec): (shape, dtype) of the states its
    forward can save for its backward (the state at chunk starts), or None where it keeps none (then
    the ops never hand it any); forward(spec, checkpoints): the op's outputs, filling ``checkpoints``
    (a buffer of that shape) when given; backward(spec, grads, checkpoints): {argument name:
    gradient}, starting from the forward's checkpoints when given."""

    @abc.abstractmethod
    def limits(self, spec) -> None: ...

    def checkpoints(self, spec) -> Optional[tuple]:
        return None

    @abc.abstractmethod
    def forward(self, spec, checkpoints: Optional[torch.Tensor] = None) -> list: ...

    @abc.abstractmethod
    def backward(self, spec, grads: list, checkpoints: Optional[torch.Tensor] = None) -> dict: ...


@dataclass
class Backend:
    name: str
    devices: tuple[str, ...] = ()
    reason: Optional[str] = "not loaded"  # None when available
    executor: Optional[Executor] = None
    ops: dict[str, tuple[Callable, Callable]] = field(default_factory=dict)  # per-op (the reference)

    def runs(self, op: str) -> bool:
        return self.executor is not None or op in self.ops


_backends = {name: Backend(name) for name in BACKENDS}
_override = threading.local()
_fp32 = threading.local()


def backend(name: str) -> Backend:
    return _backends[name]


def set_available(name: str, devices: tuple[str, ...], reason: Optional[str] = None) -> None:
    b = _backends[name]
    b.devices, b.reason = devices, reason


def backends() -> dict[str, object]:
    """Backend name -> True if it can run, else the reason it cannot."""
    return {n: True if b.reason is None else b.reason for n, b in _backends.items()}


@contextlib.contextmanager
def use_backend(name: str):
    """Run every xscan op inside the block on backend ``name`` (an error if it cannot)."""
    if name not in _backends:
        raise ValueError(f"xscan.use_backend: unknown backend {name!r}; expected one of {BACKENDS}")
    b = _backends[name]
    if b.reason is not None:
        raise RuntimeError(f"xscan.use_backend: backend {name!r} is not available: {b.reason}")
    previous = getattr(_override, "name", None)
    _override.name = name
    try:
        yield
    finally:
        _override.name = previous


@contextlib.contextmanager
def fp32_output(enabled: bool = True):
    """Inside the block, ops on fp16/bf16 inputs return fp32 outputs: the kernels' fp32 accumulators,
    not rounded to half precision. Gradients keep their inputs' dtypes."""
    previous = fp32_output_enabled()
    _fp32.enabled = bool(enabled)
    try:
        yield
    finally:
        _fp32.enabled = previous


def fp32_output_enabled() -> bool:
    return getattr(_fp32, "enabled", False)


def _runs(b: Backend, op: str, device_type: str) -> bool:
    return b.reason is None and (device_type in b.devices or "*" in b.devices) and b.runs(op)


def select(op: str, device: torch.device) -> str:
    """The backend that runs ``op`` on ``device``: the ``use_backend`` override, else the fastest
    available."""
    name = getattr(_override, "name", None)
    if name is not None:
        b = _backends[name]
        if not _runs(b, op, device.type):
            why = b.reason or (f"it has no {op!r} kernel" if not b.runs(op)
                               else f"it runs on {', '.join(b.devices)} tensors, not {device.type}")
            raise RuntimeError(f"xscan.{op}: backend {name!r} (from use_backend) cannot run here: {why}")
        return name
    return next((n for n in PREFERENCE.get(device.type, ("reference",)) if _runs(_backends[n], op, device.type)),
                "reference")


def selected_backend(op: str = "selective_scan", device="cpu") -> str:
    """Which backend an op would run on for tensors on ``device`` (honours ``use_backend``)."""
    return select(op, torch.device(device))
