"""Tile sizes and launch settings, chosen from (d_state, dtype) only: never from L, H or W, so a new
image size reuses the compiled kernels. ``override`` pins them (tests use small chunks so that short
sequences still cross several chunk boundaries)."""
from __future__ import annotations

import contextlib
import functools
import os
from dataclasses import dataclass
from typing import Optional

import torch
import triton
import triton.language as tl
from triton.runtime.errors import OutOfResources

from . import interpreting

MAX_D_STATE = 256  # the Mamba-1 kernels' largest d_state
# Elements of one (channels x chunk x d_state) register tile: 4096 fp32 = 32 per thread at 4 warps.
TILE_ELEMENTS = 4096
_pinned: dict = {}


@dataclass(frozen=True)
class Tiles:
    chunk: int    # time steps per chunk (a power of 2)
    block_d: int  # channels (Mamba-1) per program
    block_n: int  # the first tile of states: the largest power of 2 <= d_state
    tail_n: int   # a second tile for the states after it, padded to a power of 2 (0: none)


def acc_dtype(dtype: torch.dtype):
    """fp32 accumulation; fp64 inputs (gradcheck) stay fp64."""
    return (tl.float64, torch.float64) if dtype == torch.float64 else (tl.float32, torch.float32)


def state_tiles(N: int) -> tuple:
    """(head, tail): d_state N in two tiles of powers of 2, the largest power of 2 <= N and the
    rest padded (0 if none), instead of one tile padded to the next power of 2: N = 18 runs as
    16 + 2 state lanes, not 32 (benchmarks/RESULTS.md, Triton)."""
    head = 1 << (N.bit_length() - 1)
    return head, triton.next_power_of_2(N - head) if N > head else 0


