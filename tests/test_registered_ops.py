"""Every public op, on the reference backend: fp64 gradcheck, torch.compile tracing through the fake
kernels, and the backend's written-out backward vs autograd through the reference (opcheck of every
op on every backend: tests/test_gradients.py)."""

import pytest
import torch

from xscan.testing import OPS, compare, make_inputs, public_op

SMALL = dict(Bt=1, Dm=2, N=2, L=5, H=2, W=3, G=1, nh=2, P=2)


@pytest.mark.parametrize("op", OPS)
def test_gradcheck_float64(op):
    args, kwargs = make_inputs(op, **SMALL, dtype=torch.float64)
    names = [k for k, v in kwargs.items() if isinstance(v, torch.Tensor)]
    leaves = [a.requires_grad_() for a in args] + [kwargs[k].requires_grad_() for k in names]
    flags = {k: v for k, v in kwargs.items() if k not in names}

    def f(*tensors):
        return public_op(op)(*tensors[:len(args)], **dict(zip(names, tensors[len(args):])), **flags)

    assert torch.autograd.gradcheck(f, leaves)


@pytest.mark.parametrize("op", OPS)
def test_backward_matches_autograd_through_reference(op):
    args, kwargs = make_inputs(op, Bt=2, Dm=3, N=3, L=7, H=3, W=3, G=1, nh=3, P=2)
    for name, err in compare(op, args, kwargs, "reference"):
        assert err < 1e-6, name


@pytest.mark.parametrize("op", ["ss2d", "cross_ss2d", "ssd_exchange"])
def test_torch_compile_traces_the_op(op):
    args, kwargs = make_inputs(op, **SMALL)
    fn = public_op(op)
    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
    expected = fn(*args, **kwargs)
    got = compiled(*args, **kwargs)
    for e, g in zip(expected if isinstance(expected, tuple) else (expected,), got if isinstance(got, tuple) else (got,)):
        torch.testing.assert_close(g, e)
