"""selective_scan (docs/ops.md): the reference against independent formulations, autograd,
the registered op, the mamba_ssm layouts."""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import xscan
from xscan import reference
from xscan.testing import load_mamba_selective_scan, make_inputs, non_contiguous


def closed_form(u, delta, A, B, C, D, z, delta_bias, softplus):
    """y_t = sum_{s<=t} C_t . (prod_{s<r<=t} exp(dt_r A)) dt_s B_s u_s + D u_t, as one (L x L) sum
    per channel: no recurrence, so it checks the reference's loop independently."""
    u, delta, A = u.double(), delta.double(), A.double()
    Bt, Dm, L = u.shape
    dt = delta + (0 if delta_bias is None else delta_bias.double()[:, None])
    dt = F.softplus(dt) if softplus else dt
    if B.dim() == 3:
        B, C = B[:, None], C[:, None]
    Bd = B.double().repeat_interleave(Dm // B.shape[1], 1)  # (Bt, Dm, N, L)
    Cd = C.double().repeat_interleave(Dm // C.shape[1], 1)
    cum = torch.cumsum(dt, -1)  # sum_{r<=t} dt_r
    # decay[b,d,n,t,s] = exp(A[d,n] * (cum_t - cum_s)) for s <= t
    diff = cum[..., :, None] - cum[..., None, :]
    mask = torch.ones(L, L, dtype=torch.bool).tril()
    decay = torch.exp(A[None, :, :, None, None] * diff[:, :, None]) * mask
    weights = torch.einsum("bdnt,bdnts,bdns->bdts", Cd, decay, Bd)
    y = torch.einsum("bdts,bds->bdt", weights, dt * u)
    if D is not None:
        y = y + D.double()[:, None] * u
    if z is not None:
        y = y * F.silu(z.double())
    return y


@pytest.mark.parametrize("G", [None, 1, 2])
@pytest.mark.parametrize("options", [dict(), dict(D=False, z=False, delta_bias=False, softplus=False)])
def test_reference_matches_closed_form(G, options):
    args, kwargs = make_inputs("selective_scan", Bt=2, Dm=4, N=3, L=9, G=G, dtype=torch.float64,
                               **{k: v for k, v in options.items()})
    y = reference.selective_scan(*args, **kwargs)
    expected = closed_form(*args, kwargs["D"], kwargs["z"], kwargs["delta_bias"], kwargs["delta_softplus"])
    torch.testing.assert_close(y, expected)


def test_last_state_is_the_state_after_the_last_token():
    args, kwargs = make_inputs("selective_scan", Bt=1, Dm=2, N=3, L=6, dtype=torch.float64, z=False)
    u, delta, A, B, C = args
    _, last = xscan.selective_scan(*args, **kwargs, return_last_state=True)
    # h_{L-1}[n] read out with a one-hot C gives y without D: compare against the closed form
    for n in range(3):
        onehot = torch.zeros_like(C)
        onehot[:, n] = 1
        y = closed_form(u, delta, A, B, onehot, None, None, kwargs["delta_bias"], True)
        torch.testing.assert_close(last[..., n], y[..., -1])


def test_constant_B_and_C_layout():
    args, kwargs = make_inputs("selective_scan", Bt=2, Dm=3, N=4, L=5, dtype=torch.float64)
    u, delta, A, _, _ = args
    Bc, Cc = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    y = xscan.selective_scan(u, delta, A, Bc, Cc, **kwargs)
    # the same constants written out per batch and time as grouped B/C with one group per channel
    Bg = Bc[None, :, :, None].expand(2, 3, 4, 5).contiguous()
    Cg = Cc[None, :, :, None].expand(2, 3, 4, 5).contiguous()
    torch.testing.assert_close(y, closed_form(u, delta, A, Bg, Cg, kwargs["D"], kwargs["z"], kwargs["delta_bias"], True))


def test_gradcheck_float64():
    args, kwargs = make_inputs("selective_scan", Bt=1, Dm=2, N=2, L=4, G=1, dtype=torch.float64)
    leaves = [a.requires_grad_() for a in args] + [kwargs[k].requires_grad_() for k in ("D", "z", "delta_bias")]

    def f(u, delta, A, B, C, D, z, delta_bias):
        return xscan.selective_scan(u, delta, A, B, C, D, z, delta_bias, True, return_last_state=True)

    assert torch.autograd.gradcheck(f, leaves)


def test_non_contiguous_inputs():
    args, kwargs = make_inputs("selective_scan", Bt=2, Dm=3, N=4, L=7, G=1)
    strided = [non_contiguous(a) for a in args]
    strided_kw = {k: non_contiguous(v) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    assert not strided[0].is_contiguous()
    torch.testing.assert_close(xscan.selective_scan(*strided, **strided_kw), xscan.selective_scan(*args, **kwargs))


@given(Bt=st.integers(1, 2), Dm=st.integers(1, 4), N=st.integers(1, 5), L=st.integers(1, 12),
       grouped=st.booleans(), options=st.booleans())
def test_random_shapes_match_closed_form(Bt, Dm, N, L, grouped, options):
    args, kwargs = make_inputs("selective_scan", Bt=Bt, Dm=Dm, N=N, L=L, G=Dm if grouped else None,
                               dtype=torch.float64, D=options, z=options, delta_bias=options)
    y, last = xscan.selective_scan(*args, **kwargs, return_last_state=True)
    assert y.shape == (Bt, Dm, L) and last.shape == (Bt, Dm, N)
    torch.testing.assert_close(y, closed_form(*args, kwargs["D"], kwargs["z"], kwargs["delta_bias"], True))


def test_half_inputs_accumulate_in_fp32():
    args, kwargs = make_inputs("selective_scan", Bt=1, Dm=2, N=4, L=64, dtype=torch.bfloat16)
    y, last = xscan.selective_scan(*args, **kwargs, return_last_state=True)
    assert y.dtype == torch.bfloat16 and last.dtype == torch.float32
    expected = closed_form(*args, kwargs["D"], kwargs["z"], kwargs["delta_bias"], True)
    torch.testing.assert_close(y.double(), expected, atol=2e-2, rtol=2e-2)


def test_matches_mamba_ssm_reference_when_installed():
    mamba = load_mamba_selective_scan()
    if mamba is None:
        pytest.skip("mamba-ssm is not installed (optional)")
    ref = mamba.selective_scan_ref
    args, kwargs = make_inputs("selective_scan", Bt=2, Dm=4, N=3, L=11, G=2)
    y, last = xscan.selective_scan(*args, **kwargs, return_last_state=True)
    y_m, last_m = ref(*args, **kwargs, return_last_state=True)
    torch.testing.assert_close(y, y_m, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(last, last_m, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_gate_in_fp32(backend, dtype):
    """silu(z) of fp16/bf16 inputs is computed in fp32 (as mamba-ssm does): the unrounded output
    (``xscan.fp32_output``) equals the fp32 computation on the same inputs. A gate computed in half
    precision would be off by its rounding, ~1e-3 relative, at these |z| of several units."""
    name, device = backend
    args, kwargs = make_inputs("selective_scan", Bt=1, Dm=3, N=4, L=9, dtype=dtype, device=device)
    kwargs["z"] = (kwargs["z"].float() * 4).to(dtype)
    upcast = [a.float() for a in args]
    expected = reference.selective_scan(*upcast, **{k: v.float() if isinstance(v, torch.Tensor) else v
                                                    for k, v in kwargs.items()})
    with xscan.use_backend(name), xscan.fp32_output():
        y = xscan.selective_scan(*args, **kwargs)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)


def test_constant_B_and_C_may_be_in_the_weight_dtype():
    """mamba's dtypes: a constant (Dm, N) B or C comes in A's dtype (fp32) next to fp16 inputs, or in
    the inputs' dtype; the result is the same maths on the same values, its gradient in its dtype."""
    args, kwargs = make_inputs("selective_scan", Bt=2, Dm=3, N=4, L=9, dtype=torch.float16)
    u, delta, A, B, _ = args
    Cw = torch.randn(3, 4, requires_grad=True)
    with xscan.fp32_output():
        y = xscan.selective_scan(u, delta, A, B, Cw, **kwargs)
    y.sum().backward()
    assert Cw.grad.dtype == torch.float32
    wide = [t.float() for t in (u, delta, A, B)]
    expected = reference.selective_scan(*wide, Cw.detach(), **{k: v.float() if isinstance(v, torch.Tensor) else v
                                                                 for k, v in kwargs.items()})
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)
    assert xscan.selective_scan(u, delta, A, B, Cw.detach().half(), **kwargs).dtype == torch.float16


@pytest.mark.parametrize("which", ["B", "C"])
def test_other_dtype_mixes_are_refused_naming_the_argument(which):
    args, kwargs = make_inputs("selective_scan", Bt=2, Dm=3, N=4, L=9, dtype=torch.float16)
    u, delta, A, B, C = args
    index = 3 if which == "B" else 4

    def call(X):
        a = list(args)
        a[index] = X
        return xscan.selective_scan(*a, **kwargs)

    # a constant in neither u's dtype nor A's
    with pytest.raises(TypeError, match=f"{which} is a constant \\(Dm, N\\) weight of dtype torch.bfloat16"):
        call(torch.randn(3, 4, dtype=torch.bfloat16))
    # a per-token B or C is not a weight: it shares u's dtype
    with pytest.raises(TypeError, match=f"{which} is torch.float32 but u is torch.float16"):
        call(torch.randn(B.shape))



def test_registered_op_takes_a_weight_dtype_constant():
    """The registered op gets a constant as its (Bt, G, N, L) broadcast, here in A's dtype (fp32)
    next to fp16 inputs."""
    args, kwargs = make_inputs("selective_scan", Bt=1, Dm=2, N=4, L=20, dtype=torch.float16)
    u, delta, A, B, _ = args
    Cw = torch.randn(2, 4)
    op_args = (u, delta, A, B.unsqueeze(1), Cw[None, :, :, None].expand(1, 2, 4, 20), kwargs["D"], kwargs["z"],
               kwargs["delta_bias"], True, False, "reference")
    y, _, _ = torch.ops.xscan.selective_scan(*op_args)
    assert y.dtype == torch.float16
    torch.testing.assert_close(y, xscan.selective_scan(u, delta, A, B, Cw, **kwargs))
