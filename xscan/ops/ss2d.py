"""``xscan.ss2d``: the four-route 2D selective scan with recover (SPEC section 2)."""
from __future__ import annotations

from .._checks import Checker
from ._define import define

# Shared by every SS2D-shaped op (ss2d, es2d, interleave_ss2d, cross_ss2d per modality).
PARAMS = (("A", "Tensor"), ("D", "Tensor?"), ("delta_bias", "Tensor?"), ("delta_softplus", "bool"))
ARGS = (("u", "Tensor"), ("dt", "Tensor"), ("B", "Tensor"), ("C", "Tensor")) + PARAMS
ROUTES = ("cross", "atrous")


def check_params(c: Checker, A, D, delta_bias, dm: str = "Dm"):
    """A (4, Dm, N), D and delta_bias (4, Dm): one set per route."""
    c.tensor("A", A, f"4 {dm} N")
    c.tensor("D", D, f"4 {dm}", optional=True)
    c.tensor("delta_bias", delta_bias, f"4 {dm}", optional=True)


def check_tokens(c: Checker, suffix: str, dt, B, C, dm: str = "Dm", length: str = "L"):
    """dt (Bt, 4, Dm, L), B and C (Bt, 4, N, L): per route and token."""
    c.tensor(f"dt{suffix}", dt, f"Bt 4 {dm} {length}", token=True)
    c.tensor(f"B{suffix}", B, f"Bt 4 N {length}", token=True)
    c.tensor(f"C{suffix}", C, f"Bt 4 N {length}", token=True)


def check(u, dt, B, C, A, D=None, delta_bias=None, delta_softplus=True):
    c = Checker("ss2d")
    c.tensor("u", u, "Bt Dm H W", token=True)
    c.bind("L", c.dims["H"] * c.dims["W"], "u")
    check_tokens(c, "", dt, B, C)
    check_params(c, A, D, delta_bias)


_op = define("ss2d", ARGS, 1, lambda u, *rest: u.new_empty(u.shape), check)


def ss2d(u, dt, B, C, A, D=None, delta_bias=None, delta_softplus=True, route="cross"):
    """Four-route SS2D (VMamba order hf, vf, hb, vb), outputs recovered and summed per token.

    u: (Bt, Dm, H, W); dt: (Bt, 4, Dm, L); B, C: (Bt, 4, N, L), per-token tensors in spatial order
    (L = H*W); A: (4, Dm, N); D, delta_bias: (4, Dm). Returns y: (Bt, Dm, H, W) in u's dtype.
    ``route="atrous"`` is the ES2D scan (:func:`xscan.es2d`, its own dt/B/C layout)."""
    if route == "atrous":
        from .es2d import es2d
        return es2d(u, dt, B, C, A, D, delta_bias, delta_softplus)
    Checker("ss2d").choice("route", route, ROUTES)
    check(u, dt, B, C, A, D, delta_bias)
    args = (u, dt, B, C, A, D, delta_bias, bool(delta_softplus))
    return _op(args, u.device)
