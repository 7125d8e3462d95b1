"""``xscan.ssd_exchange``: DIFF-MF's cross-modal SSD exchange (SPEC section 6)."""
from __future__ import annotations

from .._checks import Checker
from ._define import define

ARGS = (("x0", "Tensor"), ("x1", "Tensor"), ("dt0", "Tensor"), ("dt1", "Tensor"), ("A", "Tensor"),
        ("B0", "Tensor"), ("B1", "Tensor"), ("C0", "Tensor"), ("C1", "Tensor"), ("D", "Tensor?"),
        ("dt_bias", "Tensor?"), ("dt_softplus", "bool"))

def check(x0, x1, dt0, dt1, A, B0, B1, C0, C1, D=None, dt_bias=None, dt_softplus=False):
    c = Checker("ssd_exchange")
    for m, (x, dt, B, C) in enumerate(((x0, dt0, B0, C0), (x1, dt1, B1, C1))):
        c.tensor(f"x{m}", x, "Bt L nh P", token=True)
        c.tensor(f"dt{m}", dt, "Bt L nh", token=True)
        c.tensor(f"B{m}", B, "Bt L G N", token=True)
        c.tensor(f"C{m}", C, "Bt L G N", token=True)
    c.divides("G", "nh", "B and C groups must split the heads evenly")
    c.tensor("A", A, "nh")
    c.tensor("D", D, "nh", optional=True)
    c.tensor("dt_bias", dt_bias, "nh", optional=True)


_op = define("ssd_exchange", ARGS, 2, lambda x0, x1, *rest: (x0.new_empty(x0.shape), x1.new_empty(x1.shape)),
             check)


def ssd_exchange(x0, x1, dt0, dt1, A, B0, B1, C0, C1, D=None, dt_bias=None, dt_softplus=False):
    """Cross-modal SSD exchange, both directions in one call:
    ``y0 = SSM(x0, dt0, B1, C1)`` and ``y1 = SSM(x1, dt1, B0, C0)``.

    The SSM is Mamba-2's (scalar A per head, heads of P channels), in mamba_ssm's ``ssd`` layouts:
    x_m: (Bt, L, nh, P); dt_m: (Bt, L, nh); A: (nh,) (negative); B_m, C_m: (Bt, L, G, N), head h
    using group h // (nh/G); D, dt_bias: (nh,). Per head:
    ``h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T``, ``y_t = h_t C_t + D x_t``. Returns (y0, y1)."""
    check(x0, x1, dt0, dt1, A, B0, B1, C0, C1, D, dt_bias)
    args = (x0, x1, dt0, dt1, A, B0, B1, C0, C1, D, dt_bias, bool(dt_softplus))
    return _op(args, x0.device)
