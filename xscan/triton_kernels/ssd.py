"""ssd_exchange: the chunked Mamba-2 (SSD) scan, both exchange directions in one launch.

Direction 0 scans x0 with dt0 and modality 1's B, C (-> y0); direction 1 scans x1 with dt0's twin
dt1 and modality 0's B, C (-> y1). Per (direction, batch, head) the state is P x N with a scalar
decay exp(dt A). Within a chunk of T steps everything is matmuls (cs = A * cumsum(dt)):

    y = ((C B^T) o Lmat) (dt x) + exp(cs) (C S0^T) + D x,  Lmat[t, s] = exp(cs_t - cs_s) [s <= t]
    chunk end state = exp(cs_end) S0 + (x o w)^T B,        w_s = exp(cs_end - cs_s) dt_s

and the start states S0 pass between chunks with ``scan.chunk_carry`` (a row per channel p). The
backward runs the same structure on the adjoint of the state, dL/dS, in reverse.

The kernels take their operands as tuples: ``ins = (x, dt, B, C, A, D, dt_bias)``, x, dt, B, C
pairs (modality 0's tensor, modality 1's, their strides), A, D, dt_bias singles (tensor, strides; a
placeholder where absent); ``sizes = (G, P, N)``; ``FLAGS = (HAS_D, HAS_BIAS, SOFTPLUS)``. Strides:
x (b, t, head, p); dt (b, t, head); B, C (b, t, group, n).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .scan import chunk_carry, load_pair, sigmoid, softplus
from .tiles import acc_dtype, autotuned, carry_launch, grid_launches, ssd_chunk


@triton.jit
def ssd_program(Bt, nh, L, first_chunk, CHUNK: tl.constexpr):
    """Program ids -> (sequence, direction, b, head, chunk c = first_chunk + program id 1 (launches
    of at most 65,535 chunks), positions t, their mask)."""
    seq = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1).to(tl.int64) + first_chunk
    head = seq % nh
    b = (seq // nh) % Bt
    direction = seq // (nh * Bt)
    t = c * CHUNK + tl.arange(0, CHUNK).to(tl.int64)
    return seq, direction, b, head, c, t, t < L


@triton.jit
def ssd_tiles(ins, direction, b, head, t, tmask, nh, sizes, FLAGS: tl.constexpr, BLOCK_P: tl.constexpr,
              BLOCK_N: tl.constexpr, ACC: tl.constexpr):
    """x (T, BLOCK_P), dt and its pre-softplus value (T,), B and C (T, BLOCK_N) of one direction:
    x, dt of modality `direction`, B, C of the other one. dt = 0 past the end."""
    x, dt, B, C, _, _, bias = ins
    _, _, s_x0, s_x1 = x
    _, _, s_dt0, s_dt1 = dt
    B0, B1, s_B0, s_B1 = B
    C0, C1, s_C0, s_C1 = C
    bias_ptr, s_bias = bias
    G, P, N = sizes
    HAS_BIAS: tl.constexpr = FLAGS[1]
    SOFTPLUS: tl.constexpr = FLAGS[2]
    direction = direction + t * 0  # a vector: masks need tensors on both sides
    p = tl.arange(0, BLOCK_P).to(tl.int64)
    n = tl.arange(0, BLOCK_N).to(tl.int64)
    xmask = tmask[:, None] & (p < P)[None, :]
    x_t = load_pair(x, b * s_x0[0] + t[:, None] * s_x0[1] + head * s_x0[2] + p[None, :] * s_x0[3],
                    b * s_x1[0] + t[:, None] * s_x1[1] + head * s_x1[2] + p[None, :] * s_x1[3],
                    direction[:, None], xmask, True, ACC)
    raw = load_pair(dt, b * s_dt0[0] + t * s_dt0[1] + head * s_dt0[2],
                    b * s_dt1[0] + t * s_dt1[1] + head * s_dt1[2], direction, tmask, True, ACC)
    if HAS_BIAS:
        raw += tl.load(bias_ptr + head * s_bias[0]).to(ACC)
    dt_t = raw
    if SOFTPLUS:
        dt_t = softplus(raw)
    dt_t = tl.where(tmask, dt_t, 0.0)
    g = head // (nh // G)
    nmask = tmask[:, None] & (n < N)[None, :]
    # direction 0 reads modality 1's B and C: the pairs swapped
    Bm = load_pair((B1, B0, s_B1, s_B0), b * s_B1[0] + t[:, None] * s_B1[1] + g * s_B1[2] + n[None, :] * s_B1[3],
                   b * s_B0[0] + t[:, None] * s_B0[1] + g * s_B0[2] + n[None, :] * s_B0[3],
                   direction[:, None], nmask, True, ACC)
    Cm = load_pair((C1, C0, s_C1, s_C0), b * s_C1[0] + t[:, None] * s_C1[1] + g * s_C1[2] + n[None, :] * s_C1[3],
                   b * s_C0[0] + t[:, None] * s_C0[1] + g * s_C0[2] + n[None, :] * s_C0[3],
                   direction[:, None], nmask, True, ACC)
    return x_t, dt_t, raw, Bm, Cm


@triton.jit
def load_gy(gy, direction, b, head, t, tmask, P, BLOCK_P: tl.constexpr, ACC: tl.constexpr):
    """The output gradient (a pair) of one direction: (T, BLOCK_P)."""
    _, _, s_gy0, s_gy1 = gy
    p = tl.arange(0, BLOCK_P).to(tl.int64)
    mask = tmask[:, None] & (p < P)[None, :]
    return load_pair(gy, b * s_gy0[0] + t[:, None] * s_gy0[1] + head * s_gy0[2] + p[None, :] * s_gy0[3],
                     b * s_gy1[0] + t[:, None] * s_gy1[1] + head * s_gy1[2] + p[None, :] * s_gy1[3],
                     (direction + t * 0)[:, None], mask, True, ACC)


@triton.jit
def load_head(single, head, ACC: tl.constexpr):
    """A per-head parameter (tensor, strides) at one head."""
    ptr, s = single
    return tl.load(ptr + head * s[0]).to(ACC)


@triton.jit
def causal_decay(cs, CHUNK: tl.constexpr):
    """Lmat[t, s] = exp(cs_t - cs_s) for s <= t, else 0 (never exponentiating the s > t growth)."""
    i = tl.arange(0, CHUNK)
    causal = i[None, :] <= i[:, None]
    return tl.where(causal, tl.exp(tl.where(causal, cs[:, None] - cs[None, :], 0.0)), 0.0)


@triton.jit
def dot(a, b, DOT: tl.constexpr):
    """a @ b in the accumulation dtype: "tf32" on tensor cores, "ieee" exact (dot_precision)."""
    return tl.dot(a, b, input_precision=DOT)


@triton.jit
def ssd_state_offsets(seq, c, n_chunks, P, N, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr):
    p = tl.arange(0, BLOCK_P).to(tl.int64)
    n = tl.arange(0, BLOCK_N).to(tl.int64)
    return ((seq * P + p[:, None]) * n_chunks + c) * N + n[None, :], (p < P)[:, None] & (n < N)[None, :]


@triton.jit(do_not_specialize=["Bt", "L", "n_chunks", "first_chunk"])  # batch and length: no recompiles
def ssd_summary(ins, gy, states, adjoints, dt_sums, nh, sizes, Bt, L, n_chunks, first_chunk,
                FLAGS: tl.constexpr, BACKWARD: tl.constexpr, CHUNK: tl.constexpr, BLOCK_P: tl.constexpr,
                BLOCK_N: tl.constexpr, ACC: tl.constexpr, DOT: tl.constexpr):
    """Pass 1: the chunk's end state from a zero start, (x o w)^T B; its summed dt; with BACKWARD
    the adjoint it sends to its start state, (gy o exp(cs))^T C."""
    _, _, _, _, A, _, _ = ins
    _, P, N = sizes
    seq, direction, b, head, c, t, tmask = ssd_program(Bt, nh, L, first_chunk, CHUNK)
    x, dt, raw, Bm, Cm = ssd_tiles(ins, direction, b, head, t, tmask, nh, sizes, FLAGS, BLOCK_P, BLOCK_N, ACC)
    a = load_head(A, head, ACC)
    cs = a * tl.cumsum(dt, axis=0)
    total = tl.sum(dt, axis=0)
    w = tl.exp(a * total - cs) * dt
    off, mask = ssd_state_offsets(seq, c, n_chunks, P, N, BLOCK_P, BLOCK_N)
    tl.store(states + off, dot(tl.trans(x * w[:, None]), Bm, DOT), mask=mask)
    tl.store(dt_sums + seq * n_chunks + c, total)
    if BACKWARD:
        gy_t = load_gy(gy, direction, b, head, t, tmask, P, BLOCK_P, ACC)
        tl.store(adjoints + off, dot(tl.trans(gy_t * tl.exp(cs)[:, None]), Cm, DOT), mask=mask)


@triton.jit(do_not_specialize=["Bt", "L", "n_chunks", "first_chunk"])  # batch and length: no recompiles
def ssd_forward(ins, y, states, nh, sizes, Bt, L, n_chunks, first_chunk, FLAGS: tl.constexpr, CHUNK: tl.constexpr,
                BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, ACC: tl.constexpr, DOT: tl.constexpr):
    """Pass 3: y = (y, strides): y[direction, b, t, head, p]."""
    _, _, _, _, A, D, _ = ins
    y_ptr, s_y = y
    _, P, N = sizes
    HAS_D: tl.constexpr = FLAGS[0]
    seq, direction, b, head, c, t, tmask = ssd_program(Bt, nh, L, first_chunk, CHUNK)
    x, dt, raw, Bm, Cm = ssd_tiles(ins, direction, b, head, t, tmask, nh, sizes, FLAGS, BLOCK_P, BLOCK_N, ACC)
    a = load_head(A, head, ACC)
    cs = a * tl.cumsum(dt, axis=0)
    off, mask = ssd_state_offsets(seq, c, n_chunks, P, N, BLOCK_P, BLOCK_N)
    start = tl.load(states + off, mask=mask, other=0.0)
    mixing = dot(Cm, tl.trans(Bm), DOT) * causal_decay(cs, CHUNK)
    out = dot(mixing, x * dt[:, None], DOT) + tl.exp(cs)[:, None] * dot(Cm, tl.trans(start), DOT)
    if HAS_D:
        out += load_head(D, head, ACC) * x
    p = tl.arange(0, BLOCK_P).to(tl.int64)
    y_off = direction * s_y[0] + b * s_y[1] + t[:, None] * s_y[2] + head * s_y[3] + p[None, :] * s_y[4]
    tl.store(y_ptr + y_off, out.to(y_ptr.dtype.element_ty), mask=tmask[:, None] & (p < P)[None, :])


@triton.jit(do_not_specialize=["Bt", "L", "n_chunks", "first_chunk"])  # batch and length: no recompiles
def ssd_backward(ins, gy, states, adjoints, grads, nh, sizes, Bt, L, n_chunks, first_chunk, FLAGS: tl.constexpr,
                 CHUNK: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, ACC: tl.constexpr,
                 DOT: tl.constexpr):
    """Pass 3 of the backward, with S0 the chunk's start state and Gs = dL/d(end state) from the
    chunks after it. grads = ((g_x, s_gx), (g_dt, s_gdt), (g_B, g_C, s_gbc), (g_A, g_D, g_bias)).
    Writes g_x[direction, b, t, head, p], g_dt[direction, b, t, head], per-head g_B, g_C[direction,
    b, t, head, n] (summed over a group's heads on the host) and per-program g_A, g_D,
    g_bias[(direction, b, c), head]."""
    _, _, _, _, A, D, _ = ins
    x_grad, dt_grad, bc_grads, param_grads = grads  # one level at a time: Triton 3.6 unpacks no nesting
    g_x, s_gx = x_grad
    g_dt, s_gdt = dt_grad
    g_B, g_C, s_gbc = bc_grads
    g_A, g_D, g_bias = param_grads
    _, P, N = sizes
    HAS_D: tl.constexpr = FLAGS[0]
    HAS_BIAS: tl.constexpr = FLAGS[1]
    SOFTPLUS: tl.constexpr = FLAGS[2]
    seq, direction, b, head, c, t, tmask = ssd_program(Bt, nh, L, first_chunk, CHUNK)
    x, dt, raw, Bm, Cm = ssd_tiles(ins, direction, b, head, t, tmask, nh, sizes, FLAGS, BLOCK_P, BLOCK_N, ACC)
    p = tl.arange(0, BLOCK_P).to(tl.int64)
    n = tl.arange(0, BLOCK_N).to(tl.int64)
    xmask = tmask[:, None] & (p < P)[None, :]
    gy_t = load_gy(gy, direction, b, head, t, tmask, P, BLOCK_P, ACC)
    a = load_head(A, head, ACC)
    cs = a * tl.cumsum(dt, axis=0)
    cs_end = a * tl.sum(dt, axis=0)
    off, mask = ssd_state_offsets(seq, c, n_chunks, P, N, BLOCK_P, BLOCK_N)
    start = tl.load(states + off, mask=mask, other=0.0)
    after = tl.load(adjoints + off, mask=mask, other=0.0)

    decay = causal_decay(cs, CHUNK)
    mixing = dot(Cm, tl.trans(Bm), DOT) * decay             # [t, s]
    gy_x = dot(gy_t, tl.trans(x), DOT)                         # [t, s] = gy_t . x_s
    weighted = gy_x * decay
    to_end = tl.exp(cs_end - cs)                        # [s]
    x_after = dot(x, after, DOT)                             # [s, n] = (x_s^T Gs)_n
    g_x_t = dt[:, None] * (dot(tl.trans(mixing), gy_t, DOT)
                           + to_end[:, None] * dot(Bm, tl.trans(after), DOT))
    if HAS_D:
        Dv = load_head(D, head, ACC)
        g_x_t += Dv * gy_t
    g_B_t = dt[:, None] * (dot(tl.trans(weighted), Cm, DOT) + to_end[:, None] * x_after)
    from_start = tl.exp(cs)[:, None] * dot(Cm, tl.trans(start), DOT)  # y's part from the start state
    g_C_t = dot(weighted * dt[None, :], Bm, DOT) + tl.exp(cs)[:, None] * dot(gy_t, start, DOT)

    # gradient w.r.t. the log-decays cs, then w.r.t. each step's increment a dt_s (reverse cumsum)
    pair = mixing * gy_x
    terms = pair * dt[None, :]
    into_end = to_end * tl.sum(x_after * Bm, axis=1)   # d<Gs, end state>/d dt_s, direct
    g_cs = tl.sum(terms, axis=1) - tl.sum(terms, axis=0) + tl.sum(gy_t * from_start, axis=1) - dt * into_end
    i = tl.arange(0, CHUNK)
    g_cs += tl.where(i == CHUNK - 1, tl.exp(cs_end) * tl.sum(after * start) + tl.sum(dt * into_end), 0.0)
    g_increment = tl.sum(g_cs, axis=0) - tl.cumsum(g_cs, axis=0) + g_cs
    g_dt_t = tl.sum(pair, axis=0) + into_end + a * g_increment
    if SOFTPLUS:
        g_dt_t = g_dt_t * sigmoid(raw)
    g_dt_t = tl.where(tmask, g_dt_t, 0.0)

    tl.store(g_x + direction * s_gx[0] + b * s_gx[1] + t[:, None] * s_gx[2] + head * s_gx[3] + p[None, :] * s_gx[4],
             g_x_t.to(g_x.dtype.element_ty), mask=xmask)
    tl.store(g_dt + direction * s_gdt[0] + b * s_gdt[1] + t * s_gdt[2] + head * s_gdt[3],
             g_dt_t.to(g_dt.dtype.element_ty), mask=tmask)
    bc_off = direction * s_gbc[0] + b * s_gbc[1] + t[:, None] * s_gbc[2] + head * s_gbc[3] + n[None, :] * s_gbc[4]
    bc_mask = tmask[:, None] & (n < N)[None, :]
    tl.store(g_B + bc_off, g_B_t, mask=bc_mask)
    tl.store(g_C + bc_off, g_C_t, mask=bc_mask)
    part = ((direction * Bt + b) * n_chunks + c) * nh + head
    tl.store(g_A + part, tl.sum(dt * g_increment, axis=0))
    if HAS_D:
        tl.store(g_D + part, tl.sum(tl.sum(gy_t * x, axis=1), axis=0))
    if HAS_BIAS:
        tl.store(g_bias + part, tl.sum(g_dt_t, axis=0))


_KEY = ["CHUNK", "BLOCK_P", "BLOCK_N", "DOT"]
_SIZES = ["L", "nh"]  # in powers of 2
_summary = autotuned(_KEY, _SIZES)(ssd_summary)
_forward = autotuned(_KEY, _SIZES)(ssd_forward)
_backward = autotuned(_KEY, _SIZES)(ssd_backward)
MAX_TILE = 128  # P and N per program (padded to a power of 2, at least 16 for tl.dot)


def tf32_matmuls() -> bool:
    """Whether torch allows tf32 for fp32 matmuls on CUDA: ``torch.backends.cuda.matmul.fp32_precision``
    (torch >= 2.9; "none" inherits ``torch.backends.fp32_precision``), else the older ``allow_tf32``.
    Reading the one torch has avoids its error on a mix of the two APIs."""
    matmul = torch.backends.cuda.matmul
    precision = getattr(matmul, "fp32_precision", None)
    if precision is None:
        return bool(matmul.allow_tf32)
    if precision == "none":
        precision = getattr(torch.backends, "fp32_precision", "none")
    return precision == "tf32"


def dot_precision(dtype: torch.dtype) -> str:
    """How the chunk matmuls multiply their fp32 tiles (half inputs are scanned in fp32 too): in tf32
    on tensor cores where torch allows it for fp32 matmuls (``tf32_matmuls``, e.g.
    torch.set_float32_matmul_precision("high")), else, torch's default, in full fp32 ("ieee");
    fp64 inputs in fp64."""
    return "tf32" if dtype != torch.float64 and tf32_matmuls() else "ieee"


def check_limits(P: int, N: int) -> None:
    for name, size in (("head dim P", P), ("d_state N", N)):
        if size > MAX_TILE:
            raise ValueError(f"xscan.ssd_exchange: the triton backend takes {name} <= {MAX_TILE}, got {size}")


class SSDProblem:
    """Both directions of ssd_exchange: 2 * Bt * nh sequences of L steps."""

    def __init__(self, *, x0, x1, dt0, dt1, A, B0, B1, C0, C1, D, dt_bias, dt_softplus, out_dtype, backward=False):
        self.out_dtype = out_dtype
        self.Bt, self.L, self.nh, self.P = x0.shape
        self.G, self.N = B0.shape[2:]
        self.chunk = ssd_chunk(backward)
        self.n_chunks = max(1, triton.cdiv(self.L, self.chunk))
        self.acc, self.acc_torch = acc_dtype(x0.dtype)
        self.device = x0.device
        self.D, self.bias = D, dt_bias
        self.inputs = dict(x0=x0, x1=x1, dt0=dt0, dt1=dt1, A=A, B0=B0, B1=B1, C0=C0, C1=C1)

        def pair(a, b):
            return a, b, a.stride(), b.stride()

        def single(t):  # a placeholder where absent
            return (x0, (0,)) if t is None else (t, t.stride())

        # the kernels' arguments (ssd_summary, ssd_forward, ssd_backward): the inputs as tuples
        self.args = dict(
            ins=(pair(x0, x1), pair(dt0, dt1), pair(B0, B1), pair(C0, C1), single(A), single(D), single(dt_bias)),
            nh=self.nh, sizes=(self.G, self.P, self.N), Bt=self.Bt, L=self.L, n_chunks=self.n_chunks,
            FLAGS=(D is not None, dt_bias is not None, bool(dt_softplus)), CHUNK=self.chunk,
            BLOCK_P=max(16, triton.next_power_of_2(self.P)), BLOCK_N=max(16, triton.next_power_of_2(self.N)),
            ACC=self.acc, DOT=dot_precision(x0.dtype))
        self.A = A
        self.grid = (2 * self.Bt * self.nh, self.n_chunks)

    def _launches(self, kernel: str) -> list:
        """[(grid, first chunk)]: programs (direction x batch x head, chunk), the chunks in launches of
        at most 65,535 (grid y)."""
        return grid_launches(kernel, self.grid, ("2 x batch x heads", "chunks"), split=1)

    def _carry(self, io, dt_sums, reverse):
        grid, rows, warps, block_n = carry_launch(2 * self.Bt * self.nh, self.P, self.N)
        grid_launches("chunk_carry", grid, ("2 x batch x heads", f"blocks of {rows} head channels"))
        chunk_carry[grid](
            io, dt_sums, self.A, (self.P * self.n_chunks * self.N, self.n_chunks * self.N, self.N, 1),
            (self.n_chunks, 0, 1), (self.A.stride(0), 0, 0), io, (0, 0, 0), self.nh, self.P, self.N,
            self.n_chunks, REVERSE=reverse, HAS_LAST=False, HAS_INIT=False, BLOCK_R=rows, BLOCK_N=block_n,
            num_warps=warps)

    def _states(self, gy=None):
        seqs = 2 * self.Bt * self.nh
        new = lambda *s: torch.empty(*s, device=self.device, dtype=self.acc_torch)  # noqa: E731
        states = new(seqs, self.P, self.n_chunks, self.N)
        adjoints = new(seqs, self.P, self.n_chunks, self.N) if gy is not None else states
        dt_sums = new(seqs, self.n_chunks)
        x0 = self.inputs["x0"]
        gy = gy or (x0, x0)
        for grid, first in self._launches("ssd_summary"):
            _summary[grid](**self.args, gy=(gy[0], gy[1], gy[0].stride(), gy[1].stride()),
                           states=states, adjoints=adjoints, dt_sums=dt_sums, first_chunk=first,
                           BACKWARD=adjoints is not states)
        self._carry(states, dt_sums, reverse=False)
        if adjoints is not states:
            self._carry(adjoints, dt_sums, reverse=True)
        return states, adjoints

    def forward(self):
        """(y0, y1) in the output dtype."""
        states, _ = self._states()
        y = torch.empty(2, *self.inputs["x0"].shape, device=self.device, dtype=self.out_dtype)
        for grid, first in self._launches("ssd_forward"):
            _forward[grid](**self.args, y=(y, y.stride()), states=states, first_chunk=first)
        return y[0], y[1]

    def backward(self, gy0, gy1) -> dict:
        """Gradients of every argument by ssd_exchange's names (None for an absent D, dt_bias)."""
        a = self.inputs
        states, adjoints = self._states((gy0, gy1))
        x0, dt0 = a["x0"], a["dt0"]
        new = lambda *s, dtype=self.acc_torch: torch.empty(*s, device=self.device, dtype=dtype)  # noqa: E731
        g_x = new(2, *x0.shape, dtype=x0.dtype)
        g_dt = new(2, *dt0.shape, dtype=dt0.dtype)
        g_B = new(2, self.Bt, self.L, self.nh, self.N)
        g_C = new(2, self.Bt, self.L, self.nh, self.N)
        parts = 2 * self.Bt * self.n_chunks * self.nh
        g_A, g_D, g_bias = new(parts), new(parts), new(parts)
        for grid, first in self._launches("ssd_backward"):
            _backward[grid](**self.args, gy=(gy0, gy1, gy0.stride(), gy1.stride()), states=states,
                            adjoints=adjoints, grads=((g_x, g_x.stride()), (g_dt, g_dt.stride()),
                                                      (g_B, g_C, g_B.stride()), (g_A, g_D, g_bias)),
                            first_chunk=first)

        def per_group(g):  # heads of a group share B and C
            return g.view(2, self.Bt, self.L, self.G, self.nh // self.G, self.N).sum(4)

        def per_head(g):
            return g.view(-1, self.nh).sum(0)

        g_B, g_C = per_group(g_B), per_group(g_C)
        A, B0, B1, C0, C1 = a["A"], a["B0"], a["B1"], a["C0"], a["C1"]
        # direction 0 read modality 1's B and C
        return dict(x0=g_x[0], x1=g_x[1].to(a["x1"].dtype), dt0=g_dt[0], dt1=g_dt[1].to(a["dt1"].dtype),
                    A=per_head(g_A).to(A.dtype), B0=g_B[1].to(B0.dtype), B1=g_B[0].to(B1.dtype),
                    C0=g_C[1].to(C0.dtype), C1=g_C[0].to(C1.dtype),
                    D=None if self.D is None else per_head(g_D).to(self.D.dtype),
                    dt_bias=None if self.bias is None else per_head(g_bias).to(self.bias.dtype))
