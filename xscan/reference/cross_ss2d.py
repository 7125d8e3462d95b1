"""Reference Cross SS2D (SPEC section 3, S4Fusion Algorithm 1)."""
from __future__ import annotations

import torch

from ..routes import cross_route
from .selective_scan import selective_scan


def interleave(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(..., L), (..., L) -> (..., 2L) as a_0, b_0, a_1, b_1, ..."""
    return torch.stack([a, b], dim=-1).flatten(-2)


def cross_ss2d(u0, u1, dt0, dt1, B0, B1, C0, C1, A, D=None, delta_bias=None, delta_softplus=True):
    """u_m: (Bt, Dm, H, W); dt_m: (Bt, K, Dm, L); B_m, C_m: (Bt, K, N, L) (spatial order); A: (K, Dm,
    N); D, delta_bias: (K, Dm). Route k scans I_1, V_1, I_2, V_2, ... along route k (2L positions), each
    token with its own modality's dt, B, C, one hidden state through both. Returns (y0, y1), each
    (Bt, Dm, H, W): the sum over routes of the outputs at that modality's positions."""
    Bt, Dm, H, W = u0.shape
    u0, u1 = u0.reshape(Bt, Dm, H * W), u1.reshape(Bt, Dm, H * W)
    y0 = y1 = None
    for k in range(dt0.shape[1]):
        s = cross_route(k, H, W, u0.device)
        y = selective_scan(
            interleave(u0[..., s], u1[..., s]), interleave(dt0[:, k][..., s], dt1[:, k][..., s]), A[k],
            interleave(B0[:, k][..., s], B1[:, k][..., s]), interleave(C0[:, k][..., s], C1[:, k][..., s]),
            None if D is None else D[k], None, None if delta_bias is None else delta_bias[k],
            delta_softplus)
        r0 = torch.empty_like(u0, dtype=y.dtype).index_copy_(-1, s, y[..., 0::2])
        r1 = torch.empty_like(u1, dtype=y.dtype).index_copy_(-1, s, y[..., 1::2])
        y0, y1 = (r0, r1) if y0 is None else (y0 + r0, y1 + r1)
    return y0.reshape(Bt, Dm, H, W), y1.reshape(Bt, Dm, H, W)


def cross_ss2d_materialized(u0, u1, dt0, dt1, B0, B1, C0, C1, A, D=None, delta_bias=None,
                            delta_softplus=True, scan=selective_scan):
    """The public S4Fusion code's path (``FusionBlock.forward_core``): build the (Bt, K, Dm, 2L)
    flipped/transposed/interleaved copies with torch ops and run one selective scan over
    (Bt, K*Dm, 2L) with B, C: (Bt, K, N, 2L). ``scan`` is any mamba-compatible ``selective_scan_fn``.
    An independent formulation of ``cross_ss2d`` and the baseline the benchmarks compare against."""
    Bt, Dm, H, W = u0.shape
    L, K = H * W, dt0.shape[1]

    def routes(x):  # (Bt, C, H, W) -> (Bt, 4, C, L) in the order hf, vf, hb, vb
        hw_wh = torch.stack([x.flatten(2), x.transpose(2, 3).flatten(2)], dim=1)
        return torch.cat([hw_wh, hw_wh.flip(-1)], dim=1)

    def per_token(t):  # (Bt, K, C, L) spatial order -> route k's order, as if projected from route k
        return torch.stack([routes(t[:, k].reshape(Bt, -1, H, W))[:, k] for k in range(K)], dim=1)

    xs = interleave(routes(u0), routes(u1)).reshape(Bt, K * Dm, 2 * L)
    dts = interleave(per_token(dt0), per_token(dt1)).reshape(Bt, K * Dm, 2 * L)
    Bs = interleave(per_token(B0), per_token(B1))
    Cs = interleave(per_token(C0), per_token(C1))
    out = scan(xs, dts, A.reshape(K * Dm, -1), Bs, Cs, None if D is None else D.reshape(-1), None,
               None if delta_bias is None else delta_bias.reshape(-1), delta_softplus).view(Bt, K, Dm, 2 * L)

    def recover(y):  # (Bt, K, Dm, L) route order -> (Bt, Dm, H, W), summed over the routes
        inv = y[:, 2:4].flip(-1)
        wh = y[:, 1].view(Bt, Dm, W, H).transpose(2, 3).reshape(Bt, Dm, L)
        inv_wh = inv[:, 1].view(Bt, Dm, W, H).transpose(2, 3).reshape(Bt, Dm, L)
        return (y[:, 0] + inv[:, 0] + wh + inv_wh).view(Bt, Dm, H, W)

    return recover(out[..., 0::2]), recover(out[..., 1::2])
