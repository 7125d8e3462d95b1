"""``xscan.es2d``: FusionMamba's atrous (efficient) 2D scan (SPEC section 4)."""
from __future__ import annotations

from .._checks import Checker
from ..routes import atrous_grid
from ._define import define
from .ss2d import ARGS, check_params, check_tokens

def check(u, dt, B, C, A, D=None, delta_bias=None, delta_softplus=True):
    c = Checker("es2d")
    c.tensor("u", u, "Bt Dm H W", token=True)
    Hq, Wq = atrous_grid(c.dims["H"], c.dims["W"])
    c.bind("Lq", Hq * Wq, "u")
    check_tokens(c, "", dt, B, C, length="Lq")
    check_params(c, A, D, delta_bias)


_op = define("es2d", ARGS, 1, lambda u, *rest: u.new_empty(u.shape), check)


def es2d(u, dt, B, C, A, D=None, delta_bias=None, delta_softplus=True):
    """Atrous scan: route k scans stride-2 sub-lattice k of the (zero-padded to even) map, each token
    once; outputs land back at their own positions.

    u: (Bt, Dm, H, W); dt: (Bt, 4, Dm, Lq); B, C: (Bt, 4, N, Lq) with Lq = ceil(H/2)*ceil(W/2),
    route k's tensors row-major over its sub-lattice (``xscan.routes.atrous_sublattices`` gives the
    matching projection input); A: (4, Dm, N); D, delta_bias: (4, Dm). Returns (Bt, Dm, H, W).
    See ``xscan.reference.es2d`` for the routes on a 4x4 example."""
    check(u, dt, B, C, A, D, delta_bias)
    args = (u, dt, B, C, A, D, delta_bias, bool(delta_softplus))
    return _op(args, u.device)
