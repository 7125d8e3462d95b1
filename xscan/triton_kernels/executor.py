"""The Triton backend's executor of ``ScanSpec``s.

Route kinds with a decay per channel and state (every kind but HEADS: ``RouteKind.scalar_decay``)
run the chunked Mamba-1 scan (``selective.ScanProblem``) on the spec's views where they lie; those
with one scalar decay per head and step (HEADS, ssd_exchange) run the chunked Mamba-2 (SSD) kernels
of ``ssd``. Only what several programs contribute to is reduced here:
outputs and u's gradients summed over routes (per-route fp32 slabs, summed in a fixed order), dB
and dC over channel blocks, dA, dD and d(delta_bias) over batch and chunks; each gradient then goes
back to its argument through the transpose of the argument's view.
"""
from __future__ import annotations

import contextlib
import functools

import torch

from .._registry import Executor
from ..spec import ScanSpec
from . import ssd
from .selective import ScanProblem
from .tiles import MAX_D_STATE


def limits(spec: ScanSpec) -> None:
    """What these kernels cannot take, before any launch."""
    A = spec.view("A")
    if A.is_complex():
        raise ValueError("xscan.selective_scan: the triton backend takes a real A; complex A runs on the reference "
                         "and cpu backends (xscan.use_backend('reference') for CUDA tensors)")
    if spec.kind.scalar_decay:
        ssd.check_limits(spec.geometry[0], spec.dstate)
    elif spec.dstate > MAX_D_STATE:
        raise ValueError(f"xscan: the triton backend takes d_state N <= {MAX_D_STATE}, A has N={spec.dstate}")
    if spec.largest_index() > 2**31 - 1:
        raise ValueError(f"xscan (triton backend): a route length, token count or map size of {spec.largest_index()} "
                         "exceeds 2^31 - 1 (the kernels locate positions in 32 bits; offsets are 64-bit)")


def on_spec_device(run):
    """Run with the spec's GPU as the current device: Triton launches on the current device (and its
    stream), which need not be the one holding the tensors."""
    @functools.wraps(run)
    def guarded(spec: ScanSpec, *args):
        device = spec.view("u").device
        with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
            return run(spec, *args)
    return guarded


class TritonExecutor(Executor):
    """The Triton kernels' executor; it keeps no checkpoints (its backward recomputes the chunk states)."""

    def limits(self, spec: ScanSpec) -> None:
        limits(spec)

    def forward(self, spec: ScanSpec, checkpoints=None) -> list:
        return forward(spec)

    def backward(self, spec: ScanSpec, grads: list, checkpoints=None) -> dict:
        return backward(spec, grads)


@on_spec_device
def forward(spec: ScanSpec) -> list:
    limits(spec)
    if spec.kind.scalar_decay:
        return list(ssd.SSDProblem(**_ssd_arguments(spec)).forward())
    problem = ScanProblem(spec)
    outs = [o for o in spec.outputs if o.role == "y"]
    summed = spec.route_sum and spec.routes > 1
    shape = outs[0].shape
    dtype = problem.acc_torch if summed else outs[0].dtype
    buf = torch.empty(spec.routes if summed else 1, len(outs), *shape, device=problem.device, dtype=dtype)
    viewed = outs[0].view(buf[0, 0])
    last = problem.forward(buf, viewed.stride(), buf.stride(0) if summed else 0, buf.stride(1) if len(outs) > 1 else 0)
    ys = buf.sum(0) if summed else buf[0]
    result = [y.to(o.dtype) for y, o in zip(ys, outs)]
    for o in spec.outputs:
        if o.role == "last_state":
            result.append(o.view.transpose(last.view(spec.batch, spec.routes, spec.channels, spec.dstate),
                                           torch.empty(o.shape, device="meta")))
    return result


@on_spec_device
def backward(spec: ScanSpec, grads: list) -> dict:
    limits(spec)
    if spec.kind.scalar_decay:
        return _ssd_backward(spec, grads)
    problem = ScanProblem(spec)
    acc = problem.acc_torch
    y_outs = [(o, g) for o, g in zip(spec.outputs, grads) if o.role == "y"]
    # the output gradient each token modality reads (the one output of a map serves both)
    gy = [o.view(g) for o, g in y_outs]
    gy = gy * 2 if len(gy) == 1 else gy
    g_last = None
    for o, g in zip(spec.outputs, grads):
        if o.role == "last_state":
            g_last = o.view(g.to(acc)).reshape(spec.batch * spec.routes, spec.channels, spec.dstate).contiguous()
    u_views = [spec.view("u", m) for m in range(spec.modalities)]
    summed = spec.route_sum and spec.routes > 1
    slabs = torch.empty(spec.routes if summed else 1, len(u_views), *u_views[0].shape, device=problem.device,
                        dtype=acc)
    z = spec.view("z")
    g_z = None if z is None else torch.empty(z.shape, device=problem.device, dtype=acc)
    r = problem.backward([(g, g.stride()) for g in gy], slabs, slabs.stride()[2:], slabs.stride(0) if summed else 0,
                         slabs.stride(1), g_z, (0, 0, 0, 0) if g_z is None else g_z.stride(), g_last=g_last)
    g_u = slabs.sum(0)
    per_group = {role: _sum_blocks_by_group(r[role], spec.view(role).shape[2]) for role in ("B", "C")}
    token_grads = dict(dt=r["dt"], **per_group)
    params = dict(A=r["A"], D=r["D"], delta_bias=r["bias"], z=g_z)
    return spec.argument_gradients(lambda role, slot: g_u[slot] if role == "u" else token_grads[role][slot]
                                   if role in token_grads else params[role])


def _sum_blocks_by_group(partial: torch.Tensor, groups: int) -> torch.Tensor:
    """Channel-block partials (blocks, M, Bt, K, N, T) -> (M, Bt, K, G, N, T): blocks are ordered
    by channel, every group has as many and none straddles two."""
    blocks = partial.shape[0]
    return partial.view(groups, blocks // groups, *partial.shape[1:]).sum(1).permute(1, 2, 3, 0, 4, 5)


def _ssd_arguments(spec: ScanSpec) -> dict:
    """ssd_exchange's own arguments by name (x0, x1, dt0, dt1, A, B0, B1, C0, C1, D, dt_bias,
    dt_softplus) and the output dtype: the SSD kernels take mamba-ssm's layouts, not the engine views."""
    return dict({name: value for name, (_, value) in spec.arguments.items()}, dt_softplus=spec.softplus,
                out_dtype=spec.outputs[0].dtype)


def _ssd_backward(spec: ScanSpec, grads: list) -> dict:
    return ssd.SSDProblem(**_ssd_arguments(spec), backward=True).backward(grads[0], grads[1])

