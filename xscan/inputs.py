"""Arguments for the ops: well-conditioned random inputs (``make_inputs``), the registered ops'
positional arguments (``custom_op_args``) and the ScanSpec an op plans for them (``spec_of``),
shared by the benchmarks, the tools and the tests (``xscan.testing`` adds the comparisons)."""
from __future__ import annotations

import importlib
import inspect

import torch

from . import ops
from .routes import atrous_grid
from .shapes import realigned_shape

OPS = ("selective_scan", "ss2d", "es2d", "cross_ss2d", "interleave_ss2d", "ssd_exchange")


def make_inputs(op: str, *, Bt=2, Dm=4, N=4, L=16, H=3, W=5, G=None, nh=2, P=3, dtype=torch.float32,
                device="cpu", seed=0, D=True, z=True, delta_bias=True, softplus=True, mode="column",
                axis="channel", route=None, param_dtype=None) -> tuple[tuple, dict]:
    """Positional args and keyword args for ``getattr(xscan, op)``; tensors do not require grad.
    Per-token tensors use ``dtype``; A, D and delta_bias use ``param_dtype`` (default fp32, or
    ``dtype`` when that is fp64, as mamba keeps its weights in fp32). ``route``: ss2d's route over
    the map (one of ``xscan.routes.MAP_ROUTES``; None: the op's default)."""
    g = torch.Generator().manual_seed(seed)  # on the CPU, so that every device draws the same values
    pdt = param_dtype or (dtype if dtype == torch.float64 else torch.float32)

    def rand(*shape, scale=1.0, shift=0.0, dt=dtype):
        return (torch.randn(*shape, generator=g) * scale + shift).to(device=device, dtype=dt)

    def neg_A(*shape):  # S4D-real-like spread, -[0.5, 4]
        return (-torch.exp(torch.rand(*shape, generator=g) * 2.0 - 0.7)).to(device=device, dtype=pdt)

    def delta(*shape):  # dt in about (0.01, 0.7), through softplus or given directly
        if softplus:
            return rand(*shape, scale=0.8, shift=-2.0)
        return (torch.rand(*shape, generator=g) * 0.5 + 0.01).to(device=device, dtype=dtype)

    def opt(flag, *shape, scale=1.0, shift=0.0):
        return rand(*shape, scale=scale, shift=shift, dt=pdt) if flag else None

    if op == "selective_scan":
        bc = (Bt, N, L) if G is None else (Bt, G, N, L)
        args = (rand(Bt, Dm, L), delta(Bt, Dm, L), neg_A(Dm, N), rand(*bc), rand(*bc))
        kwargs = dict(D=opt(D, Dm), z=rand(Bt, Dm, L) if z else None, delta_bias=opt(delta_bias, Dm, scale=0.3),
                      delta_softplus=softplus)
        return args, kwargs
    if op in ("ss2d", "es2d", "cross_ss2d", "interleave_ss2d"):
        Dr, Lr = Dm, H * W
        if op == "es2d":
            Hq, Wq = atrous_grid(H, W)
            Lr = Hq * Wq
        if op == "interleave_ss2d":
            _, Dr, Hr, Wr = realigned_shape((Bt, Dm, H, W), mode, axis)
            Lr = Hr * Wr
        params = dict(A=neg_A(4, Dr, N), D=opt(D, 4, Dr), delta_bias=opt(delta_bias, 4, Dr, scale=0.3),
                      delta_softplus=softplus)

        def tokens():
            return delta(Bt, 4, Dr, Lr), rand(Bt, 4, N, Lr), rand(Bt, 4, N, Lr)

        if op == "cross_ss2d":
            (dt0, B0, C0), (dt1, B1, C1) = tokens(), tokens()
            return (rand(Bt, Dm, H, W), rand(Bt, Dm, H, W), dt0, dt1, B0, B1, C0, C1), params
        if op == "interleave_ss2d":
            return (rand(Bt, Dm, H, W), rand(Bt, Dm, H, W), *tokens()), dict(params, mode=mode, axis=axis)
        if route is not None:
            params["route"] = route
        return (rand(Bt, Dm, H, W), *tokens()), params
    if op == "ssd_exchange":
        G = G or 1

        def side():
            return rand(Bt, L, nh, P), delta(Bt, L, nh), rand(Bt, L, G, N), rand(Bt, L, G, N)

        (x0, dt0, B0, C0), (x1, dt1, B1, C1) = side(), side()
        return (x0, x1, dt0, dt1, neg_A(nh), B0, B1, C0, C1), dict(
            D=opt(D, nh), dt_bias=opt(delta_bias, nh, scale=0.3), dt_softplus=softplus)
    raise ValueError(f"unknown op {op!r}; expected one of {OPS}")


def public_op(op: str):
    return getattr(ops, op)


def custom_op_args(op: str, args: tuple, kwargs: dict, backend: str, fp32_output: bool = False) -> tuple:
    """Public (args, kwargs) -> the positional arguments of ``torch.ops.xscan.<op>`` (for opcheck)."""
    names = [n for n, _ in importlib.import_module(f"xscan.ops.{op}").ARGS]
    defaults = {n: p.default for n, p in inspect.signature(public_op(op)).parameters.items()}
    values = dict(defaults, **dict(zip(names, args)), **kwargs)
    return tuple(values[n] for n in names) + (fp32_output, backend)


def spec_of(op: str, args: tuple, kwargs: dict):
    """The ScanSpec the op plans for these public arguments (selective_scan's B and C grouped)."""
    full = custom_op_args(op, args, kwargs, "reference")[:-2]
    if op == "selective_scan":
        full = tuple(t.unsqueeze(1) if i in (3, 4) and t.dim() == 3 else t for i, t in enumerate(full))
    return importlib.import_module(f"xscan.ops.{op}").plan(*full, full[0].dtype)


def long_line_spec(L: int, N: int = 2):
    """selective_scan's spec for one channel over L positions, on zero-stride views (no memory):
    for the backends' size limits."""
    def line(*shape):
        return torch.zeros(1).expand(*shape)
    args = (line(1, 1, L), line(1, 1, L), -torch.ones(1, N), line(1, N, L), line(1, N, L))
    return spec_of("selective_scan", args, {})
