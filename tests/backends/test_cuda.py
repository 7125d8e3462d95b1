"""What is particular to the hand-written CUDA backend, against the reference (the cases every
backend shares: tests/test_parity.py): d_state 1..64 (one or two states per lane), several channel
tiles per group, the launch limits; GPU only: the fp32-output option, a 2L = 65536 cross scan and
element offsets beyond 2^31.

Two targets: ``gpu``, the compiled ``xscan._C_cuda`` on a CUDA device (skipped without one), and
``emulated``, the same kernel source compiled for the host (tests/backends/cuda_emulator), each CUDA
thread a fiber, on CPU tensors in float32. The emulation checks the kernels' index maths,
recurrences and reductions and the Python glue where no GPU exists; it proves nothing about the
hardware. XSCAN_SKIP_CUDA_EMULATION=1 skips it (its first build takes about two minutes).
"""
import pytest
import torch

import xscan
from xscan import reference
from xscan.backends import cuda as cuda_backend
from xscan.testing import (OPS, check_fp32_output, compare, make_inputs, spec_of)

FP32_TOL = 3e-5
HALF_TOL = 2e-2
MAP_OPS = ("ss2d", "es2d", "cross_ss2d", "interleave_ss2d")

GPU_REASON = ("no CUDA device" if not torch.cuda.is_available()
              else None if xscan.backends()["cuda"] is True else f"cuda backend: {xscan.backends()['cuda']}")
def needs_gpu(test):
    return pytest.mark.gpu(pytest.mark.skipif(GPU_REASON is not None, reason=str(GPU_REASON))(test))


@pytest.fixture(params=["gpu", "emulated"])
def device(request):
    """The device the parity tests run on, with the cuda backend able to run there."""
    if request.param == "gpu":
        if GPU_REASON is not None:
            pytest.skip(GPU_REASON)
        return "cuda"
    request.getfixturevalue("emulated_cuda")
    return "cpu"


def assert_matches_reference(op, device, tol=FP32_TOL, **shape):
    args, kwargs = make_inputs(op, device=device, **shape)
    errors = compare(op, args, kwargs, "cuda")
    bad = [(name, err) for name, err in errors if not err < tol]
    assert not bad, f"{op} {shape}: {bad}"


@needs_gpu
def test_cuda_is_the_default_for_cuda_tensors():
    for op in OPS:
        assert xscan.selected_backend(op, "cuda") == "cuda"


# ---------------------------------------------------------------------------------------------
# selective_scan

@pytest.mark.parametrize("N", [1, 2, 16, 31, 33, 64])
def test_selective_scan_dstate(device, N):
    # N <= 32: one state per lane; N > 32: two per lane
    assert_matches_reference("selective_scan", device, Bt=1, Dm=3, N=N, L=37, G=1)


def test_selective_scan_several_channel_tiles(device):
    # N = 16: 8 channels per 128-thread block, so 48 channels in 2 groups give 3 tiles per group
    assert_matches_reference("selective_scan", device, Bt=2, Dm=48, N=16, L=40, G=2)


# ---------------------------------------------------------------------------------------------
# 2-D map ops

@pytest.mark.parametrize("op", MAP_OPS)
def test_map_ops_many_channels_and_wide_state(device, op):
    # N = 40: two states per lane, 4 channels per block, so 9 channels span 3 tiles
    assert_matches_reference(op, device, Bt=1, Dm=9, N=40, H=3, W=3)


# Several channel tiles per group (N = 8: 16 channels per block) and two groups.
TILED = dict(Bt=2, Dm=40, N=8, L=40, H=4, W=5, G=2, nh=8, P=5)


@pytest.mark.parametrize("op", OPS)
def test_tiled_channels_match_reference(device, op):
    assert_matches_reference(op, device, **TILED)


# ---------------------------------------------------------------------------------------------
# Limits (no device needed: they run before any launch)

