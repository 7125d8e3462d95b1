"""What users run today instead of xscan, for the benchmarks to compare against, side by side.

- ``materialised(op, scan)``: the public networks' way for the 2-D ops: build the flipped,
  transposed, sub-sampled or interleaved copies with torch ops, run one selective scan over them
  (``scan``: any mamba-compatible ``selective_scan_fn``: mamba-ssm's, or xscan's own), merge back.
- ``mambapy_selective_scan``: mambapy's parallel scan (``pip install mambapy``, the pure-PyTorch
  Mamba that CPU users run) with mamba-ssm's softplus, delta_bias and z maths around it.
- ``mamba_ssm_scan(device)``: mamba-ssm's ``selective_scan_fn`` (its CUDA kernel) on a GPU, its
  ``selective_scan_ref`` elsewhere, when installed.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from . import reference
from .reference.realign import realign
from .routes import atrous_sublattice


def load_mamba_selective_scan():
    """``mamba_ssm.ops.selective_scan_interface`` (``selective_scan_fn``, ``selective_scan_ref``), or
    None when mamba-ssm is not installed. Where its CUDA extension is missing (a CPU install), the
    package ``__init__`` would fail on it, so the module is loaded with the package body skipped and
    ``selective_scan_cuda`` stubbed: ``selective_scan_ref`` works, ``selective_scan_fn`` does not."""
    try:
        return importlib.import_module("mamba_ssm.ops.selective_scan_interface")
    except ImportError:
        pass
    spec = importlib.util.find_spec("mamba_ssm") if "mamba_ssm" not in sys.modules else None
    if spec is None or not spec.submodule_search_locations:
        return None
    package = types.ModuleType("mamba_ssm")
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules["mamba_ssm"] = package
    sys.modules.setdefault("selective_scan_cuda", types.ModuleType("selective_scan_cuda"))
    try:
        return importlib.import_module("mamba_ssm.ops.selective_scan_interface")
    except ImportError:
        return None


def _cross_routes(x: torch.Tensor) -> torch.Tensor:
    """VMamba's CrossScan: (Bt, C, H, W) -> (Bt, 4, C, L), the copies hf, vf, hb, vb."""
    hw_wh = torch.stack([x.flatten(2), x.transpose(2, 3).flatten(2)], dim=1)
    return torch.cat([hw_wh, hw_wh.flip(-1)], dim=1)


