"""``xscan.interleave_ss2d``: SS2D over DIFF-MF's realigned pair of maps (docs/ops.md, "interleave_ss2d")."""
from __future__ import annotations

import torch

from .._checks import Checker
from ..shapes import REALIGN_AXES, REALIGN_MODES, realigned_shape
from ..spec import REALIGN_SOURCE, Output, Role, Route, ScanSpec
from ._define import define, device_of
from ._map import PARAMS, check_params, check_tokens, param_roles, token_roles

ARGS = (("u0", "Tensor"), ("u1", "Tensor"), ("dt", "Tensor"), ("B", "Tensor"), ("C", "Tensor")) + PARAMS + (
    ("mode", "str"), ("axis", "str"))


def _fake(u0, u1, dt, B, C, A, D, delta_bias, delta_softplus, mode, axis):
    return u0.new_empty(realigned_shape(u0.shape, mode, axis))


def check(u0, u1, dt, B, C, A, D=None, delta_bias=None, delta_softplus=True, mode="column", axis="channel"):
    c = Checker("interleave_ss2d")
    c.choice("mode", mode, REALIGN_MODES)
    c.choice("axis", axis, REALIGN_AXES)
    c.tensor("u0", u0, "Bt C H W", token=True)
    c.tensor("u1", u1, "Bt C H W", token=True)
    _, Dr, Hr, Wr = realigned_shape(u0.shape, mode, axis)
    c.bind("Dr", Dr, "u0")
    c.bind("Lr", Hr * Wr, "u0")
    check_tokens(c, "", dt, B, C, dm="Dr", length="Lr")
    check_params(c, A, D, delta_bias, dm="Dr")


def plan(u0, u1, dt, B, C, A, D, delta_bias, delta_softplus, mode, axis, out_dtype: torch.dtype) -> ScanSpec:
    """SS2D's routes over the realigned map (Dr, Hr, Wr); u is read from u0 or u1 where the
    realignment takes each pixel from (``Source``); the realigned map's dt, B, C and y serve the
    tokens of both maps (both modality slots)."""
    shape = realigned_shape(u0.shape, mode, axis)
    both = (0, 1)
    arguments = dict(u0=(Role("u", (0,)), u0), u1=(Role("u", (1,)), u1), **token_roles("", both, dt, B, C),
                     **param_roles(A, D, delta_bias))
    geometry = (shape[2], shape[3], u0.shape[1], u0.shape[3])
    return ScanSpec(Route.CROSS, geometry, arguments, [Output(shape, out_dtype, slots=both)], delta_softplus,
                    source=REALIGN_SOURCE[(mode, axis)])


_op = define("interleave_ss2d", ARGS, 1, _fake, check, plan, ("u0", "u1", "dt", "B", "C"))


def interleave_ss2d(u0, u1, dt, B, C, A, D=None, delta_bias=None, delta_softplus=True, mode="column",
                    axis="channel"):
    """SS2D over ``xscan.realign(u0, u1, mode, axis)``, reading u0 and u1 where they lie.

    u0, u1: (Bt, C, H, W). The realigned map R is (Bt, Dr, Hr, Wr): (Bt, 2C, H, W) on the channel axis
    (and for ``concat``), (Bt, C, H, 2W) on the width axis. dt: (Bt, 4, Dr, Lr); B, C: (Bt, 4, N, Lr)
    in R's spatial order (Lr = Hr*Wr); A: (4, Dr, N); D, delta_bias: (4, Dr). Returns y in R's layout,
    equal to ``xscan.ss2d(realign(u0, u1, mode, axis), ...)``."""
    device = device_of(u0)
    args = _op.autocast((u0, u1, dt, B, C, A, D, delta_bias, bool(delta_softplus), mode, axis), device)
    check(*args)
    return _op(args, device)
