"""Non-finite inputs give the same non-finite outputs on every backend as on the reference: a NaN
in any input is a NaN in every output it reaches (the fast exp's clamp must not turn it into a
number), and an A that overflows the decay gives the reference's inf/NaN pattern.

One exception, by construction: triton's ssd_exchange computes a chunk with matmuls, where the
causal mask multiplies a later step's NaN by 0 (= NaN), so a NaN also reaches the earlier outputs of
its chunk (as in mamba-ssm's Triton SSD). There every NaN of the reference must be a NaN too."""
from __future__ import annotations

import pytest
import torch

import xscan
from xscan import reference
from xscan.testing import OPS, make_inputs, public_op

SHAPE = dict(Bt=1, Dm=3, N=2, L=6, H=2, W=3, G=1, nh=2, P=2)


def _outputs(fn, args, kwargs):
    out = fn(*args, **kwargs)
    return out if isinstance(out, tuple) else (out,)


def _tensor_names(op, args, kwargs):
    return [i for i, a in enumerate(args) if isinstance(a, torch.Tensor)] + \
        [k for k, v in kwargs.items() if isinstance(v, torch.Tensor)]


def _with(args, kwargs, key, value):
    args, kwargs = list(args), dict(kwargs)
    if isinstance(key, int):
        args[key] = value
    else:
        kwargs[key] = value
    return tuple(args), kwargs


@pytest.mark.parametrize("op", OPS)
def test_nan_in_any_input_reaches_the_same_outputs(backend, op):
    name, device = backend
    args, kwargs = make_inputs(op, device=device, **SHAPE)
    for key in _tensor_names(op, args, kwargs):
        t = args[key] if isinstance(key, int) else kwargs[key]
        poisoned = t.clone()
        poisoned.view(-1)[t.numel() // 2] = float("nan")
        a, kw = _with(args, kwargs, key, poisoned)
        expected = _outputs(getattr(reference, op), a, kw)
        with xscan.use_backend(name):
            got = _outputs(public_op(op), a, kw)
        assert any(e.isnan().any() for e in expected), key
        for g, e in zip(got, expected):
            if (name, op) == ("triton", "ssd_exchange"):
                assert not (e.isnan() & ~g.isnan()).any(), (key, "a NaN of the reference became a number")
            else:
                assert torch.equal(g.isnan(), e.isnan()), (key, "NaN positions differ from the reference")


@pytest.mark.parametrize("op", ["selective_scan", "ss2d", "cross_ss2d"])
@pytest.mark.parametrize("value", [float("inf"), 2000.0])
def test_overflowing_decay_matches_reference(backend, op, value):
    """A positive A whose decay exp(dt A) overflows fp32 (2000 with dt ~ 0.1: exp(200)) or is inf."""
    name, device = backend
    args, kwargs = make_inputs(op, device=device, **SHAPE)
    key = 2 if op == "selective_scan" else "A"
    A = (args[key] if isinstance(key, int) else kwargs[key]).clone()
    A.view(-1)[0] = value
    a, kw = _with(args, kwargs, key, A)
    expected = _outputs(getattr(reference, op), a, kw)
    with xscan.use_backend(name):
        got = _outputs(public_op(op), a, kw)
    assert not all(torch.isfinite(e).all() for e in expected)
    for g, e in zip(got, expected):
        assert torch.equal(torch.isfinite(g), torch.isfinite(e)), "finite positions differ from the reference"
        assert torch.equal(g.isnan(), e.isnan())
