"""Scan routes as index maths: route position -> spatial index (docs/ops.md).

The reference gathers with these definitions; the kernels evaluate the same formulas inline
(csrc/include/xscan/routes.h, xscan/triton_kernels/routes.py). Spatial index ``s = h * W + w``
(row-major).
"""
from __future__ import annotations

import torch

from .spec import ROUTE_KINDS, Route

# ES2D sub-lattice origin (h0, w0) and whether the route is column-major, per route k (docs/ops.md, es2d).
ATROUS_ROUTES = (((0, 0), False), ((1, 0), True), ((0, 1), False), ((1, 1), True))


def cross_route(k: int, H: int, W: int, device=None) -> torch.Tensor:
    """Spatial index visited at each position j of SS2D route k (length H*W)."""
    L = H * W
    j = torch.arange(L, device=device)
    if k >= 2:  # reversed routes walk their forward twin backwards
        j = L - 1 - j
    if k % 2 == 0:
        return j
    return (j % H) * W + (j // H)


def snake_route(k: int, H: int, W: int, device=None) -> torch.Tensor:
    """Spatial index visited at each position j of snake (boustrophedon) route k: route 0 walks the
    rows, even rows left to right and odd ones right to left; route 1 the columns, even columns down
    and odd ones up; routes 2 and 3 walk 0 and 1 backwards. Every step moves to a neighbouring pixel."""
    L = H * W
    j = torch.arange(L, device=device)
    if k >= 2:
        j = L - 1 - j
    if k % 2 == 0:
        row, along = j // W, j % W
        return row * W + torch.where(row % 2 == 0, along, W - 1 - along)
    col, along = j // H, j % H
    return torch.where(col % 2 == 0, along, H - 1 - along) * W + col


# The index maths of ss2d's route kinds over the map in ss2d's layout (per-token tensors in spatial
# order): positions(k, H, W, device) -> the spatial index at each position of route k.
MAP_POSITIONS = {Route.CROSS: cross_route, Route.SNAKE: snake_route}
# the same by the name ss2d takes them by (xscan.spec.ROUTE_KINDS): name -> (kind, positions)
MAP_ROUTES = {ROUTE_KINDS[route].ss2d_name: (route, positions) for route, positions in MAP_POSITIONS.items()}


def atrous_grid(H: int, W: int) -> tuple[int, int]:
    """Sub-lattice size (Hq, Wq) of the ES2D scan on an H x W map (padded to even)."""
    return (H + 1) // 2, (W + 1) // 2


def atrous_route(k: int, H: int, W: int, device=None) -> torch.Tensor:
    """Route k of ES2D: for each route position j, the index ``i * Wq + w`` of the token inside its
    sub-lattice (row-major over the (Hq, Wq) sub-lattice, the order in which ``es2d`` takes dt/B/C)."""
    Hq, Wq = atrous_grid(H, W)
    j = torch.arange(Hq * Wq, device=device)
    if not ATROUS_ROUTES[k][1]:
        return j
    return (j % Hq) * Wq + (j // Hq)


def atrous_sublattice(x: torch.Tensor, k: int) -> torch.Tensor:
    """Sub-lattice k of a (..., H, W) map, zero-padded to even H and W: (..., Hq, Wq). A strided view
    when no padding is needed."""
    H, W = x.shape[-2:]
    if H % 2 or W % 2:
        x = torch.nn.functional.pad(x, (0, W % 2, 0, H % 2))
    (h0, w0), _ = ATROUS_ROUTES[k]
    return x[..., h0::2, w0::2]


def atrous_sublattices(x: torch.Tensor) -> torch.Tensor:
    """The four ES2D sub-lattices of a (Bt, Dm, H, W) map, flattened row-major: (Bt, 4, Dm, Hq*Wq).

    This is the input a model projects to get es2d's per-token dt, B and C."""
    return torch.stack([atrous_sublattice(x, k).flatten(-2) for k in range(4)], dim=1)
