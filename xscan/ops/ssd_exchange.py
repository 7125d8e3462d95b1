"""``xscan.ssd_exchange``: DIFF-MF's cross-modal SSD exchange (docs/ops.md, "ssd_exchange")."""
from __future__ import annotations

import torch

from .._checks import Checker
from ..spec import Output, Role, Route, ScanSpec, View
from ._define import define, device_of

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


def plan(x0, x1, dt0, dt1, A, B0, B1, C0, C1, D, dt_bias, dt_softplus, out_dtype: torch.dtype) -> ScanSpec:
    """Mamba-2's SSM as HEADS routes: a head is a scanned channel, route k its channel k % P in
    direction k // P (y0 = SSM(x0, dt0, B1, C1): B1, C1 serve slot 0, B0, C0 slot 1); dt, A, D and
    dt_bias are the head's, shared by its P channels."""
    Bt, L, nh, P = x0.shape
    K, G, N = 2 * P, B0.shape[2], B0.shape[3]
    heads = View(permute=(0, 2, 3, 1))                              # (Bt, nh, P, L): a P x L map per head
    step = View(permute=(0, 2, 1), unsqueeze=(1,), shape=(Bt, K, nh, L))
    states = View(permute=(0, 2, 3, 1), unsqueeze=(1,), shape=(Bt, K, G, N, L))
    per_head = View(unsqueeze=(0,), shape=(K, nh))
    arguments = dict(
        x0=(Role("u", (0,), heads), x0), x1=(Role("u", (1,), heads), x1), dt0=(Role("dt", (0,), step), dt0),
        dt1=(Role("dt", (1,), step), dt1), A=(Role("A", view=View(unsqueeze=(0, 2), shape=(K, nh, N))), A),
        B0=(Role("B", (1,), states), B0), B1=(Role("B", (0,), states), B1), C0=(Role("C", (1,), states), C0),
        C1=(Role("C", (0,), states), C1), D=(Role("D", view=per_head), D),
        dt_bias=(Role("delta_bias", view=per_head), dt_bias))
    outputs = [Output(tuple(x0.shape), out_dtype, slots=(0,), view=heads),
               Output(tuple(x1.shape), out_dtype, slots=(1,), view=heads)]
    return ScanSpec(Route.HEADS, (P, L), arguments, outputs, dt_softplus, route_sum=False)


def _fake(x0, x1, *rest):
    return x0.new_empty(x0.shape), x1.new_empty(x1.shape)


_op = define("ssd_exchange", ARGS, 2, _fake, check, plan, ("x0", "x1", "dt0", "dt1", "B0", "B1", "C0", "C1"))


def ssd_exchange(x0, x1, dt0, dt1, A, B0, B1, C0, C1, D=None, dt_bias=None, dt_softplus=False):
    """Cross-modal SSD exchange, both directions in one call:
    ``y0 = SSM(x0, dt0, B1, C1)`` and ``y1 = SSM(x1, dt1, B0, C0)``.

    The SSM is Mamba-2's (scalar A per head, heads of P channels), in mamba_ssm's ``ssd`` layouts:
    x_m: (Bt, L, nh, P); dt_m: (Bt, L, nh); A: (nh,) (negative); B_m, C_m: (Bt, L, G, N), head h
    using group h // (nh/G); D, dt_bias: (nh,). Per head:
    ``h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T``, ``y_t = h_t C_t + D x_t``. Returns (y0, y1)."""
    device = device_of(x0)
    args = _op.autocast((x0, x1, dt0, dt1, A, B0, B1, C0, C1, D, dt_bias, bool(dt_softplus)), device)
    check(*args)
    return _op(args, device)
