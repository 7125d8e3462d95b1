"""Reference SS2D: four routes over the map (VMamba's hf, vf, hb, vb by default), outputs summed per token."""
from __future__ import annotations

import torch

from ..routes import MAP_ROUTES
from .routed_scan import Routes, cached, routed_scan, routed_scan_backward


@cached
def ss2d_routes(route: str, Dm: int, H: int, W: int, device: torch.device) -> Routes:
    """Route k visits the spatial index ``positions(k)[j]`` of every channel's plane (L = H*W)."""
    L = H * W
    _, positions = MAP_ROUTES[route]
    s = torch.stack([positions(k, H, W, device) for k in range(4)])  # (4, L)
    at = torch.arange(Dm, device=device)[None, :, None] * L + s[:, None, :]
    return Routes(u_at=at, token_at=s, y_at=at, S_u=Dm * L, S_y=Dm * L)


def ss2d(u, dt, B, C, A, D=None, delta_bias=None, delta_softplus=True, route="cross", out_dtype=None):
    """u: (Bt, Dm, H, W); dt: (Bt, 4, Dm, L); B, C: (Bt, 4, N, L); A: (4, Dm, N); D, delta_bias:
    (4, Dm). Per-token tensors in spatial order (L = H*W); ``route`` names the routes
    (``xscan.routes.MAP_ROUTES``). Returns y: (Bt, Dm, H, W) in ``out_dtype`` (default u's), the sum
    of the four routes' outputs at each token."""
    Bt, Dm, H, W = u.shape
    routes = ss2d_routes(route, Dm, H, W, u.device)
    y = routed_scan(routes, u.reshape(Bt, -1), dt, B, C, A, D, delta_bias, delta_softplus, out_dtype or u.dtype)
    return y.view(u.shape)


def ss2d_backward(dy, u, dt, B, C, A, D=None, delta_bias=None, delta_softplus=True, route="cross") -> dict:
    """Gradients of :func:`ss2d` for the output gradient ``dy``, by argument name."""
    Bt, Dm, H, W = u.shape
    g = routed_scan_backward(ss2d_routes(route, Dm, H, W, u.device), dy.reshape(Bt, -1), u.reshape(Bt, -1), dt, B, C, A,
                             D, delta_bias, delta_softplus)
    return dict(g, u=g["u"].view(u.shape))