def scan_tiles(N: int, backward: bool = False) -> Tiles:
    """Mamba-1 tiles for d_state N. The kernels work on one state tile at a time, so the head tile
    sets the chunk and channels. The backward keeps several times as many tiles live (state,
    adjoint, their inputs, one step behind), so its tiles are an eighth of the forward's: at a
    quarter (2,048 elements) scan_backward spilled 12-2,280 bytes per thread at the networks'
    shapes (benchmarks/gpu_static.py, sm_90), at 512 nothing; a tail tile adds to the 512 (N = 18:
    152 bytes at 4 warps, 16 at 8) for half the programs of a chunk sized by all 18 states."""
    block_n, tail_n = state_tiles(N)
    chunk = _pinned.get("chunk") or (64 if block_n <= 16 else 32 if block_n <= 64 else 16)
    budget = TILE_ELEMENTS // 8 if backward else TILE_ELEMENTS
    if backward and "chunk" not in _pinned:
        chunk = max(16, min(chunk, budget // block_n))
    block_d = _pinned.get("block_d") or max(1, budget // (chunk * block_n))
    return Tiles(chunk, block_d, block_n, tail_n)


def backward_scan_shapes() -> list:
    """Every (channels, chunk, states) tile scan_backward runs its reverse scan at (head and tail
    tiles, d_state 1 to MAX_D_STATE): what the GPU kit's smoke check and compile_check run
    scan.reverse_recurrence_tile at."""
    tiles = [scan_tiles(N, backward=True) for N in range(1, MAX_D_STATE + 1)]
    return sorted({(t.block_d, t.chunk, n) for t in tiles for n in (t.block_n, t.tail_n) if n},
                  key=lambda shape: (shape[2], shape[1]))


# The sequential pass over chunks (scan.chunk_carry) is latency-bound: what makes it fast is many
# programs walking their chunks at once, not wide ones.
CARRY_PROGRAMS = 264  # twice the SMs of an H100
CARRY_MAX_ROWS = 16


def carry_launch(sequences: int, rows: int, N: int) -> tuple:
    """(grid, rows per program, warps, state lanes) of scan.chunk_carry over sequences x rows
    carries of N states: the widest program that still gives CARRY_PROGRAMS programs, down to one
    row each. One tile of N states padded to a power of 2: the pass is latency-bound, not lanes."""
    block_n = triton.next_power_of_2(N)
    per = CARRY_MAX_ROWS
    while per > 1 and sequences * triton.cdiv(rows, per) < CARRY_PROGRAMS:
        per //= 2
    warps = max(1, min(4, per * block_n // 32))
    return (sequences, triton.cdiv(rows, per)), per, warps, block_n


def ssd_chunk(backward: bool = False) -> int:
    """Time steps per SSD chunk (the intra-chunk matmuls are chunk x chunk; >= 16 for tl.dot). The
    backward holds six chunk x chunk tiles: shorter chunks."""
    return max(16, _pinned.get("chunk") or (32 if backward else 64))


@contextlib.contextmanager
def override(chunk: Optional[int] = None, block_d: Optional[int] = None):
    """Pin the chunk length and channel block inside the block (powers of 2)."""
    previous = dict(_pinned)
    _pinned.update({k: v for k, v in (("chunk", chunk), ("block_d", block_d)) if v is not None})
    try:
        yield
    finally:
        _pinned.clear()
        _pinned.update(previous)


WARPS = (4, 8)  # the autotuned configurations (compile_check: fewer warps spill the backward's registers)
PINNED_WARPS = WARPS[0]  # the configuration launched without autotuning (see _Autotuned)
WARPS_VARIABLE = "XSCAN_TRITON_WARPS"
_pinned_warps: dict = {}


def pin_warps(warps=None) -> None:
    """Launch the autotuned kernels at a fixed warp count instead of timing the configurations: an
    int for every kernel, {kernel name: warps} for some (e.g. what ``tuned_warps()`` reports), None
    to autotune again. Takes precedence over the environment variable XSCAN_TRITON_WARPS ("8", or
    "scan_backward=8,ssd_forward=4")."""
    _pinned_warps.clear()
    if warps is not None:
        _pinned_warps.update(warps if isinstance(warps, dict) else {"*": warps})


def _pin(kernel: str) -> Optional[int]:
    """The warp count pinned for kernel (pin_warps, else XSCAN_TRITON_WARPS), or None."""
    pins = _pinned_warps
    if not pins and os.environ.get(WARPS_VARIABLE):
        text = os.environ[WARPS_VARIABLE]
        try:
            pins = {"*": int(text)} if "=" not in text else \
                {name.strip(): int(w) for name, w in (item.split("=") for item in text.split(","))}
        except ValueError:
            raise ValueError(f"{WARPS_VARIABLE}={text!r}: expected a warp count (8) or kernel=warps pairs "
                             "(scan_backward=8,ssd_forward=4)") from None
    warps = pins.get(kernel, pins.get("*"))
    if warps is not None and warps not in (1, 2, 4, 8, 16, 32):
        raise ValueError(f"xscan (triton backend): {warps} warps pinned for {kernel}; a power of 2 up to 32")
    return warps


def size_bucket(size: int) -> int:
    """The power of 2 at or above size: the autotuner keys on these, not on every size."""
    return triton.next_power_of_2(max(1, int(size)))


def _tensors(values):
    """The tensors among kernel arguments, those inside tuples too."""
    for v in values:
        if isinstance(v, torch.Tensor):
            yield v
        elif isinstance(v, tuple):
            yield from _tensors(v)


class _Autotuned:
    """A kernel launched through Triton's autotuner, once per bucket of sizes (powers of 2 of the
    size arguments ``sizes``: the best warp count of a short sequence need not be that of a long
    one) and per value of the tile constexprs ``key`` and dtypes; except where autotuning is wrong
    or unwanted:
    - a warp count pinned by the user (pin_warps, XSCAN_TRITON_WARPS);
    - deterministic mode (``torch.use_deterministic_algorithms(True)``): the autotuner picks its
      configuration by timing, which may differ between processes and with it the reduction order;
      PINNED_WARPS gives the same bits in every process;
    - inside CUDA-graph capture: autotuning launches and times the kernel, which capture forbids; the
      warp count the autotuner chose for the same key before the capture (running the op once first
      pre-tunes it), else PINNED_WARPS, launches once, as the graph expects."""

    def __init__(self, kernel, key, sizes=()):
        self.kernel = kernel
        self.key = [name for name in key if name in kernel.arg_names]  # the names this kernel takes
        self.sizes = [name for name in sizes if name in kernel.arg_names]
        self.tuners = {}  # size bucket -> Triton autotuner
        self.chosen = {}  # (size bucket, key values, dtypes) -> warps the autotuner picked

    def _tuning_key(self, args, kwargs) -> tuple:
        named = dict(zip(self.kernel.arg_names, args), **kwargs)
        dtypes = tuple(str(t.dtype) for t in _tensors(named.values()))
        return (tuple(size_bucket(named[name]) for name in self.sizes),
                tuple(str(named.get(name)) for name in self.key), dtypes)

    def __getitem__(self, grid):
        return functools.partial(self._launch, grid)

    def _launch(self, grid, *args, **kwargs):
        name = self.kernel.__name__
        key = self._tuning_key(args, kwargs)
        warps = _pin(name)
        capturing = torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()
        if warps is None and torch.are_deterministic_algorithms_enabled():
            warps = PINNED_WARPS
        elif warps is None and capturing:
            warps = self.chosen.get(key, PINNED_WARPS)
        if warps is not None:
            return self._refusing_oversized(self.kernel[grid], *args, **kwargs, num_warps=warps)
        if key[0] not in self.tuners:
            configs = [triton.Config({}, num_warps=w) for w in WARPS]
            self.tuners[key[0]] = triton.autotune(configs=configs, key=self.key)(self.kernel)
        tuner = self.tuners[key[0]]
        result = self._refusing_oversized(tuner[grid], *args, **kwargs)
        best = getattr(tuner, "best_config", None)
        if best is not None:
            self.chosen[key] = best.num_warps
        return result

    def _refusing_oversized(self, launch, *args, **kwargs):
        """A clear error where a tile needs more of a GPU resource than this GPU has (the largest SSD
        tiles, P = N = 128, need ~205 KB of shared memory in the backward: over an A100's 163 KB)."""
        try:
            return launch(*args, **kwargs)
        except OutOfResources as e:
            tiles = {k: v for k, v in kwargs.items() if k.isupper()}
            raise ValueError(f"xscan (triton backend): kernel {self.kernel.__name__} with tiles {tiles} needs "
                             f"{e.required} bytes of {e.name}, this GPU allows {e.limit}; use a smaller d_state or "
                             f"head dim, or another backend (xscan.use_backend)") from e


_autotuned: list = []


def autotuned(key, sizes=()):
    """Autotuned over WARPS (_Autotuned), keyed on the tile constexprs ``key``, the size arguments
    ``sizes`` in powers of 2, and the dtypes. The interpreter has no warps: kernels run as they are
    there."""
    def wrap(kernel):
        if interpreting():
            return kernel
        _autotuned.append(_Autotuned(kernel, key, sizes))
        return _autotuned[-1]
    return wrap


def tuned_warps() -> dict:
    """{kernel name: {(size buckets, tile constexprs, dtypes): warps}}: what the autotuner picked in
    this process so far (to pin with pin_warps, or to compare)."""
    return {k.kernel.__name__: dict(k.chosen) for k in _autotuned}


GRID_LIMITS = (2**31 - 1, 65535, 65535)  # CUDA's grid x, y, z


def grid_launches(kernel: str, grid: tuple, counts: tuple, split: Optional[int] = None) -> list:
    """[(grid, first)]: launches that cover ``grid`` within CUDA's grid limits, checked before any
    launch. Dimension ``split`` (the chunks: the kernel adds ``first`` to its program id there) goes
    in slices of at most its limit; any other dimension over its limit is a ValueError naming what
    it counts (``counts``, one phrase per dimension)."""
    for axis, (size, limit, what) in enumerate(zip(grid, GRID_LIMITS, counts)):
        if size > limit and axis != split:
            raise ValueError(f"xscan (triton backend): {kernel} would launch {size:,} programs along grid "
                             f"{'xyz'[axis]} ({what}); CUDA allows {limit:,}. Split the batch or the channels "
                             f"into several calls, or use another backend (xscan.use_backend)")
    if split is None:
        return [(tuple(grid), 0)]
    step = GRID_LIMITS[split]
    return [(tuple(grid[:split]) + (min(step, grid[split] - first),) + tuple(grid[split + 1:]), first)
            for first in range(0, grid[split], step)]
