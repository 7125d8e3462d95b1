"""``nn.Module`` cores around the scan ops: the SSM part of a VSS block (projections to dt/B/C, A, D,
the scan, recover). Parameter names and initialisation follow VMamba / S4Fusion so checkpoints load."""
from __future__ import annotations

import math

import torch
from torch import nn

from .ops import es2d, ss2d
from .ops.ss2d import ROUTES as SS2D_ROUTES
from .routes import atrous_sublattices

K = 4


def resolve_dt_rank(dt_rank, d_model: int) -> int:
    return math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)


class SSMCore(nn.Module):
    """Per-route SSM parameters shared by the scan layers: the dt projection (``dt_projs_weight``,
    ``dt_projs_bias``), ``A_logs``, ``Ds``, and per-route token projections ``x_proj_weight``."""

    def __init__(self, d_inner: int, d_state: int, dt_rank, d_model=None, dt_min=0.001, dt_max=0.1,
                 dt_init_floor=1e-4):
        super().__init__()
        dt_rank = resolve_dt_rank(dt_rank, d_model if d_model is not None else d_inner)
        self.d_inner, self.d_state, self.dt_rank = d_inner, d_state, dt_rank
        self.x_proj_weight = self.new_x_proj()
        std = dt_rank ** -0.5
        self.dt_projs_weight = nn.Parameter(torch.empty(K, d_inner, dt_rank).uniform_(-std, std))
        dt = torch.exp(torch.rand(K, d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        self.dt_projs_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        A = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(K * d_inner, 1)
        self.A_logs = nn.Parameter(torch.log(A))  # (K*d_inner, N), S4D-real
        self.Ds = nn.Parameter(torch.ones(K * d_inner))

    def new_x_proj(self) -> nn.Parameter:
        """(K, dt_rank + 2N, d_inner), initialised as K ``nn.Linear`` layers without bias."""
        bound = 1 / math.sqrt(self.d_inner)
        return nn.Parameter(torch.empty(K, self.dt_rank + 2 * self.d_state, self.d_inner).uniform_(-bound, bound))

    def project(self, x: torch.Tensor, weight: torch.Tensor):
        """Tokens (Bt, Dm, L) or per-route tokens (Bt, K, Dm, L) -> dt (Bt, K, Dm, L), B, C (Bt, K, N, L)."""
        x_dbl = torch.einsum("bkdl,kcd->bkcl" if x.dim() == 4 else "bdl,kcd->bkcl", x, weight)
        return self.tokens(x_dbl)

    def tokens(self, x_dbl: torch.Tensor):
        """Projected tokens (Bt, K, R + 2N, L) -> dt (Bt, K, Dm, L), B, C (Bt, K, N, L)."""
        dts, Bs, Cs = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=2)
        return torch.einsum("bkrl,kdr->bkdl", dts, self.dt_projs_weight), Bs, Cs

    def check_input(self, name: str, x) -> None:
        """x must be a (Bt, d_inner, H, W) floating map: a clear error before any projection."""
        layer = type(self).__name__
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{layer}: {name} must be a tensor of shape (Bt, {self.d_inner}, H, W), "
                            f"got {type(x).__name__}")
        if x.dim() != 4 or x.shape[1] != self.d_inner:
            raise ValueError(f"{layer}: {name} must have shape (Bt, d_inner={self.d_inner}, H, W), "
                             f"got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"{layer}: {name} must be a floating tensor, got {x.dtype}")

    def scan_params(self):
        """A (K, Dm, N), D (K, Dm), delta_bias (K, Dm), all fp32."""
        A = -torch.exp(self.A_logs.float()).view(K, self.d_inner, self.d_state)
        return A, self.Ds.float().view(K, self.d_inner), self.dt_projs_bias.float()


class SS2D(SSMCore):
    """VMamba's SS2D core on a (Bt, d_inner, H, W) map: per-route x_proj to (dt, B, C), the scan,
    recover. ``route``: any that ``xscan.ss2d`` takes: "cross", the four full routes; "snake", the
    boustrophedon ones; "atrous": ES2D (``xscan.es2d``, FusionMamba)."""

    def __init__(self, d_inner: int, d_state: int = 16, dt_rank="auto", route: str = "cross", d_model=None):
        if route not in SS2D_ROUTES:
            raise ValueError(f"xscan.SS2D: route must be one of {SS2D_ROUTES}, got {route!r}")
        super().__init__(d_inner, d_state, dt_rank, d_model)
        self.route = route

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (Bt, d_inner, H, W) -> (Bt, d_inner, H, W)."""
        self.check_input("x", x)
        A, D, delta_bias = self.scan_params()
        if self.route == "atrous":
            return es2d(x, *self.project(atrous_sublattices(x), self.x_proj_weight), A, D, delta_bias, True)
        return ss2d(x, *self.project(x.flatten(2), self.x_proj_weight), A, D, delta_bias, True, route=self.route)
