"""Reference channel-interleaved scanning (DIFF-MF spatial exchange, eqs. 9-10)."""
from __future__ import annotations

import torch

from ..routes import cross_route
from ..shapes import realigned_shape
from .routed_scan import Routes, cached, routed_scan, routed_scan_backward


def realign(m0: torch.Tensor, m1: torch.Tensor, mode: str = "column", axis: str = "channel") -> torch.Tensor:
    """Materialise DIFF-MF's realignment of two (Bt, C, H, W) maps.

    - ``column``: interleave, ``[M0^1, M1^1, M0^2, M1^2, ...]`` along ``axis``;
    - ``row``: ``[M0^1 .. M0^C, M1^1 .. M1^C]`` along ``axis`` (on the width axis: each row's M0 half,
      then its M1 half);
    - ``concat``: ``Concat(M0, M1)`` along the channel axis whatever ``axis`` says (the paper's eq. 10);
      on the channel axis it equals ``row``.

    axis="channel" gives (Bt, 2C, H, W); axis="width" gives (Bt, C, H, 2W) for column and row.
    """
    if mode == "concat" or (mode == "row" and axis == "channel"):
        return torch.cat([m0, m1], dim=1)
    dim = 1 if axis == "channel" else 3
    if mode == "row":
        return torch.cat([m0, m1], dim=dim)
    return torch.stack([m0, m1], dim=dim + 1).flatten(dim, dim + 1)


@cached
def interleave_routes(C: int, H: int, W: int, mode: str, axis: str, device: torch.device) -> Routes:
    """SS2D's routes over the realigned map; u is read where the realignment takes each pixel from:
    the realignment of the two maps' element indices (u0's, then u1's, side by side)."""
    size = C * H * W
    index = torch.arange(2 * size, device=device).view(2, 1, C, H, W)
    source = realign(index[0], index[1], mode, axis)[0]  # (Dr, Hr, Wr): where each pixel comes from
    Dr, Hr, Wr = source.shape
    Lr = Hr * Wr
    s = torch.stack([cross_route(k, Hr, Wr, device) for k in range(4)])  # (4, Lr)
    u_at = source.reshape(Dr, Lr)[:, s].permute(1, 0, 2)                  # (4, Dr, Lr)
    y_at = torch.arange(Dr, device=device)[None, :, None] * Lr + s[:, None, :]
    return Routes(u_at=u_at, token_at=s, y_at=y_at, S_u=2 * size, S_y=Dr * Lr)


def _u_source(u0, u1):
    Bt = u0.shape[0]
    return torch.cat([u0.reshape(Bt, -1), u1.reshape(Bt, -1)], 1)


def interleave_ss2d(u0, u1, dt, B, C, A, D=None, delta_bias=None, delta_softplus=True, mode="column",
                    axis="channel", out_dtype=None):
    """SS2D over ``realign(u0, u1, mode, axis)``. dt, B, C, A, D, delta_bias are those of the
    realigned map (spatial order of the realigned map, Dr = its channels). Output in the realigned
    layout, in ``out_dtype`` (default u0's)."""
    routes = interleave_routes(*u0.shape[1:], mode, axis, u0.device)
    y = routed_scan(routes, _u_source(u0, u1), dt, B, C, A, D, delta_bias, delta_softplus, out_dtype or u0.dtype)
    return y.view(realigned_shape(u0.shape, mode, axis))


def interleave_ss2d_backward(dy, u0, u1, dt, B, C, A, D=None, delta_bias=None, delta_softplus=True,
                             mode="column", axis="channel") -> dict:
    """Gradients of :func:`interleave_ss2d` for the output gradient ``dy``, by argument name."""
    Bt = u0.shape[0]
    routes = interleave_routes(*u0.shape[1:], mode, axis, u0.device)
    g = routed_scan_backward(routes, dy.reshape(Bt, -1), _u_source(u0, u1), dt, B, C, A, D, delta_bias,
                             delta_softplus)
    g_u0, g_u1 = g.pop("u").view(Bt, 2, *u0.shape[1:]).unbind(1)
    return dict(g, u0=g_u0, u1=g_u1)
