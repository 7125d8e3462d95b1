"""The C++/OpenMP CPU backend (``xscan._C``)."""
from __future__ import annotations

import importlib

from .. import _registry

try:
    importlib.import_module("xscan._C")
except ImportError as e:
    _registry.set_available("cpu", (), f"xscan._C is not built ({e}); run `pip install -e .`")
else:
    _registry.set_available("cpu", (), "xscan._C is built but has no scan kernels yet")
