"""The ops in the backend contract of ``xscan._registry``: ``forward(*args)`` and
``backward(grads, *args)`` per op, with the positional arguments of the ``torch.ops.xscan`` custom ops.

Each op describes its operands to the routed scan (``selective.ScanProblem``) where they lie; only
the outputs summed over routes (and gradients summed over routes, channel blocks or chunks) go
through fp32 partial buffers reduced here."""
from __future__ import annotations

import torch

from .. import _registry
from . import routes, ssd
from .selective import ScanProblem, group_sum

NO_STRIDES = (0, 0, 0, 0)


def _line(t: torch.Tensor) -> tuple:
    """(b, d, h, w) strides of a (Bt, D, L) tensor seen as a (1, L) map."""
    return (t.stride(0), t.stride(1), 0, t.stride(2))


def _params(A, D, delta_bias):
    """A (K, D, N), D and delta_bias (K, D) strides; absent ones get zeros."""
    return dict(A=A, s_A=A.stride(), D=D, s_D=D.stride() if D is not None else (0, 0),
                bias=delta_bias, s_bias=delta_bias.stride() if delta_bias is not None else (0, 0))


def _pair(*tensors):
    """Operand pairs (modality 0, 1) and their strides."""
    return tensors, tuple(t.stride() for t in tensors)


def _grad(g, like):
    return torch.zeros_like(like) if g is None else g