def _cross_merge(y: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """VMamba's CrossMerge: (Bt, 4, C, L) route order -> (Bt, C, H, W), the routes summed."""
    Bt, _, C, L = y.shape
    y = y[:, 0:2] + y[:, 2:4].flip(-1)
    return (y[:, 0] + y[:, 1].view(Bt, C, W, H).transpose(2, 3).reshape(Bt, C, L)).view(Bt, C, H, W)


def _route_order(t: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """Per-token tensors (Bt, 4, C, L) in spatial order -> each route's own order (as if projected
    from route k's copy, which is how the public code gets them)."""
    Bt, K = t.shape[:2]
    return torch.stack([_cross_routes(t[:, k].reshape(Bt, -1, H, W))[:, k] for k in range(K)], dim=1)


def _flat(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if t is None else t.reshape(-1)


def materialised_ss2d(u, dt, B, C, A, D=None, delta_bias=None, delta_softplus=True, scan=None):
    Bt, Dm, H, W = u.shape
    L = H * W
    y = scan(_cross_routes(u).reshape(Bt, 4 * Dm, L), _route_order(dt, H, W).reshape(Bt, 4 * Dm, L),
             A.reshape(4 * Dm, -1), _route_order(B, H, W), _route_order(C, H, W), _flat(D), None,
             _flat(delta_bias), delta_softplus)
    return _cross_merge(y.view(Bt, 4, Dm, L), H, W)


def materialised_es2d(u, dt, B, C, A, D=None, delta_bias=None, delta_softplus=True, scan=None):
    """FusionMamba's way: the four stride-2 sub-lattices as copies (padded to even size), column-major
    ones transposed, one scan, each route written back to its own sub-lattice, the padding cropped."""
    Bt, Dm, H, W = u.shape
    Hq, Wq = (H + 1) // 2, (W + 1) // 2
    subs = []
    for k in range(4):
        s = atrous_sublattice(u, k)
        subs.append(s.transpose(2, 3) if k % 2 else s)
    xs = torch.stack([s.flatten(2) for s in subs], dim=1).reshape(Bt, 4 * Dm, Hq * Wq)

    def order(t):  # route k's per-token tensors are row-major over its sub-lattice: column-major copies
        return torch.stack([t[:, k].unflatten(-1, (Hq, Wq)).transpose(-1, -2).flatten(-2) if k % 2 else t[:, k]
                            for k in range(4)], dim=1)

    y = scan(xs, order(dt).reshape(Bt, 4 * Dm, -1), A.reshape(4 * Dm, -1), order(B), order(C), _flat(D), None,
             _flat(delta_bias), delta_softplus).view(Bt, 4, Dm, -1)
    out = u.new_zeros(Bt, Dm, 2 * Hq, 2 * Wq, dtype=y.dtype)
    for k in range(4):
        h0, w0 = k % 2, k // 2
        yk = y[:, k].view(Bt, Dm, Wq, Hq).transpose(2, 3) if k % 2 else y[:, k].view(Bt, Dm, Hq, Wq)
        out[:, :, h0::2, w0::2] = yk
    return out[:, :, :H, :W]


def materialised_cross_ss2d(*args, scan=None, **kwargs):
    return reference.cross_ss2d_materialized(*args, **kwargs, scan=scan)


def materialised_interleave_ss2d(u0, u1, dt, B, C, A, D=None, delta_bias=None, delta_softplus=True, mode="column",
                                 axis="channel", scan=None):
    return materialised_ss2d(realign(u0, u1, mode, axis), dt, B, C, A, D, delta_bias, delta_softplus, scan=scan)


MATERIALISED = {"ss2d": materialised_ss2d, "es2d": materialised_es2d, "cross_ss2d": materialised_cross_ss2d,
                "interleave_ss2d": materialised_interleave_ss2d}


def materialised(op: str, scan: Callable) -> Optional[Callable]:
    """The seeds' way for ``op`` with ``scan`` as the selective scan, or None (no such path)."""
    path = MATERIALISED.get(op)
    return None if path is None else (lambda *args, **kwargs: path(*args, **kwargs, scan=scan))


def mambapy_selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """mambapy's pscan with mamba-ssm's softplus, delta_bias and z gate, mamba's layouts in and out
    (B, C: (Bt, N, L) or one group (Bt, 1, N, L))."""
    pscan = importlib.import_module("mambapy.pscan").pscan
    x, dt = u.transpose(1, 2), delta.transpose(1, 2)  # (Bt, L, Dm)
    if delta_bias is not None:
        dt = dt + delta_bias
    if delta_softplus:
        dt = F.softplus(dt)
    B, C = (X.squeeze(1) if X.dim() == 4 else X for X in (B, C))
    hs = pscan(torch.exp(dt.unsqueeze(-1) * A), dt.unsqueeze(-1) * B.transpose(1, 2).unsqueeze(2) * x.unsqueeze(-1))
    y = (hs @ C.transpose(1, 2).unsqueeze(-1)).squeeze(3)
    if D is not None:
        y = y + D * x
    if z is not None:
        y = y * F.silu(z.transpose(1, 2))
    return y.transpose(1, 2)


def has_mambapy() -> bool:
    return importlib.util.find_spec("mambapy") is not None


def mamba_ssm_scan(device: torch.device) -> Optional[tuple[str, Callable]]:
    """(name, function): mamba-ssm's CUDA ``selective_scan_fn`` on a GPU (its own build, not xscan's
    shim), its ``selective_scan_ref`` on CPU; None where mamba-ssm is not installed."""
    mamba = load_mamba_selective_scan()
    if mamba is None:
        return None
    if device.type == "cuda":
        ext = getattr(mamba, "selective_scan_cuda", None)
        if ext is None or getattr(ext, "__xscan_shim__", False) or not hasattr(ext, "fwd"):
            return None
        return "mamba_ssm.selective_scan_fn", mamba.selective_scan_fn
    return "mamba_ssm.selective_scan_ref", mamba.selective_scan_ref
