"""Reference cross-modal SSD exchange (SPEC section 6, DIFF-MF eqs. 4-6)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .._registry import output_dtype
from .selective_scan import accumulate_dtype


def ssd_scan(x, dt, A, B, C, D=None, dt_bias=None, dt_softplus=False):
    """Mamba-2 SSM as the sequential recurrence with scalar A per head.

    x: (Bt, L, nh, P); dt: (Bt, L, nh); A: (nh,); B, C: (Bt, L, G, N) with head h using group
    h // (nh/G); D: (nh,). Per head: h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T (P x N state),
    y_t = h_t C_t + D x_t."""
    out_dtype, acc = output_dtype(x.dtype), accumulate_dtype(x.dtype)
    Bt, L, nh, P = x.shape
    x, dt, A = x.to(acc), dt.to(acc), A.to(acc)
    if dt_bias is not None:
        dt = dt + dt_bias.to(acc)
    if dt_softplus:
        dt = F.softplus(dt)
    rep = nh // B.shape[2]
    B = B.to(acc).repeat_interleave(rep, dim=2)
    C = C.to(acc).repeat_interleave(rep, dim=2)
    h = x.new_zeros(Bt, nh, P, B.shape[-1])
    ys = []
    for t in range(L):
        dt_t = dt[:, t, :, None, None]
        h = torch.exp(dt_t * A[:, None, None]) * h + dt_t * x[:, t, :, :, None] * B[:, t, :, None, :]
        ys.append((h * C[:, t, :, None, :]).sum(-1))
    y = torch.stack(ys, dim=1) if ys else x.new_zeros(Bt, 0, nh, P)
    if D is not None:
        y = y + D.to(acc)[:, None] * x
    return y.to(out_dtype)


def ssd_exchange(x0, x1, dt0, dt1, A, B0, B1, C0, C1, D=None, dt_bias=None, dt_softplus=False):
    """Each modality's input read out through the other modality's B and C:
    ``y0 = SSM(x0, dt0, B1, C1)``, ``y1 = SSM(x1, dt1, B0, C0)``; A, D and dt_bias are shared."""
    return (ssd_scan(x0, dt0, A, B1, C1, D, dt_bias, dt_softplus),
            ssd_scan(x1, dt1, A, B0, C0, D, dt_bias, dt_softplus))
