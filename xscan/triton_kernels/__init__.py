"""Triton kernels for the xscan scans (installed as ``xscan.triton_kernels``).

``scan``/``routes``/``selective``: the chunked Mamba-1 scan over any route (selective_scan, ss2d,
es2d, cross_ss2d, interleave_ss2d); ``ssd``: the chunked Mamba-2 (SSD) scan of ssd_exchange;
``executor``: runs an op's ``xscan.spec.ScanSpec`` on them.

Triton decides at decoration time whether kernels run compiled or in its interpreter
(``TRITON_INTERPRET=1``, CPU tensors): import this package after setting the variable.
"""
import os


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"
