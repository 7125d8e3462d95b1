"""What is particular to the triton backend, against the reference (the cases every backend shares:
tests/test_parity.py): its tiles (channel blocks per program, SSD chunks and head widths), the
fp32-output option, its limits, and every kernel compiled for a GPU target.

On CPU the kernels run in Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1 when there
is no CUDA device) with tiny shapes and tiny tiles, so that short sequences still cross several
chunk boundaries. With a CUDA device the GPU cases run too: larger shapes, the production tiles,
fp16/bf16 inputs."""
import pytest
import torch

import xscan
from xscan.spec import ROUTE_KINDS, Route
from xscan.testing import OPS, check_fp32_output, compare, deterministic, long_line_spec, make_inputs, tolerance

REASON = xscan.backends()["triton"]
pytestmark = pytest.mark.skipif(REASON is not True, reason=f"triton backend unavailable: {REASON}")

tiles = pytest.importorskip("xscan.triton_kernels.tiles") if REASON is True else None
CUDA = torch.cuda.is_available()
INTERPRETER = "cpu" in (xscan._registry.backend("triton").devices or ())


def check(op, *, device="cpu", dtype=torch.float32, chunk=4, block_d=2, layout=None, extra=None, **shape):
    """Compare op on triton with the reference; ``layout`` may change the inputs, ``extra`` adds
    keyword arguments of the public op."""
    if device == "cpu" and not INTERPRETER:
        pytest.skip("the Triton interpreter is not active (TRITON_INTERPRET=1 with no CUDA device)")
    if device == "cuda" and not CUDA:
        pytest.skip("needs a CUDA device")
    args, kwargs = make_inputs(op, dtype=dtype, device=device, **shape)
    if layout is not None:
        args, kwargs = layout(args, kwargs)
    kwargs.update(extra or {})
    with tiles.override(chunk=chunk, block_d=block_d):
        errors = compare(op, args, kwargs, "triton")
    bad = [(name, err) for name, err in errors if not err <= tolerance("triton", dtype)]
    assert not bad, f"{op} {shape}: errors above {tolerance('triton', dtype)}: {bad}"


# ---- interpreter (CPU) cases ---------------------------------------------------------------------
@pytest.mark.parametrize("shape", [dict(Bt=1, Dm=2, N=2, L=1), dict(Bt=1, Dm=3, N=1, L=8), dict(Bt=1, Dm=2, N=5, L=4)],
                         ids=["L1", "N1", "one_chunk"])
def test_selective_scan_shapes(shape):
    check("selective_scan", **shape)


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_selective_scan_grouped(groups):
    check("selective_scan", Bt=2, Dm=4, N=2, L=9, G=groups, block_d=4)


# d_state on both sides of each state-tile boundary (tiles.state_tiles): one tile (1, 16, 32), a head
# and a padded tail (15 = 8 + 8 lanes, 31 = 16 + 16), a head and a one-state tail (17, 33), S4Fusion's 18
STATE_TILE_EDGES = [1, 15, 16, 17, 18, 31, 32, 33]


def test_state_tiles_cover_d_state_with_at_most_one_padded_tile():
    assert [tiles.state_tiles(N) for N in STATE_TILE_EDGES + [12, 24, 64, 100]] == [
        (1, 0), (8, 8), (16, 0), (16, 1), (16, 2), (16, 16), (32, 0), (32, 1), (8, 4), (16, 8), (64, 0), (64, 64)]
    # the head tile sets the chunk and channels: N = 18 runs N = 16's programs
    for backward in (False, True):
        assert tiles.scan_tiles(18, backward) == tiles.Tiles(**{**vars(tiles.scan_tiles(16, backward)), "tail_n": 2})


@pytest.mark.parametrize("N", STATE_TILE_EDGES)
def test_selective_scan_state_tiles(N):
    """Forward and backward at each d_state class, over several channel blocks and chunks."""
    check("selective_scan", Bt=1, Dm=3, N=N, L=9, G=1)


@pytest.mark.parametrize("op", ["ss2d", "cross_ss2d"])
def test_map_scans_with_a_tail_tile(op):
    """S4Fusion's d_state (16 + 2 states) on routed scans: every route reads the tail's B, C and A."""
    check(op, Bt=1, Dm=2, N=18, H=3, W=4)


