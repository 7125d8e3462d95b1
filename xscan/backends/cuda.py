"""The hand-written CUDA backend (``xscan._C_cuda``)."""
from __future__ import annotations

import importlib

from .. import _registry

try:
    importlib.import_module("xscan._C_cuda")
except ImportError as e:
    _registry.set_available("cuda", (), f"xscan._C_cuda is not built ({e})")
else:
    _registry.set_available("cuda", (), "no CUDA kernels yet")
