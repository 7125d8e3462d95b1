"""Reference SS2D (SPEC section 2): gather each route's sequence, scan it, scatter-add it back."""
from __future__ import annotations

import torch

from ..routes import cross_route
from .selective_scan import selective_scan


def ss2d(u, dt, B, C, A, D=None, delta_bias=None, delta_softplus=True):
    """u: (Bt, Dm, H, W); dt: (Bt, K, Dm, L); B, C: (Bt, K, N, L); A: (K, Dm, N); D, delta_bias:
    (K, Dm). Per-token tensors in spatial order. Returns y: (Bt, Dm, H, W), the sum of the four routes'
    outputs at each token."""
    Bt, Dm, H, W = u.shape
    u_flat = u.reshape(Bt, Dm, H * W)
    y = None
    for k in range(dt.shape[1]):
        s = cross_route(k, H, W, u.device)
        y_k = selective_scan(
            u_flat[..., s], dt[:, k][..., s], A[k], B[:, k][..., s], C[:, k][..., s],
            None if D is None else D[k], None, None if delta_bias is None else delta_bias[k],
            delta_softplus)
        recovered = torch.empty_like(y_k).index_copy_(-1, s, y_k)
        y = recovered if y is None else y + recovered
    return y.reshape(Bt, Dm, H, W)
