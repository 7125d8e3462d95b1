"""The C++/OpenMP CPU backend against the reference: every op, every option, forward and every
gradient; odd maps, L = 1, long sequences, non-contiguous and broadcast inputs, fp64 gradcheck,
torch.library opcheck, random shapes, determinism."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import xscan
from xscan import reference
from xscan.testing import OPS, compare, make_inputs, non_contiguous, public_op, run_both

pytestmark = pytest.mark.skipif(xscan.backends()["cpu"] is not True, reason=f"cpu backend: {xscan.backends()['cpu']}")

FP32_TOL = 2e-5
MAP_OPS = ("ss2d", "es2d", "cross_ss2d", "interleave_ss2d")
NO_OPTIONS = dict(D=False, z=False, delta_bias=False, softplus=False)


def assert_matches_reference(op, tol=FP32_TOL, **shape):
    args, kwargs = make_inputs(op, **shape)
    errors = compare(op, args, kwargs, "cpu")
    bad = [(name, err) for name, err in errors if not err < tol]
    assert not bad, f"{op} {shape}: {bad}"


def test_cpu_is_the_default_for_cpu_tensors():
    for op in OPS:
        assert xscan.selected_backend(op, "cpu") == "cpu"


# ---------------------------------------------------------------------------------------------
# selective_scan

@pytest.mark.parametrize("G", [None, 1, 2, 4])
@pytest.mark.parametrize("options", [dict(), NO_OPTIONS, dict(z=False), dict(D=False, softplus=False)])
def test_selective_scan_options(G, options):
    assert_matches_reference("selective_scan", Bt=2, Dm=4, N=5, L=150, G=G, **options)


def test_selective_scan_separate_groups_for_B_and_C():
    args, kwargs = make_inputs("selective_scan", Bt=2, Dm=6, N=3, L=70, G=3)
    u, delta, A, B, _ = args
    C = torch.randn(2, 2, 3, 70)  # G_C = 2 != G_B = 3
    for name, err in compare("selective_scan", (u, delta, A, B, C), kwargs, "cpu"):
        assert err < FP32_TOL, name


def test_selective_scan_constant_B_and_C():
    args, kwargs = make_inputs("selective_scan", Bt=2, Dm=3, N=4, L=33)
    u, delta, A, _, _ = args
    Bc, Cc = torch.randn(3, 4), torch.randn(3, 4)
    for name, err in compare("selective_scan", (u, delta, A, Bc, Cc), kwargs, "cpu"):
        assert err < FP32_TOL, name


@pytest.mark.parametrize("L", [1, 2, 63, 64, 65])
def test_selective_scan_lengths_around_a_chunk(L):
    assert_matches_reference("selective_scan", Bt=1, Dm=2, N=3, L=L, G=1)


def test_selective_scan_long_sequence():
    assert_matches_reference("selective_scan", tol=1e-4, Bt=1, Dm=2, N=4, L=1000)


def test_selective_scan_last_state_and_its_gradient():
    args, kwargs = make_inputs("selective_scan", Bt=2, Dm=3, N=4, L=70, z=False)
    outs = {}
    for backend in ("reference", "cpu"):
        leaves = [a.clone().requires_grad_() for a in args]
        with xscan.use_backend(backend):
            y, last = xscan.selective_scan(*leaves, **kwargs, return_last_state=True)
        g = torch.Generator().manual_seed(3)
        (torch.randn(last.shape, generator=g) * last).sum().backward()  # gradient through last_state only
        outs[backend] = (y, last, [x.grad for x in leaves])
    (y0, l0, g0), (y1, l1, g1) = outs["reference"], outs["cpu"]
    assert l1.dtype == torch.float32
    torch.testing.assert_close(y1, y0)
    torch.testing.assert_close(l1, l0)
    for a, b in zip(g1, g0):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# 2-D map ops

@pytest.mark.parametrize("op", MAP_OPS)
@pytest.mark.parametrize("H,W", [(1, 1), (3, 5), (4, 4), (5, 2), (1, 7)])
def test_map_ops_shapes(op, H, W):
    assert_matches_reference(op, Bt=1, Dm=3, N=4, H=H, W=W)


@pytest.mark.parametrize("op", MAP_OPS)
@pytest.mark.parametrize("options", [NO_OPTIONS, dict(D=False), dict(delta_bias=False)])
def test_map_ops_options(op, options):
    assert_matches_reference(op, Bt=2, Dm=2, N=3, H=3, W=4, **options)


@pytest.mark.parametrize("mode", ["column", "row", "concat"])
@pytest.mark.parametrize("axis", ["channel", "width"])
def test_interleave_modes_and_axes(mode, axis):
    assert_matches_reference("interleave_ss2d", Bt=2, Dm=3, N=3, H=3, W=5, mode=mode, axis=axis)


def test_cross_ss2d_long_route():
    # 2L = 2 * 15 * 11 = 330 positions: several chunks, partial last chunk
    assert_matches_reference("cross_ss2d", tol=5e-5, Bt=1, Dm=2, N=4, H=15, W=11)


def test_cross_ss2d_equals_the_materialised_s4fusion_path():
    args, kwargs = make_inputs("cross_ss2d", Bt=2, Dm=3, N=4, H=5, W=6)
    with xscan.use_backend("cpu"):
        y0, y1 = xscan.cross_ss2d.cross_ss2d(*args, **kwargs)
    e0, e1 = reference.cross_ss2d_materialized(*args, **kwargs)
    torch.testing.assert_close(y0, e0)
    torch.testing.assert_close(y1, e1)


# ---------------------------------------------------------------------------------------------
# channel blocks and forward tiles: the engine's forward runs 16 or 8 channels side by side in
# unrolled loops (other widths in a generic loop) and loads 256 positions at a time (consecutive ones
# as vector runs); its backward takes blocks of up to 32 channels: every width over several tiles
# with a partial last one, on every route family.

@pytest.mark.parametrize("Dm", [8, 12, 16, 24])
@pytest.mark.parametrize("op", ["selective_scan", "ss2d", "es2d", "cross_ss2d", "interleave_ss2d"])
def test_channel_blocks_and_forward_tiles(op, Dm):
    assert_matches_reference(op, tol=5e-5, Bt=1, Dm=Dm, N=3, L=300, H=13, W=23)


@pytest.mark.parametrize("G,Dm", [(2, 32), (4, 32), (1, 64)])
def test_channel_blocks_within_groups(G, Dm):
    assert_matches_reference("selective_scan", tol=5e-5, Bt=2, Dm=Dm, N=3, L=270, G=G)


def test_channel_blocks_of_heads():
    assert_matches_reference("ssd_exchange", tol=5e-5, Bt=1, L=300, nh=16, P=2, N=3, G=1)


# ---------------------------------------------------------------------------------------------
# ssd_exchange

@pytest.mark.parametrize("G,nh", [(1, 2), (2, 4), (3, 3)])
@pytest.mark.parametrize("options", [dict(), NO_OPTIONS])
def test_ssd_exchange(G, nh, options):
    assert_matches_reference("ssd_exchange", Bt=2, L=70, nh=nh, P=3, N=4, G=G, **options)


def test_ssd_exchange_single_step():
    assert_matches_reference("ssd_exchange", Bt=1, L=1, nh=1, P=1, N=2)


# ---------------------------------------------------------------------------------------------
# Layouts and dtypes

@pytest.mark.parametrize("op", OPS)
def test_non_contiguous_inputs(op):
    args, kwargs = make_inputs(op, Bt=2, Dm=3, N=3, L=20, H=3, W=4, G=1, nh=2, P=2)
    (ref_out, ref_grads), (out, grads) = run_both(op, args, kwargs, "cpu", non_contiguous)
    for a, b in zip(out + tuple(grads), ref_out + tuple(ref_grads)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("op", OPS)
def test_channels_last_inputs(op):
    args, kwargs = make_inputs(op, Bt=2, Dm=3, N=3, L=20, H=3, W=4, G=1, nh=2, P=2)

    def channels_last(t):
        return t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t

    (ref_out, ref_grads), (out, grads) = run_both(op, args, kwargs, "cpu", channels_last)
    for a, b in zip(out + tuple(grads), ref_out + tuple(ref_grads)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("op", OPS)
def test_half_precision_accumulates_in_fp32(op, dtype):
    # The reference also casts per-token inputs to fp32, so the two differ only by summation order
    # and the final rounding to the output dtype.
    args, kwargs = make_inputs(op, Bt=1, Dm=3, N=4, L=40, H=3, W=5, G=1, nh=2, P=2, dtype=dtype)
    for name, err in compare(op, args, kwargs, "cpu"):
        assert err < 1e-2, name


GRADCHECK_CASES = [(op, dict(H=2, W=3)) for op in OPS] + [("es2d", dict(H=3, W=3)), ("cross_ss2d", dict(H=3, W=1)),
                                                          ("interleave_ss2d", dict(H=1, W=3, axis="width"))]


@pytest.mark.parametrize("op,shape", GRADCHECK_CASES)
def test_gradcheck_float64(op, shape):
    args, kwargs = make_inputs(op, Bt=1, Dm=2, N=2, L=5, G=1, nh=2, P=2, dtype=torch.float64, **shape)
    names = [k for k, v in kwargs.items() if isinstance(v, torch.Tensor)]
    leaves = [a.requires_grad_() for a in args] + [kwargs[k].requires_grad_() for k in names]
    flags = {k: v for k, v in kwargs.items() if k not in names}

    def f(*tensors):
        with xscan.use_backend("cpu"):
            return public_op(op)(*tensors[:len(args)], **dict(zip(names, tensors[len(args):])), **flags)

    assert torch.autograd.gradcheck(f, leaves)


@pytest.mark.parametrize("op", OPS)
def test_backward_is_deterministic(op):
    args, kwargs = make_inputs(op, Bt=2, Dm=4, N=3, L=90, H=5, W=5, G=2, nh=4, P=2)
    first = run_both(op, args, kwargs, "cpu", lambda t: t)[1][1]
    second = run_both(op, args, kwargs, "cpu", lambda t: t)[1][1]
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@given(op=st.sampled_from(MAP_OPS + ("selective_scan",)), Bt=st.integers(1, 2), Dm=st.integers(1, 4),
       N=st.integers(1, 9), H=st.integers(1, 6), W=st.integers(1, 6), L=st.integers(1, 80),
       G=st.sampled_from([None, 1]), softplus=st.booleans(), seed=st.integers(0, 2**16))
def test_random_shapes(op, Bt, Dm, N, H, W, L, G, softplus, seed):
    assert_matches_reference(op, tol=5e-5, Bt=Bt, Dm=Dm, N=N, H=H, W=W, L=L, G=G, softplus=softplus, seed=seed)
