"""The cpu engine's checkpoints: a forward run for training saves the state at every chunk start
(``CpuExecutor.checkpoints``), and the backward starts from them instead of rerunning the forward's
recurrence. Every op, over routes of several chunks: the same gradients with and without them (the
backward op given ``None`` recomputes them), the checkpoints are the states, none are saved for
inference, and the path holds in deterministic mode, under torch.compile, through double backward
and through the mamba-ssm shim's ``bwd``."""
from __future__ import annotations

import importlib.util

import pytest
import torch

import xscan
from xscan import _registry
from xscan.testing import OPS, custom_op_args, deterministic, make_inputs, public_op

pytestmark = pytest.mark.skipif(xscan.backends()["cpu"] is not True, reason="the cpu backend is not built")

# every op's routes span 2-5 chunks of 64 positions (es2d's atrous routes: 3 x 23 positions)
SHAPE = dict(Bt=2, Dm=3, N=4, L=300, H=6, W=45, G=1, nh=2, P=2)


def op_call(op, dtype=torch.float32, **shape):
    args, kwargs = make_inputs(op, dtype=dtype, **dict(SHAPE, **shape))
    return getattr(torch.ops.xscan, op), custom_op_args(op, args, kwargs, "cpu")


@pytest.fixture
def calls(monkeypatch):
    """The checkpoints the cpu executor's forward and backward get, call by call."""
    executor = _registry.backend("cpu").executor
    seen = {"forward": [], "backward": []}
    forward, backward = executor.forward, executor.backward

    def spy_forward(spec, checkpoints=None):
        seen["forward"].append(checkpoints)
        return forward(spec, checkpoints)

    def spy_backward(spec, grads, checkpoints=None):
        seen["backward"].append(checkpoints)
        return backward(spec, grads, checkpoints)

    monkeypatch.setattr(executor, "forward", spy_forward)
    monkeypatch.setattr(executor, "backward", spy_backward)
    return seen


