"""selective_scan with a complex A (mamba-ssm's ``wtype=complex64``): the reference against a closed
form, against mamba-ssm's own ``selective_scan_ref`` when installed, the cpu kernel against the
reference in every B/C layout, fp64 gradcheck, and the GPU backends' clear refusal."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import xscan
from xscan import reference
from xscan.testing import load_mamba_selective_scan

LAYOUTS = ("per_token", "grouped", "constant")


def complex_inputs(layout, Bt=2, Dm=4, N=3, L=9, dtype=torch.float64, D=True, z=True, bias=True, seed=0):
    """Arguments of a complex-A selective scan: A = -exp(re) + i im; B, C per token as (real,
    imaginary) pairs over 2L positions ((Bt, N, 2L) or grouped (Bt, 2, N, 2L)), or constant complex."""
    g = torch.Generator().manual_seed(seed)
    cplx = torch.complex128 if dtype == torch.float64 else torch.complex64
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(dtype)  # noqa: E731
    A = torch.complex(-torch.exp(torch.rand(Dm, N, generator=g, dtype=torch.float64) - 0.7),
                      torch.randn(Dm, N, generator=g, dtype=torch.float64) * 3).to(cplx)
    if layout == "constant":
        B, C = (torch.complex(r(Dm, N), r(Dm, N)).to(cplx) for _ in range(2))
    else:
        shape = (Bt, N, 2 * L) if layout == "per_token" else (Bt, 2, N, 2 * L)
        B, C = r(*shape), r(*shape)
    return dict(u=r(Bt, Dm, L), delta=r(Bt, Dm, L) * 0.5 - 1.5, A=A, B=B, C=C, D=r(Dm) if D else None,
                z=r(Bt, Dm, L) if z else None, delta_bias=r(Dm) * 0.3 if bias else None, delta_softplus=True)


def closed_form(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    """y_t = 2 Re(sum_{s<=t} C_t . exp(A (cum_t - cum_s)) dt_s B_s u_s) + D u_t: no recurrence."""
    Bt, Dm, L = u.shape
    dt = delta + (0 if delta_bias is None else delta_bias[:, None])
    dt = F.softplus(dt) if delta_softplus else dt

    def per_channel(X):  # -> (Bt, Dm, N, L) complex
        if X.dim() == 2:
            return X[None, :, :, None].expand(Bt, Dm, X.shape[1], L)
        Xc = torch.view_as_complex(X.unflatten(-1, (L, 2)).contiguous())
        return Xc[:, None].expand(Bt, Dm, *Xc.shape[1:]) if X.dim() == 3 else Xc.repeat_interleave(Dm // X.shape[1], 1)

    Bc, Cc = per_channel(B), per_channel(C)
    cum = torch.cumsum(dt, -1)
    diff = cum[..., :, None] - cum[..., None, :]  # (Bt, Dm, t, s)
    mask = torch.ones(L, L, dtype=torch.bool).tril()
    decay = torch.exp(A[None, :, :, None, None] * diff[:, :, None]) * mask
    y = 2 * torch.einsum("bdnt,bdnts,bdns,bds->bdt", Cc, decay, Bc, (dt * u).to(Cc.dtype)).real
    if D is not None:
        y = y + D[:, None] * u
    if z is not None:
        y = y * F.silu(z)
    return y


@pytest.mark.parametrize("layout", LAYOUTS)
def test_reference_matches_closed_form(layout):
    kw = complex_inputs(layout)
    y, last = reference.selective_scan(**kw, return_last_state=True)
    torch.testing.assert_close(y, closed_form(**kw))
    assert last.dtype == torch.complex128 and last.shape == (2, 4, 3)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_matches_mamba_ssm_reference_when_installed(layout):
    mamba = load_mamba_selective_scan()
    if mamba is None:
        pytest.skip("mamba-ssm is not installed (optional)")
    kw = complex_inputs(layout, dtype=torch.float32)
    kw["A"] = kw["A"].to(torch.complex64)
    y, last = xscan.selective_scan(**kw, return_last_state=True)
    y_m, last_m = mamba.selective_scan_ref(**kw, return_last_state=True)
    torch.testing.assert_close(y, y_m, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(last, last_m, atol=1e-5, rtol=1e-4)


def _grads(backend, kw, dtype_seed=3):
    leaves = {k: v.detach().clone().requires_grad_() for k, v in kw.items() if isinstance(v, torch.Tensor)}
    with xscan.use_backend(backend):
        y, last = xscan.selective_scan(**dict(kw, **leaves), return_last_state=True)
    g = torch.Generator().manual_seed(dtype_seed)
    dy = torch.randn(y.shape, generator=g, dtype=torch.float64).to(y.dtype)
    dlast = torch.randn(last.shape, generator=g, dtype=torch.complex128).to(last.dtype)
    torch.autograd.backward([y, last], [dy, dlast])
    return [y, last] + [leaves[k].grad for k in sorted(leaves)]


@pytest.mark.skipif(xscan.backends()["cpu"] is not True, reason="cpu backend unavailable")
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 2e-5)])
@pytest.mark.parametrize("options", [dict(), dict(D=False, z=False, bias=False), dict(z=False)])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_cpu_matches_reference(layout, options, dtype, tol):
    kw = complex_inputs(layout, dtype=dtype, L=150, **options)  # several of the backward's 64-step chunks
    for a, b in zip(_grads("cpu", kw), _grads("reference", kw)):
        assert a.dtype == b.dtype
        assert ((a - b).abs().max() / (b.abs().max() + 1e-6)).item() < tol


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_gradcheck_float64(backend):
    if xscan.backends()[backend] is not True:
        pytest.skip(f"{backend}: {xscan.backends()[backend]}")
    kw = complex_inputs("grouped", Bt=1, Dm=2, N=2, L=3)
    names = [k for k, v in kw.items() if isinstance(v, torch.Tensor)]
    leaves = [kw[k].requires_grad_() for k in names]

    def f(*tensors):
        with xscan.use_backend(backend):
            y, last = xscan.selective_scan(**dict(kw, **dict(zip(names, tensors))), return_last_state=True)
        return y, torch.view_as_real(last)

    assert torch.autograd.gradcheck(f, leaves)


@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_gpu_backends_refuse_complex_naming_where_it_runs(backend):
    import importlib
    kw = complex_inputs("per_token", dtype=torch.float32)
    B, C = (torch.view_as_complex(X.unflatten(-1, (9, 2))).unsqueeze(1) for X in (kw["B"], kw["C"]))
    spec = importlib.import_module("xscan.ops.selective_scan").plan(
        kw["u"], kw["delta"], kw["A"], B, C, kw["D"], kw["z"], kw["delta_bias"], True, torch.float32)
    if backend == "cuda":
        limits = importlib.import_module("xscan.backends.cuda").limits
    else:
        limits = pytest.importorskip("xscan.triton_kernels.executor").limits
    with pytest.raises(ValueError, match="complex A runs on the reference and cpu backends"):
        limits(spec)
