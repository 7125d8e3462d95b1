"""Triton kernels for the xscan scans (installed as ``xscan.triton_kernels``).

``scan``/``routes``: the chunked Mamba-1 scan over any route (selective_scan, ss2d, es2d, cross_ss2d,
interleave_ss2d); ``ssd``: the chunked Mamba-2 (SSD) scan of ssd_exchange; ``ops``: host-side
launchers with the backend contract of ``xscan._registry``.

Triton decides at decoration time whether kernels run compiled or in its interpreter
(``TRITON_INTERPRET=1``, CPU tensors): import this package after setting the variable.
"""
import os


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"
