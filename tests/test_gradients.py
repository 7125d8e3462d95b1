"""Gradients on every backend against autograd through the reference (the oracle):

- every combination of present and absent optional tensors, every gradient checked by name (a
  gradient paired with the wrong argument, or missing, fails);
- ``requires_grad`` on single arguments and on subsets (the others get no gradient);
- second derivatives (Hessian-vector products; fp64 ``gradgradcheck`` where the backend takes fp64);
- ``torch.library.opcheck`` of every forward and backward op, and ops under a ``TorchDispatchMode``."""
from __future__ import annotations

import itertools

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import xscan
from xscan import reference
from xscan.testing import OPS, custom_op_args, make_inputs, public_op, tolerance

TINY = dict(Bt=1, Dm=2, N=2, L=4, H=2, W=3, G=1, nh=2, P=2)
OPTIONALS = {"selective_scan": ("D", "z", "delta_bias"), "ssd_exchange": ("D", "delta_bias")}


def optional_flags(op):
    """Every present/absent combination of the op's optional tensors, as make_inputs flags."""
    names = OPTIONALS.get(op, ("D", "delta_bias"))
    return [dict(zip(names, flags)) for flags in itertools.product((True, False), repeat=len(names))]


def tensors_of(args, kwargs):
    """{name: tensor} for the tensor arguments of a public call (positional ones by index)."""
    named = {i: a for i, a in enumerate(args) if isinstance(a, torch.Tensor)}
    named.update({k: v for k, v in kwargs.items() if isinstance(v, torch.Tensor)})
    return named


def grads_of(fn, args, kwargs, wrt, cotangent_seed=1):
    """Outputs and {name: gradient} of fn(*args, **kwargs) for the names in ``wrt`` (others get none)."""
    args = [a.detach().clone().requires_grad_(i in wrt) if isinstance(a, torch.Tensor) else a
            for i, a in enumerate(args)]
    kwargs = {k: v.detach().clone().requires_grad_(k in wrt) if isinstance(v, torch.Tensor) else v
              for k, v in kwargs.items()}
    outs = fn(*args, **kwargs)
    outs = outs if isinstance(outs, tuple) else (outs,)
    g = torch.Generator().manual_seed(cotangent_seed)
    cotangents = [torch.randn(o.shape, generator=g, dtype=o.dtype).to(o.device) for o in outs]
    pairs = [(o, c) for o, c in zip(outs, cotangents) if o.requires_grad]  # ssd_exchange: y1 needs x1's side
    torch.autograd.backward([o for o, _ in pairs], [c for _, c in pairs])
    return outs, {k: t.grad for k, t in tensors_of(args, kwargs).items()}


def rel(a, b):
    return ((a.double() - b.double()).abs().max() / (b.double().abs().max() + 1e-6)).item()


def dtype_for(backend):
    return torch.float32 if backend == "cuda" else torch.float64  # the CUDA kernels take no fp64


@pytest.mark.parametrize("op", OPS)
def test_every_optional_combination_routes_every_gradient(backend, op):
    name, device = backend
    dtype = dtype_for(name)
    for flags in optional_flags(op):
        args, kwargs = make_inputs(op, dtype=dtype, device=device, **TINY, **flags)
        wrt = set(tensors_of(args, kwargs))
        expected_out, expected = grads_of(getattr(reference, op), args, kwargs, wrt)
        with xscan.use_backend(name):
            out, got = grads_of(public_op(op), args, kwargs, wrt)
        for a, b in zip(out, expected_out):
            assert rel(a, b) < tolerance(name, dtype), (flags, "output")
        for key, g in expected.items():
            assert got[key] is not None, (flags, key, "no gradient")
            assert rel(got[key], g) < tolerance(name, dtype), (flags, key, rel(got[key], g))


@pytest.mark.parametrize("op", OPS)
def test_requires_grad_on_any_subset(op):
    """The autograd glue is backend-independent: single arguments and random subsets on the
    reference and cpu backends, every optional present or absent."""
    rng = torch.Generator().manual_seed(0)
    for backend in ("reference", "cpu"):
        if xscan.backends()[backend] is not True:
            continue
        for flags in optional_flags(op):
            args, kwargs = make_inputs(op, dtype=torch.float64, **TINY, **flags)
            names = list(tensors_of(args, kwargs))
            subsets = [{n} for n in names] + [
                {n for n in names if torch.rand(1, generator=rng).item() < 0.5} for _ in range(3)]
            for wrt in subsets:
                if not wrt:
                    continue
                _, expected = grads_of(getattr(reference, op), args, kwargs, wrt)
                with xscan.use_backend(backend):
                    _, got = grads_of(public_op(op), args, kwargs, wrt)
                for key in names:
                    if key in wrt:
                        assert got[key] is not None and rel(got[key], expected[key]) < 1e-9, (backend, flags, key)
                    else:
                        assert got[key] is None, (backend, flags, key, "gradient for an argument without grad")