def test_selective_scan_many_channel_blocks():
    """More channels than one backward program covers (8 blocks of 1): partial dB/dC per program."""
    check("selective_scan", Bt=1, Dm=10, N=2, L=5, block_d=1)


@pytest.mark.parametrize("shape", [dict(Bt=2, L=37, nh=4, P=3, N=5, G=2), dict(Bt=1, L=1, nh=2, P=2, N=2),
                                   dict(Bt=1, L=16, nh=2, P=17, N=3)], ids=["chunks_groups", "L1", "one_chunk_wide_P"])
def test_ssd_exchange(shape):
    check("ssd_exchange", **shape)  # SSD chunks are 16 steps: L=37 spans three


def test_ssd_exchange_float64():
    check("ssd_exchange", Bt=1, L=18, nh=2, P=2, N=3, dtype=torch.float64)


@pytest.mark.parametrize("op", OPS)
def test_fp32_output(op):
    device = "cuda" if CUDA else "cpu"
    with tiles.override(chunk=4, block_d=2):
        check_fp32_output(op, "triton", device, Bt=1, Dm=4, N=4, L=12, H=3, W=4, G=2, nh=2, P=2)


def test_limits_name_the_argument():
    args, kwargs = make_inputs("selective_scan", Bt=1, Dm=1, N=300, L=2)
    device = "cuda" if CUDA else "cpu"
    args = tuple(a.to(device) for a in args)
    kwargs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    with xscan.use_backend("triton"), pytest.raises(ValueError, match="d_state"):
        xscan.selective_scan(*args, **kwargs)


def test_carry_launch_is_wide_enough_for_the_gpu():
    # DIFF-MF's ss2d at batch 1 (4 routes x 64 channels): one row per program, 256 programs
    assert tiles.carry_launch(4, 64, 16) == ((4, 64), 1, 1, 16)
    assert tiles.carry_launch(1024, 64, 16) == ((1024, 4), 16, 4, 16)
    assert tiles.carry_launch(1024, 64, 18)[2:] == (4, 32)  # one padded tile of states


@pytest.mark.parametrize("programs", [1, 3])
def test_carry_with_several_rows_per_program(monkeypatch, programs):
    # fewer programs wanted -> 16 rows per program (1) or 2 rows with the last one masked (3, Dm = 5)
    monkeypatch.setattr(tiles, "CARRY_PROGRAMS", programs)
    check("selective_scan", Bt=1, Dm=5, N=3, L=20)
    check("ssd_exchange", Bt=1, L=37, nh=1, P=5, N=3)


@pytest.fixture
def fp32_matmul_precision():
    """Sets torch's fp32 matmul precision for CUDA through the API this torch has ("ieee" or "tf32")
    and restores it afterwards (monkeypatch cannot: the flag is a dynamic attribute, and torch >= 2.9
    refuses a mix of its old and new APIs)."""
    matmul = torch.backends.cuda.matmul
    new_api = hasattr(matmul, "fp32_precision")
    saved = matmul.fp32_precision if new_api else matmul.allow_tf32

    def set_precision(precision):
        if new_api:
            matmul.fp32_precision = precision
        else:
            matmul.allow_tf32 = precision == "tf32"

    yield set_precision
    if new_api:
        matmul.fp32_precision = saved
    else:
        matmul.allow_tf32 = saved


def test_ssd_matmuls_follow_torchs_fp32_matmul_precision(fp32_matmul_precision):
    # tf32 tensor cores only where torch allows them for fp32 matmuls; exact fp32 by default
    from xscan.triton_kernels import ssd
    assert ssd.dot_precision(torch.float32) == "ieee"
    fp32_matmul_precision("ieee")
    assert ssd.dot_precision(torch.float32) == "ieee" and ssd.dot_precision(torch.bfloat16) == "ieee"
    fp32_matmul_precision("tf32")
    assert ssd.dot_precision(torch.float32) == "tf32" and ssd.dot_precision(torch.float16) == "tf32"
    assert ssd.dot_precision(torch.float64) == "ieee"


def test_limits_reject_routes_beyond_32_bit_positions():
    # the kernels locate positions in 32 bits: 2^31 - 1 positions pass, 2^31 are refused
    from xscan.triton_kernels import executor
    executor.limits(long_line_spec(2**31 - 1))
    with pytest.raises(ValueError, match=r"2147483648 exceeds 2\^31 - 1"):
        executor.limits(long_line_spec(2**31))


