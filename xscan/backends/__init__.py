"""Backends register their kernels with ``xscan._registry`` on import. A backend that cannot load
records why (``xscan.backends()``) instead of failing the import of xscan."""
from __future__ import annotations

import importlib

from .. import _registry


def load_all() -> None:
    for name in ("reference", "cpu", "triton", "cuda"):
        try:
            importlib.import_module(f"{__name__}.{name}")
        except Exception as e:  # a broken backend must not break `import xscan`
            _registry.set_available(name, (), f"failed to load: {type(e).__name__}: {e}")
