"""``xscan.es2d``: FusionMamba's atrous (efficient) 2-D scan (docs/ops.md, "es2d")."""
from __future__ import annotations

import torch

from .._checks import Checker
from ..routes import atrous_grid
from ..spec import Output, Role, Route, ScanSpec
from ._define import define, device_of
from ._map import PARAMS, check_params, check_tokens, param_roles, token_roles

ARGS = (("u", "Tensor"), ("dt", "Tensor"), ("B", "Tensor"), ("C", "Tensor")) + PARAMS


def check(u, dt, B, C, A, D=None, delta_bias=None, delta_softplus=True, _caller="es2d"):
    c = Checker(_caller)
    c.tensor("u", u, "Bt Dm H W", token=True)
    Hq, Wq = atrous_grid(c.dims["H"], c.dims["W"])
    c.bind("Lq", Hq * Wq, "u")
    check_tokens(c, "", dt, B, C, length="Lq")
    check_params(c, A, D, delta_bias)


def plan(u, dt, B, C, A, D, delta_bias, delta_softplus, out_dtype: torch.dtype) -> ScanSpec:
    arguments = dict(u=(Role("u"), u), **token_roles("", (0,), dt, B, C), **param_roles(A, D, delta_bias))
    # every pixel is on exactly one route: no sum over routes
    return ScanSpec(Route.ATROUS, tuple(u.shape[2:]), arguments, [Output(tuple(u.shape), out_dtype)], delta_softplus,
                    route_sum=False)


_op = define("es2d", ARGS, 1, lambda u, *rest: u.new_empty(u.shape), check, plan, ("u", "dt", "B", "C"))


def es2d(u, dt, B, C, A, D=None, delta_bias=None, delta_softplus=True):
    """Atrous scan: route k scans stride-2 sub-lattice k of the (zero-padded to even) map, each token
    once; outputs land back at their own positions.

    u: (Bt, Dm, H, W); dt: (Bt, 4, Dm, Lq); B, C: (Bt, 4, N, Lq) with Lq = ceil(H/2)*ceil(W/2),
    route k's tensors row-major over its sub-lattice (``xscan.routes.atrous_sublattices`` gives the
    matching projection input); A: (4, Dm, N); D, delta_bias: (4, Dm). Returns (Bt, Dm, H, W).
    See ``xscan.reference.es2d`` for the routes on a 4x4 example."""
    device = device_of(u)
    args = _op.autocast((u, dt, B, C, A, D, delta_bias, bool(delta_softplus)), device)
    check(*args)
    return _op(args, device)