def test_limits_reject_dstate_outside_1_to_64(emulated_cuda):
    for N in (65, 128):
        with pytest.raises(ValueError, match="d_state N = .* is outside the kernels' range 1..64"):
            cuda_backend.limits(spec_of("selective_scan", *make_inputs("selective_scan", Bt=1, Dm=2, N=N, L=3)))
    with pytest.raises(ValueError, match="d_state"):
        cuda_backend.limits(spec_of("ss2d", *make_inputs("ss2d", Bt=1, Dm=2, N=65, H=2, W=2)))


def test_limits_reject_float64_naming_the_argument(emulated_cuda):
    args, kwargs = make_inputs("cross_ss2d", Bt=1, Dm=2, N=2, H=2, W=2, dtype=torch.float64)
    with pytest.raises(ValueError, match="u0 has dtype torch.float64"):
        cuda_backend.limits(spec_of("cross_ss2d", args, kwargs))


# ---------------------------------------------------------------------------------------------
# GPU only: half precision, fp32 output, long routes, 64-bit offsets

@needs_gpu
@pytest.mark.parametrize("op", OPS)
def test_fp32_output_option(op):
    check_fp32_output(op, "cuda", "cuda", Bt=1, Dm=6, N=8, L=40, H=5, W=6, G=2, nh=2, P=3)


@pytest.mark.slow
@needs_gpu
def test_cross_ss2d_route_of_65536_positions():
    # H * W = 32768, so each route runs 2L = 65536 positions through one hidden state
    assert_matches_reference("cross_ss2d", "cuda", tol=1e-3, Bt=1, Dm=1, N=2, H=128, W=256)


@pytest.mark.slow
@needs_gpu
def test_element_offsets_beyond_2_pow_31():
    # (Bt, Dm, L) = (2, 16384, 65600) holds 2.15e9 > 2^31 elements per per-token tensor (fp16: 4.3 GB
    # each; with fp32 outputs and gradients about 50 GB at the peak). The last channels of the last batch
    # sit past element 2^31: check them (and their gradients, which depend on their own channel only)
    # against the reference on just those channels.
    Bt, Dm, L, N = 2, 16384, 65600, 4
    assert Bt * Dm * L > 2**31
    free, _ = torch.cuda.mem_get_info()
    if free < 56 * 2**30:
        pytest.skip(f"needs about 56 GB of free GPU memory, {free / 2**30:.0f} GB free")
    g = torch.Generator(device="cuda").manual_seed(0)
    u = torch.randn(Bt, Dm, L, device="cuda", dtype=torch.float16, generator=g)
    delta = (torch.randn(Bt, Dm, L, device="cuda", generator=g) * 0.8 - 2.0).half()
    A = -torch.rand(Dm, N, device="cuda", generator=g) - 0.5
    B = torch.randn(Bt, 1, N, L, device="cuda", dtype=torch.float16, generator=g)
    C = torch.randn(Bt, 1, N, L, device="cuda", dtype=torch.float16, generator=g)
    D = torch.randn(Dm, device="cuda", generator=g)
    leaves = [u.requires_grad_(), delta.requires_grad_()]
    with xscan.use_backend("cuda"):
        y = xscan.selective_scan(u, delta, A, B, C, D=D, delta_softplus=True)
    dy = torch.zeros_like(y)
    dy[-1, -2:] = 1
    du, ddelta = torch.autograd.grad(y, leaves, dy)
    tail = (slice(Bt - 1, Bt), slice(Dm - 2, Dm))
    ref_leaves = [u.detach()[tail].float().requires_grad_(), delta.detach()[tail].float().requires_grad_()]
    y_ref = reference.selective_scan(ref_leaves[0], ref_leaves[1], A[tail[1]], B[tail[0]].float(),
                                     C[tail[0]].float(), D[tail[1]], delta_softplus=True)
    du_ref, ddelta_ref = torch.autograd.grad(y_ref, ref_leaves, torch.ones_like(y_ref))
    torch.testing.assert_close(y[tail].float(), y_ref, rtol=HALF_TOL, atol=HALF_TOL)
    torch.testing.assert_close(du[tail].float(), du_ref, rtol=HALF_TOL, atol=HALF_TOL)
    torch.testing.assert_close(ddelta[tail].float(), ddelta_ref, rtol=HALF_TOL, atol=HALF_TOL)
