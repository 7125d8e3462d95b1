"""The C++/OpenMP CPU backend (``xscan._C``): fused forward and backward of every op.

One engine (csrc/cpu/scan_engine.h) runs every op; what differs is a route family (index maths from
csrc/include/xscan/scan_math.h) and how each argument is *viewed* for the engine. This module gives,
per op, the route family and a view for each argument (a reshaping/permuting/expanding torch view:
nothing is copied), then calls the engine. Gradient buffers are zeroed tensors of each argument's
shape seen through the same view, so the engine writes gradients exactly where it read the input.

Engine layouts: u, z, y: (Bt, channels, rows, cols) pixel maps; dt: (Bt, K, Dm, E); B, C:
(Bt, K, G, N, E); A: (K, Dm, N); D, delta_bias: (K, Dm); last_state: (Bt, K, Dm, N).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from .. import _registry
from ..ops._define import named_gradients
from ..reference.realign import realigned_shape
from ..reference.selective_scan import accumulate_dtype, state_dtype

# Route families of csrc/cpu/scan_dispatch.h
CROSS, ATROUS, CROSS_PAIR, REALIGN, HEADS = range(5)
REALIGN_MODES = {"column": 0, "row": 1, "concat": 2}
REALIGN_AXES = {"channel": 0, "width": 1}
TOKEN_ROLES = ("u", "dt", "B", "C", "z")


def _same(t):
    return t


def _route_axis(t):  # (Bt, K, N, L) -> (Bt, K, G=1, N, L)
    return t.unsqueeze(2)


@dataclass
class Role:
    """Where an argument goes in the engine: its role, the modality slots it fills, and its view."""
    name: str
    slots: tuple = (0,)
    view: Callable = _same


@dataclass
class Plan:
    """One op call as the engine sees it."""
    kind: int
    geometry: list
    roles: list                 # one Role per op argument (None for non-tensor arguments)
    outputs: list               # (shape, dtype, slots, view) per op output, slots () for last_state
    out_dtype: torch.dtype


def _inputs(plan: Plan, args, grads_of=None):
    """The engine's input lists (and, with ``grads_of``, zeroed gradient buffers and their views)."""
    token_dtypes = {a.dtype for a, r in zip(args, plan.roles) if r is not None and r.name in TOKEN_ROLES
                    and a is not None}
    acc = accumulate_dtype(plan.out_dtype)
    token_dtype = token_dtypes.pop() if len(token_dtypes) == 1 else acc
    modalities = 1 + max(max(r.slots) for r in plan.roles if r is not None)
    lists = {name: [None] * modalities for name in ("u", "dt", "B", "C")}
    single = dict(z=None, A=None, D=None, bias=None)
    grad_lists = {name: [None] * modalities for name in ("u", "dt", "B", "C")}
    grad_single = dict(z=None, A=None, D=None, bias=None)
    buffers = []
    for a, r in zip(args, plan.roles):
        if r is None:
            continue
        if a is None:
            buffers.append(None)
            continue
        v = r.view(a.to(token_dtype if r.name in TOKEN_ROLES else acc))
        g = torch.zeros(a.shape, dtype=acc) if grads_of is not None else None
        buffers.append(g)
        for s in r.slots:
            if r.name in lists:
                lists[r.name][s] = v
                if g is not None:
                    grad_lists[r.name][s] = r.view(g)
            else:
                single[r.name] = v
                if g is not None:
                    grad_single[r.name] = r.view(g)
    engine_in = [lists["u"], lists["dt"], lists["B"], lists["C"], single["z"], single["A"], single["D"],
                 single["bias"]]
    return engine_in, (grad_lists, grad_single, buffers), acc


def _run_forward(C, plan: Plan, args, softplus: bool):
    engine_in, _, acc = _inputs(plan, args)
    ys, last_state, results = [None, None], None, []
    for shape, dtype, slots, view in plan.outputs:
        buf = torch.zeros(shape, dtype=acc)
        results.append((buf, dtype))
        if slots:
            for s in slots:
                ys[s] = view(buf)
        else:
            last_state = view(buf)
    ys = [y for y in ys if y is not None]
    C.scan_forward(plan.kind, plan.geometry, *engine_in, softplus, ys, last_state)
    outs = tuple(buf if dtype is None else buf.to(_registry.output_dtype(dtype)) for buf, dtype in results)
    return outs if len(outs) > 1 else outs[0]


