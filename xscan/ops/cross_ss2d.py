"""``xscan.cross_ss2d``: S4Fusion's interleaved two-modality scan (docs/ops.md, "cross_ss2d")."""
from __future__ import annotations

import torch

from .._checks import Checker
from ..spec import Output, Role, Route, ScanSpec
from ._define import define, device_of
from ._map import PARAMS, check_params, check_tokens, param_roles, token_roles

ARGS = (("u0", "Tensor"), ("u1", "Tensor"), ("dt0", "Tensor"), ("dt1", "Tensor"), ("B0", "Tensor"),
        ("B1", "Tensor"), ("C0", "Tensor"), ("C1", "Tensor")) + PARAMS
TOKENS = ("u0", "u1", "dt0", "dt1", "B0", "B1", "C0", "C1")


def check(u0, u1, dt0, dt1, B0, B1, C0, C1, A, D=None, delta_bias=None, delta_softplus=True):
    c = Checker("cross_ss2d")
    c.tensor("u0", u0, "Bt Dm H W", token=True)
    c.tensor("u1", u1, "Bt Dm H W", token=True)
    c.bind("L", c.dims["H"] * c.dims["W"], "u0")
    check_tokens(c, "0", dt0, B0, C0)
    check_tokens(c, "1", dt1, B1, C1)
    check_params(c, A, D, delta_bias)


def plan(u0, u1, dt0, dt1, B0, B1, C0, C1, A, D, delta_bias, delta_softplus, out_dtype: torch.dtype) -> ScanSpec:
    arguments = dict(u0=(Role("u", (0,)), u0), u1=(Role("u", (1,)), u1), **token_roles("0", (0,), dt0, B0, C0),
                     **token_roles("1", (1,), dt1, B1, C1), **param_roles(A, D, delta_bias))
    outputs = [Output(tuple(u0.shape), out_dtype, slots=(0,)), Output(tuple(u1.shape), out_dtype, slots=(1,))]
    return ScanSpec(Route.CROSS_PAIR, tuple(u0.shape[2:]), arguments, outputs, delta_softplus)


def _fake(u0, u1, *rest):
    return u0.new_empty(u0.shape), u1.new_empty(u1.shape)


_op = define("cross_ss2d", ARGS, 2, _fake, check, plan, TOKENS)


def cross_ss2d(u0, u1, dt0, dt1, B0, B1, C0, C1, A, D=None, delta_bias=None, delta_softplus=True):
    """Cross SS2D (S4Fusion Algorithm 1) without building the interleaved copies.

    Route k (hf, vf, hb, vb) runs over 2L positions ``I_1, V_1, I_2, V_2, ...``: position p takes
    modality ``p % 2`` at the route's ``p // 2``-th token, scanned with that modality's own dt, B, C;
    one hidden state runs through both modalities. Each output is the sum over routes at that
    modality's positions (Recover).

    u0, u1: (Bt, Dm, H, W) (patch-marked); dt0, dt1: (Bt, 4, Dm, L); B0, B1, C0, C1: (Bt, 4, N, L)
    (spatial order, L = H*W); shared A: (4, Dm, N); D, delta_bias: (4, Dm). Returns (y0, y1)."""
    device = device_of(u0)
    args = _op.autocast((u0, u1, dt0, dt1, B0, B1, C0, C1, A, D, delta_bias, bool(delta_softplus)), device)
    check(*args)
    return _op(args, device)