@pytest.mark.parametrize("op", OPS)
def test_backward_from_checkpoints_equals_the_recomputed_one(op):
    forward, full = op_call(op)
    *outs, checkpoints = forward(*full, True)
    plain = forward(*full)
    assert checkpoints.numel() > 0 and plain[-1].numel() == 0
    for o, p in zip(outs, plain):
        assert torch.equal(o, p)  # saving them leaves the outputs as they are
    g = torch.Generator().manual_seed(0)
    grads = [torch.randn(o.shape, generator=g, dtype=o.dtype) for o in outs]
    backward = getattr(torch.ops.xscan, f"{op}_backward")
    saved = backward(grads, *full, checkpoints)
    recomputed = backward(grads, *full, None)
    for s, r in zip(saved, recomputed):
        torch.testing.assert_close(s, r, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("op", ["selective_scan", "cross_ss2d"])
def test_fp64_gradients_from_checkpoints_match_the_reference(op):
    args, kwargs = make_inputs(op, dtype=torch.float64, **SHAPE)
    leaves = {i: a for i, a in enumerate(args) if isinstance(a, torch.Tensor)}
    leaves.update({k: v for k, v in kwargs.items() if isinstance(v, torch.Tensor)})
    results = {}
    for backend in ("reference", "cpu"):
        inputs = {k: v.detach().clone().requires_grad_() for k, v in leaves.items()}
        a = [inputs.get(i, x) for i, x in enumerate(args)]
        kw = {k: inputs.get(k, v) for k, v in kwargs.items()}
        with xscan.use_backend(backend):
            outs = public_op(op)(*a, **kw)
        outs = outs if isinstance(outs, tuple) else (outs,)
        torch.autograd.backward(outs, [torch.ones_like(o) for o in outs])
        results[backend] = {k: t.grad for k, t in inputs.items()}
    for k, g in results["reference"].items():
        torch.testing.assert_close(results["cpu"][k], g, rtol=1e-9, atol=1e-9, msg=str(k))


def test_checkpoints_are_the_states_at_chunk_starts():
    """(Bt, K, chunks - 1, Dm, N): the last state of the scan cut at each chunk's start."""
    forward, full = op_call("selective_scan", L=200)
    *_, checkpoints = forward(*full, True)
    assert checkpoints.shape == (2, 1, 3, 3, 4)
    u, delta, A, B, C, D, z, bias, softplus = full[:9]
    for c in range(1, 4):
        cut = [t[..., :64 * c] if t is not None else None for t in (u, delta, B, C, z)]
        _, last = xscan.selective_scan(cut[0], cut[1], A, cut[2], cut[3], D, cut[4], bias, softplus,
                                       return_last_state=True)
        torch.testing.assert_close(checkpoints[:, 0, c - 1], last, rtol=1e-5, atol=1e-5)


def test_saved_only_when_autograd_needs_a_backward(calls):
    args, kwargs = make_inputs("selective_scan", **SHAPE)
    with xscan.use_backend("cpu"):
        xscan.selective_scan(*args, **kwargs)  # no input requires grad
        leaf = args[0].clone().requires_grad_()
        with torch.no_grad():
            xscan.selective_scan(leaf, *args[1:], **kwargs)
        y = xscan.selective_scan(leaf, *args[1:], **kwargs)
        y.sum().backward()
    assert [c is None for c in calls["forward"]] == [True, True, False]
    assert calls["backward"][0].data_ptr() == calls["forward"][2].data_ptr()


@pytest.mark.parametrize("op", ["selective_scan", "es2d"])
def test_deterministic_mode(op):
    """Repeated forward+backward through the checkpoints in torch's deterministic mode: bitwise equal."""
    args, kwargs = make_inputs(op, **SHAPE)

    def grads():
        a = [x.detach().clone().requires_grad_() if isinstance(x, torch.Tensor) else x for x in args]
        with xscan.use_backend("cpu"):
            y = public_op(op)(*a, **kwargs)
        y.backward(torch.ones_like(y))
        return [x.grad for x in a if isinstance(x, torch.Tensor)]

    with deterministic():
        first, second = grads(), grads()
    for f, s in zip(first, second):
        assert torch.equal(f, s)


def test_torch_compile_uses_the_checkpoints(calls):
    args, kwargs = make_inputs("selective_scan", **SHAPE)

    def fn(*a):
        with xscan.use_backend("cpu"):
            return xscan.selective_scan(*a, **kwargs)

    def grads(f):
        a = [x.detach().clone().requires_grad_() for x in args]
        f(*a).sum().backward()
        return [x.grad for x in a]

    expected = grads(fn)
    del calls["backward"][:]
    got = grads(torch.compile(fn, backend="aot_eager", fullgraph=True))
    assert calls["backward"] and all(c is not None and c.numel() for c in calls["backward"])
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e)


def test_double_backward_goes_through_the_reference():
    """Second derivatives from a forward that saved checkpoints: the reference's backward, as before."""
    args, kwargs = make_inputs("selective_scan", dtype=torch.float64, **dict(SHAPE, Bt=1, Dm=2, N=2, L=130))
    results = []
    for backend in ("cpu", "reference"):
        a = [x.detach().clone().requires_grad_() for x in args]
        with xscan.use_backend(backend):
            y = xscan.selective_scan(*a, **kwargs)
        (gu,) = torch.autograd.grad(y.square().sum(), a[0], create_graph=True)
        results.append(torch.autograd.grad(gu.sum(), a))
    for c, r in zip(*results):
        torch.testing.assert_close(c, r, rtol=1e-9, atol=1e-9)


@pytest.mark.skipif(importlib.util.find_spec("mamba_ssm") is None, reason="mamba-ssm is not installed")
def test_mamba_shim_bwd():
    """mamba-ssm's fwd (no grad) hands its bwd no checkpoints: bwd reruns the op under autograd and
    gives its gradients."""
    from xscan import mamba
    args, kwargs = make_inputs("selective_scan", **dict(SHAPE, z=False))
    u, delta, A, B, C = args
    D, bias = kwargs["D"], kwargs["delta_bias"]
    with xscan.use_backend("cpu"):
        out, _ = mamba.fwd(u, delta, A, B, C, D, None, bias, True)
        dout = torch.randn_like(out)
        got = mamba.bwd(u, delta, A, B, C, D, None, bias, dout, None, out, None, True)
        a = [x.detach().clone().requires_grad_() for x in (u, delta, A, B, C, D, bias)]
        y = xscan.selective_scan(*a[:5], a[5], None, a[6], True)
    expected = torch.autograd.grad(y, a, dout)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e)
