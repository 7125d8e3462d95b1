"""Triton kernels for the xscan scans (installed as ``xscan.triton_kernels``)."""
