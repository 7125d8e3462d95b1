"""What is particular to the hand-written CUDA backend, against the reference (the cases every
backend shares: tests/test_parity.py): d_state 1..256, lengths around the layout's boundaries (items,
warps, chunks, 1-4 warps per channel), the sequence split, several channel
tiles per group, half-precision inputs, the fp32-output option, the launch limits; GPU only: a 2L =
65536 cross scan and element offsets beyond 2^31.

Two targets: ``gpu``, the compiled ``xscan._C_cuda`` on a CUDA device (skipped without one), and
``emulated``, the same kernel source compiled for the host (tests/backends/cuda_emulator), each CUDA
thread a fiber, on CPU tensors (fp32, fp16, bf16). The emulation checks the kernels' index maths,
recurrences, reductions and barriers and the Python glue where no GPU exists; it proves nothing
about the hardware. It runs the threads of a block in a seeded shuffled order that changes at every
barrier (XSCAN_EMULATOR_ORDER), so a missing __syncthreads gives wrong results, and models __expf
(XSCAN_EMULATOR_EXP); the tests at the end check the emulation itself on small test-only kernels.
XSCAN_SKIP_CUDA_EMULATION=1 skips it (its first build takes about two minutes).
"""
import contextlib
import ctypes

import pytest
import torch

import xscan
from xscan import reference
from xscan.backends import cuda as cuda_backend
from xscan.testing import (MAP_CASES, OPS, assert_matches_reference, check_fp32_output, compare, custom_op_args,
                           deterministic, long_line_spec, make_inputs, public_op, run_with_grads, spec_of,
                           tolerance)

FP32_TOL = tolerance("cuda")
HALF_TOL = tolerance("cuda", torch.float16)

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


@needs_gpu
def test_cuda_is_the_default_for_cuda_tensors():
    for op in OPS:
        assert xscan.selected_backend(op, "cuda") == "cuda"


# ---------------------------------------------------------------------------------------------
# selective_scan

@pytest.mark.parametrize("N", [1, 2, 3, 12, 16, 18, 31, 33, 64, 65, 256])
def test_selective_scan_dstate(device, N):
    # the states are looped, each with its chunk carry in shared memory: any N up to MAX_DSTATE
    assert_matches_reference("selective_scan", "cuda", device=device, Bt=1, Dm=3, N=N, L=37, G=1)


def test_selective_scan_several_channel_tiles(device):
    # one warp per channel, 4 channels per block: 48 channels in 2 groups give 6 tiles per group
    assert_matches_reference("selective_scan", "cuda", device=device, Bt=2, Dm=48, N=16, L=40, G=2)


@pytest.mark.parametrize("deterministic_mode", [False, True])
def test_groups_with_a_partly_filled_tile(device, deterministic_mode):
    # 3 channels per group on blocks of 4: each tile's last warp holds no channel, yet sums its share
    # of the block's dB/dC into the tile's group (atomics) or partial (deterministic mode)
    with deterministic() if deterministic_mode else contextlib.nullcontext():
        assert_matches_reference("selective_scan", "cuda", device=device, Bt=2, Dm=6, N=5, L=40, G=2)


@pytest.mark.parametrize("deterministic_mode", [False, True])
def test_a_partly_filled_tile_keeps_its_idle_warps_out_of_dB_dC(device, deterministic_mode):
    # group 1's tile (channels 3-5) has a fourth warp with no channel, which computes on channel 0:
    # an infinite u there must not reach group 1's dB/dC (nor anything of channels 3-5)
    args, kwargs = make_inputs("selective_scan", Bt=2, Dm=6, N=5, L=40, G=2, device=device)
    args[0][:, 0, 7] = float("inf")
    with deterministic() if deterministic_mode else contextlib.nullcontext():
        _, grads = run_with_grads("selective_scan", args, kwargs, "cuda")
    _, ref_grads = run_with_grads("selective_scan", args, kwargs, None)
    for key in (3, 4):  # B, C: (Bt, G, N, L)
        assert torch.isfinite(grads[key][:, 1]).all(), key
        torch.testing.assert_close(grads[key][:, 1], ref_grads[key][:, 1], rtol=FP32_TOL, atol=FP32_TOL)
    torch.testing.assert_close(grads[0][:, 3:], ref_grads[0][:, 3:], rtol=FP32_TOL, atol=FP32_TOL)


