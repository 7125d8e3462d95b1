"""Dtype and shape rules that the ops, the backends, the reference and the networks share, kept here
so that no fast path imports the oracle (``xscan.reference``) for them."""
from __future__ import annotations

import torch


def accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 accumulation for every input dtype; fp64 stays fp64 (gradcheck)."""
    return torch.promote_types(dtype, torch.float32)


def state_dtype(u_dtype: torch.dtype, A: torch.Tensor) -> torch.dtype:
    """The dtype of the state (and of ``last_state``): the accumulation dtype, complex for a complex A."""
    acc = accumulate_dtype(u_dtype)
    if A.is_complex():
        return torch.complex128 if acc == torch.float64 or A.dtype == torch.complex128 else torch.complex64
    return acc


# DIFF-MF's realignments of two maps (docs/ops.md, interleave_ss2d): the modes and the axis they act on.
REALIGN_MODES = ("column", "row", "concat")
REALIGN_AXES = ("channel", "width")


def realigned_shape(shape, mode: str, axis: str) -> tuple[int, int, int, int]:
    """Shape of the realignment of two maps of ``shape`` (Bt, C, H, W) by ``mode`` along ``axis``."""
    Bt, C, H, W = shape
    if axis == "width" and mode != "concat":
        return Bt, C, H, 2 * W
    return Bt, 2 * C, H, W
