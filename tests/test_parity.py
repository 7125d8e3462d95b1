"""Every backend against the reference, forward and every gradient: one table of cases for all of
them (the ``backend`` fixture of tests/conftest.py: reference, cpu, triton on a GPU or in its
interpreter, cuda on a GPU or through its host emulation).

Shapes cross every kernel's internal boundaries: chunks of the CPU backward (64 steps), of the CUDA
kernels (32) and of the Triton scans (4 under the interpreter here, pinned with
``tiles.override``: short sequences still span several chunks), odd maps, size-1 maps and
sequences, several channel blocks and groups. Backend-specific cases (tile widths, lane counts,
GPU-only sizes) stay in tests/backends/."""
from __future__ import annotations

import contextlib

import pytest
import torch

import xscan
from xscan import reference
from xscan.testing import (MAP_CASES, OPS, compare, deterministic, make_inputs, non_contiguous, public_op,
                           run_both, run_with_grads, tolerance)

NO_OPTIONS = dict(D=False, z=False, delta_bias=False, softplus=False)


@pytest.fixture
def on(backend):
    """(backend, device, tolerance) with the Triton interpreter's tiles pinned small."""
    name, device = backend
    pin = contextlib.nullcontext()
    if interpreted(name, device):
        pin = __import__("xscan.triton_kernels.tiles", fromlist=["override"]).override(chunk=4, block_d=2)
    with pin:
        yield name, device, tolerance(name)


def interpreted(name, device) -> bool:
    return name == "triton" and device.type == "cpu"