# ---- GPU cases: production tiles, larger shapes, half precision ----------------------------------
GPU_DTYPES = [torch.float32, torch.float16, torch.bfloat16]
GPU_CASES = [
    ("selective_scan", dict(Bt=2, Dm=64, N=16, L=300)),
    ("selective_scan", dict(Bt=2, Dm=48, N=16, L=130, G=4)),
    ("selective_scan", dict(Bt=1, Dm=32, N=1, L=257)),
    ("ss2d", dict(Bt=2, Dm=24, N=12, H=13, W=11)),
    ("es2d", dict(Bt=2, Dm=24, N=16, H=15, W=14)),
    ("cross_ss2d", dict(Bt=1, Dm=24, N=18, H=9, W=10)),
    ("interleave_ss2d", dict(Bt=1, Dm=16, N=16, H=8, W=7, mode="column", axis="width")),
    ("ssd_exchange", dict(Bt=2, L=200, nh=4, P=32, N=16, G=2)),
]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES, ids=str)
@pytest.mark.parametrize("op,shape", GPU_CASES, ids=[f"{op}-{i}" for i, (op, _) in enumerate(GPU_CASES)])
def test_gpu(op, shape, dtype):
    check(op, device="cuda", dtype=dtype, chunk=None, block_d=None, **shape)


