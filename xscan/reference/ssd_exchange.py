"""Reference cross-modal SSD exchange (DIFF-MF eqs. 4-6)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..shapes import accumulate_dtype
from .selective_scan import selective_scan_backward


def ssd_scan(x, dt, A, B, C, D=None, dt_bias=None, dt_softplus=False, out_dtype=None):
    """Mamba-2 SSM as the sequential recurrence with scalar A per head.

    x: (Bt, L, nh, P); dt: (Bt, L, nh); A: (nh,); B, C: (Bt, L, G, N) with head h using group
    h // (nh/G); D: (nh,). Per head: h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T (P x N state),
    y_t = h_t C_t + D x_t. Returns y in ``out_dtype`` (default x's)."""
    acc = accumulate_dtype(x.dtype)
    Bt, L, nh, P = x.shape
    x_, dt, A_ = x.to(acc), dt.to(acc), A.to(acc)
    if dt_bias is not None:
        dt = dt + dt_bias.to(acc)
    if dt_softplus:
        dt = F.softplus(dt)
    rep = nh // B.shape[2]
    B = B.to(acc).repeat_interleave(rep, dim=2)
    C = C.to(acc).repeat_interleave(rep, dim=2)
    h = x_.new_zeros(Bt, nh, P, B.shape[-1])
    ys = []
    for t in range(L):
        dt_t = dt[:, t, :, None, None]
        h = torch.exp(dt_t * A_[:, None, None]) * h + dt_t * x_[:, t, :, :, None] * B[:, t, :, None, :]
        ys.append((h * C[:, t, :, None, :]).sum(-1))
    y = torch.stack(ys, dim=1)
    if D is not None:
        y = y + D.to(acc)[:, None] * x_
    return y.to(out_dtype or x.dtype)


def ssd_scan_backward(dy, x, dt, A, B, C, D=None, dt_bias=None, dt_softplus=False) -> dict:
    """Gradients of :func:`ssd_scan`: the same SSM is a Mamba-1 selective scan over the nh*P
    channels (channel (h, p) with head h's dt, A, D and dt_bias, its group's B and C), so its
    backward is ``selective_scan_backward`` with the shared parameters' gradients summed over P."""
    Bt, L, nh, P = x.shape
    N = B.shape[-1]

    def per_channel(t):  # (nh,) -> (nh*P,)
        return None if t is None else t.repeat_interleave(P)

    g = selective_scan_backward(
        dy.permute(0, 2, 3, 1).reshape(Bt, nh * P, L), None, x.permute(0, 2, 3, 1).reshape(Bt, nh * P, L),
        dt.permute(0, 2, 1).repeat_interleave(P, dim=1), A[:, None, None].expand(nh, P, N).reshape(nh * P, N),
        B.permute(0, 2, 3, 1), C.permute(0, 2, 3, 1), per_channel(D), None, per_channel(dt_bias), dt_softplus)

    def per_head(t):  # (..., nh*P) -> (..., nh): the head's channels summed
        return None if t is None else t.unflatten(-1, (nh, P)).sum(-1)

    return dict(x=g["u"].view(Bt, nh, P, L).permute(0, 3, 1, 2), dt=per_head(g["delta"].transpose(1, 2)),
                A=per_head(g["A"].sum(1)), B=g["B"].permute(0, 3, 1, 2), C=g["C"].permute(0, 3, 1, 2),
                D=per_head(g["D"]), dt_bias=per_head(g["delta_bias"]))


def ssd_exchange(x0, x1, dt0, dt1, A, B0, B1, C0, C1, D=None, dt_bias=None, dt_softplus=False, out_dtype=None):
    """Each modality's input read out through the other modality's B and C:
    ``y0 = SSM(x0, dt0, B1, C1)``, ``y1 = SSM(x1, dt1, B0, C0)``; A, D and dt_bias are shared."""
    return (ssd_scan(x0, dt0, A, B1, C1, D, dt_bias, dt_softplus, out_dtype),
            ssd_scan(x1, dt1, A, B0, C0, D, dt_bias, dt_softplus, out_dtype))


def ssd_exchange_backward(dy0, dy1, x0, x1, dt0, dt1, A, B0, B1, C0, C1, D=None, dt_bias=None,
                          dt_softplus=False) -> dict:
    """Gradients of :func:`ssd_exchange` by argument name: the shared A, D, dt_bias get both
    directions' sums; B_m, C_m the gradients of the direction that reads them."""
    g0 = ssd_scan_backward(dy0, x0, dt0, A, B1, C1, D, dt_bias, dt_softplus)
    g1 = ssd_scan_backward(dy1, x1, dt1, A, B0, C0, D, dt_bias, dt_softplus)

    def both(name):
        return None if g0[name] is None else g0[name] + g1[name]

    return dict(x0=g0["x"], x1=g1["x"], dt0=g0["dt"], dt1=g1["dt"], A=both("A"), B0=g1["B"], B1=g0["B"],
                C0=g1["C"], C1=g0["C"], D=both("D"), dt_bias=both("dt_bias"))