def inputs(on, op, **shape):
    """make_inputs on the backend's device. Triton's interpreter runs every program in Python: its
    cases shrink (batch 1, a few channels, states, tokens, still three 4-step chunks and two blocks
    of a group) to keep the suite in minutes; on a GPU it runs them as they are."""
    name, device, _ = on
    if interpreted(name, device):
        G = shape.get("G") or 1
        shape = dict(shape, Bt=1, N=min(shape.get("N", 4), 3), L=min(shape.get("L", 16), 12),
                     H=min(shape.get("H", 3), 4), W=min(shape.get("W", 5), 4), P=min(shape.get("P", 3), 3))
        if "Dm" in shape:
            shape["Dm"] = G * max(1, min(shape["Dm"] // G, 2))
        if "nh" in shape:
            shape["nh"] = G * max(1, min(shape["nh"] // G, 2))
    return make_inputs(op, device=device, **shape)


def check(on, op, tol=None, **shape):
    name, device, default = on
    args, kwargs = inputs(on, op, **shape)
    errors = compare(op, args, kwargs, name)
    tol = tolerance(name, torch.float64) if shape.get("dtype") == torch.float64 else max(tol or 0, default)
    bad = [(what, err) for what, err in errors if not err < tol]
    assert not bad, f"{op} {shape} on {name}: {bad}"


# ---- selective_scan ----------------------------------------------------------------------------------

@pytest.mark.parametrize("G", [None, 1, 2])
@pytest.mark.parametrize("options", [dict(), NO_OPTIONS, dict(z=False), dict(D=False, softplus=False)],
                         ids=["all", "none", "no_z", "no_D_softplus"])
def test_selective_scan_options(on, G, options):
    check(on, "selective_scan", Bt=2, Dm=4, N=5, L=37, G=G, **options)


@pytest.mark.parametrize("L", [1, 2, 31, 32, 33, 63, 64, 65])
def test_selective_scan_lengths_around_chunks(on, L):
    check(on, "selective_scan", Bt=1, Dm=2, N=3, L=L, G=1)


def test_selective_scan_long_sequence(on):
    if interpreted(on[0], on[1]):
        pytest.skip("the Triton interpreter at L = 1000: minutes (its long sequences run on a GPU)")
    check(on, "selective_scan", tol=1e-4, Bt=1, Dm=2, N=4, L=1000)


def test_selective_scan_separate_groups_for_B_and_C(on):
    name, device, tol = on
    args, kwargs = inputs(on, "selective_scan", Bt=2, Dm=6, N=3, L=40, G=3)
    u, delta, A, B, _ = args
    C = torch.randn(B.shape[0], 2, *B.shape[2:]).to(device)  # G_C = 2 != G_B = 3
    for what, err in compare("selective_scan", (u, delta, A, B, C), kwargs, name):
        assert err < tol, what


def test_selective_scan_constant_B_and_C(on):
    name, device, tol = on
    args, kwargs = inputs(on, "selective_scan", Bt=2, Dm=3, N=4, L=33)
    u, delta, A, _, _ = args
    Bc, Cc = torch.randn(A.shape).to(device), torch.randn(A.shape).to(device)  # stride-0 views in the kernels
    for what, err in compare("selective_scan", (u, delta, A, Bc, Cc), kwargs, name):
        assert err < tol, what


def test_selective_scan_last_state_and_its_gradient(on):
    name, device, tol = on
    args, kwargs = inputs(on, "selective_scan", Bt=2, Dm=3, N=4, L=40, z=False)
    outs = {}
    for b in ("reference", name):
        leaves = [a.clone().requires_grad_() for a in args]
        with xscan.use_backend(b):
            y, last = xscan.selective_scan(*leaves, **kwargs, return_last_state=True)
        g = torch.Generator().manual_seed(3)
        (torch.randn(last.shape, generator=g).to(device) * last).sum().backward()  # through last_state only
        outs[b] = (y, last, [x.grad for x in leaves])
    (y0, l0, g0), (y1, l1, g1) = outs["reference"], outs[name]
    assert l1.dtype == torch.float32
    torch.testing.assert_close(y1, y0, rtol=tol, atol=tol)
    torch.testing.assert_close(l1, l0, rtol=tol, atol=tol)
    for a, b in zip(g1, g0):
        torch.testing.assert_close(a, b, rtol=10 * tol, atol=10 * tol)


# ---- the map ops ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("op,route", MAP_CASES)
@pytest.mark.parametrize("H,W", [(1, 1), (3, 5), (4, 4), (5, 2), (1, 7)])
def test_map_ops_shapes(on, op, route, H, W):
    check(on, op, Bt=1, Dm=3, N=4, H=H, W=W, route=route)


@pytest.mark.parametrize("op,route", MAP_CASES)
@pytest.mark.parametrize("options", [NO_OPTIONS, dict(D=False), dict(delta_bias=False)], ids=["none", "no_D", "no_bias"])
def test_map_ops_options(on, op, route, options):
    check(on, op, Bt=2, Dm=2, N=3, H=3, W=4, route=route, **options)


@pytest.mark.parametrize("mode", ["column", "row", "concat"])
@pytest.mark.parametrize("axis", ["channel", "width"])
def test_interleave_modes_and_axes(on, mode, axis):
    check(on, "interleave_ss2d", Bt=2, Dm=3, N=3, H=3, W=5, mode=mode, axis=axis)


def test_cross_ss2d_long_route(on):
    # 2L = 2 * 9 * 7 = 126 positions: several chunks of every kernel, a partial last one
    check(on, "cross_ss2d", tol=5e-5, Bt=1, Dm=2, N=4, H=9, W=7)


def test_cross_ss2d_equals_the_materialised_s4fusion_path(on):
    name, device, tol = on
    args, kwargs = inputs(on, "cross_ss2d", Bt=2, Dm=3, N=4, H=5, W=6)
    with xscan.use_backend(name):
        y0, y1 = xscan.cross_ss2d(*args, **kwargs)
    e0, e1 = reference.cross_ss2d_materialized(*args, **kwargs)
    torch.testing.assert_close(y0, e0, rtol=tol, atol=tol)
    torch.testing.assert_close(y1, e1, rtol=tol, atol=tol)


# ---- ssd_exchange ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("G,nh", [(1, 2), (2, 4), (3, 3)])
@pytest.mark.parametrize("options", [dict(), NO_OPTIONS], ids=["all", "none"])
def test_ssd_exchange(on, G, nh, options):
    check(on, "ssd_exchange", Bt=2, L=37, nh=nh, P=3, N=4, G=G, **options)


def test_ssd_exchange_single_step(on):
    check(on, "ssd_exchange", Bt=1, L=1, nh=1, P=1, N=2)


# ---- layouts and modes -------------------------------------------------------------------------------------

LAYOUT_SHAPE = dict(Bt=2, Dm=3, N=3, L=20, H=3, W=4, G=1, nh=2, P=2)


def _channels_last(t):
    return t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t


@pytest.mark.parametrize("layout", [non_contiguous, _channels_last], ids=["strided", "channels_last"])
@pytest.mark.parametrize("op", OPS)
def test_layouts(on, op, layout):
    name, device, tol = on
    args, kwargs = inputs(on, op, **LAYOUT_SHAPE)
    (ref_out, ref_grads), (out, grads) = run_both(op, args, kwargs, name, layout)
    for a, b in zip(out + tuple(grads), ref_out + tuple(ref_grads)):
        torch.testing.assert_close(a, b, rtol=10 * tol, atol=10 * tol)


# Several channel tiles or blocks per group, two groups.
TILED = dict(Bt=2, Dm=40, N=8, L=40, H=4, W=5, G=2, nh=8, P=5)


@pytest.mark.parametrize("op", OPS)
def test_deterministic_mode_matches_and_repeats_bitwise(on, op):
    """torch's deterministic mode: sums over routes and channel blocks from partials in a fixed
    order (no float atomics); two runs give the same bits, and match the reference."""
    name, device, tol = on
    args, kwargs = inputs(on, op, **TILED)
    ref_out, ref_grads = run_with_grads(op, args, kwargs, None)
    with deterministic():
        runs = [run_with_grads(op, args, kwargs, name) for _ in range(2)]
    (out, grads), (out2, grads2) = runs
    for a, b in zip(out, out2):
        assert torch.equal(a, b)
    for k in grads:
        assert torch.equal(grads[k], grads2[k]), k
        torch.testing.assert_close(grads[k], ref_grads[k], rtol=10 * tol, atol=10 * tol)
    for a, b in zip(out, ref_out):
        torch.testing.assert_close(a, b, rtol=10 * tol, atol=10 * tol)


@pytest.mark.parametrize("op", OPS)
def test_gradcheck_float64(on, op):
    name, device, _ = on
    if name == "cuda":
        pytest.skip("the CUDA kernels take no fp64")
    if interpreted(name, device):  # gradcheck's hundreds of interpreted launches take minutes: fp64 parity instead
        check(on, op, tol=1e-9, dtype=torch.float64, Bt=1, Dm=2, N=2, L=9, H=2, W=3, G=1, nh=2, P=2)
        return
    args, kwargs = inputs(on, op, Bt=1, Dm=2, N=2, L=5, H=2, W=3, G=1, nh=2, P=2, dtype=torch.float64)
    names = [k for k, v in kwargs.items() if isinstance(v, torch.Tensor)]
    leaves = [a.requires_grad_() for a in args] + [kwargs[k].requires_grad_() for k in names]
    flags = {k: v for k, v in kwargs.items() if k not in names}

    def f(*tensors):
        with xscan.use_backend(name):
            return public_op(op)(*tensors[:len(args)], **dict(zip(names, tensors[len(args):])), **flags)

    assert torch.autograd.gradcheck(f, leaves)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("op", OPS)
def test_half_precision_accumulates_in_fp32(on, op, dtype):
    # The reference also computes half inputs in fp32: the two differ by summation order and the
    # final rounding to the output dtype.
    name, device, _ = on
    if interpreted(name, device):
        pytest.skip("half precision runs on the GPU for the Triton kernels (the interpreter takes fp32)")
    args, kwargs = inputs(on, op, Bt=2, Dm=6, N=8, L=70, H=5, W=7, G=2, nh=2, P=3, dtype=dtype)
    for what, err in compare(op, args, kwargs, name):
        assert err < (5e-2 if dtype == torch.bfloat16 else 2e-2), what


# ---- mamba-ssm's dtypes: a constant B or C is a weight -----------------------------------------------

# mamba-ssm's tests/ops/test_selective_scan.py: (rtol, atol) of outputs and per-token gradients per
# input dtype; weights (A, D, delta_bias, a constant B or C) at max(1e-3, rtol), max(1e-3, atol) with z.
MAMBA_TOL = {torch.float32: (6e-4, 2e-3), torch.float16: (3e-3, 5e-3), torch.bfloat16: (3e-2, 5e-2)}


def mamba_inputs(on, itype, complex_A, var_B, var_C):
    """Arguments as mamba's test makes them: A (and a constant B or C) in the weight dtype (fp32 or
    complex64), u, delta, z and a variable B or C in ``itype``, D and delta_bias in fp32."""
    name, device, _ = on
    Bt, Dm, N, L = (1, 2, 3, 12) if interpreted(name, device) else (2, 4, 8, 70)
    g = torch.Generator().manual_seed(0)
    wtype = torch.complex64 if complex_A else torch.float32
    r = lambda *s, dtype=torch.float32: torch.randn(*s, generator=g, dtype=dtype).to(device)  # noqa: E731
    A = (-0.5 * torch.rand(Dm, N, generator=g, dtype=wtype)).to(device)
    B, C = (r(Bt, N, 2 * L if complex_A else L).to(itype) if var else r(Dm, N, dtype=wtype) for var in (var_B, var_C))
    u, z = r(Bt, Dm, L).to(itype), r(Bt, Dm, L).to(itype)
    delta = (0.5 * torch.rand(Bt, Dm, L, generator=g)).to(device, itype)
    return (u, delta, A, B, C), dict(D=r(Dm), z=z, delta_bias=(0.5 * torch.rand(Dm, generator=g)).to(device),
                                     delta_softplus=True, return_last_state=True)


@pytest.mark.parametrize("var_B, var_C", [(False, False), (False, True), (True, False), (True, True)],
                         ids=["B_C_constant", "C_variable", "B_variable", "B_C_variable"])
@pytest.mark.parametrize("complex_A", [False, True], ids=["real", "complex"])
@pytest.mark.parametrize("itype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_selective_scan_mamba_dtypes(on, itype, complex_A, var_B, var_C):
    """mamba-ssm's dtypes on every backend against the fp64 reference on the same values, at mamba's
    tolerances: outputs in u's dtype, every gradient in its argument's (a constant B's in fp32)."""
    name, device, _ = on
    if complex_A and name in ("triton", "cuda"):
        pytest.skip(f"complex A runs on the reference and cpu backends, not {name}")
    args, kwargs = mamba_inputs(on, itype, complex_A, var_B, var_C)
    (y, last), grads = run_with_grads("selective_scan", args, kwargs, name)
    # the oracle: the fp64 reference on the same values, fed the cotangents run_with_grads drew
    # (rounded to the outputs' dtypes)
    exact = {torch.float32: torch.float64, torch.complex64: torch.complex128}
    wide = lambda t: t.detach().to(exact.get(t.dtype, torch.float64)).requires_grad_()  # noqa: E731
    g = torch.Generator().manual_seed(1)
    cotangents = [wide(torch.randn(o.shape, generator=g).to(o)) for o in (y, last)]
    leaves = [wide(a) for a in args]
    kw = {k: wide(v) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    y64, last64 = reference.selective_scan(*leaves, **kw)
    torch.autograd.backward((y64, last64), cotangents)
    grads64 = dict(enumerate(a.grad for a in leaves), **{k: v.grad for k, v in kw.items()
                                                        if isinstance(v, torch.Tensor)})
    rtol, atol = MAMBA_TOL[itype]
    rtolw, atolw = max(1e-3, rtol), max(1e-3, atol)
    assert y.dtype == itype
    torch.testing.assert_close(y, y64.to(itype), rtol=rtol, atol=atol)
    torch.testing.assert_close(last, last64.to(last.dtype), rtol=rtol, atol=atol)
    per_token = {0: (2 * rtol, 2 * atol), 1: (5 * rtol, 10 * atol), "z": (rtolw, atolw), 2: (rtolw, 5 * atolw),
                 3: (rtol, atol) if var_B else (rtolw, atolw), 4: (rtol, atol) if var_C else (rtolw, atolw),
                 "D": (rtolw, atolw), "delta_bias": (rtolw, atolw)}
    inputs = dict(enumerate(args), **kwargs)
    for key, (rt, at) in per_token.items():
        assert grads[key].dtype == inputs[key].dtype, key
        torch.testing.assert_close(grads[key], grads64[key].to(grads[key].dtype), rtol=rt, atol=at,
                                   msg=lambda m: f"grad[{key}] on {name}: {m}")