def test_kernels_compile_for_gpu():
    """Every kernel variant the ops launch compiles to a cubin for sm_90 (runs without a GPU: the
    interpreter does not check what the compiler does)."""
    import os
    import subprocess
    import sys
    env = dict(os.environ, TRITON_INTERPRET="0")
    done = subprocess.run([sys.executable, "-m", "xscan.triton_kernels.compile_check", "--dtypes", "float32"],
                          env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "compiled" in done.stdout


def test_autotuned_kernels_pin_their_configuration_where_autotuning_is_wrong(monkeypatch):
    """Deterministic mode and CUDA-graph capture launch the kernel itself at the pinned warp count;
    elsewhere the autotuner chooses. (Dispatch only: the interpreter has no warps to tune.)"""
    from xscan.triton_kernels import tiles

    launches = []

    class Kernel:
        arg_names = ["N", "x"]

        def __init__(self, name):
            self.name = self.__name__ = name

        def __getitem__(self, grid):
            return lambda *args, **kwargs: launches.append((self.name, grid, args, kwargs))

    monkeypatch.setattr(tiles.triton, "autotune", lambda configs, key: (lambda kernel: Kernel("tuned")))
    kernel = tiles._Autotuned(Kernel("pinned"), key=["N"])
    kernel[(3,)](1, x=2)
    assert launches.pop() == ("tuned", (3,), (1,), {"x": 2})
    with deterministic():
        kernel[(3,)](1, x=2)
    assert launches.pop() == ("pinned", (3,), (1,), {"x": 2, "num_warps": tiles.PINNED_WARPS})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    kernel[(4,)](5)
    assert launches.pop() == ("pinned", (4,), (5,), {"num_warps": tiles.PINNED_WARPS})


def test_a_tile_over_the_gpus_resources_is_refused_clearly(monkeypatch):
    """Triton's OutOfResources at launch (a tile over this GPU's shared memory) becomes a ValueError
    naming the kernel, its tiles, what it needs and what the GPU allows."""
    from triton.runtime.errors import OutOfResources

    from xscan.triton_kernels import tiles

    class Kernel:
        __name__ = "ssd_backward"
        arg_names = ["x", "BLOCK_P", "BLOCK_N"]

        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                raise OutOfResources(204928, 166912, "shared memory")
            return launch

    monkeypatch.setattr(tiles.triton, "autotune", lambda configs, key: (lambda kernel: Kernel()))
    with pytest.raises(ValueError, match=r"ssd_backward.*BLOCK_P.: 128.*204928 bytes of shared memory.*166912"):
        tiles._Autotuned(Kernel(), key=[])[(1,)](x=1, BLOCK_P=128, BLOCK_N=128)


def test_reverse_scan_at_the_backwards_tile_shapes():
    """scan.reverse_recurrence (the backward's reverse scan: a forward scan over flipped tiles, not
    associative_scan(reverse=True)) against a sequential fold, at every backward tile shape."""
    if not INTERPRETER and not CUDA:
        pytest.skip("needs the Triton interpreter or a CUDA device")
    from xscan.triton_kernels import scan
    device = "cuda" if CUDA else "cpu"
    g = torch.Generator().manual_seed(0)
    for R, T, N in tiles.backward_scan_shapes():
        a, b = torch.rand(R, T, N, generator=g) + 0.5, torch.randn(R, T, N, generator=g)
        ref, x = torch.empty(R, T, N), torch.ones(R, N)
        for i in range(T - 1, -1, -1):
            x = ref[:, i] = a[:, i] * x + b[:, i]
        for warps in tiles.WARPS:
            out = torch.empty(R, T, N, device=device)
            scan.reverse_recurrence_tile[(1,)](a.to(device), b.to(device), out, R=R, T=T, N=N, num_warps=warps)
            torch.testing.assert_close(out.cpu(), ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())


def test_grid_limits_are_checked_before_launch():
    # chunks beyond grid z (y for SSD) go in several launches; any other dimension over its limit is refused
    from xscan.triton_kernels.selective import ScanProblem
    problem = ScanProblem(long_line_spec(5_000_000))
    problem._plan(backward=False)
    launches = problem._launches("scan_forward")
    assert problem.n_chunks == 78_125 and [first for _, first in launches] == [0, 65_535]
    assert [grid for grid, _ in launches] == [(1, 1, 65_535), (1, 1, 12_590)]
    counts = ("batch x routes", "blocks of 4 channels", "chunks")
    assert tiles.grid_launches("k", (2**31 - 1, 65_535, 65_535), counts, split=2) == [((2**31 - 1, 65_535, 65_535), 0)]
    with pytest.raises(ValueError, match=r"scan_forward would launch 65,536 programs along grid y \(blocks of 4 chan"):
        tiles.grid_launches("scan_forward", (1, 65_536, 1), counts, split=2)
    with pytest.raises(ValueError, match=r"2,147,483,648 programs along grid x \(batch x routes\)"):
        tiles.grid_launches("scan_forward", (2**31, 1, 1), counts, split=2)
    with pytest.raises(ValueError, match=r"grid z \(chunks\)"):
        tiles.grid_launches("chunk_carry", (1, 1, 65_536), counts)


def test_chunks_split_over_several_launches(monkeypatch):
    # grid limits of 2 programs along y and z: every launch of more than 2 chunks is split
    monkeypatch.setattr(tiles, "GRID_LIMITS", (2**31 - 1, 2, 2))
    check("selective_scan", Bt=1, Dm=2, N=2, L=19)  # 5 chunks of 4
    check("ssd_exchange", Bt=1, L=37, nh=1, P=2, N=3)  # 3 chunks of 16


def test_autotuning_keys_on_size_buckets_and_can_be_pinned(monkeypatch):
    """One autotuner per bucket of sizes (powers of 2); a warp count pinned by pin_warps or
    XSCAN_TRITON_WARPS launches the kernel itself; under graph capture the warp count chosen before
    for the same key. (Dispatch only: the interpreter has no warps to tune.)"""
    launches, tuners = [], []

    class Kernel:
        arg_names = ["L", "x", "BLOCK"]
        __name__ = "scan_forward"

        def __getitem__(self, grid):
            return lambda *args, **kwargs: launches.append(kwargs.get("num_warps", "tuned"))

    class Tuner(Kernel):
        best_config = type("Config", (), {"num_warps": 8})

    monkeypatch.setattr(tiles.triton, "autotune", lambda configs, key: (lambda kernel: tuners.append(Tuner())
                                                                        or tuners[-1]))
    monkeypatch.delenv(tiles.WARPS_VARIABLE, raising=False)
    kernel = tiles._Autotuned(Kernel(), key=["BLOCK"], sizes=["L"])
    for L in (100, 128, 129):
        kernel[(1,)](L, x=0, BLOCK=16)
    assert launches == ["tuned"] * 3 and len(tuners) == 2  # buckets 128 and 256
    assert sorted(kernel.chosen.values()) == [8, 8]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    kernel[(1,)](120, x=0, BLOCK=16)  # tuned before for bucket 128: its choice
    kernel[(1,)](120, x=0, BLOCK=32)  # never tuned: PINNED_WARPS
    assert launches[3:] == [8, tiles.PINNED_WARPS]
    monkeypatch.setenv(tiles.WARPS_VARIABLE, "scan_forward=2,ssd_forward=8")
    kernel[(1,)](120, x=0, BLOCK=16)
    tiles.pin_warps(16)  # the function wins over the variable
    try:
        kernel[(1,)](120, x=0, BLOCK=16)
    finally:
        tiles.pin_warps(None)
    assert launches[5:] == [2, 16]
    monkeypatch.setenv(tiles.WARPS_VARIABLE, "many")
    with pytest.raises(ValueError, match="XSCAN_TRITON_WARPS='many'"):
        kernel[(1,)](120, x=0, BLOCK=16)



if REASON is True:
    import triton
    import triton.language as tl

    from xscan.triton_kernels.routes import route_tokens

    @triton.jit
    def _route_tokens_probe(out, k, H, W, ROUTE: tl.constexpr):
        """Route k's first 64 positions -> out (4, 64): token, modality, h, w."""
        p = tl.arange(0, 64)
        tok, mt, h, w = route_tokens(p, k, H, W, ROUTE)
        tl.store(out + p, tok)
        tl.store(out + 64 + p, mt)
        tl.store(out + 128 + p, h)
        tl.store(out + 192 + p, w)


def expected_route_tokens(route, k, H, W):
    """(token, modality, h, w) at each position of route k of a kind, from the reference's index maths
    (xscan/routes.py); h, w on the map (ATROUS: padded to even size)."""
    from xscan.routes import ATROUS_ROUTES, MAP_ROUTES, atrous_grid, atrous_route, cross_route

    if route == Route.LINE:
        tok = torch.arange(W)
        return tok, tok * 0, tok * 0, tok
    if route == Route.ATROUS:
        (h0, w0), _ = ATROUS_ROUTES[k]
        tok = atrous_route(k, H, W)
        Wq = atrous_grid(H, W)[1]
        return tok, tok * 0, 2 * (tok // Wq) + h0, 2 * (tok % Wq) + w0
    if route == Route.CROSS_PAIR:
        p = torch.arange(2 * H * W)
        tok = cross_route(k, H, W)[p // 2]
        return tok, p % 2, tok // W, tok % W
    # every other kind is over the map in ss2d's layout
    tok = MAP_ROUTES[ROUTE_KINDS[route].ss2d_name][1](k, H, W)
    return tok, tok * 0, tok // W, tok % W


@pytest.mark.parametrize("route", [r for r, kind in ROUTE_KINDS.items() if not kind.scalar_decay],
                         ids=lambda r: r.name)
def test_route_tokens_agree_with_the_reference_index_maths(route):
    """Every route kind the Mamba-1 kernels run (xscan.spec.ROUTE_KINDS), on maps of every size 1 to
    odd and even ones, every route."""
    if not INTERPRETER:
        pytest.skip("the Triton interpreter is not active (TRITON_INTERPRET=1 with no CUDA device)")
    kind = ROUTE_KINDS[route]
    maps = [(1, 1), (1, 5), (2, 3), (3, 2), (4, 4), (5, 3)] if len(kind.sizes) == 2 else [(1, 1), (1, 9)]
    for H, W in maps:
        for k in range(kind.routes(*((H, W) if len(kind.sizes) == 2 else (W,)))):
            out = torch.full((4, 64), -1, dtype=torch.int64)
            _route_tokens_probe[(1,)](out, k, H, W, route.value)
            expected = expected_route_tokens(route, k, H, W)
            n = expected[0].numel()
            assert torch.equal(out[:, :n], torch.stack(expected)), (H, W, k)


def test_route_tokens_refuse_a_route_kind_they_do_not_know():
    # every route kind has its own branch; another (HEADS runs the SSD kernels) is an error, not the
    # cross routes' maths
    if not INTERPRETER:
        pytest.skip("the Triton interpreter is not active (TRITON_INTERPRET=1 with no CUDA device)")
    out = torch.zeros(4, 64, dtype=torch.int64)
    _route_tokens_probe[(1,)](out, 1, 2, 2, Route.CROSS.value)  # the columns of a 2 x 2 map
    assert out[0, :4].tolist() == [0, 2, 1, 3]
    with pytest.raises(Exception, match="a route kind it does not know"):
        _route_tokens_probe[(1,)](out, 1, 2, 2, Route.HEADS.value)
