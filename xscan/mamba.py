"""Code written against mamba-ssm, running on xscan.

    import xscan
    xscan.install_mamba_shim()          # before importing mamba_ssm
    from mamba_ssm import Mamba          # its selective_scan_fn, mamba_inner_fn, Mamba: on xscan

``install_mamba_shim()`` registers a stand-in for mamba-ssm's compiled extension module
``selective_scan_cuda`` whose ``fwd``/``bwd`` take mamba-ssm's arguments in its order and return
what its kernels return, computed by xscan's ops (any device, every backend). ``mamba_inner_fn`` is
mamba-ssm's fused Mamba-block inner function with its signature, on xscan's selective scan (its
causal convolution through ``torch.nn.functional.conv1d``, so no causal-conv1d build either).
"""
from __future__ import annotations

import sys
import types
import warnings
from typing import Optional

import torch
import torch.nn.functional as F

from ._registry import fp32_output
from .ops import selective_scan

SHIM_NAME = "selective_scan_cuda"


def _last_state_carrier(last: torch.Tensor) -> torch.Tensor:
    """mamba-ssm's kernels return their chunk states ``x`` (Bt, Dm, chunks, 2N) and its Python reads
    the last state as ``x[:, :, -1, 1::2]``: one chunk holding it there."""
    x = last.new_zeros(last.shape[0], last.shape[1], 1, 2 * last.shape[2])
    x[:, :, -1, 1::2] = last
    return x


def fwd(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False) -> list:
    """``selective_scan_cuda.fwd``: [out, x] or, with z, [out, x, out_z], where out is the scan
    before the gate (C . h + D u), out_z = out * silu(z), x carries the last state. As mamba-ssm's
    kernel, the gate multiplies the fp32 scan output: out and out_z are each rounded once."""
    with torch.no_grad(), fp32_output():
        out, last = selective_scan(u, delta, A, B, C, D, None, delta_bias, delta_softplus, return_last_state=True)
    result = [out.to(u.dtype), _last_state_carrier(last)]
    if z is not None:
        result.append((out * F.silu(z.float())).to(u.dtype))
    return result


def bwd(u, delta, A, B, C, D, z, delta_bias, dout, x=None, out=None, dz=None, delta_softplus=False,
        recompute_out_z=False) -> list:
    """``selective_scan_cuda.bwd``: [du, ddelta, dA, dB, dC, dD, ddelta_bias] (+ [dz] with z,
    + [out_z] with recompute_out_z). ``dout`` is the gradient of the gated output; the last state's
    gradient is not taken (as mamba-ssm). ``dz`` may be a buffer to write dz into. The scan output is
    recomputed in fp32 and the gate's derivatives taken in fp32 (none of them rounded to half
    precision on the way, as in mamba-ssm's kernel)."""
    inputs = dict(u=u, delta=delta, A=A, B=B, C=C, D=D, delta_bias=delta_bias)
    with torch.enable_grad(), fp32_output():
        leaves = {k: v.detach().requires_grad_() for k, v in inputs.items() if v is not None}
        a = dict(inputs, **leaves)
        y = selective_scan(a["u"], a["delta"], a["A"], a["B"], a["C"], a["D"], None, a["delta_bias"], delta_softplus)
        g_y = dout.to(y.dtype)
        extra = []
        if z is not None:
            zf = z.float()
            gate = F.silu(zf)
            sigmoid = torch.sigmoid(zf)
            dz_value = dout.float() * y.detach() * sigmoid * (1 + zf * (1 - sigmoid))
            g_y = dout.float() * gate
            if dz is not None:
                dz.copy_(dz_value)
            else:
                dz = dz_value.to(z.dtype)
            extra.append(dz)
            if recompute_out_z:
                extra.append((y.detach() * gate).to(u.dtype))
        grads = torch.autograd.grad(y, list(leaves.values()), g_y)
    g = dict(zip(leaves, grads))
    return [g["u"], g["delta"], g["A"], g["B"], g["C"], g.get("D"), g.get("delta_bias")] + extra


