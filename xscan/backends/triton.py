"""The Triton backend (CUDA tensors; CPU tensors under TRITON_INTERPRET=1)."""
from __future__ import annotations

from .. import _registry

try:
    import triton  # noqa: F401
except ImportError as e:
    _registry.set_available("triton", (), f"triton is not installed ({e})")
else:
    _registry.set_available("triton", (), "no Triton kernels yet")
