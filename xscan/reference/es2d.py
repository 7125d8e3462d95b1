"""Reference ES2D atrous scan (SPEC section 4, FusionMamba after EfficientVMamba)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .._registry import output_dtype
from ..routes import ATROUS_ROUTES, atrous_grid, atrous_route
from .selective_scan import selective_scan


def es2d(u, dt, B, C, A, D=None, delta_bias=None, delta_softplus=True):
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
    Hq, Wq = atrous_grid(H, W)
    up = F.pad(u, (0, 2 * Wq - W, 0, 2 * Hq - H))
    yp = up.new_empty(up.shape, dtype=output_dtype(u.dtype))
    for k, ((h0, w0), _) in enumerate(ATROUS_ROUTES):
        j = atrous_route(k, H, W, u.device)
        y_k = selective_scan(
            up[:, :, h0::2, w0::2].reshape(Bt, Dm, Hq * Wq)[..., j], dt[:, k][..., j], A[k],
            B[:, k][..., j], C[:, k][..., j], None if D is None else D[k], None,
            None if delta_bias is None else delta_bias[k], delta_softplus)
        yp[:, :, h0::2, w0::2] = torch.empty_like(y_k).index_copy_(-1, j, y_k).view(Bt, Dm, Hq, Wq)
    return yp[:, :, :H, :W]
