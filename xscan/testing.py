"""Comparisons shared by the tests and the benchmarks, on the inputs of ``xscan.inputs``.

``make_inputs(op, ...)`` (from ``xscan.inputs``) builds well-conditioned random arguments for each
op (dt through softplus in a realistic range, A = -exp(A_log) as the layers initialise it);
``compare(op, args, backend)`` runs an op on a backend and on the reference and returns the largest
forward and gradient errors; ``tolerance`` says how large they may be.
"""
from __future__ import annotations

import contextlib
from typing import Optional

import torch

from . import fp32_output, reference, use_backend
from .inputs import OPS, custom_op_args, long_line_spec, make_inputs, public_op, spec_of  # noqa: F401 (re-exported)
from .peers import load_mamba_selective_scan  # noqa: F401 (re-exported)
from .routes import MAP_ROUTES


def route_cases() -> list:
    """(op, route) for every route an op can scan, the route-kind axis of the tests: each op with its
    own route kind, ss2d once per route over the map (``xscan.routes.MAP_ROUTES``); route None where
    the op takes no route argument. Every kind of ``xscan.spec.ROUTE_KINDS`` is reached
    (tests/test_route_kinds.py checks it)."""
    return [(op, route) for op in OPS for route in (sorted(MAP_ROUTES) if op == "ss2d" else [None])]


# the ops over a map, ss2d with each of its routes
MAP_CASES = [(op, route) for op, route in route_cases() if op not in ("selective_scan", "ssd_exchange")]

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
    g = torch.Generator().manual_seed(grad_seed)
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
        g = torch.Generator().manual_seed(1)
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


# The largest error ``compare`` may report for a backend against the reference: in fp32 by backend
# (their orders of accumulation differ: the CPU engine's chunks, CUDA's warp scans, Triton's chunked
# tiles), in fp64 and half precision alike for every backend. Long sequences and wide channel blocks
# pass a larger one explicitly.
FP32_TOLERANCE = {"reference": 1e-6, "cpu": 3e-5, "cuda": 5e-5, "triton": 2e-4}
TOLERANCE = {torch.float64: 1e-9, torch.float16: 2e-2, torch.bfloat16: 5e-2}


def tolerance(backend: str, dtype: torch.dtype = torch.float32) -> float:
    return FP32_TOLERANCE[backend] if dtype == torch.float32 else TOLERANCE[dtype]


def assert_matches_reference(op: str, backend: str, tol: Optional[float] = None, **inputs) -> None:
    """``op`` on ``backend`` against the reference at ``make_inputs(op, **inputs)``, the output and
    every gradient within ``tol`` (default: ``tolerance(backend, dtype)``)."""
    args, kwargs = make_inputs(op, **inputs)
    tol = tol or tolerance(backend, inputs.get("dtype", torch.float32))
    bad = [(name, err) for name, err in compare(op, args, kwargs, backend) if not err < tol]
    assert not bad, f"{op} on {backend} at {inputs}: errors above {tol}: {bad}"


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().cpu(), b.double().cpu()
    if a.shape != b.shape:
        return float("inf")
    return ((a - b).abs().max() / (b.abs().max() + 1e-6)).item()


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
