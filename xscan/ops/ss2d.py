"""``xscan.ss2d``: VMamba's four-route 2-D selective scan with recover (docs/ops.md, "ss2d")."""
from __future__ import annotations

import torch

from .._checks import Checker
from ..routes import MAP_ROUTES
from ..spec import ROUTE_KINDS, Output, Role, ScanSpec
from ._define import define, device_of
from ._map import PARAMS, check_params, check_tokens, param_roles, token_roles
from .es2d import _op as _es2d_op
from .es2d import check as _check_es2d

ARGS = (("u", "Tensor"), ("dt", "Tensor"), ("B", "Tensor"), ("C", "Tensor")) + PARAMS + (("route", "str"),)
# every route ss2d takes (xscan.spec.ROUTE_KINDS): those over the map in ss2d's layout (MAP_ROUTES) and
# "atrous", which runs es2d in es2d's layout
ROUTES = tuple(kind.ss2d_name for kind in ROUTE_KINDS.values() if kind.ss2d_name)


def check(u, dt, B, C, A, D=None, delta_bias=None, delta_softplus=True, route="cross"):
    c = Checker("ss2d")
    c.choice("route", route, tuple(MAP_ROUTES))
    c.tensor("u", u, "Bt Dm H W", token=True)
    c.bind("L", c.dims["H"] * c.dims["W"], "u")
    check_tokens(c, "", dt, B, C)
    check_params(c, A, D, delta_bias)


def plan(u, dt, B, C, A, D, delta_bias, delta_softplus, route, out_dtype: torch.dtype) -> ScanSpec:
    arguments = dict(u=(Role("u"), u), **token_roles("", (0,), dt, B, C), **param_roles(A, D, delta_bias))
    return ScanSpec(MAP_ROUTES[route][0], tuple(u.shape[2:]), arguments, [Output(tuple(u.shape), out_dtype)],
                    delta_softplus)


_op = define("ss2d", ARGS, 1, lambda u, *rest: u.new_empty(u.shape), check, plan, ("u", "dt", "B", "C"))


def ss2d(u, dt, B, C, A, D=None, delta_bias=None, delta_softplus=True, route="cross"):
    """Four-route SS2D, outputs recovered and summed per token.

    u: (Bt, Dm, H, W); dt: (Bt, 4, Dm, L); B, C: (Bt, 4, N, L), per-token tensors in spatial order
    (L = H*W); A: (4, Dm, N); D, delta_bias: (4, Dm). Returns y: (Bt, Dm, H, W) in u's dtype.

    ``route``: one of ``ROUTES``: "cross", VMamba's routes (hf, vf, hb, vb), "snake", the
    boustrophedon ones (docs/ops.md), or "atrous", the ES2D scan (:func:`xscan.es2d`), which takes its own
    layout: dt, B, C over the four stride-2 sub-lattices, (Bt, 4, ., ceil(H/2) * ceil(W/2))."""
    Checker("ss2d").choice("route", route, ROUTES)
    device = device_of(u)
    args = _op.autocast((u, dt, B, C, A, D, delta_bias, bool(delta_softplus)), device)
    if route == "atrous":  # errors say which layout this call expects
        _check_es2d(*args, _caller="ss2d(route='atrous')")
        return _es2d_op(args, device)
    check(*args, route)
    return _op((*args, route), device)
