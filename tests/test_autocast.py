"""Under torch.autocast the per-token inputs of every op go to the autocast dtype (A, D, delta_bias
keep theirs), the kernels compute in fp32, the outputs come in the autocast dtype and the gradients
reach the original (fp32) inputs. Tested on CPU with bfloat16, on every backend that runs here."""
from __future__ import annotations

import pytest
import torch

import xscan
from xscan import reference
from xscan.testing import OPS, make_inputs, public_op

SHAPE = dict(Bt=1, Dm=3, N=4, L=9, H=3, W=3, G=1, nh=2, P=2)
TOKENS = {"selective_scan": (0, 1, 3, 4, "z"), "ss2d": (0, 1, 2, 3), "es2d": (0, 1, 2, 3),
          "cross_ss2d": tuple(range(8)), "interleave_ss2d": tuple(range(5)), "ssd_exchange": (0, 1, 2, 3, 5, 6, 7, 8)}


def _bf16_then_fp32(op, args, kwargs):
    """The reference on the per-token inputs rounded to bf16 (what autocast hands the kernels)."""
    tokens = TOKENS[op]
    a = [x.bfloat16().float() if i in tokens else x for i, x in enumerate(args)]
    kw = {k: v.bfloat16().float() if k in tokens and v is not None else v for k, v in kwargs.items()}
    out = getattr(reference, op)(*a, **kw)
    return out if isinstance(out, tuple) else (out,)


@pytest.mark.parametrize("op", OPS)
def test_autocast_casts_per_token_inputs_and_returns_the_autocast_dtype(backend, op):
    name, device = backend
    if device.type != "cpu":
        pytest.skip("CPU autocast here")
    args, kwargs = make_inputs(op, device=device, **SHAPE)
    leaves = [a.clone().requires_grad_() for a in args]
    with xscan.use_backend(name), torch.autocast("cpu", dtype=torch.bfloat16):
        out = public_op(op)(*leaves, **kwargs)
    out = out if isinstance(out, tuple) else (out,)
    assert all(o.dtype == torch.bfloat16 for o in out)
    expected = _bf16_then_fp32(op, args, kwargs)
    for o, e in zip(out, expected):  # fp32 maths on bf16 inputs, rounded to bf16 once at the end
        torch.testing.assert_close(o.float(), e, rtol=1e-2, atol=1e-2)
    sum(o.float().square().sum() for o in out).backward()
    for a in leaves:
        assert a.grad is not None and a.grad.dtype == torch.float32 and torch.isfinite(a.grad).all()


def test_autocast_takes_the_mixed_dtypes_it_produces():
    """Inside autocast a projection gives bf16 next to fp32 activations: the op takes both."""
    args, kwargs = make_inputs("ss2d", **SHAPE)
    u, dt, B, C = args
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = xscan.ss2d(u, dt.bfloat16(), B, C, **kwargs)
    assert y.dtype == torch.bfloat16
    with pytest.raises(TypeError, match="per-token inputs must share one dtype"):  # outside autocast: refused
        xscan.ss2d(u, dt.bfloat16(), B, C, **kwargs)


def test_autocast_keeps_the_parameters_in_fp32():
    """A (decay rates), D and delta_bias are not rounded to bf16: the result equals fp32 maths on
    bf16-rounded per-token inputs to fp32 precision, which rounding A would break."""
    args, kwargs = make_inputs("selective_scan", Bt=1, Dm=2, N=4, L=50, z=False)
    u, delta, A, B, C = args
    A = A * 7.31  # far from bf16-representable values
    with xscan.fp32_output(), torch.autocast("cpu", dtype=torch.bfloat16):
        y = xscan.selective_scan(u, delta, A, B, C, **kwargs)
    expected = reference.selective_scan(u.bfloat16().float(), delta.bfloat16().float(), A, B.bfloat16().float(),
                                        C.bfloat16().float(), **kwargs)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)


def test_autocast_keeps_a_weight_dtype_constant_B_or_C():
    """A constant (Dm, N) B or C in A's dtype is a weight, as in mamba-ssm: autocast leaves it in
    fp32 (rounding it to bf16 would show at these values) and its gradient comes back in fp32."""
    args, kwargs = make_inputs("selective_scan", Bt=1, Dm=2, N=4, L=20)
    u, delta, A, B, _ = args
    Cw = (torch.randn(2, 4) * 7.31).requires_grad_()  # far from bf16-representable values
    with xscan.fp32_output(), torch.autocast("cpu", dtype=torch.bfloat16):
        y = xscan.selective_scan(u, delta, A, B, Cw, **kwargs)
    y.sum().backward()
    bf = lambda t: t.bfloat16().float()  # noqa: E731
    expected = reference.selective_scan(bf(u), bf(delta), A, bf(B), Cw.detach(), kwargs["D"], bf(kwargs["z"]),
                                        kwargs["delta_bias"], True)
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)
    assert Cw.grad.dtype == torch.float32
