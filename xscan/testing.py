"""Inputs and comparisons shared by the tests and the benchmarks.

``make_inputs(op, ...)`` builds well-conditioned random arguments for each op (dt through softplus
in a realistic range, A = -exp(A_log) as the layers initialise it); ``compare(op, args, backend)``
runs an op on a backend and on the reference and returns the largest forward and gradient errors.
"""
from __future__ import annotations

import contextlib
import importlib
import inspect
from typing import Optional

import torch

from . import fp32_output, ops, reference, use_backend
from .shapes import realigned_shape
from .routes import atrous_grid

OPS = ("selective_scan", "ss2d", "es2d", "cross_ss2d", "interleave_ss2d", "ssd_exchange")


def _gen(seed: int, device) -> torch.Generator:
    g = torch.Generator(device="cpu")
    g.manual_seed(seed)
    return g


def make_inputs(op: str, *, Bt=2, Dm=4, N=4, L=16, H=3, W=5, G=None, nh=2, P=3, dtype=torch.float32,
                device="cpu", seed=0, D=True, z=True, delta_bias=True, softplus=True, mode="column",
                axis="channel", param_dtype=None) -> tuple[tuple, dict]:
    """Positional args and keyword args for ``getattr(xscan, op)``; tensors do not require grad.
    Per-token tensors use ``dtype``; A, D and delta_bias use ``param_dtype`` (default fp32, or
    ``dtype`` when that is fp64, as mamba keeps its weights in fp32)."""
    g = _gen(seed, device)
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


def _outputs(out) -> tuple:
    return out if isinstance(out, tuple) else (out,)


def run_with_grads(op: str, args: tuple, kwargs: dict, backend: Optional[str], grad_seed=1):
    """Forward and backward of ``op`` on ``backend`` (None: the reference module directly).
    Returns (outputs, {argument position or name: gradient})."""
    leaves = [a.detach().clone().requires_grad_() if isinstance(a, torch.Tensor) else a for a in args]
    kw = {k: v.detach().clone().requires_grad_() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    if backend is None:
        outs = _outputs(getattr(reference, op)(*leaves, **kw))
    else:
        with use_backend(backend):
            outs = _outputs(public_op(op)(*leaves, **kw))
    g = _gen(grad_seed, "cpu")
    cotangents = [torch.randn(o.shape, generator=g).to(o) for o in outs]
    torch.autograd.backward(outs, cotangents)
    grads = {i: a.grad for i, a in enumerate(leaves) if isinstance(a, torch.Tensor)}
    grads.update({k: v.grad for k, v in kw.items() if isinstance(v, torch.Tensor)})
    return [o.detach() for o in outs], grads


def run_both(op: str, args: tuple, kwargs: dict, backend: str, transform):
    """[(outputs, gradients) on the reference with the inputs as they are, the same on ``backend``
    with ``transform`` applied to every tensor input] (gradients in argument order)."""
    results = []
    for name, tf in (("reference", lambda t: t), (backend, transform)):
        leaves = [tf(a.detach()).requires_grad_() if isinstance(a, torch.Tensor) else a for a in args]
        kw = {k: tf(v.detach()).requires_grad_() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
        with use_backend(name):
            outs = _outputs(public_op(op)(*leaves, **kw))
        g = _gen(1, "cpu")
        torch.autograd.backward(outs, [torch.randn(o.shape, generator=g).to(o) for o in outs])
        tensors = [x for x in leaves + list(kw.values()) if isinstance(x, torch.Tensor)]
        results.append((outs, [x.grad for x in tensors]))
    return results


def compare(op: str, args: tuple, kwargs: dict, backend: str):
    """Largest relative error of ``backend`` against the reference, for every output and gradient:
    a list of (name, error) with error = max|a - b| / (max|b| + 1e-6)."""
    ref_out, ref_grads = run_with_grads(op, args, kwargs, None)
    out, grads = run_with_grads(op, args, kwargs, backend)
    errors = []
    for i, (a, b) in enumerate(zip(out, ref_out)):
        errors.append((f"out{i}", _rel(a, b)))
    for key, b in ref_grads.items():
        a = grads[key]
        errors.append((f"grad[{key}]", float("inf") if a is None and b is not None else _rel(a, b)))
    return errors


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().cpu(), b.double().cpu()
    if a.shape != b.shape:
        return float("inf")
    return ((a - b).abs().max() / (b.abs().max() + 1e-6)).item()


def load_mamba_selective_scan():
    """``mamba_ssm.ops.selective_scan_interface`` (``selective_scan_fn``, ``selective_scan_ref``), or
    None when mamba-ssm is not installed. Where its CUDA extension is missing (a CPU install), the
    package ``__init__`` would fail on it, so the module is loaded with the package body skipped and
    ``selective_scan_cuda`` stubbed: ``selective_scan_ref`` works, ``selective_scan_fn`` does not."""
    import importlib
    import importlib.util
    import sys
    import types

    try:
        return importlib.import_module("mamba_ssm.ops.selective_scan_interface")
    except ImportError:
        pass
    spec = importlib.util.find_spec("mamba_ssm") if "mamba_ssm" not in sys.modules else None
    if spec is None or not spec.submodule_search_locations:
        return None
    package = types.ModuleType("mamba_ssm")
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules["mamba_ssm"] = package
    sys.modules.setdefault("selective_scan_cuda", types.ModuleType("selective_scan_cuda"))
    try:
        return importlib.import_module("mamba_ssm.ops.selective_scan_interface")
    except ImportError:
        return None


def non_contiguous(t: torch.Tensor) -> torch.Tensor:
    """The same values as ``t`` in a non-contiguous view (every dimension strided by 2 in memory)."""
    padded = t.new_zeros([2 * s for s in t.shape])
    view = padded[tuple(slice(None, None, 2) for _ in t.shape)]
    view.copy_(t)
    return view


def check_fp32_output(op: str, backend: str, device="cpu", **shape) -> None:
    """Assert that inside ``xscan.fp32_output()`` ``backend`` returns fp32 outputs for bf16 inputs,
    unrounded: equal to the reference on the same inputs upcast to fp32 (half inputs are scanned in
    fp32) to fp32 rounding, while the bf16 outputs are visibly rounded; gradients keep the inputs'
    dtypes."""
    args, kwargs = make_inputs(op, dtype=torch.bfloat16, device=device, **shape)

    def f32(t):
        return t.float() if isinstance(t, torch.Tensor) and t.dtype == torch.bfloat16 else t

    exact, _ = run_with_grads(op, tuple(f32(a) for a in args), {k: f32(v) for k, v in kwargs.items()}, None)
    with use_backend(backend):
        rounded = _outputs(public_op(op)(*args, **kwargs))
        with fp32_output():
            wide, grads = run_with_grads(op, args, kwargs, backend)
    for i, (w, e) in enumerate(zip(wide, exact)):
        assert w.dtype == torch.float32 and _rel(w, e) < 1e-5, f"{op} output {i}: {w.dtype}, {_rel(w, e)}"
    # what the option is for: the bf16 outputs are this far off
    assert rounded[0].dtype == torch.bfloat16 and _rel(rounded[0], exact[0]) > 1e-4
    inputs = dict(enumerate(args), **kwargs)
    for key, g in grads.items():
        assert g.dtype == inputs[key].dtype, key


@contextlib.contextmanager
def deterministic():
    """torch's deterministic mode inside the block, the previous setting restored after it."""
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)
