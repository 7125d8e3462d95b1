"""Cross SS2D for users' own models: the functional op and S4Fusion's fusion-block core.

    import xscan.cross_ss2d
    y0, y1 = xscan.cross_ss2d.cross_ss2d(u0, u1, dt0, dt1, B0, B1, C0, C1, A, D, delta_bias)
    y0, y1 = xscan.cross_ss2d(u0, u1, ...)  # the module is callable too, like xscan.ss2d
    core = xscan.cross_ss2d.CrossSS2D(d_inner=72, d_state=18, dt_rank=3)
    f_ir, f_vis = core(x_ir, x_vis)       # (Bt, d_inner, H, W) each
"""
from __future__ import annotations

import sys
import types

import torch
from torch import nn

from .layers import SSMCore
from .ops.cross_ss2d import cross_ss2d

__all__ = ["cross_ss2d", "CrossSS2D"]


class CrossSS2D(SSMCore):
    """The SSM core of S4Fusion's ``FusionBlock`` (``forward_core``): per-modality x_proj, shared dt
    projection, shared A and D, the Patch Mark ``mark = W_mark [u0; u1]`` added to both inputs after
    the projections, the interleaved Cross SS2D, and Recover. Parameter names follow the public code
    (``x_proj_weight``, ``y_proj_weight``, ``dt_projs_weight``, ``dt_projs_bias``, ``A_logs``, ``Ds``,
    ``mark_proj``) so its weights load. Unlike that code, the mark is computed once, not per route,
    and no interleaved, flipped or transposed copy is built."""

    def __init__(self, d_inner: int, d_state: int = 32, dt_rank="auto", d_model=None):
        super().__init__(d_inner, d_state, dt_rank, d_model)
        self.y_proj_weight = self.new_x_proj()
        bound = 1 / (2 * d_inner) ** 0.5
        self.mark_proj = nn.Parameter(torch.empty(d_inner, 2 * d_inner).uniform_(-bound, bound))

    def forward(self, x0: torch.Tensor, x1: torch.Tensor):
        """x0, x1: (Bt, d_inner, H, W), first and second modality. Returns their fused (y0, y1)."""
        self.check_input("x0", x0)
        self.check_input("x1", x1)
        if x1.shape != x0.shape:
            raise ValueError(f"CrossSS2D: x0 {tuple(x0.shape)} and x1 {tuple(x1.shape)} must have the same shape")
        d = x0.shape[1]
        dt0, B0, C0 = self.project(x0.flatten(2), self.x_proj_weight)
        dt1, B1, C1 = self.project(x1.flatten(2), self.y_proj_weight)
        mark = torch.einsum("bdhw,cd->bchw", x0, self.mark_proj[:, :d]) + \
            torch.einsum("bdhw,cd->bchw", x1, self.mark_proj[:, d:])
        A, D, delta_bias = self.scan_params()
        return cross_ss2d(x0 + mark, x1 + mark, dt0, dt1, B0, B1, C0, C1, A, D, delta_bias, True)


class _CallableModule(types.ModuleType):
    """``xscan.cross_ss2d(...)`` calls the op, as ``xscan.ss2d(...)`` does; the module keeps its names."""

    def __call__(self, *args, **kwargs):
        return cross_ss2d(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
