"""Reference channel-interleaved scanning (SPEC section 5, DIFF-MF spatial exchange, eqs. 9-10)."""
from __future__ import annotations

import torch

from .ss2d import ss2d

MODES = ("column", "row", "concat")
AXES = ("channel", "width")


def realign(m0: torch.Tensor, m1: torch.Tensor, mode: str = "column", axis: str = "channel") -> torch.Tensor:
    """Materialise DIFF-MF's realignment of two (Bt, C, H, W) maps.

    - ``column``: interleave, ``[M0^1, M1^1, M0^2, M1^2, ...]`` along ``axis``;
    - ``row``: ``[M0^1 .. M0^C, M1^1 .. M1^C]`` along ``axis`` (on the width axis: each row's M0 half,
      then its M1 half);
    - ``concat``: ``Concat(M0, M1)`` along the channel axis whatever ``axis`` says (the paper's eq. 10);
      on the channel axis it equals ``row``.

    axis="channel" gives (Bt, 2C, H, W); axis="width" gives (Bt, C, H, 2W) for column and row.
    """
    if mode == "concat" or (mode == "row" and axis == "channel"):
        return torch.cat([m0, m1], dim=1)
    dim = 1 if axis == "channel" else 3
    if mode == "row":
        return torch.cat([m0, m1], dim=dim)
    return torch.stack([m0, m1], dim=dim + 1).flatten(dim, dim + 1)


def interleave_ss2d(u0, u1, dt, B, C, A, D=None, delta_bias=None, delta_softplus=True, mode="column",
                    axis="channel"):
    """SS2D over ``realign(u0, u1, mode, axis)``. dt, B, C, A, D, delta_bias are those of the
    realigned map (spatial order of the realigned map, Dr = its channels). Output in the realigned
    layout."""
    return ss2d(realign(u0, u1, mode, axis), dt, B, C, A, D, delta_bias, delta_softplus)
