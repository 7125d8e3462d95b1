"""Host side of the chunked Mamba-1 scan (``scan.py``): one ``ScanProblem`` describes where every
operand of a routed scan lies; ``forward`` and ``backward`` launch the three passes and reduce the
partials."""
from __future__ import annotations

import math
from typing import Optional

import torch
import triton

from ..spec import ScanSpec
from . import scan
from .tiles import Tiles, acc_dtype, autotuned, carry_launch, grid_launches, scan_tiles

# what the best warp count depends on (each kernel keys on those it takes; the autotuner adds the dtypes):
# the tiles, and the route length and channels in powers of 2
_KEY = ["ROUTE", "SOURCE", "FLAGS", "BACKWARD", "BLOCK_D", "BLOCK_N", "TAIL_N", "CHUNK"]
_SIZES = ["Lseq", "Dr"]
_summary = autotuned(_KEY, _SIZES)(scan.chunk_summary)
_forward = autotuned(_KEY, _SIZES)(scan.scan_forward)
_backward = autotuned(_KEY, _SIZES)(scan.scan_backward)
BACKWARD_SUB = 8  # channel blocks per backward program


class ScanProblem:
    """A ScanSpec's routed scans as the Mamba-1 kernels take them: sequences (b, k), Dr scanned
    channels, d_state N, Lseq route positions over a scanned H x W map, Ltok tokens per modality.

    Operands are the spec's views, read through their strides: u and z (b, c, h, w) maps (u on the
    input maps, ``map_channels`` channels of width ``map_width`` each); dt (b, k, d, token); B, C
    (b, k, group, n, token); A (k, d, n); D, delta_bias (k, d). b_group, c_group, bc_group: channels
    per B group, per C group, per BC group (the channels that share a B and a C group: divides both)."""

    def __init__(self, spec: ScanSpec):
        self.spec = spec
        self.route, self.source = int(spec.route), int(spec.source)
        self.two_tok = spec.token_modalities() == 2  # dt1, B1, C1 are read (positions of modality 1)
        self.two_u = spec.view("u", spec.modalities - 1) is not spec.view("u", 0)  # u1 is read
        self.Bt, self.K, self.Dr, self.Ltok, self.N = spec.batch, spec.routes, spec.channels, spec.tokens, spec.dstate
        self.H, self.W = spec.scanned_map()
        self.Lseq = spec.length()
        u = spec.view("u", 0)
        self.map_channels, self.map_width = u.shape[1], u.shape[3]
        pair = lambda role: (spec.view(role, 0), spec.view(role, spec.modalities - 1))  # noqa: E731
        self.u, self.dt, self.B, self.C = pair("u"), pair("dt"), pair("B"), pair("C")
        self.A, self.D, self.bias, self.z = spec.view("A"), spec.view("D"), spec.view("delta_bias"), spec.view("z")
        self.softplus = spec.softplus
        self.b_group, self.c_group = self.Dr // self.B[0].shape[2], self.Dr // self.C[0].shape[2]
        self.bc_group = math.gcd(self.b_group, self.c_group)
        self.acc, self.acc_torch = acc_dtype(u.dtype)
        self.device = u.device

    def _plan(self, backward: bool):
        """Tiles (the backward holds more per-step tiles: smaller ones) and chunks. The backward's
        programs loop over up to BACKWARD_SUB channel blocks, so that few partial dB/dC remain."""
        self.tiles: Tiles = scan_tiles(self.N, backward)
        self.n_chunks = max(1, triton.cdiv(self.Lseq, self.tiles.chunk))
        self.sub = min(BACKWARD_SUB, triton.cdiv(self.bc_group, self.tiles.block_d)) if backward else 1

    def _blocks(self, sub: int = 1):
        """(blocks per BC group, blocks) for programs of sub * block_d channels."""
        per_bc_group = triton.cdiv(self.bc_group, self.tiles.block_d * sub)
        return per_bc_group, (self.Dr // self.bc_group) * per_bc_group

    # ---- launch helpers -------------------------------------------------------------------------
    def _common(self, sub: int = 1) -> dict:
        """The arguments every scan kernel takes (scan.py): the inputs as tuples (a pair: both
        modalities' tensors and strides; a single: a tensor and its strides; a placeholder where
        absent), the sizes, the image sizes, the route, the flags and the tiles."""
        t = self.tiles
        placeholder = self.u[0]

        def pair(views):
            return views[0], views[1], views[0].stride(), views[1].stride()

        def single(x, rank):
            return (placeholder, (0,) * rank) if x is None else (x, x.stride())

        ins = (pair(self.u), single(self.z, 4), pair(self.dt), pair(self.B), pair(self.C), single(self.A, 3),
               single(self.D, 2), single(self.bias, 2))
        return dict(
            ins=ins, Dr=self.Dr, sizes=(self.K, self.N, self.map_channels, self.b_group, self.c_group),
            Lseq=self.Lseq, H=self.H, W=self.W, Ws=self.map_width, BC_GROUP=self.bc_group,
            BLOCKS_PER_BC_GROUP=self._blocks(sub)[0], n_chunks=self.n_chunks,
            ROUTE=self.route, SOURCE=self.source,
            FLAGS=(self.two_u, self.two_tok, self.D is not None, self.z is not None, self.bias is not None,
                   bool(self.softplus)),
            BLOCK_D=t.block_d, BLOCK_N=t.block_n, TAIL_N=t.tail_n, CHUNK=t.chunk, ACC=self.acc)

    def _launches(self, kernel: str, sub: int = 1) -> list:
        """[(grid, first chunk)]: programs (sequence, channel block, chunk), the chunks in launches of
        at most 65,535 (grid z)."""
        return grid_launches(kernel, (self.Bt * self.K, self._blocks(sub)[1], self.n_chunks),
                             ("batch x routes", f"blocks of {self.tiles.block_d * sub} channels", "chunks"), split=2)

    def _chunk_buffers(self, backward: bool):
        rows = self.Bt * self.K * self.Dr
        new = lambda *s: torch.empty(*s, device=self.device, dtype=self.acc_torch)  # noqa: E731
        states = new(rows, self.n_chunks, self.N)
        adjoints = new(rows, self.n_chunks, self.N) if backward else states
        return states, adjoints, new(rows, self.n_chunks)

    def _carry(self, io, dt_sums, reverse: bool, last=None, init=None):
        """Pass 2 over chunk buffers (Bt*K*Dr, n_chunks, N) in place; the final carry into ``last``,
        or the carry starting from ``init`` (both (Bt*K, Dr, N), contiguous)."""
        s_io = (self.Dr * self.n_chunks * self.N, self.n_chunks * self.N, self.N, 1)
        s_sum = (self.Dr * self.n_chunks, self.n_chunks, 1)
        grid, rows, warps, block_n = carry_launch(self.Bt * self.K, self.Dr, self.N)
        grid_launches("chunk_carry", grid, ("batch x routes", f"blocks of {rows} channels"))
        scan.chunk_carry[grid](
            io, dt_sums, self.A, s_io, s_sum, self.A.stride(), next((t for t in (last, init) if t is not None), io),
            (self.Dr * self.N, self.N, 1), self.K, self.Dr, self.N, self.n_chunks,
            REVERSE=reverse, HAS_LAST=last is not None, HAS_INIT=init is not None, BLOCK_R=rows,
            BLOCK_N=block_n, num_warps=warps)

    def _states(self, gy=None, g_last=None):
        """Passes 1 and 2: start state of every chunk, the last states (Bt*K, Dr, N), and with gy the
        adjoint entering every chunk from its successors (starting from g_last, the gradient of the
        last states, if given)."""
        states, adjoints, dt_sums = self._chunk_buffers(gy is not None)
        args = self._common()
        gy = gy or ((self.u[0], (0, 0, 0, 0)),) * 2
        for grid, first in self._launches("chunk_summary"):
            _summary[grid](**args, gy=_pair_of(gy), states=states, adjoints=adjoints, dt_sums=dt_sums,
                           first_chunk=first, BACKWARD=adjoints is not states)
        last = torch.empty(self.Bt * self.K, self.Dr, self.N, device=self.device, dtype=self.acc_torch)
        self._carry(states, dt_sums, reverse=False, last=last)
        if adjoints is not states:
            self._carry(adjoints, dt_sums, reverse=True, init=g_last)
        return states, adjoints, last

    # ---- public -----------------------------------------------------------------------------------
    def forward(self, y: torch.Tensor, s_y: tuple, s_yk: int = 0, s_ym: int = 0) -> torch.Tensor:
        """Write the outputs into y at (k * s_yk + mt * s_ym + (b, d, h, w) . s_y); returns the last
        states (Bt*K, Dr, N) in the accumulation dtype."""
        self._plan(backward=False)
        states, _, last = self._states()
        for grid, first in self._launches("scan_forward"):
            _forward[grid](**self._common(), y=(y, s_y, s_yk, s_ym), states=states, first_chunk=first)
        return last

    def backward(self, gy: tuple, g_u: torch.Tensor, s_gu: tuple, s_guk: int, s_gum: int,
                 g_z: Optional[torch.Tensor] = None, s_gz: tuple = (0, 0, 0, 0),
                 g_last: Optional[torch.Tensor] = None) -> dict:
        """gy: ((tensor, (b, d, h, w) strides) per output modality). u's gradient goes into g_u at
        k * s_guk + m * s_gum + (b, c, h, w) . s_gu; g_last: gradient of the last states
        (Bt*K, Dr, N), contiguous, in the accumulation dtype. Returns the other gradients:
        dt (M, Bt, K, Dr, Ltok) in dt's dtype; B, C per program's channel block (blocks, M, Bt, K, N,
        Ltok); A (K, Dr, N); D, delta_bias (K, Dr) (None where absent); accumulation dtype unless said."""
        self._plan(backward=True)
        states, adjoints, _ = self._states(gy, g_last)
        M = 2 if self.two_tok else 1
        new = lambda *s, dtype=self.acc_torch: torch.empty(*s, device=self.device, dtype=dtype)  # noqa: E731
        g_dt = new(M, self.Bt, self.K, self.Dr, self.Ltok, dtype=self.dt[0].dtype)
        n_blocks = self._blocks(self.sub)[1]
        g_B = new(n_blocks, M, self.Bt, self.K, self.N, self.Ltok)
        g_C = new(n_blocks, M, self.Bt, self.K, self.N, self.Ltok)
        parts = self.Bt * self.n_chunks * self.K
        g_A = new(parts, self.Dr, self.N)
        g_D = new(parts, self.Dr) if self.D is not None else None
        g_bias = new(parts, self.Dr) if self.bias is not None else None
        placeholder = g_A
        grads = ((g_u, s_gu, s_guk, s_gum), (placeholder if g_z is None else g_z, s_gz),
                 (g_dt, g_dt.stride()[1:], g_dt.stride(0)), (g_B, g_C, g_B.stride()),
                 (g_A, placeholder if g_D is None else g_D, placeholder if g_bias is None else g_bias))
        for grid, first in self._launches("scan_backward", self.sub):
            _backward[grid](**self._common(self.sub), SUB=self.sub, gy=_pair_of(gy), states=states,
                            adjoints=adjoints, grads=grads, first_chunk=first)
        shape = (self.Bt * self.n_chunks, self.K, self.Dr)
        return dict(
            dt=g_dt, B=g_B, C=g_C, A=g_A.view(*shape, self.N).sum(0),
            D=None if g_D is None else g_D.view(shape).sum(0),
            bias=None if g_bias is None else g_bias.view(shape).sum(0))


def _pair_of(gy: tuple) -> tuple:
    """((tensor, strides) per output modality) -> the kernels' pair (gy0, gy1, s_gy0, s_gy1)."""
    return gy[0][0], gy[1][0], gy[0][1], gy[1][1]