@pytest.fixture
def max_warps(monkeypatch):
    """Caps the warps per channel (xscan.backends.cuda.MAX_WARPS) and records each launch's layout."""
    layouts = []
    plan = cuda_backend.plan

    def recorded(spec, sms=None):
        P = plan(spec, sms)
        layouts.append((P.warps_per_channel, P.chunk_length, P.segments, P.span_length))
        return P
    monkeypatch.setattr(cuda_backend, "plan", recorded)

    def cap(W):
        monkeypatch.setattr(cuda_backend, "MAX_WARPS", W)
        return layouts
    return cap


@pytest.mark.parametrize("cap,L,W", [(1, 1, 1), (1, 7, 1), (1, 8, 1), (1, 9, 1), (1, 15, 1), (1, 16, 1), (1, 17, 1),
                                     (1, 255, 1), (1, 256, 1), (1, 257, 1), (1, 511, 1), (1, 512, 1), (1, 513, 1),
                                     (1, 520, 1), (4, 256, 1), (4, 257, 2), (2, 511, 2), (4, 512, 2), (4, 513, 4),
                                     (2, 1023, 2), (2, 1100, 2), (4, 1024, 4), (4, 1025, 4), (4, 2047, 4),
                                     (4, 2049, 4), (4, 2100, 4)])
def test_lengths_around_item_warp_and_chunk_boundaries(device, max_warps, cap, L, W):
    # a lane owns 8 consecutive positions, a warp 256, a chunk W * 256 (W warps per channel, combined
    # through shared memory; a few channels take as many as the length fills, up to the cap); the
    # forward's lane 16, its warp 512, its chunk W * 512: lengths on, before and after each boundary,
    # one and several chunks
    layouts = max_warps(cap)
    assert_matches_reference("selective_scan", "cuda", device=device, Bt=1, Dm=2, N=5, L=L, G=1)
    assert {layout[0] for layout in layouts} == {W}, layouts


@pytest.mark.parametrize("deterministic_mode", [False, True])
@pytest.mark.parametrize("W", [2, 4])
def test_dB_dC_of_blocks_of_two_and_one_channels(device, max_warps, deterministic_mode, W):
    # 4 / W channels per block: W = 2 sums two channels' terms through shared memory, W = 4 (one
    # channel) stores its terms directly; two groups, a last chunk cut short, float atomics or partials
    layouts = max_warps(W)
    with deterministic() if deterministic_mode else contextlib.nullcontext():
        assert_matches_reference("selective_scan", "cuda", device=device, Bt=2, Dm=4, N=3, L=W * 256 + 37, G=2)
    assert {layout[0] for layout in layouts} == {W}, layouts


@pytest.mark.parametrize("H,W", [(16, 16), (16, 17), (17, 17), (16, 32)])
def test_cross_ss2d_over_several_chunks(device, max_warps, H, W):
    # one warp a channel (chunks of 256 positions, 128 tokens of each modality; the B and C offsets
    # kept one per token): 2 H W = 512 (two chunks), 544 (a third cut short, whole runs of 8), 578
    # (not whole runs: one load a position), 1,024 (four chunks)
    layouts = max_warps(1)
    assert_matches_reference("cross_ss2d", "cuda", device=device, Bt=1, Dm=2, N=3, H=H, W=W)
    assert {(W_, chunk) for W_, chunk, _, _ in layouts} == {(1, 256)}, layouts


def _relaid(t, layout):
    """t with the same values: as it is, contiguous but one element past a 16-byte boundary, or
    strided along its last axis."""
    if layout == "offset":
        return torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)[1:].view(t.shape).copy_(t)
    if layout == "strided":
        return torch.empty(*t.shape, 2, dtype=t.dtype, device=t.device)[..., 0].copy_(t)
    return t