# ---- selective_scan ------------------------------------------------------------------------------
def _selective_problem(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    Bt, Dm, L = u.shape
    dt_strides = (delta.stride(0), 0, delta.stride(1), delta.stride(2))
    return ScanProblem(
        route=routes.LINE, source=routes.SAME, two_u=False, two_tok=False, Bt=Bt, K=1, Dr=Dm, N=A.shape[1],
        Lseq=L, Ltok=L, H=1, W=L, C=Dm, Ws=L, u=(u, u), s_u=(_line(u),) * 2, dt=(delta, delta),
        s_dt=(dt_strides,) * 2, B=(B, B), s_B=(B.stride(),) * 2, Cm=(C, C), s_C=(C.stride(),) * 2,
        A=A, s_A=(0, *A.stride()), D=D, s_D=(0, D.stride(0)) if D is not None else (0, 0),
        bias=delta_bias, s_bias=(0, delta_bias.stride(0)) if delta_bias is not None else (0, 0),
        softplus=delta_softplus, z=z, s_z=_line(z) if z is not None else NO_STRIDES,
        sb=Dm // B.shape[1], sc=Dm // C.shape[1])


def selective_scan_forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    problem = _selective_problem(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    y = torch.empty(u.shape, device=u.device, dtype=_registry.output_dtype(u.dtype))
    last = problem.forward(y, _line(y))
    return y, last.view(u.shape[0], u.shape[1], A.shape[1])


def selective_scan_backward(grads, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    problem = _selective_problem(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    g_y = _grad(grads[0], u)
    g_last = grads[1] if len(grads) > 1 and grads[1] is not None else None
    if g_last is not None:
        g_last = g_last.to(problem.acc_torch).contiguous()
    g_u = torch.empty(u.shape, device=u.device, dtype=u.dtype)
    g_z = torch.empty(z.shape, device=u.device, dtype=z.dtype) if z is not None else None
    r = problem.backward(((g_y, _line(g_y)),) * 2, g_u, _line(g_u), 0, 0, g_z,
                         _line(g_z) if g_z is not None else NO_STRIDES, g_last=g_last)
    g_B = group_sum(r["B"][:, 0, :, 0], problem, problem.sb).to(B.dtype)
    g_C = group_sum(r["C"][:, 0, :, 0], problem, problem.sc).to(C.dtype)
    return [g_u, r["dt"][0, :, 0], r["A"][0].to(A.dtype), g_B, g_C,
            None if D is None else r["D"][0].to(D.dtype), g_z,
            None if delta_bias is None else r["bias"][0].to(delta_bias.dtype)]


# ---- ss2d, es2d, interleave_ss2d: one map, four routes ------------------------------------------
def _map_problem(route, source, u0, u1, dt, B, C, A, D, delta_bias, delta_softplus, H, W, Lseq):
    """Four routes over an H x W scanned map with one set of dt/B/C (Ltok tokens)."""
    (u0, u1), s_u = _pair(u0, u1)
    return ScanProblem(
        route=route, source=source, two_u=source != routes.SAME, two_tok=False, Bt=u0.shape[0], K=4,
        Dr=dt.shape[2], N=A.shape[2], Lseq=Lseq, Ltok=dt.shape[3], H=H, W=W, C=u0.shape[1], Ws=u0.shape[3],
        u=(u0, u1), s_u=s_u, dt=(dt, dt), s_dt=(dt.stride(),) * 2, B=(B, B), s_B=(B.stride(),) * 2,
        Cm=(C, C), s_C=(C.stride(),) * 2, softplus=delta_softplus, **_params(A, D, delta_bias))


def _summed_routes(problem, shape, dtype):
    """Run the forward into per-route fp32 slabs (4, *shape) and sum them in fixed order."""
    slabs = torch.empty(4, *shape, device=problem.device, dtype=problem.acc_torch)
    problem.forward(slabs, slabs.stride()[1:], slabs.stride(0))
    return slabs.sum(0).to(_registry.output_dtype(dtype))


def _map_backward(problem, grads, u_like, params):
    """Gradients of a one-map scan: u's per-route slabs summed, dt, B, C, A, D, delta_bias."""
    A, D, delta_bias, dt, B, C = params
    g_y = _grad(grads[0], u_like[0])
    M = len(u_like)
    slabs = torch.empty(4, M, *u_like[0].shape, device=problem.device, dtype=problem.acc_torch)
    r = problem.backward(((g_y, g_y.stride()),) * 2, slabs, slabs.stride()[2:], slabs.stride(0), slabs.stride(1))
    g_u = slabs.sum(0)
    return ([g_u[m].to(u_like[m].dtype) for m in range(M)]
            + [r["dt"][0], r["B"].sum(0)[0].to(B.dtype), r["C"].sum(0)[0].to(C.dtype), r["A"].to(A.dtype),
               None if D is None else r["D"].to(D.dtype),
               None if delta_bias is None else r["bias"].to(delta_bias.dtype)])


def ss2d_forward(u, dt, B, C, A, D, delta_bias, delta_softplus):
    H, W = u.shape[2:]
    problem = _map_problem(routes.CROSS, routes.SAME, u, u, dt, B, C, A, D, delta_bias, delta_softplus, H, W, H * W)
    return _summed_routes(problem, u.shape, u.dtype)


def ss2d_backward(grads, u, dt, B, C, A, D, delta_bias, delta_softplus):
    H, W = u.shape[2:]
    problem = _map_problem(routes.CROSS, routes.SAME, u, u, dt, B, C, A, D, delta_bias, delta_softplus, H, W, H * W)
    g_u, g_dt, g_B, g_C, g_A, g_D, g_bias = _map_backward(problem, grads, (u,), (A, D, delta_bias, dt, B, C))
    return [g_u, g_dt, g_B, g_C, g_A, g_D, g_bias]


def _es2d_problem(u, dt, B, C, A, D, delta_bias, delta_softplus):
    H, W = u.shape[2:]
    return _map_problem(routes.ATROUS, routes.SAME, u, u, dt, B, C, A, D, delta_bias, delta_softplus, H, W,
                        dt.shape[3])


def es2d_forward(u, dt, B, C, A, D, delta_bias, delta_softplus):
    problem = _es2d_problem(u, dt, B, C, A, D, delta_bias, delta_softplus)
    # every pixel is on exactly one route
    y = torch.empty(u.shape, device=u.device, dtype=_registry.output_dtype(u.dtype))
    problem.forward(y, y.stride())
    return y


def es2d_backward(grads, u, dt, B, C, A, D, delta_bias, delta_softplus):
    problem = _es2d_problem(u, dt, B, C, A, D, delta_bias, delta_softplus)
    g_y = _grad(grads[0], u)
    g_u = torch.empty(u.shape, device=u.device, dtype=u.dtype)
    r = problem.backward(((g_y, g_y.stride()),) * 2, g_u, g_u.stride(), 0, 0)
    return [g_u, r["dt"][0], r["B"].sum(0)[0].to(B.dtype), r["C"].sum(0)[0].to(C.dtype), r["A"].to(A.dtype),
            None if D is None else r["D"].to(D.dtype), None if delta_bias is None else r["bias"].to(delta_bias.dtype)]


REALIGN_SOURCE = {("column", "channel"): routes.CHANNEL_COLUMN, ("row", "channel"): routes.CHANNEL_HALVES,
                  ("concat", "channel"): routes.CHANNEL_HALVES, ("concat", "width"): routes.CHANNEL_HALVES,
                  ("column", "width"): routes.WIDTH_COLUMN, ("row", "width"): routes.WIDTH_HALVES}


def _interleave_problem(u0, u1, dt, B, C, A, D, delta_bias, delta_softplus, mode, axis):
    Bt, _, H, W = u0.shape
    Wr = 2 * W if axis == "width" and mode != "concat" else W
    problem = _map_problem(routes.CROSS, REALIGN_SOURCE[(mode, axis)], u0, u1, dt, B, C, A, D, delta_bias,
                           delta_softplus, H, Wr, H * Wr)
    return problem, (Bt, dt.shape[2], H, Wr)


def interleave_ss2d_forward(u0, u1, dt, B, C, A, D, delta_bias, delta_softplus, mode, axis):
    problem, shape = _interleave_problem(u0, u1, dt, B, C, A, D, delta_bias, delta_softplus, mode, axis)
    return _summed_routes(problem, shape, u0.dtype)


def interleave_ss2d_backward(grads, u0, u1, dt, B, C, A, D, delta_bias, delta_softplus, mode, axis):
    problem, shape = _interleave_problem(u0, u1, dt, B, C, A, D, delta_bias, delta_softplus, mode, axis)
    g_y = grads[0] if grads[0] is not None else torch.zeros(shape, device=u0.device, dtype=u0.dtype)
    return _map_backward(problem, [g_y], (u0, u1), (A, D, delta_bias, dt, B, C))


# ---- cross_ss2d: two modalities interleaved along each route ------------------------------------
def _cross_problem(u0, u1, dt0, dt1, B0, B1, C0, C1, A, D, delta_bias, delta_softplus):
    Bt, Dm, H, W = u0.shape
    (u0, u1), s_u = _pair(u0, u1)
    (dt0, dt1), s_dt = _pair(dt0, dt1)
    (B0, B1), s_B = _pair(B0, B1)
    (C0, C1), s_C = _pair(C0, C1)
    return ScanProblem(
        route=routes.CROSS_PAIR, source=routes.PAIR, two_u=True, two_tok=True, Bt=Bt, K=4, Dr=Dm,
        N=A.shape[2], Lseq=2 * H * W, Ltok=H * W, H=H, W=W, C=Dm, Ws=W, u=(u0, u1), s_u=s_u, dt=(dt0, dt1),
        s_dt=s_dt, B=(B0, B1), s_B=s_B, Cm=(C0, C1), s_C=s_C, softplus=delta_softplus,
        **_params(A, D, delta_bias))


def cross_ss2d_forward(u0, u1, dt0, dt1, B0, B1, C0, C1, A, D, delta_bias, delta_softplus):
    problem = _cross_problem(u0, u1, dt0, dt1, B0, B1, C0, C1, A, D, delta_bias, delta_softplus)
    slabs = torch.empty(4, 2, *u0.shape, device=u0.device, dtype=problem.acc_torch)
    problem.forward(slabs, slabs.stride()[2:], slabs.stride(0), slabs.stride(1))
    y = slabs.sum(0)
    return y[0].to(_registry.output_dtype(u0.dtype)), y[1].to(_registry.output_dtype(u1.dtype))


def cross_ss2d_backward(grads, u0, u1, dt0, dt1, B0, B1, C0, C1, A, D, delta_bias, delta_softplus):
    problem = _cross_problem(u0, u1, dt0, dt1, B0, B1, C0, C1, A, D, delta_bias, delta_softplus)
    g0, g1 = _grad(grads[0], u0), _grad(grads[1] if len(grads) > 1 else None, u1)
    slabs = torch.empty(4, 2, *u0.shape, device=u0.device, dtype=problem.acc_torch)
    r = problem.backward(((g0, g0.stride()), (g1, g1.stride())), slabs, slabs.stride()[2:], slabs.stride(0),
                         slabs.stride(1))
    g_u = slabs.sum(0)
    g_B, g_C = r["B"].sum(0), r["C"].sum(0)
    return [g_u[0].to(u0.dtype), g_u[1].to(u1.dtype), r["dt"][0], r["dt"][1].to(dt1.dtype),
            g_B[0].to(B0.dtype), g_B[1].to(B1.dtype), g_C[0].to(C0.dtype), g_C[1].to(C1.dtype),
            r["A"].to(A.dtype), None if D is None else r["D"].to(D.dtype),
            None if delta_bias is None else r["bias"].to(delta_bias.dtype)]


# ---- the table the backend registers -------------------------------------------------------------
OPS = {
    "selective_scan": (selective_scan_forward, selective_scan_backward),
    "ss2d": (ss2d_forward, ss2d_backward),
    "es2d": (es2d_forward, es2d_backward),
    "cross_ss2d": (cross_ss2d_forward, cross_ss2d_backward),
    "interleave_ss2d": (interleave_ss2d_forward, interleave_ss2d_backward),
    "ssd_exchange": (ssd.ssd_exchange_forward, ssd.ssd_exchange_backward),
}


MAX_D_STATE = 256
A_POSITION = {"selective_scan": 2, "ss2d": 4, "es2d": 4, "cross_ss2d": 8, "interleave_ss2d": 5}


def check_limits(op: str, *args) -> None:
    """Inputs this backend cannot take, before any launch."""
    if op == "ssd_exchange":
        return ssd.check_limits(*args)
    A = args[A_POSITION[op]]
    if A.is_complex():
        raise ValueError(f"xscan.{op}: the triton backend takes a real A; complex A runs on the reference and cpu "
                         "backends (xscan.use_backend('reference') for CUDA tensors)")
    N = A.shape[-1]
    if N > MAX_D_STATE:
        raise ValueError(f"xscan.{op}: the triton backend takes d_state N <= {MAX_D_STATE}, A has N={N}")
