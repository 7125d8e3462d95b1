"""The Triton backend: CUDA tensors, and CPU tensors under TRITON_INTERPRET=1 (Triton's interpreter).

Kernels live in ``xscan.triton_kernels``; ``xscan.triton_kernels.executor`` runs the ops' ScanSpecs.
Triton fixes interpreted vs compiled when a kernel is decorated, so the kernels are imported only
once the backend is usable; ``refresh()`` re-reads the environment (for test set-ups that set
TRITON_INTERPRET after importing xscan, before any kernel ran)."""
from __future__ import annotations

import os

import torch

from .. import _registry


def _devices() -> tuple:
    devices = ("cuda",) if torch.cuda.is_available() else ()
    if os.environ.get("TRITON_INTERPRET") == "1":
        devices += ("cpu",)
    return devices


def refresh() -> None:
    """(Re)register the ops and record on which devices they run, or why they cannot."""
    devices = _devices()
    if not devices:
        _registry.set_available("triton", (), "no CUDA device; set TRITON_INTERPRET=1 (before the first scan) "
                                              "to run the kernels on CPU tensors in Triton's interpreter")
        return
    try:
        from ..triton_kernels.executor import TritonExecutor
    except Exception as e:  # missing or broken triton must not break `import xscan`
        _registry.set_available("triton", (), f"the triton kernels cannot be loaded ({type(e).__name__}: {e})")
        return
    _registry.backend("triton").executor = TritonExecutor()
    _registry.set_available("triton", devices, None)


refresh()
