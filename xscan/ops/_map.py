"""What the 2-D map ops (ss2d, es2d, cross_ss2d, interleave_ss2d) share: one set of parameters per
route, per-route token tensors in spatial order, their checks and their roles in a ScanSpec."""
from __future__ import annotations

from .._checks import Checker
from ..spec import Role, View

PARAMS = (("A", "Tensor"), ("D", "Tensor?"), ("delta_bias", "Tensor?"), ("delta_softplus", "bool"))
ROUTE_GROUP = View(unsqueeze=(2,))  # B, C: (Bt, 4, N, T) -> (Bt, 4, G=1, N, T)


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


def param_roles(A, D, delta_bias) -> dict:
    return dict(A=(Role("A"), A), D=(Role("D"), D), delta_bias=(Role("delta_bias"), delta_bias))


def token_roles(suffix: str, slots: tuple, dt, B, C) -> dict:
    return {f"dt{suffix}": (Role("dt", slots), dt), f"B{suffix}": (Role("B", slots, ROUTE_GROUP), B),
            f"C{suffix}": (Role("C", slots, ROUTE_GROUP), C)}
