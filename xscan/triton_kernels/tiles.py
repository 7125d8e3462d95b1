"""Tile sizes and launch settings, chosen from (d_state, dtype) only: never from L, H or W, so a new
image size reuses the compiled kernels. ``override`` pins them (tests use small chunks so that short
sequences still cross several chunk boundaries)."""
from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from typing import Optional

import torch
import triton
import triton.language as tl
from triton.runtime.errors import OutOfResources

from . import interpreting

# Elements of one (channels x chunk x d_state) register tile: 4096 fp32 = 32 per thread at 4 warps.
TILE_ELEMENTS = 4096
_pinned: dict = {}


@dataclass(frozen=True)
class Tiles:
    chunk: int    # time steps per chunk (a power of 2)
    block_d: int  # channels (Mamba-1) per program
    block_n: int  # d_state, padded to a power of 2


def acc_dtype(dtype: torch.dtype):
    """fp32 accumulation; fp64 inputs (gradcheck) stay fp64."""
    return (tl.float64, torch.float64) if dtype == torch.float64 else (tl.float32, torch.float32)


def scan_tiles(N: int, backward: bool = False) -> Tiles:
    """Mamba-1 tiles for d_state N. The backward keeps several times as many tiles live (state,
    adjoint, their inputs, one step behind), so its tiles are an eighth of the forward's: at a
    quarter (2,048 elements) scan_backward spilled 12-2,280 bytes per thread at the networks'
    shapes (benchmarks/gpu_static.py, sm_90), at 512 nothing."""
    block_n = triton.next_power_of_2(N)
    chunk = _pinned.get("chunk") or (64 if block_n <= 16 else 32 if block_n <= 64 else 16)
    budget = TILE_ELEMENTS // 8 if backward else TILE_ELEMENTS
    if backward and "chunk" not in _pinned:
        chunk = max(16, min(chunk, budget // block_n))
    block_d = _pinned.get("block_d") or max(1, budget // (chunk * block_n))
    return Tiles(chunk, block_d, block_n)


# The sequential pass over chunks (scan.chunk_carry) is latency-bound: what makes it fast is many
# programs walking their chunks at once, not wide ones.
CARRY_PROGRAMS = 264  # twice the SMs of an H100
CARRY_MAX_ROWS = 16


def carry_launch(sequences: int, rows: int, block_n: int) -> tuple:
    """(grid, rows per program, warps) of scan.chunk_carry over sequences x rows carries of block_n
    states: the widest program that still gives CARRY_PROGRAMS programs, down to one row each."""
    per = CARRY_MAX_ROWS
    while per > 1 and sequences * triton.cdiv(rows, per) < CARRY_PROGRAMS:
        per //= 2
    warps = max(1, min(4, per * block_n // 32))
    return (sequences, triton.cdiv(rows, per)), per, warps


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


PINNED_WARPS = 4  # the configuration launched without autotuning (see autotuned)


class _Autotuned:
    """A kernel launched through Triton's autotuner, except where autotuning is wrong:
    - deterministic mode (``torch.use_deterministic_algorithms(True)``): the autotuner picks its
      configuration by timing, which may differ between processes and with it the reduction order;
      the pinned configuration gives the same bits in every process;
    - inside CUDA-graph capture: autotuning launches and times the kernel, which capture forbids; the
      pinned configuration launches once, as the graph expects."""

    def __init__(self, kernel, key):
        self.kernel = kernel
        key = [name for name in key if name in kernel.arg_names]  # the names this kernel takes
        self.tuned = triton.autotune(configs=[triton.Config({}, num_warps=w) for w in (PINNED_WARPS, 8)],
                                     key=key)(kernel)

    def __getitem__(self, grid):
        capturing = torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()
        if torch.are_deterministic_algorithms_enabled() or capturing:
            launch = lambda *args, **kwargs: self.kernel[grid](*args, **kwargs, num_warps=PINNED_WARPS)  # noqa: E731
        else:
            launch = self.tuned[grid]
        return functools.partial(self._refusing_oversized, launch)

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


def autotuned(key):
    """Two warp counts (compile_check: fewer warps spill the backward's registers), keyed on the
    tile constexprs (and, by the autotuner, the dtypes); pinned to one in deterministic mode and
    under graph capture (_Autotuned). The interpreter has no warps: kernels run as they are there."""
    def wrap(kernel):
        return kernel if interpreting() else _Autotuned(kernel, key)
    return wrap