def install_mamba_shim(force: bool = False) -> types.ModuleType:
    """Register xscan as mamba-ssm's ``selective_scan_cuda`` module; call it before importing
    mamba_ssm. Where the real extension is already importable (or a stand-in installed), nothing is
    replaced unless ``force``; a warning says which one stays. Returns the module in use."""
    existing = sys.modules.get(SHIM_NAME)
    if existing is None and not force:
        try:
            import selective_scan_cuda as existing  # noqa: F401  (mamba-ssm's own build)
        except ImportError:
            existing = None
    if existing is not None and not force:
        if getattr(existing, "__xscan_shim__", False):
            return existing
        warnings.warn("xscan.install_mamba_shim: mamba-ssm's compiled selective_scan_cuda is loaded; keeping it "
                      "(install_mamba_shim(force=True) replaces it with xscan)", stacklevel=2)
        return existing
    shim = types.ModuleType(SHIM_NAME, "xscan's stand-in for mamba-ssm's selective_scan_cuda (xscan.mamba)")
    shim.fwd, shim.bwd, shim.__xscan_shim__ = fwd, bwd, True
    sys.modules[SHIM_NAME] = shim
    interface = sys.modules.get("mamba_ssm.ops.selective_scan_interface")
    if interface is not None:  # already imported (with force): its module-level name too
        interface.selective_scan_cuda = shim
    return shim


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    xf = x.float()
    return (xf * torch.rsqrt(xf.square().mean(-1, keepdim=True) + eps) * weight.float()).to(x.dtype)


def mamba_inner_fn(xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight, out_proj_weight,
                   out_proj_bias, A, B=None, C=None, D=None, delta_bias=None, B_proj_bias=None, C_proj_bias=None,
                   delta_softplus=True, checkpoint_lvl=1, b_rms_weight: Optional[torch.Tensor] = None,
                   c_rms_weight: Optional[torch.Tensor] = None, dt_rms_weight: Optional[torch.Tensor] = None,
                   b_c_dt_rms_eps=1e-6):
    """mamba-ssm's ``mamba_inner_fn`` (the Mamba block between in_proj and the output): causal
    depthwise conv + SiLU of x, x_proj to (dt, B, C), dt_proj, the selective scan gated by z, then
    out_proj. xz: (Bt, 2 Dm, L); returns (Bt, L, d_model). ``checkpoint_lvl`` is accepted for the
    signature (autograd keeps what it needs)."""
    L = xz.shape[-1]
    delta_rank = delta_proj_weight.shape[1]
    d_state = A.shape[-1] * (2 if A.is_complex() else 1)
    if torch.is_autocast_enabled(xz.device.type):
        dtype = torch.get_autocast_dtype(xz.device.type)
        x_proj_weight, delta_proj_weight, out_proj_weight = (w.to(dtype) for w in
                                                             (x_proj_weight, delta_proj_weight, out_proj_weight))
        out_proj_bias = None if out_proj_bias is None else out_proj_bias.to(dtype)
    x, z = xz.chunk(2, dim=1)
    width = conv1d_weight.shape[-1]
    x = F.silu(F.conv1d(x, conv1d_weight, conv1d_bias, padding=width - 1, groups=x.shape[1])[..., :L])
    x_dbl = F.linear(x.transpose(1, 2).reshape(-1, x.shape[1]), x_proj_weight)  # (Bt L, R + 2N)
    delta = (delta_proj_weight @ x_dbl[:, :delta_rank].t()).view(-1, xz.shape[0], L).transpose(0, 1)

    def per_token(t, bias, rms):  # (Bt L, N) -> (Bt, 1, N, L), or (Bt, 1, N/2, 2L) pairs for a complex A
        if bias is not None:
            t = t + bias.to(t.dtype)
        if rms is not None:
            t = _rms_norm(t, rms, b_c_dt_rms_eps)
        t = t.view(xz.shape[0], L, -1)
        if A.is_complex():
            return t.unflatten(-1, (-1, 2)).permute(0, 2, 1, 3).flatten(2).unsqueeze(1)
        return t.transpose(1, 2).unsqueeze(1)

    if B is None:
        B = per_token(x_dbl[:, delta_rank:delta_rank + d_state], B_proj_bias, b_rms_weight)
    if C is None:
        C = per_token(x_dbl[:, -d_state:], C_proj_bias, c_rms_weight)
    if dt_rms_weight is not None:
        delta = _rms_norm(delta.transpose(1, 2), dt_rms_weight, b_c_dt_rms_eps).transpose(1, 2)
    y = selective_scan(x, delta.to(x.dtype), A, B.to(x.dtype) if B.dim() > 2 else B,
                       C.to(x.dtype) if C.dim() > 2 else C, D, z, delta_bias, delta_softplus)
    return F.linear(y.transpose(1, 2), out_proj_weight, out_proj_bias)
