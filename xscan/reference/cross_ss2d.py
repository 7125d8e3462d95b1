"""Reference Cross SS2D (S4Fusion Algorithm 1)."""
from __future__ import annotations

import torch

from ..routes import cross_route
from .routed_scan import Routes, cached, routed_scan, routed_scan_backward
from .selective_scan import selective_scan


def interleave(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(..., L), (..., L) -> (..., 2L) as a_0, b_0, a_1, b_1, ..."""
    return torch.stack([a, b], dim=-1).flatten(-2)


@cached
def cross_ss2d_routes(Dm: int, H: int, W: int, device: torch.device) -> Routes:
    """Route k has 2L positions: position p is modality p % 2 at the route's (p // 2)-th token. The
    u and y sources are both modalities' maps side by side, the token sources both modalities'
    tokens side by side."""
    L = H * W
    s = torch.stack([cross_route(k, H, W, device) for k in range(4)])  # (4, L)
    token_at = interleave(s, s + L)                                     # (4, 2L): m * L + s
    pixel = interleave(s, s + Dm * L)                                   # m * Dm * L + s
    at = torch.arange(Dm, device=device)[None, :, None] * L + pixel[:, None, :]
    return Routes(u_at=at, token_at=token_at, y_at=at, S_u=2 * Dm * L, S_y=2 * Dm * L)


def _sources(u0, u1, dt0, dt1, B0, B1, C0, C1):
    Bt = u0.shape[0]
    return (torch.cat([u0.reshape(Bt, -1), u1.reshape(Bt, -1)], 1), torch.cat([dt0, dt1], -1),
            torch.cat([B0, B1], -1), torch.cat([C0, C1], -1))


def cross_ss2d(u0, u1, dt0, dt1, B0, B1, C0, C1, A, D=None, delta_bias=None, delta_softplus=True, out_dtype=None):
    """u_m: (Bt, Dm, H, W); dt_m: (Bt, 4, Dm, L); B_m, C_m: (Bt, 4, N, L) (spatial order); A: (4, Dm,
    N); D, delta_bias: (4, Dm). Route k scans I_1, V_1, I_2, V_2, ... along route k (2L positions), each
    token with its own modality's dt, B, C, one hidden state through both. Returns (y0, y1), each
    (Bt, Dm, H, W) in ``out_dtype`` (default u0's): the sum over routes of the outputs at that
    modality's positions."""
    Bt, Dm, H, W = u0.shape
    y = routed_scan(cross_ss2d_routes(Dm, H, W, u0.device), *_sources(u0, u1, dt0, dt1, B0, B1, C0, C1), A, D,
                    delta_bias, delta_softplus, out_dtype or u0.dtype)
    y0, y1 = y.view(Bt, 2, Dm, H, W).unbind(1)
    return y0, y1


def cross_ss2d_backward(dy0, dy1, u0, u1, dt0, dt1, B0, B1, C0, C1, A, D=None, delta_bias=None,
                        delta_softplus=True) -> dict:
    """Gradients of :func:`cross_ss2d` for the output gradients ``dy0``, ``dy1``, by argument name."""
    Bt, Dm, H, W = u0.shape
    dy = torch.cat([dy0.reshape(Bt, -1), dy1.reshape(Bt, -1)], 1)
    g = routed_scan_backward(cross_ss2d_routes(Dm, H, W, u0.device), dy, *_sources(u0, u1, dt0, dt1, B0, B1, C0, C1),
                             A, D, delta_bias, delta_softplus)
    g_u0, g_u1 = g.pop("u").view(Bt, 2, Dm, H, W).unbind(1)
    g_dt0, g_dt1 = g.pop("dt").chunk(2, -1)
    g_B0, g_B1 = g.pop("B").chunk(2, -1)
    g_C0, g_C1 = g.pop("C").chunk(2, -1)
    return dict(g, u0=g_u0, u1=g_u1, dt0=g_dt0, dt1=g_dt1, B0=g_B0, B1=g_B1, C0=g_C0, C1=g_C1)


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
