"""xscan: fused cross-modal selective scans for multi-modal image fusion.

Ops (docs/ops.md): :func:`selective_scan` (mamba_ssm's ``selective_scan_fn``), :func:`ss2d`, :func:`es2d`,
``xscan.cross_ss2d`` (callable; the layer ``xscan.cross_ss2d.CrossSS2D``), :func:`interleave_ss2d` /
:func:`realign`, :func:`ssd_exchange`. Layers: :class:`SS2D`. Networks: ``xscan.models``.
Backends: :func:`backends`, :func:`use_backend`, :func:`selected_backend`; :func:`fp32_output` (fp32 outputs
for fp16/bf16 inputs). mamba-ssm's code on xscan: :func:`install_mamba_shim`, :func:`mamba_inner_fn`.
"""
from . import backends as _backends_pkg
from ._registry import backends, fp32_output, selected_backend, use_backend
from .ops import es2d, interleave_ss2d, selective_scan, ss2d, ssd_exchange
from .reference.realign import realign

_backends_pkg.load_all()

from . import cross_ss2d  # noqa: E402  (a callable module: the op, and .CrossSS2D)
from .layers import SS2D  # noqa: E402
from .mamba import install_mamba_shim, mamba_inner_fn  # noqa: E402

__version__ = "0.1.0"
__all__ = ["selective_scan", "ss2d", "es2d", "cross_ss2d", "interleave_ss2d", "realign", "ssd_exchange",
           "SS2D", "backends", "use_backend", "selected_backend", "fp32_output", "install_mamba_shim",
           "mamba_inner_fn"]