def _run_backward(C, plan: Plan, grads, args, softplus: bool):
    engine_in, (gl, gs, buffers), acc = _inputs(plan, args, grads_of=True)
    dys, dlast = [None, None], None
    for g, (shape, dtype, slots, view) in zip(grads, plan.outputs):
        g = g.to(acc).expand(shape)
        if slots:
            for s in slots:
                dys[s] = view(g)
        else:
            dlast = view(g)
    dys = [d for d in dys if d is not None]
    C.scan_backward(plan.kind, plan.geometry, *engine_in, softplus, dys, dlast, gl["u"], gl["dt"], gl["B"],
                    gl["C"], gs["z"], gs["A"], gs["D"], gs["bias"])
    tensor_args = [a for a, r in zip(args, plan.roles) if r is not None]
    return [None if g is None else g.to(a.dtype) for g, a in zip(buffers, tensor_args)]


# ----------------------------------------------------------------------------------------------
# Plans per op

def _selective_scan_plan(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    Bt, Dm, L = u.shape
    pixels = Role("u", view=lambda t: t.unsqueeze(2))  # (Bt, Dm, 1, L): a 1 x L map
    roles = [pixels, Role("dt", view=lambda t: t.unsqueeze(1)), Role("A", view=lambda t: t.unsqueeze(0)),
             Role("B", view=lambda t: t.unsqueeze(1)), Role("C", view=lambda t: t.unsqueeze(1)),
             Role("D", view=lambda t: t.unsqueeze(0)), Role("z", view=pixels.view),
             Role("bias", view=lambda t: t.unsqueeze(0)), None]
    outputs = [(u.shape, u.dtype, (0,), pixels.view),
               ((Bt, Dm, A.shape[1]), None, (), lambda t: t.unsqueeze(1))]
    return Plan(CROSS, [1, L], roles, outputs, u.dtype)


def _map_params():
    return [Role("A"), Role("D"), Role("bias"), None]


def _ss2d_plan(kind):
    def plan(u, dt, B, C, A, D, delta_bias, delta_softplus):
        roles = [Role("u"), Role("dt"), Role("B", view=_route_axis), Role("C", view=_route_axis)] + _map_params()
        return Plan(kind, list(u.shape[2:]), roles, [(u.shape, u.dtype, (0,), _same)], u.dtype)
    return plan


def _cross_ss2d_plan(u0, u1, dt0, dt1, B0, B1, C0, C1, A, D, delta_bias, delta_softplus):
    roles = [Role("u", (0,)), Role("u", (1,)), Role("dt", (0,)), Role("dt", (1,)),
             Role("B", (0,), _route_axis), Role("B", (1,), _route_axis),
             Role("C", (0,), _route_axis), Role("C", (1,), _route_axis)] + _map_params()
    outputs = [(u0.shape, u0.dtype, (0,), _same), (u1.shape, u1.dtype, (1,), _same)]
    return Plan(CROSS_PAIR, list(u0.shape[2:]), roles, outputs, u0.dtype)


def _interleave_plan(u0, u1, dt, B, C, A, D, delta_bias, delta_softplus, mode, axis):
    shape = realigned_shape(u0.shape, mode, axis)
    Bt, Cm, H, W = u0.shape
    both = (0, 1)  # the realigned map's dt, B, C, y serve tokens of either source map
    roles = [Role("u", (0,)), Role("u", (1,)), Role("dt", both), Role("B", both, _route_axis),
             Role("C", both, _route_axis)] + _map_params() + [None, None]
    geometry = [shape[2], shape[3], Cm, W, REALIGN_MODES[mode], REALIGN_AXES[axis]]
    return Plan(REALIGN, geometry, roles, [(shape, u0.dtype, both, _same)], u0.dtype)


def _ssd_exchange_plan(x0, x1, dt0, dt1, A, B0, B1, C0, C1, D, dt_bias, dt_softplus):
    Bt, L, nh, P = x0.shape
    N, K = B0.shape[3], 2 * P  # routes: the head's P channels, modality 0 then 1

    def heads(t):  # (Bt, L, nh, P) -> (Bt, nh, P, L): head = channel, its P channels = rows
        return t.permute(0, 2, 3, 1)

    def step(t):  # (Bt, L, nh) -> (Bt, K, nh, L), shared by the head's channels
        return t.permute(0, 2, 1).unsqueeze(1).expand(Bt, K, nh, L)

    def states(t):  # (Bt, L, G, N) -> (Bt, K, G, N, L)
        return t.permute(0, 2, 3, 1).unsqueeze(1).expand(Bt, K, *t.shape[2:], L)

    def per_head(t):  # (nh,) -> (K, nh)
        return t.unsqueeze(0).expand(K, nh)

    # y0 = SSM(x0, dt0, B1, C1), y1 = SSM(x1, dt1, B0, C0): B_m and C_m serve the other direction
    roles = [Role("u", (0,), heads), Role("u", (1,), heads), Role("dt", (0,), step), Role("dt", (1,), step),
             Role("A", view=lambda t: t.view(1, nh, 1).expand(K, nh, N)),
             Role("B", (1,), states), Role("B", (0,), states), Role("C", (1,), states), Role("C", (0,), states),
             Role("D", view=per_head), Role("bias", view=per_head), None]
    outputs = [(x0.shape, x0.dtype, (0,), heads), (x1.shape, x1.dtype, (1,), heads)]
    return Plan(HEADS, [P, L], roles, outputs, x0.dtype)


PLANS = {
    "selective_scan": _selective_scan_plan,
    "ss2d": _ss2d_plan(CROSS),
    "es2d": _ss2d_plan(ATROUS),
    "cross_ss2d": _cross_ss2d_plan,
    "interleave_ss2d": _interleave_plan,
    "ssd_exchange": _ssd_exchange_plan,
}
SOFTPLUS_ARG = {"interleave_ss2d": -3}  # position of the softplus flag when it is not the last argument


def _softplus(op, args):
    return bool(args[SOFTPLUS_ARG.get(op, -1)])


# ----------------------------------------------------------------------------------------------
# selective_scan with a complex A: its own kernel (csrc/cpu/complex_scan.cpp)

def _complex_inputs(u, delta, A, B, C, D, z, delta_bias):
    """Real per-channel inputs in the accumulation dtype, complex A, B, C in the state's."""
    cplx = state_dtype(u.dtype, A)
    real = torch.float64 if cplx == torch.complex128 else torch.float32
    r = lambda t: None if t is None else t.to(real).contiguous()  # noqa: E731
    return cplx, real, (r(u), r(delta), A.to(cplx).contiguous(), B.to(cplx), C.to(cplx), r(D), r(z), r(delta_bias))


def _complex_forward(C_ext, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    cplx, real, inputs = _complex_inputs(u, delta, A, B, C, D, z, delta_bias)
    y = torch.empty(u.shape, dtype=real)
    last = torch.empty(u.shape[0], u.shape[1], A.shape[1], dtype=cplx)
    C_ext.complex_scan_forward(*inputs, delta_softplus, y, last)
    return y.to(_registry.output_dtype(u.dtype)), last


def _complex_backward(C_ext, grads, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    cplx, real, inputs = _complex_inputs(u, delta, A, B, C, D, z, delta_bias)
    Bt, Dm, _ = u.shape
    N = A.shape[1]
    dy = grads[0].to(real)
    dlast = grads[1].to(cplx).contiguous() if len(grads) > 1 else None
    du, ddelta = torch.empty(u.shape, dtype=real), torch.empty(u.shape, dtype=real)
    dA = torch.zeros(Bt, Dm, N, dtype=cplx)
    dB, dC = torch.zeros(B.shape, dtype=cplx), torch.zeros(C.shape, dtype=cplx)
    dD, dbias = torch.empty(Bt, Dm, dtype=real), torch.empty(Bt, Dm, dtype=real)
    dz = None if z is None else torch.empty(u.shape, dtype=real)
    C_ext.complex_scan_backward(*inputs, delta_softplus, dy, dlast, du, ddelta, dA, dB, dC, dD, dbias, dz)
    return dict(u=du.to(u.dtype), delta=ddelta.to(delta.dtype), A=dA.sum(0).to(A.dtype), B=dB.to(B.dtype),
                C=dC.to(C.dtype), D=None if D is None else dD.sum(0).to(D.dtype),
                z=None if z is None else dz.to(z.dtype),
                delta_bias=None if delta_bias is None else dbias.sum(0).to(delta_bias.dtype))


def _register(C):
    for op, plan_of in PLANS.items():
        def forward(*args, _plan_of=plan_of, _op=op):
            if _op == "selective_scan" and args[2].is_complex():
                return _complex_forward(C, *args)
            return _run_forward(C, _plan_of(*args), args, _softplus(_op, args))

        def backward(grads, *args, _plan_of=plan_of, _op=op):
            if _op == "selective_scan" and args[2].is_complex():
                return _complex_backward(C, grads, *args)
            return named_gradients(_op, _run_backward(C, _plan_of(*args), grads, args, _softplus(_op, args)))

        _registry.register("cpu", op, forward, backward)
    _registry.set_available("cpu", ("cpu",), None)


def _load() -> Optional[str]:
    try:
        C = importlib.import_module("xscan._C")
    except ImportError as e:
        return f"xscan._C is not built ({e}); run `pip install -e .`"
    if not hasattr(C, "scan_forward"):
        return "xscan._C is an old build without the scan kernels; run `pip install -e .`"
    _register(C)
    return None


_reason = _load()
if _reason is not None:
    _registry.set_available("cpu", (), _reason)