# ---- second derivatives ----------------------------------------------------------------------------

def hessian_vector_products(fn, args, kwargs, seed=2):
    """d/dx <d<f(x), w>/dx, v> for random w, v, every tensor argument x (the first-order gradient
    taken with create_graph=True, as gradient penalties do)."""
    leaves = tensors_of(args, kwargs)
    leaves = {k: t.detach().clone().requires_grad_() for k, t in leaves.items()}
    a = [leaves.get(i, x) for i, x in enumerate(args)]
    kw = {k: leaves.get(k, v) for k, v in kwargs.items()}
    outs = fn(*a, **kw)
    outs = outs if isinstance(outs, tuple) else (outs,)
    g = torch.Generator().manual_seed(seed)
    rand = lambda t: torch.randn(t.shape, generator=g, dtype=t.dtype).to(t.device)  # noqa: E731
    first = torch.autograd.grad(outs, list(leaves.values()), [rand(o) for o in outs], create_graph=True)
    second = torch.autograd.grad(first, list(leaves.values()), [rand(f) for f in first], allow_unused=True)
    return dict(zip(leaves, second))


@pytest.mark.parametrize("op", OPS)
def test_second_derivatives_match_autograd_through_reference(backend, op):
    name, device = backend
    dtype = dtype_for(name)
    args, kwargs = make_inputs(op, dtype=dtype, device=device, **TINY)
    expected = hessian_vector_products(getattr(reference, op), args, kwargs)
    with xscan.use_backend(name):
        got = hessian_vector_products(public_op(op), args, kwargs)
    nonzero = [k for k, e in expected.items() if e is not None and e.abs().max() > 0]
    assert nonzero, "the oracle's second derivatives are all zero: nothing was tested"
    for key, e in expected.items():
        if e is None:
            assert got[key] is None or got[key].abs().max() == 0, key
            continue
        assert got[key] is not None, (key, "missing second derivative")
        assert rel(got[key], e) < tolerance(name, dtype), (key, rel(got[key], e))


@pytest.mark.parametrize("op", OPS)
def test_gradgradcheck_float64(op):
    for backend in ("reference", "cpu"):
        if xscan.backends()[backend] is not True:
            continue
        args, kwargs = make_inputs(op, dtype=torch.float64, **dict(TINY, L=3, W=2))
        names = [k for k, v in kwargs.items() if isinstance(v, torch.Tensor)]
        leaves = [a.requires_grad_() for a in args] + [kwargs[k].requires_grad_() for k in names]
        flags = {k: v for k, v in kwargs.items() if k not in names}

        def f(*tensors):
            with xscan.use_backend(backend):
                return public_op(op)(*tensors[:len(args)], **dict(zip(names, tensors[len(args):])), **flags)

        assert torch.autograd.gradgradcheck(f, leaves), backend


# ---- the ops as torch.library ops --------------------------------------------------------------------

@pytest.mark.parametrize("save", [False, True])
@pytest.mark.parametrize("op", OPS)
def test_opcheck_forward_and_backward(backend, op, save):
    """With save, the forward saves its checkpoints where the backend keeps any (the cpu engine's,
    here over routes of 2-3 chunks; the cuda kernels') and the backward starts from them; the other
    backends give none."""
    name, device = backend
    saving = save and name in ("cpu", "cuda")
    args, kwargs = make_inputs(op, device=device, **dict(TINY, L=130, H=6, W=45) if saving else TINY)
    full = tuple(a.requires_grad_() if isinstance(a, torch.Tensor) else a
                 for a in custom_op_args(op, args, kwargs, name)) + (save,)
    forward = getattr(torch.ops.xscan, op)
    torch.library.opcheck(forward.default, full)
    *outs, checkpoints = forward(*full)
    assert checkpoints.numel() > 0 if saving else checkpoints.numel() == 0
    grads = [torch.randn_like(o) for o in outs]
    torch.library.opcheck(getattr(torch.ops.xscan, f"{op}_backward").default, (grads, *full[:-1], checkpoints))


@pytest.mark.parametrize("op", OPS)
def test_ops_run_under_a_dispatch_mode(backend, op):
    """FlopCounterMode intercepts every op: the backward must not rely on autograd inside the op."""
    name, device = backend
    args, kwargs = make_inputs(op, device=device, **TINY)
    with xscan.use_backend(name):
        _, expected = grads_of(public_op(op), args, kwargs, set(tensors_of(args, kwargs)))
        with FlopCounterMode(display=False):
            _, got = grads_of(public_op(op), args, kwargs, set(tensors_of(args, kwargs)))
    for key, g in expected.items():
        torch.testing.assert_close(got[key], g)