# Per op, the positions of its B and C among make_inputs' arguments, and whether they are
# (Bt, L, G, N) (ssd_exchange's, made L-major as the others' for the test).
TOKEN_RUN_OPS = {"selective_scan": ((3, 4), False), "ss2d": ((2, 3), False), "es2d": ((2, 3), False),
                 "interleave_ss2d": ((3, 4), False), "cross_ss2d": ((4, 5, 6, 7), False),
                 "ssd_exchange": ((5, 6, 7, 8), True)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("layout", ["aligned", "offset", "strided"])
@pytest.mark.parametrize("op,shape", [("selective_scan", dict(L=64)), ("selective_scan", dict(L=61)),
                                      ("ssd_exchange", dict(L=40)), ("ssd_exchange", dict(L=43)),
                                      ("ss2d", dict(H=6, W=12)), ("ss2d", dict(H=5, W=7)),
                                      ("es2d", dict(H=8, W=7)), ("es2d", dict(H=6, W=6)),
                                      ("interleave_ss2d", dict(H=6, W=4)), ("interleave_ss2d", dict(H=5, W=5)),
                                      ("cross_ss2d", dict(H=4, W=6)), ("cross_ss2d", dict(H=3, W=5))])
def test_token_runs_and_their_fallback(device, op, shape, layout, dtype):
    # Routes whose positions read consecutive tokens (selective_scan, ssd_exchange; the row routes
    # of ss2d, interleave_ss2d forwards and backwards, of es2d forwards; of cross_ss2d, each
    # modality's every second position) load a lane's 8 positions of B and C as aligned vectors
    # where the route length is whole runs of 8 and B, C are unit-stride rows on 16-byte
    # boundaries; any other length or layout, one load per position.
    # The ops are called directly: the public functions' autograd would copy B and C.
    args, kwargs = make_inputs(op, device=device, Bt=2, Dm=3, N=5, G=1, dtype=dtype, **shape)
    at, token_last = TOKEN_RUN_OPS[op]
    if token_last:
        relaid = tuple(_relaid(a.transpose(1, -1).contiguous(), layout).transpose(1, -1) if i in at else a
                       for i, a in enumerate(args))
    else:
        relaid = tuple(_relaid(a, layout) if i in at else a for i, a in enumerate(args))
    forward, backward = getattr(torch.ops.xscan, op), getattr(torch.ops.xscan, f"{op}_backward")
    full, expected_full = (custom_op_args(op, a, kwargs, b) for a, b in ((relaid, "cuda"), (args, "reference")))
    outs, expected = forward(*full)[:-1], forward(*expected_full)[:-1]
    g = torch.Generator().manual_seed(1)
    grads = [torch.randn(o.shape, generator=g).to(device=device, dtype=o.dtype) for o in outs]
    got = list(outs) + [x for x in backward(grads, *full, None) if x is not None]
    want = list(expected) + [x for x in backward(grads, *expected_full, None) if x is not None]
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    for name, (a, b) in enumerate(zip(got, want)):
        torch.testing.assert_close(a.float(), b.float(), rtol=tol, atol=tol, msg=f"output/gradient {name}")


@pytest.mark.parametrize("op,N", [("cross_ss2d", 18), ("ss2d", 16), ("es2d", 16), ("interleave_ss2d", 12)])
def test_network_tilings(device, op, N):
    # The networks' d_state (S4Fusion 18 and 12; DIFF-MF, FusionMamba 16) with several channel tiles
    # and batches: the grid's x decodes (batch, tile), tiles fastest.
    assert_matches_reference(op, "cuda", device=device, Bt=3, Dm=20, N=N, H=5, W=7)


# ---------------------------------------------------------------------------------------------
# Sequence split (few blocks: each sequence runs as spans, with a summary and a carry pass)

@pytest.fixture
def split_sequences(monkeypatch, max_warps):
    """One warp per channel and spans of whole 256-position chunks: every launch here splits;
    returns the recorded layouts."""
    monkeypatch.setattr(cuda_backend, "MIN_SPAN", 16)
    return max_warps(1)


# route lengths of 520-600 positions: selective_scan and ssd_exchange L, ss2d 20 x 26, cross_ss2d
# 2 x 16 x 17, es2d's sub-lattices 23 x 23 of a 46 x 46 map
SPLIT = dict(Bt=2, Dm=5, L=600, nh=2, P=3)
SPLIT_MAPS = {"ss2d": (20, 26), "cross_ss2d": (16, 17), "es2d": (46, 46), "interleave_ss2d": (20, 26)}


@pytest.mark.parametrize("N", [3, 16])
@pytest.mark.parametrize("op", OPS)
def test_split_sequences_match_reference(device, split_sequences, op, N):
    H, W = SPLIT_MAPS.get(op, (1, 1))
    assert_matches_reference(op, "cuda", device=device, **SPLIT, H=H, W=W, N=N)
    segments = [layout[2] for layout in split_sequences]
    # forward, its checkpoints' shape and backward: all split
    assert len(segments) == 3 and min(segments) > 1, split_sequences


@pytest.mark.parametrize("deterministic_mode", [False, True])
def test_split_sequence_last_state_and_partials(device, split_sequences, deterministic_mode):
    # last_state comes from the last span; its gradient enters the last span's carry; dA, dD and
    # delta_bias's gradient are summed over spans (per-tile partials in deterministic mode)
    args, kwargs = make_inputs("selective_scan", device=device, Bt=1, Dm=3, N=4, L=1100, G=1)
    with deterministic() if deterministic_mode else contextlib.nullcontext():
        errors = compare("selective_scan", args, dict(kwargs, return_last_state=True), "cuda")
    assert all(err < FP32_TOL for _, err in errors), errors
    # 1100 positions in 4 whole chunks and 76: 4 spans wanted, each of 2 chunks, so 3 (512, 512, 76)
    assert split_sequences[0] == (1, 256, 3, 512)


def test_plan_fills_the_gpu_with_warps_then_spans():
    # plan_launch (csrc/cuda/scan_params.h) through the CPU extension, which exports it for tools
    def layout(Bt, Dm, L, G=1, sms=132, K=1):
        p = xscan._C.cuda_layout(Bt, K, Dm, 16, L, G, G, 2 * sms, 512, 4)
        return (p["warps_per_channel"], p["tiles"], p["segments"], p["span_length"], p["chunks"])
    assert layout(32, 192, 3136) == (1, 48, 1, 0, 13)       # cuda_targets' selective_scan: 1536 blocks
    assert layout(1, 64, 2048) == (4, 64, 2, 1024, 2)       # 16 blocks at 1 warp per channel, 64 at 4; 2 spans
    assert layout(1, 64, 200) == (1, 16, 1, 0, 1)           # one warp's positions hold the sequence
    assert layout(1, 8, 65536) == (4, 8, 32, 2048, 64)      # 8 blocks, then 32 spans of 2 chunks
    assert layout(1, 8, 2047) == (4, 8, 1, 0, 2)            # too short to pay for a summary pass
    assert layout(2, 10, 3000, G=2) == (4, 10, 2, 2048, 3)  # 5 channels per group, one tile each
    # DIFF-MF's ss2d at 256 x 256 (4 routes of 65536, 64 channels): 256 blocks at 4 warps per channel,
    # more than half of the 264 wanted, so no split (a summary pass would double the work); at half
    # the channels, 128 blocks: 3 spans (of whole 1024-position chunks); at exactly half the blocks
    # wanted, a split; one block more, none
    assert layout(1, 64, 65536, K=4) == (4, 64, 1, 0, 64)
    assert layout(1, 32, 65536, K=4) == (4, 32, 3, 22528, 64)
    assert layout(1, 32, 65536, K=4, sms=128) == (4, 32, 2, 32768, 64)
    assert layout(1, 33, 65536, K=4, sms=128) == (4, 33, 1, 0, 64)


# ---------------------------------------------------------------------------------------------
# 2-D map ops

@pytest.mark.parametrize("op,route", MAP_CASES)
def test_map_ops_many_channels_and_wide_state(device, op, route):
    # N = 40 states looped; 9 channels on blocks of 4 (3 tiles, the last one holding one channel)
    assert_matches_reference(op, "cuda", device=device, Bt=1, Dm=9, N=40, H=3, W=3, route=route)


# Several channel tiles per group (4 channels per block) and two groups.
TILED = dict(Bt=2, Dm=40, N=8, L=40, H=4, W=5, G=2, nh=8, P=5)


@pytest.mark.parametrize("op", OPS)
def test_tiled_channels_match_reference(device, op):
    assert_matches_reference(op, "cuda", device=device, **TILED)


# ---------------------------------------------------------------------------------------------
# Half-precision inputs (fp32 accumulation; every op at N = 8: tests/test_parity.py)

@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("N", [8, 40, 64])
def test_half_inputs(device, dtype, N):
    assert_matches_reference("selective_scan", "cuda", device=device, dtype=dtype, Bt=2, Dm=9, N=N, L=40, G=1)


@pytest.mark.parametrize("op", OPS)
def test_fp32_output_option(device, op):
    check_fp32_output(op, "cuda", device, Bt=1, Dm=6, N=8, L=40, H=5, W=6, G=2, nh=2, P=3)


# ---------------------------------------------------------------------------------------------
# Limits (no device needed: they run before any launch)

def test_limits_reject_dstate_outside_1_to_256(emulated_cuda):
    cuda_backend.limits(spec_of("selective_scan", *make_inputs("selective_scan", Bt=1, Dm=2, N=256, L=3)))
    for N in (257, 512):
        with pytest.raises(ValueError, match="d_state N = .* is outside the kernels' range 1..256"):
            cuda_backend.limits(spec_of("selective_scan", *make_inputs("selective_scan", Bt=1, Dm=2, N=N, L=3)))
    with pytest.raises(ValueError, match="d_state"):
        cuda_backend.limits(spec_of("ss2d", *make_inputs("ss2d", Bt=1, Dm=2, N=257, H=2, W=2)))


def test_limits_take_batch_beyond_65535_and_reject_routes_beyond(emulated_cuda):
    # batch shares gridDim.x (2^31 - 1 blocks) with the channel tiles; routes are gridDim.y (65,535)
    cuda_backend.limits(spec_of("selective_scan", *make_inputs("selective_scan", Bt=70000, Dm=1, N=1, L=1)))
    with pytest.raises(ValueError, match="65536 routes exceed 65535"):
        cuda_backend.limits(spec_of("ssd_exchange", *make_inputs("ssd_exchange", Bt=1, nh=1, P=32768, N=1, L=1)))


def test_limits_reject_routes_beyond_32_bit_positions(emulated_cuda):
    cuda_backend.limits(long_line_spec(2**31 - 1))
    with pytest.raises(ValueError, match=r"2147483648 exceeds 2\^31 - 1"):
        cuda_backend.limits(long_line_spec(2**31))


def test_limits_reject_float64_naming_the_argument(emulated_cuda):
    args, kwargs = make_inputs("cross_ss2d", Bt=1, Dm=2, N=2, H=2, W=2, dtype=torch.float64)
    with pytest.raises(ValueError, match="u0 has dtype torch.float64"):
        cuda_backend.limits(spec_of("cross_ss2d", args, kwargs))


# ---------------------------------------------------------------------------------------------
# Checkpoints: when autograd needs a backward, the forward saves the state at every chunk start of
# its launch layout, and the backward starts from them instead of rerunning the forward. Routes long
# enough for several chunks and, in the emulation's layout (planned for 132 SMs), a sequence split
# into spans of whole chunks.

CHECKPOINT_SHAPE = dict(Bt=1, Dm=2, N=3, L=2100, H=30, W=70, G=1, nh=2, P=2)


def cuda_call(op, device, **shape):
    args, kwargs = make_inputs(op, device=device, **dict(CHECKPOINT_SHAPE, **shape))
    return getattr(torch.ops.xscan, op), custom_op_args(op, args, kwargs, "cuda"), spec_of(op, args, kwargs)


def test_checkpoint_shape_is_split_into_spans_of_several_chunks(emulated_cuda):
    P = cuda_backend.plan(cuda_call("selective_scan", "cpu")[2])
    assert P.segments > 1 and P.chunks > P.segments, (P.segments, P.chunks)


@pytest.mark.parametrize("op", OPS)
def test_backward_from_checkpoints_equals_the_recomputed_one(device, op):
    forward, full, _ = cuda_call(op, device)
    *outs, checkpoints = forward(*full, True)
    plain = forward(*full)
    assert checkpoints.numel() > 0 and plain[-1].numel() == 0
    for o, p in zip(outs, plain):
        torch.testing.assert_close(o, p, rtol=1e-6, atol=1e-6)  # float atomics on a GPU
    g = torch.Generator().manual_seed(0)
    grads = [torch.randn(o.shape, generator=g, dtype=o.dtype).to(device) for o in outs]
    backward = getattr(torch.ops.xscan, f"{op}_backward")
    saved = backward(grads, *full, checkpoints)
    recomputed = backward(grads, *full, None)
    for s, r in zip(saved, recomputed):
        torch.testing.assert_close(s, r, rtol=1e-5, atol=1e-5)
    with xscan.use_backend("reference"):
        expected = getattr(torch.ops.xscan, f"{op}_backward")(grads, *full[:-1], "reference", None)
    for s, e in zip(saved, expected):
        if e is not None:
            torch.testing.assert_close(s, e, rtol=1e-4, atol=1e-4)


def test_checkpoints_are_the_states_at_chunk_starts(device):
    """(Bt, K, Dm, chunks, N): the last state of the scan cut at each chunk's start (0 at the first)."""
    forward, full, spec = cuda_call("selective_scan", device)
    *_, checkpoints = forward(*full, True)
    P = cuda_backend.plan(spec)
    assert checkpoints.shape == (1, 1, 2, P.chunks, 3)
    assert not checkpoints[:, :, :, 0].any()
    u, delta, A, B, C, D, z, bias, softplus = full[:9]
    for c in range(1, P.chunks):
        cut = [t[..., :P.chunk_length * c] for t in (u, delta, B, C, z)]
        with xscan.use_backend("reference"):
            _, last = xscan.selective_scan(cut[0], cut[1], A, cut[2], cut[3], D, cut[4], bias, softplus,
                                           return_last_state=True)
        torch.testing.assert_close(checkpoints[:, 0, :, c], last, rtol=1e-5, atol=1e-5)


def test_checkpoints_of_another_layout_are_refused(device):
    forward, full, _ = cuda_call("selective_scan", device)
    *outs, checkpoints = forward(*full, True)
    backward = torch.ops.xscan.selective_scan_backward
    strided = checkpoints.transpose(3, 4).contiguous().transpose(3, 4)
    for other in (checkpoints[..., :-1, :], checkpoints.double(), strided):
        with pytest.raises(ValueError, match="checkpoints must be"):
            backward([torch.ones_like(o) for o in outs], *full, other)


def test_public_op_trains_from_checkpoints(device, monkeypatch):
    """autograd through the public op hands the backward the forward's checkpoints."""
    seen = []
    backward = cuda_backend.backward

    def spy(spec, grads, checkpoints=None):
        seen.append(checkpoints)
        return backward(spec, grads, checkpoints)
    monkeypatch.setattr(cuda_backend, "backward", spy)
    args, kwargs = make_inputs("cross_ss2d", device=device, **CHECKPOINT_SHAPE)
    leaves = [a.clone().requires_grad_() if isinstance(a, torch.Tensor) else a for a in args]
    with xscan.use_backend("cuda"):
        out = public_op("cross_ss2d")(*leaves, **kwargs)
    (out if isinstance(out, torch.Tensor) else out[0]).sum().backward()
    assert len(seen) == 1 and seen[0] is not None and seen[0].numel() > 0


# ---------------------------------------------------------------------------------------------
# GPU only: long routes, 64-bit offsets

@pytest.mark.slow
@needs_gpu
def test_cross_ss2d_route_of_65536_positions():
    # H * W = 32768, so each route runs 2L = 65536 positions through one hidden state
    assert_matches_reference("cross_ss2d", "cuda", tol=1e-3, device="cuda", Bt=1, Dm=1, N=2, H=128, W=256)


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


def test_fast_divisor(emulator):
    # The route policies divide by a map's height or width, a route count or a realignment period
    # with FastDivisor (csrc/include/xscan/scan_math.h): a multiply-high, an add and a shift. Every
    # divisor up to 2^12, powers of 2 and their neighbours, random ones up to 2^31 - 1; dividends 0,
    # around multiples of the divisor, random, and the largest, 2^31 - 1.
    g = torch.Generator().manual_seed(0)
    powers = [2**k + e for k in range(31) for e in (-1, 0, 1) if 1 <= 2**k + e < 2**31]
    divisors = torch.cat([torch.arange(1, 4097), torch.tensor(powers),
                          torch.randint(1, 2**31 - 1, (2000,), generator=g)]).to(torch.int64)
    d = divisors.repeat_interleave(12)
    k = torch.randint(0, 2**31 - 1, d.shape, generator=g) // d
    near = torch.stack([k * d - 1, k * d, k * d + 1], 1).flatten()[: d.numel()]
    n = torch.where(torch.arange(d.numel()) % 4 == 0, torch.randint(0, 2**31 - 1, d.shape, generator=g), near)
    n = torch.cat([n, torch.zeros_like(divisors), torch.full_like(divisors, 2**31 - 1)]).clamp(0, 2**31 - 1)
    d = torch.cat([d, divisors, divisors])
    n32, d32 = n.to(torch.int32).contiguous(), d.to(torch.int32).contiguous()
    q, r = torch.empty_like(n32), torch.empty_like(n32)
    ctypes.CDLL(emulator.__file__).xscan_fast_divide(
        ctypes.c_void_p(n32.data_ptr()), ctypes.c_void_p(d32.data_ptr()), ctypes.c_void_p(q.data_ptr()),
        ctypes.c_void_p(r.data_ptr()), ctypes.c_int64(n32.numel()))
    assert torch.equal(q.to(torch.int64), n // d)
    assert torch.equal(r.to(torch.int64), n % d)


# ---------------------------------------------------------------------------------------------
# The emulation itself: thread order, barriers, shuffles (tests/backends/cuda_emulator/emulator.cpp)

THREADS = 128  # one block of the test-only kernels: kThreadsPerBlock (csrc/cuda/scan_params.h)


def probe(emulator, kernel: str, values: torch.Tensor, barrier: bool = True) -> torch.Tensor:
    """One block of the emulator's test-only kernel ``kernel`` (xscan_emulator_probe, through ctypes)
    on ``values`` (THREADS floats), with or without its __syncthreads."""
    run = ctypes.CDLL(emulator.__file__).xscan_emulator_probe
    run.restype, run.argtypes = ctypes.c_char_p, [ctypes.c_char_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
    assert values.dtype == torch.float32 and values.shape == (emulator.THREADS_PER_BLOCK,)
    out = torch.empty_like(values)
    error = run(kernel.encode(), int(barrier), values.data_ptr(), out.data_ptr())
    if error:
        raise RuntimeError(error.decode())
    return out


VALUES = torch.arange(1.0, THREADS + 1)
# neighbour: each thread's left neighbour's value (thread 0 its own), through shared memory
LEFT = torch.cat([VALUES[:1], VALUES[:-1]])
# warp_sum: the sum of the thread's warp by shuffles plus the value a warp to the left (cyclically)
WARP_SUM = VALUES.view(-1, 32).sum(1).repeat_interleave(32) + VALUES.roll(32)


def test_emulator_catches_a_missing_barrier(emulator, monkeypatch):
    # The default order shuffles the threads: a thread may read its neighbour's slot before the
    # neighbour writes it. In thread order (the only order the emulation had before, which hid such
    # races) every left neighbour writes first: there the bug goes unseen.
    monkeypatch.delenv("XSCAN_EMULATOR_ORDER", raising=False)
    assert torch.equal(probe(emulator, "neighbour", VALUES), LEFT)
    assert not torch.equal(probe(emulator, "neighbour", VALUES, barrier=False), LEFT)
    monkeypatch.setenv("XSCAN_EMULATOR_ORDER", "forward")
    assert torch.equal(probe(emulator, "neighbour", VALUES, barrier=False), LEFT)


@pytest.mark.parametrize("order", ["forward", "reverse", "shuffle", "shuffle:1", "shuffle:2"])
def test_every_order_keeps_warps_consistent_and_shows_races(emulator, monkeypatch, order):
    # Lanes see their whole warp's values at every shuffle in any order. A shuffle syncs only its
    # warp, so without the __syncthreads another warp's shared-memory slot is read unwritten (the
    # emulation before made every shuffle a block barrier, which hid such races).
    monkeypatch.setenv("XSCAN_EMULATOR_ORDER", order)
    assert torch.equal(probe(emulator, "warp_sum", VALUES), WARP_SUM)
    assert not torch.equal(probe(emulator, "warp_sum", VALUES, barrier=False), WARP_SUM)
    assert torch.equal(probe(emulator, "neighbour", VALUES), LEFT)
    if order != "forward":
        assert not torch.equal(probe(emulator, "neighbour", VALUES, barrier=False), LEFT)


def test_emulator_rejects_divergent_barriers_and_shuffles(emulator):
    with pytest.raises(RuntimeError, match="a __syncthreads that not every thread of the block reached"):
        probe(emulator, "divergent_barrier", VALUES)
    with pytest.raises(RuntimeError, match="a warp shuffle that not every lane of the warp reached"):
        probe(emulator, "divergent_shuffle", VALUES)


@pytest.mark.parametrize("variable, value", [("XSCAN_EMULATOR_ORDER", "sideways"), ("XSCAN_EMULATOR_ORDER", "shuffle:"),
                                             ("XSCAN_EMULATOR_EXP", "approximate")])
def test_emulator_rejects_unknown_settings(emulated_cuda, monkeypatch, variable, value):
    monkeypatch.setenv(variable, value)
    args, kwargs = make_inputs("selective_scan", Bt=1, Dm=2, N=2, L=3)
    with pytest.raises(RuntimeError, match=f"{variable}={value}: expected"), xscan.use_backend("cuda"):
        xscan.selective_scan(*args, **kwargs)


def test_kernel_results_do_not_depend_on_the_thread_order(emulated_cuda, monkeypatch):
    # Deterministic mode (no float atomics): every order gives the same bits, forward and backward
    # (two channel tiles, four routes summed).
    args, kwargs = make_inputs("cross_ss2d", Bt=1, Dm=5, N=64, H=2, W=3)
    runs = []
    for order in ("forward", "reverse", "shuffle", "shuffle:1"):
        monkeypatch.setenv("XSCAN_EMULATOR_ORDER", order)
        with deterministic():
            runs.append(run_with_grads("cross_ss2d", args, kwargs, "cuda"))
    (out, grads), rest = runs[0], runs[1:]
    for other_out, other_grads in rest:
        assert all(torch.equal(a, b) for a, b in zip(out, other_out))
        assert all(torch.equal(grads[k], other_grads[k]) for k in grads)


def test_emulator_models_expf_and_can_use_exact_exp(emulated_cuda, monkeypatch):
    # XSCAN_EMULATOR_EXP=fast (the default) stands for the GPU's __expf, exact for std::exp: the
    # results differ in their last bits and both match the reference.
    args, kwargs = make_inputs("selective_scan", Bt=1, Dm=3, N=16, L=37)
    results = {}
    for exp in ("fast", "exact"):
        monkeypatch.setenv("XSCAN_EMULATOR_EXP", exp)
        results[exp] = run_with_grads("selective_scan", args, kwargs, "cuda")
        assert all(err < FP32_TOL for _, err in compare("selective_scan", args, kwargs, "cuda"))
    assert not torch.equal(results["fast"][0][0], results["exact"][0][0])
