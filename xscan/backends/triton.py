"""The Triton backend: CUDA tensors, and CPU tensors under TRITON_INTERPRET=1 (Triton's interpreter).

Kernels live in ``xscan.triton_kernels``. Triton fixes interpreted vs compiled when a kernel is
decorated, so the kernels are imported only once the backend is usable; ``refresh()`` re-reads the
environment (for test set-ups that set TRITON_INTERPRET after importing xscan)."""
from __future__ import annotations

import importlib
import os

import torch

from .. import _registry


def _devices() -> tuple:
    devices = ("cuda",) if torch.cuda.is_available() else ()
    if os.environ.get("TRITON_INTERPRET") == "1":
        devices += ("cpu",)
    return devices


def _limits(op):
    def check(*args):
        return importlib.import_module("xscan.triton_kernels.ops").check_limits(op, *args)
    return check


def _lazy(op: str, index: int):
    """The op's forward (index 0) or backward (1), importing the kernels on first use."""
    def call(*args):
        return importlib.import_module("xscan.triton_kernels.ops").OPS[op][index](*args)
    return call


def refresh() -> None:
    """(Re)register the ops and record on which devices they run, or why they cannot."""
    try:
        importlib.import_module("triton")
    except Exception as e:  # missing or broken triton must not break `import xscan`
        _registry.set_available("triton", (), f"triton cannot be imported ({type(e).__name__}: {e})")
        return
    devices = _devices()
    if not devices:
        _registry.set_available("triton", (), "no CUDA device; set TRITON_INTERPRET=1 (before importing xscan) "
                                              "to run the kernels on CPU tensors in Triton's interpreter")
        return
    for op in ("selective_scan", "ss2d", "es2d", "cross_ss2d", "interleave_ss2d", "ssd_exchange"):
        _registry.register("triton", op, _lazy(op, 0), _lazy(op, 1), _limits(op))
    _registry.set_available("triton", devices, None)


refresh()
