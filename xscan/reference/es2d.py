"""Reference ES2D atrous scan (FusionMamba, after EfficientVMamba)."""
from __future__ import annotations

import torch

from ..routes import ATROUS_ROUTES, atrous_grid, atrous_route
from .routed_scan import Routes, cached, routed_scan, routed_scan_backward


@cached
def es2d_routes(Dm: int, H: int, W: int, device: torch.device) -> Routes:
    """Route k walks sub-lattice k of the map zero-padded to even size; padded pixels read u = 0
    (the padding slot) and their outputs are dropped."""
    Hq, Wq = atrous_grid(H, W)
    L, pad = H * W, Dm * H * W
    u_at, tokens = [], []
    for k, ((h0, w0), _) in enumerate(ATROUS_ROUTES):
        q = atrous_route(k, H, W, device)        # route position -> sub-lattice token
        h, w = 2 * (q // Wq) + h0, 2 * (q % Wq) + w0  # its pixel on the padded map
        inside = (h < H) & (w < W)
        at = torch.arange(Dm, device=device)[:, None] * L + (h * W + w)[None, :]
        u_at.append(torch.where(inside[None, :], at, pad))
        tokens.append(q)
    u_at = torch.stack(u_at)
    return Routes(u_at=u_at, token_at=torch.stack(tokens), y_at=u_at, S_u=pad, S_y=pad)


def es2d(u, dt, B, C, A, D=None, delta_bias=None, delta_softplus=True, out_dtype=None):
    """u: (Bt, Dm, H, W); dt: (Bt, 4, Dm, Lq); B, C: (Bt, 4, N, Lq); A: (4, Dm, N); D, delta_bias:
    (4, Dm), with (Hq, Wq) = (ceil(H/2), ceil(W/2)), Lq = Hq*Wq.

    The map is zero-padded to even H and W and split into four stride-2 sub-lattices; route k scans
    sub-lattice k only and its outputs go back to their own positions (no sum), then the padding is
    cropped. Per-token tensors of route k are given row-major over sub-lattice k, i.e.
    ``dt[:, k, :, i*Wq + j]`` belongs to padded pixel ``(2i + h0_k, 2j + w0_k)``; padded pixels are
    scanned with u = 0 and their own dt, B, C, as the public code does.

    Routes (origin (h0, w0), order) on a 4x4 map with pixels numbered s = 4h + w:
        k=0 (0,0) row-major:    0, 2, 8, 10
        k=1 (1,0) column-major: 4, 12, 6, 14
        k=2 (0,1) row-major:    1, 3, 9, 11
        k=3 (1,1) column-major: 5, 13, 7, 15
    """
    Bt, Dm, H, W = u.shape
    y = routed_scan(es2d_routes(Dm, H, W, u.device), u.reshape(Bt, -1), dt, B, C, A, D, delta_bias, delta_softplus,
                    out_dtype or u.dtype)
    return y.view(u.shape)


def es2d_backward(dy, u, dt, B, C, A, D=None, delta_bias=None, delta_softplus=True) -> dict:
    """Gradients of :func:`es2d` for the output gradient ``dy``, by argument name."""
    Bt, Dm, H, W = u.shape
    g = routed_scan_backward(es2d_routes(Dm, H, W, u.device), dy.reshape(Bt, -1), u.reshape(Bt, -1), dt, B, C, A,
                             D, delta_bias, delta_softplus)
    return dict(g, u=g["u"].view(u.shape))
