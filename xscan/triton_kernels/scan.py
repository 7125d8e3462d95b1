"""Chunked selective scan (Mamba-1 recurrence, per-channel state of N) over any route, forward and
backward, in three passes so that short sequences still fill the GPU:

1. ``chunk_summary``: per (sequence, channel block, chunk), the chunk's local end state (from h = 0)
   and its summed dt (the chunk's decay is exp(A * sum dt)); for the backward also the local adjoint
   that the chunk sends to its predecessor.
2. ``chunk_carry``: sequential over chunks, N-wide: the state entering each chunk (forward) or the
   adjoint entering each chunk from its successors (backward, reverse order).
3. ``scan_forward`` / ``scan_backward``: recompute each chunk with an associative scan over time,
   starting from its carried state, and write outputs / gradients.

A "sequence" is (batch b, route k). The route maps position p to the token index of dt/B/C and to a
position (h, w) of the scanned map (``routes.route_tokens``); ``routes.source_of`` maps the scanned
map to the inputs u0/u1 (realignment). Every tensor is read through its own strides with 64-bit
offsets. Results that several programs contribute to (dB, dC across channel blocks, dA, dD,
d(delta_bias) across batch and chunks, the routes summed in SS2D) are written as partials that the
host reduces, so the backward is deterministic without atomics.

The kernels take their operands as tuples: ``ins = (u, z, dt, B, C, A, D, bias)``, where u, dt, B
and C are pairs (tensor of modality 0, of modality 1, their strides) and z, A, D, bias singles
(tensor, strides; a placeholder where absent: FLAGS says which are read); ``sizes = (K, N, Cs,
B_GROUP, C_GROUP)``: routes, d_state, the source maps' channels, channels per B and per C group;
``FLAGS = (TWO_U, TWO_TOK, HAS_D, HAS_Z, HAS_BIAS, SOFTPLUS)``: whether u and dt/B/C of modality 1 are
read, which optional inputs are given, softplus on dt. Strides: u (b, c, h, w) on the source maps; z
and gradient-of-output (b, d, h, w) on the scanned map; dt (b, k, d, token); B/C (b, k, group, n,
token); A (k, d, n); D, delta_bias (k, d).
"""
import triton
import triton.language as tl

from .routes import route_tokens, source_of



# Sizes that change with the image (sequence length, map sizes, BC groups, chunk counts): passed
# unspecialised, so that a new image size reuses the compiled kernels. The stride tuples stay
# specialised (a unit stride is what makes a load contiguous; a stride's divisibility by 16 selects
# one of at most two variants per stride, whatever the size).
IMAGE_SIZES = ["Lseq", "H", "W", "Ws", "BC_GROUP", "BLOCKS_PER_BC_GROUP", "n_chunks", "first_chunk"]


@triton.jit
def combine(a1, b1, a2, b2):
    """Compose h -> a1 h + b1 then h -> a2 h + b2."""
    return a1 * a2, b1 * a2 + b2


@triton.jit
def reverse_recurrence(a_rev, b_rev, end, AXIS: tl.constexpr):
    """x_t = a_t x_{t+1} + b_t along AXIS from x past the end = end, given a and b flipped along
    AXIS (a power of 2): a forward scan of the flipped steps, flipped back. Not
    tl.associative_scan(reverse=True): Triton's compiled reverse scan is reported to compose a
    non-commutative combine such as this one in the wrong order (triton-lang/triton#4362), and its
    interpreter, which computes flip(scan(flip)), cannot show it."""
    to_end, local = tl.associative_scan((a_rev, b_rev), axis=AXIS, combine_fn=combine)
    return tl.flip(local + to_end * end, AXIS)


@triton.jit
def reverse_recurrence_tile(a, b, x, R: tl.constexpr, T: tl.constexpr, N: tl.constexpr):
    """x = reverse_recurrence(flip(a), flip(b), 1) over axis 1 of contiguous (R, T, N) tiles, as
    scan_backward flips and scans its (channels, chunk, states) tiles: the GPU kit's smoke check,
    compile_check and the tests run it at the backward's tile shapes."""
    offs = ((tl.arange(0, R)[:, None, None] * T + tl.arange(0, T)[None, :, None]) * N
            + tl.arange(0, N)[None, None, :])
    a_rev = tl.flip(tl.load(a + offs), 1)
    b_rev = tl.flip(tl.load(b + offs), 1)
    tl.store(x + offs, reverse_recurrence(a_rev, b_rev, 1.0, 1))


@triton.jit
def softplus(x):
    # torch's threshold; exp(x) for very negative x where log(1 + exp(x)) would round to 0
    return tl.where(x > 20.0, x, tl.where(x < -15.0, tl.exp(x), tl.log(1.0 + tl.exp(x))))


@triton.jit
def sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def load_pair(pair, off0, off1, m, mask, TWO: tl.constexpr, ACC: tl.constexpr):
    """Value from a pair's tensor 0 where m == 0, from its tensor 1 where m == 1 (TWO), in ACC; the
    offsets are the caller's, through each tensor's strides."""
    x0, x1, _, _ = pair
    x = tl.load(x0 + off0, mask=mask & (m == 0), other=0.0).to(ACC)
    if TWO:
        x += tl.load(x1 + off1, mask=mask & (m == 1), other=0.0).to(ACC)
    return x


@triton.jit
def chunk_program(sizes, Lseq, H, W, BC_GROUP, BLOCKS_PER_BC_GROUP, first_chunk, ROUTE: tl.constexpr,
                  WIDTH: tl.constexpr, CHUNK: tl.constexpr):
    """The prologue of every scan kernel: program ids -> b, k, the first channel of its block and the
    end of its BC group, chunk c (first_chunk + program id 2: launches of at most 65,535 chunks), the
    chunk's positions p (CHUNK,), their mask, their tokens (tok, mt, h, w: ``route_tokens``), which of
    them lie on the map, and the block's B group and C group. A block is WIDTH channels and never
    straddles a BC group (BC_GROUP channels that share their B group and their C group: the gcd of
    the channels per B group and per C group), so it reads a single B group and a single C group."""
    K, _, _, B_GROUP, C_GROUP = sizes
    seq = tl.program_id(0)  # 32-bit divisions here (inline); 64-bit results for offsets
    blk = tl.program_id(1)
    c = tl.program_id(2).to(tl.int64) + first_chunk
    bc_group = blk // BLOCKS_PER_BC_GROUP
    first = bc_group.to(tl.int64) * BC_GROUP + (blk % BLOCKS_PER_BC_GROUP).to(tl.int64) * WIDTH
    p = c * CHUNK + tl.arange(0, CHUNK).to(tl.int64)
    pmask = p < Lseq
    b = (seq // K).to(tl.int64)
    k = (seq % K).to(tl.int64)
    tok, mt, h, w = route_tokens(p, k, H, W, ROUTE)
    in_map = pmask & (h < H) & (w < W)
    first_of_group = bc_group * BC_GROUP
    group_B = (first_of_group // B_GROUP).to(tl.int64)
    group_C = (first_of_group // C_GROUP).to(tl.int64)
    return (b, k, blk.to(tl.int64), first, (bc_group.to(tl.int64) + 1) * BC_GROUP, c, p, pmask, tok, mt, h, w,
            in_map, group_B, group_C)


@triton.jit
def channels(first, bc_group_end, Dr, BLOCK_D: tl.constexpr):
    """BLOCK_D channels from `first` and their mask."""
    d = first + tl.arange(0, BLOCK_D).to(tl.int64)
    return d, (d < bc_group_end) & (d < Dr)


@triton.jit
def load_dt(dt, bias, b, k, d, dmask, p, pmask, H, W, ROUTE: tl.constexpr, FLAGS: tl.constexpr,
            ACC: tl.constexpr):
    """dt (a pair) at channels d (BLOCK_D,) and positions p (T,) -> (dt, pre-softplus value),
    (BLOCK_D, T), dt = 0 where masked (an identity step of the recurrence)."""
    TWO_TOK: tl.constexpr = FLAGS[1]
    HAS_BIAS: tl.constexpr = FLAGS[4]
    SOFTPLUS: tl.constexpr = FLAGS[5]
    _, _, s_dt0, s_dt1 = dt
    bias_ptr, s_bias = bias
    tok, mt, h, w = route_tokens(p, k, H, W, ROUTE)
    mask = dmask[:, None] & pmask[None, :]
    off0 = b * s_dt0[0] + k * s_dt0[1] + d[:, None] * s_dt0[2] + tok[None, :] * s_dt0[3]
    off1 = b * s_dt1[0] + k * s_dt1[1] + d[:, None] * s_dt1[2] + tok[None, :] * s_dt1[3]
    raw = load_pair(dt, off0, off1, mt[None, :], mask, TWO_TOK, ACC)
    if HAS_BIAS:
        raw += tl.load(bias_ptr + k * s_bias[0] + d * s_bias[1], mask=dmask, other=0.0).to(ACC)[:, None]
    value = raw
    if SOFTPLUS:
        value = softplus(raw)
    return tl.where(mask, value, 0.0), raw


@triton.jit
def state_block(N, N0: tl.constexpr, BLOCK: tl.constexpr):
    """States N0 to N0 + BLOCK - 1 (one tile of tiles.state_tiles) and their mask (< N)."""
    n = N0 + tl.arange(0, BLOCK).to(tl.int64)
    return n, n < N


@triton.jit
def load_bc(X, b, k, group, tok, mt, pmask, n, nmask, TWO_TOK: tl.constexpr, ACC: tl.constexpr):
    """B or C (a pair) of route k and one group at tokens tok and states n: (T, len(n))."""
    _, _, s0, s1 = X
    mask = pmask[:, None] & nmask[None, :]
    off0 = b * s0[0] + k * s0[1] + group * s0[2] + n[None, :] * s0[3] + tok[:, None] * s0[4]
    off1 = b * s1[0] + k * s1[1] + group * s1[2] + n[None, :] * s1[3] + tok[:, None] * s1[4]
    return load_pair(X, off0, off1, mt[:, None], mask, TWO_TOK, ACC)


@triton.jit
def load_A(A, k, d, n, smask, ACC: tl.constexpr):
    """A of route k at channels d and states n: (BLOCK_D, len(n)), 0 outside smask."""
    A_ptr, s_A = A
    return tl.load(A_ptr + k * s_A[0] + d[:, None] * s_A[1] + n[None, :] * s_A[2], mask=smask, other=0.0).to(ACC)


@triton.jit
def load_D(D, k, d, dmask, ACC: tl.constexpr):
    """D of route k at channels d: (BLOCK_D,)."""
    D_ptr, s_D = D
    return tl.load(D_ptr + k * s_D[0] + d * s_D[1], mask=dmask, other=0.0).to(ACC)


@triton.jit
def load_u(u, b, d, h, w, mt, valid, Cs, Ws, SOURCE: tl.constexpr, TWO_U: tl.constexpr, ACC: tl.constexpr):
    """u (a pair) of the scanned map at channels d (BLOCK_D,) and map positions (h, w) (T,), read from
    u0/u1 where they lie (Cs, Ws: channels and width of each input map of a realignment). Returns
    (u, m, c, hs, ws) with the source coordinates for the gradient."""
    _, _, s_u0, s_u1 = u
    m, c, hs, ws = source_of(d[:, None], h[None, :], w[None, :], mt[None, :], Cs, Ws, SOURCE)
    off0 = b * s_u0[0] + c * s_u0[1] + hs * s_u0[2] + ws * s_u0[3]
    off1 = b * s_u1[0] + c * s_u1[1] + hs * s_u1[2] + ws * s_u1[3]
    return load_pair(u, off0, off1, m, valid, TWO_U, ACC), m, c, hs, ws


@triton.jit
def load_gate(z, b, d, h, w, valid, ACC: tl.constexpr):
    """z (a single tensor on the scanned map) at channels d and map positions (h, w)."""
    z_ptr, s_z = z
    return tl.load(z_ptr + map_offset(s_z, b, d, h, w), mask=valid, other=0.0).to(ACC)


@triton.jit
def map_offset(s, b, d, h, w):
    """Offset of (b, d, h, w) with strides s = (b, d, h, w): d (BLOCK_D,), h and w (T,)."""
    return b * s[0] + d[:, None] * s[1] + h[None, :] * s[2] + w[None, :] * s[3]


@triton.jit(do_not_specialize=IMAGE_SIZES)
def chunk_summary(ins, gy, states, adjoints, dt_sums, Dr, sizes,
                  Lseq, H, W, Ws, BC_GROUP, BLOCKS_PER_BC_GROUP, n_chunks, first_chunk,
                  ROUTE: tl.constexpr, SOURCE: tl.constexpr, FLAGS: tl.constexpr, BACKWARD: tl.constexpr,
                  BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, TAIL_N: tl.constexpr, CHUNK: tl.constexpr,
                  ACC: tl.constexpr):
    """Pass 1. states[seq, d, c, n] = the chunk's end state from a zero start; dt_sums[seq, d, c];
    with BACKWARD, adjoints[seq, d, c, n] = sum_t exp(A cum_t) gy_t C_t, the adjoint the chunk
    passes to the state before it (cum_t: dt summed over the chunk up to t, inclusive). The states
    in two tiles (tiles.state_tiles): BLOCK_N from 0, then TAIL_N (none if 0)."""
    u, z, dt, B, C, A, _, bias = ins
    K, N, Cs, _, _ = sizes
    TWO_U: tl.constexpr = FLAGS[0]
    TWO_TOK: tl.constexpr = FLAGS[1]
    HAS_Z: tl.constexpr = FLAGS[3]
    b, k, blk, first_d, bc_group_end, c, p, pmask, tok, mt, h, w, in_map, group_B, group_C = chunk_program(
        sizes, Lseq, H, W, BC_GROUP, BLOCKS_PER_BC_GROUP, first_chunk, ROUTE, BLOCK_D, CHUNK)
    d, dmask = channels(first_d, bc_group_end, Dr, BLOCK_D)
    valid = dmask[:, None] & in_map[None, :]
    dt_t, _ = load_dt(dt, bias, b, k, d, dmask, p, pmask, H, W, ROUTE, FLAGS, ACC)
    u_t, _, _, _, _ = load_u(u, b, d, h, w, mt, valid, Cs, Ws, SOURCE, TWO_U, ACC)
    cum = tl.cumsum(dt_t, axis=1)
    total = tl.sum(dt_t, axis=1)
    row = (b * K + k) * Dr + d
    tl.store(dt_sums + row * n_chunks + c, total, mask=dmask)
    gy_t = dt_t  # the adjoints' input, read only with BACKWARD
    if BACKWARD:
        _, _, s_gy0, s_gy1 = gy
        gy_t = load_pair(gy, map_offset(s_gy0, b, d, h, w), map_offset(s_gy1, b, d, h, w), mt[None, :], valid,
                         TWO_TOK, ACC)
        if HAS_Z:
            z_t = load_gate(z, b, d, h, w, valid, ACC)
            gy_t = gy_t * z_t * sigmoid(z_t)
    summary_tile(B, C, A, states, adjoints, b, k, group_B, group_C, d, dmask, row, c, tok, mt, pmask, dt_t * u_t,
                 gy_t, cum, total, N, n_chunks, 0, BLOCK_N, TWO_TOK, BACKWARD, ACC)
    if TAIL_N > 0:
        summary_tile(B, C, A, states, adjoints, b, k, group_B, group_C, d, dmask, row, c, tok, mt, pmask,
                     dt_t * u_t, gy_t, cum, total, N, n_chunks, BLOCK_N, TAIL_N, TWO_TOK, BACKWARD, ACC)


@triton.jit
def summary_tile(B, C, A, states, adjoints, b, k, group_B, group_C, d, dmask, row, c, tok, mt, pmask, dtu, gy,
                 cum, total, N, n_chunks, N0: tl.constexpr, BLOCK: tl.constexpr, TWO_TOK: tl.constexpr,
                 BACKWARD: tl.constexpr, ACC: tl.constexpr):
    """chunk_summary's end states (and with BACKWARD adjoints) of states N0 to N0 + BLOCK - 1, for
    the inputs dt * u (dtu) and gy of channels d, (BLOCK_D, T)."""
    n, nmask = state_block(N, N0, BLOCK)
    smask = dmask[:, None] & nmask[None, :]
    Bm = load_bc(B, b, k, group_B, tok, mt, pmask, n, nmask, TWO_TOK, ACC)
    An = load_A(A, k, d, n, smask, ACC)
    decay_to_end = tl.exp(An[:, None, :] * (total[:, None, None] - cum[:, :, None]))
    end_state = tl.sum(decay_to_end * dtu[:, :, None] * Bm[None, :, :], axis=1)
    off = (row[:, None] * n_chunks + c) * N + n[None, :]
    tl.store(states + off, end_state, mask=smask)
    if BACKWARD:
        Cm = load_bc(C, b, k, group_C, tok, mt, pmask, n, nmask, TWO_TOK, ACC)
        adjoint = tl.sum(tl.exp(An[:, None, :] * cum[:, :, None]) * gy[:, :, None] * Cm[None, :, :], axis=1)
        tl.store(adjoints + off, adjoint, mask=smask)


@triton.jit(do_not_specialize=["rows", "n_chunks"])
def chunk_carry(carry_io, dt_sums, A, s_carry, s_sum, s_A, last, s_last, K, rows, N, n_chunks,
                REVERSE: tl.constexpr, HAS_LAST: tl.constexpr, HAS_INIT: tl.constexpr, BLOCK_R: tl.constexpr,
                BLOCK_N: tl.constexpr):
    """Pass 2, one program per (sequence, row block), sequential over chunks: replaces each chunk's
    local contribution carry_io[seq, r, c, :] with the carry entering it, carry <- exp(A S_c) carry
    + local_c, S_c = dt_sums[seq, r, c]; in REVERSE order for the adjoint. The decay exponent is
    A[k, r, n] (strides s_A; k = seq % K); strides s_carry = (seq, r, c, n), s_sum = (seq, r, c) may
    broadcast (stride 0). HAS_LAST: the final carry goes to last[seq, r, n]; HAS_INIT: the carry
    starts from last[seq, r, n] instead of 0 (the gradient of the last state, for the adjoint)."""
    seq = tl.program_id(0).to(tl.int64)
    r = tl.program_id(1).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)
    n = tl.arange(0, BLOCK_N).to(tl.int64)
    rmask = r < rows
    mask = rmask[:, None] & (n < N)[None, :]
    k = (tl.program_id(0) % K).to(tl.int64)
    An = tl.load(A + k * s_A[0] + r[:, None] * s_A[1] + n[None, :] * s_A[2], mask=mask,
                 other=0.0).to(carry_io.dtype.element_ty)
    base = seq * s_carry[0] + r[:, None] * s_carry[1] + n[None, :] * s_carry[3]
    sum_base = seq * s_sum[0] + r * s_sum[1]
    last_off = seq * s_last[0] + r[:, None] * s_last[1] + n[None, :] * s_last[2]
    carry = tl.zeros((BLOCK_R, BLOCK_N), dtype=carry_io.dtype.element_ty)
    if HAS_INIT:
        carry += tl.load(last + last_off, mask=mask, other=0.0).to(carry_io.dtype.element_ty)
    for i in range(n_chunks):
        c = n_chunks - 1 - i if REVERSE else i
        local = tl.load(carry_io + base + c * s_carry[2], mask=mask, other=0.0)
        total = tl.load(dt_sums + sum_base + c * s_sum[2], mask=rmask, other=0.0)
        tl.store(carry_io + base + c * s_carry[2], carry, mask=mask)
        carry = tl.exp(An * total[:, None]) * carry + local
    if HAS_LAST:
        tl.store(last + last_off, carry, mask=mask)


@triton.jit
def chunk_states(row, c, n, smask, dt, u, Bm, An, states, N, n_chunks):
    """h_t for the chunk's positions, (BLOCK_D, T, len(n)), at rows `row` and states n, from the
    carried start state, for the inputs (dt, u, B) of each step."""
    start = tl.load(states + (row[:, None] * n_chunks + c) * N + n[None, :], mask=smask, other=0.0)
    a = tl.exp(dt[:, :, None] * An[:, None, :])
    inputs = (dt * u)[:, :, None] * Bm[None, :, :]
    decay, local = tl.associative_scan((a, inputs), axis=1, combine_fn=combine)
    return local + decay * start[:, None, :]


@triton.jit(do_not_specialize=IMAGE_SIZES)
def scan_forward(ins, y, states, Dr, sizes,
                 Lseq, H, W, Ws, BC_GROUP, BLOCKS_PER_BC_GROUP, n_chunks, first_chunk,
                 ROUTE: tl.constexpr, SOURCE: tl.constexpr, FLAGS: tl.constexpr, BLOCK_D: tl.constexpr,
                 BLOCK_N: tl.constexpr, TAIL_N: tl.constexpr, CHUNK: tl.constexpr, ACC: tl.constexpr):
    """Pass 3: y = (y, s_y, s_yk, s_ym): the output at the scanned map position of each token, at
    k * s_yk + mt * s_ym + (b, d, h, w) . s_y (per-route slabs when the routes are summed afterwards).
    The states' parts of y add up over their two tiles (BLOCK_N, then TAIL_N if not 0)."""
    u, z, dt, B, C, A, D, bias = ins
    y_ptr, s_y, s_yk, s_ym = y
    K, N, Cs, _, _ = sizes
    TWO_U: tl.constexpr = FLAGS[0]
    TWO_TOK: tl.constexpr = FLAGS[1]
    HAS_D: tl.constexpr = FLAGS[2]
    HAS_Z: tl.constexpr = FLAGS[3]
    b, k, blk, first_d, bc_group_end, c, p, pmask, tok, mt, h, w, in_map, group_B, group_C = chunk_program(
        sizes, Lseq, H, W, BC_GROUP, BLOCKS_PER_BC_GROUP, first_chunk, ROUTE, BLOCK_D, CHUNK)
    d, dmask = channels(first_d, bc_group_end, Dr, BLOCK_D)
    valid = dmask[:, None] & in_map[None, :]
    dt_t, _ = load_dt(dt, bias, b, k, d, dmask, p, pmask, H, W, ROUTE, FLAGS, ACC)
    u_t, _, _, _, _ = load_u(u, b, d, h, w, mt, valid, Cs, Ws, SOURCE, TWO_U, ACC)
    row = (b * K + k) * Dr + d
    out = forward_tile(B, C, A, states, b, k, group_B, group_C, d, dmask, row, c, tok, mt, pmask, dt_t, u_t, N,
                       n_chunks, 0, BLOCK_N, TWO_TOK, ACC)
    if TAIL_N > 0:
        out += forward_tile(B, C, A, states, b, k, group_B, group_C, d, dmask, row, c, tok, mt, pmask, dt_t, u_t,
                            N, n_chunks, BLOCK_N, TAIL_N, TWO_TOK, ACC)
    if HAS_D:
        out += load_D(D, k, d, dmask, ACC)[:, None] * u_t
    if HAS_Z:
        z_t = load_gate(z, b, d, h, w, valid, ACC)
        out = out * z_t * sigmoid(z_t)
    off = k * s_yk + mt[None, :] * s_ym + map_offset(s_y, b, d, h, w)
    tl.store(y_ptr + off, out.to(y_ptr.dtype.element_ty), mask=valid)


@triton.jit
def forward_tile(B, C, A, states, b, k, group_B, group_C, d, dmask, row, c, tok, mt, pmask, dt_t, u_t, N, n_chunks,
                 N0: tl.constexpr, BLOCK: tl.constexpr, TWO_TOK: tl.constexpr, ACC: tl.constexpr):
    """The part of y (before D and the gate) from states N0 to N0 + BLOCK - 1: sum_n h_t C_t,
    (BLOCK_D, T)."""
    n, nmask = state_block(N, N0, BLOCK)
    smask = dmask[:, None] & nmask[None, :]
    Bm = load_bc(B, b, k, group_B, tok, mt, pmask, n, nmask, TWO_TOK, ACC)
    Cm = load_bc(C, b, k, group_C, tok, mt, pmask, n, nmask, TWO_TOK, ACC)
    h_t = chunk_states(row, c, n, smask, dt_t, u_t, Bm, load_A(A, k, d, n, smask, ACC), states, N, n_chunks)
    return tl.sum(h_t * Cm[None, :, :], axis=2)


@triton.jit
def backward_inputs(B, C, b, k, group_B, group_C, tok, mt, pmask, tok_prev, mt_prev, behind, N, N0: tl.constexpr,
                    BLOCK: tl.constexpr, TWO_TOK: tl.constexpr, ACC: tl.constexpr):
    """What scan_backward's channel blocks share per state tile (states N0 to N0 + BLOCK - 1): B and
    C now, C flipped in time (the reverse scan's inputs run backwards: reverse_recurrence), B one
    step behind; (CHUNK, BLOCK) each."""
    n, nmask = state_block(N, N0, BLOCK)
    Cm = load_bc(C, b, k, group_C, tok, mt, pmask, n, nmask, TWO_TOK, ACC)
    return (load_bc(B, b, k, group_B, tok, mt, pmask, n, nmask, TWO_TOK, ACC), Cm, tl.flip(Cm, 0),
            load_bc(B, b, k, group_B, tok_prev, mt_prev, behind, n, nmask, TWO_TOK, ACC))


@triton.jit(do_not_specialize=IMAGE_SIZES)
def scan_backward(ins, gy, states, adjoints, grads, Dr, sizes,
                  Lseq, H, W, Ws, BC_GROUP, BLOCKS_PER_BC_GROUP, n_chunks, first_chunk,
                  ROUTE: tl.constexpr, SOURCE: tl.constexpr, FLAGS: tl.constexpr, BLOCK_D: tl.constexpr,
                  SUB: tl.constexpr, BLOCK_N: tl.constexpr, TAIL_N: tl.constexpr, CHUNK: tl.constexpr,
                  ACC: tl.constexpr):
    """Pass 3 of the backward, SUB blocks of BLOCK_D channels per program (their g_B, g_C add up in
    registers: fewer partials to write and reduce), the states in two tiles (BLOCK_N, then TAIL_N
    if not 0: backward_tile). The adjoint g_t = dL/dh_t runs backwards: g_t = gy_t C_t + a_{t+1}
    g_{t+1}; within the chunk a reverse scan (reverse_recurrence) with coefficients a_{t+1} (dt re-read
    one position ahead; 1 at the chunk's end) from the carried adjoint of the chunk's end state.

    grads = ((g_u, s_gu, s_guk, s_gum), (g_z, s_gz), (g_dt, s_gdt, s_gdtm), (g_B, g_C, s_gbc), (g_A,
    g_D, g_bias)). Writes: g_u at the source position (+ k * s_guk + m * s_gum, strides s_gu over
    (b, c, h, w)); g_z (b, d, h, w); g_dt[mt, b, k, d, tok] (strides s_gdt, s_gdtm); per-program
    partial g_B, g_C [blk, mt, b, k, n, tok] (strides s_gbc); partial g_A [b, c, k, d, n], g_D and
    g_bias [b, c, k, d] (contiguous)."""
    u, z, dt, B, C, A, D, bias = ins
    u_grad, z_grad, dt_grad, g_BC, param_grads = grads  # one level at a time: Triton 3.6 unpacks no nesting
    g_u, s_gu, s_guk, s_gum = u_grad
    g_z, s_gz = z_grad
    g_dt, s_gdt, s_gdtm = dt_grad
    g_A, g_D, g_bias = param_grads
    _, _, s_gy0, s_gy1 = gy
    K, N, Cs, _, _ = sizes
    TWO_U: tl.constexpr = FLAGS[0]
    TWO_TOK: tl.constexpr = FLAGS[1]
    HAS_D: tl.constexpr = FLAGS[2]
    HAS_Z: tl.constexpr = FLAGS[3]
    HAS_BIAS: tl.constexpr = FLAGS[4]
    SOFTPLUS: tl.constexpr = FLAGS[5]
    b, k, blk, first_d, bc_group_end, c, p, pmask, tok, mt, h, w, in_map, group_B, group_C = chunk_program(
        sizes, Lseq, H, W, BC_GROUP, BLOCKS_PER_BC_GROUP, first_chunk, ROUTE, BLOCK_D * SUB, CHUNK)
    # per chunk, shared by the channel sub-blocks: route, B and C (now and one step behind)
    ahead = (tl.arange(0, CHUNK) < CHUNK - 1) & (p + 1 < Lseq)
    behind = (tl.arange(0, CHUNK) > 0) & pmask
    tok_prev, mt_prev, h_prev_map, w_prev_map = route_tokens(p - 1, k, H, W, ROUTE)
    in_map_prev = behind & (h_prev_map < H) & (w_prev_map < W)
    Bm, Cm, C_rev, B_prev = backward_inputs(B, C, b, k, group_B, group_C, tok, mt, pmask, tok_prev, mt_prev, behind,
                                            N, 0, BLOCK_N, TWO_TOK, ACC)
    g_B_acc = tl.zeros((CHUNK, BLOCK_N), dtype=ACC)
    g_C_acc = tl.zeros((CHUNK, BLOCK_N), dtype=ACC)
    if TAIL_N > 0:
        Bm_tail, Cm_tail, C_rev_tail, B_prev_tail = backward_inputs(
            B, C, b, k, group_B, group_C, tok, mt, pmask, tok_prev, mt_prev, behind, N, BLOCK_N, TAIL_N, TWO_TOK, ACC)
        g_B_tail = tl.zeros((CHUNK, TAIL_N), dtype=ACC)
        g_C_tail = tl.zeros((CHUNK, TAIL_N), dtype=ACC)
    part = (b * n_chunks + c) * K + k  # one slot per (batch, chunk, route), reduced on the host
    for sub in range(SUB):
        d, dmask = channels(first_d + sub * BLOCK_D, bc_group_end, Dr, BLOCK_D)
        valid = dmask[:, None] & in_map[None, :]
        dt_t, raw = load_dt(dt, bias, b, k, d, dmask, p, pmask, H, W, ROUTE, FLAGS, ACC)
        dt_next, _raw_next = load_dt(dt, bias, b, k, d, dmask, p + 1, ahead, H, W, ROUTE, FLAGS, ACC)
        dt_prev, _raw_prev = load_dt(dt, bias, b, k, d, dmask, p - 1, behind, H, W, ROUTE, FLAGS, ACC)
        u_t, m, cs, hs, ws = load_u(u, b, d, h, w, mt, valid, Cs, Ws, SOURCE, TWO_U, ACC)
        u_prev, _m, _c, _h, _w = load_u(u, b, d, h_prev_map, w_prev_map, mt_prev,
                                        dmask[:, None] & in_map_prev[None, :], Cs, Ws, SOURCE, TWO_U, ACC)
        gout = load_pair(gy, map_offset(s_gy0, b, d, h, w), map_offset(s_gy1, b, d, h, w), mt[None, :], valid,
                         TWO_TOK, ACC)
        gy_t = gout
        if HAS_Z:
            z_t = load_gate(z, b, d, h, w, valid, ACC)
            gate = sigmoid(z_t)
            gy_t = gout * z_t * gate
        row = (b * K + k) * Dr + d
        g_dt_raw, g_u_t, y_pre, g_B_t, g_C_t = backward_tile(
            A, states, adjoints, g_A, part, k, d, dmask, row, c, dt_t, dt_next, dt_prev, u_t, u_prev, gy_t,
            Bm, Cm, C_rev, B_prev, Dr, N, n_chunks, 0, BLOCK_N, ACC)
        g_B_acc += g_B_t
        g_C_acc += g_C_t
        if TAIL_N > 0:
            g_dt_tail, g_u_tail, y_tail, g_B_t, g_C_t = backward_tile(
                A, states, adjoints, g_A, part, k, d, dmask, row, c, dt_t, dt_next, dt_prev, u_t, u_prev, gy_t,
                Bm_tail, Cm_tail, C_rev_tail, B_prev_tail, Dr, N, n_chunks, BLOCK_N, TAIL_N, ACC)
            g_dt_raw += g_dt_tail
            g_u_t += g_u_tail
            y_pre += y_tail
            g_B_tail += g_B_t
            g_C_tail += g_C_t

        if SOFTPLUS:
            g_dt_raw = g_dt_raw * sigmoid(raw)
        pd_mask = dmask[:, None] & pmask[None, :]
        g_dt_raw = tl.where(pd_mask, g_dt_raw, 0.0)
        if HAS_D:
            Dv = load_D(D, k, d, dmask, ACC)
            g_u_t += Dv[:, None] * gy_t
        if HAS_Z:
            if HAS_D:
                y_pre += Dv[:, None] * u_t
            g_zv = gout * y_pre * gate * (1.0 + z_t * (1.0 - gate))
            tl.store(g_z + map_offset(s_gz, b, d, h, w), g_zv.to(g_z.dtype.element_ty), mask=valid)
        gu_off = k * s_guk + m * s_gum + b * s_gu[0] + cs * s_gu[1] + hs * s_gu[2] + ws * s_gu[3]
        tl.store(g_u + gu_off, g_u_t.to(g_u.dtype.element_ty), mask=valid)
        gdt_off = (mt[None, :] * s_gdtm + b * s_gdt[0] + k * s_gdt[1] + d[:, None] * s_gdt[2]
                   + tok[None, :] * s_gdt[3])
        tl.store(g_dt + gdt_off, g_dt_raw.to(g_dt.dtype.element_ty), mask=pd_mask)
        if HAS_D:
            tl.store(g_D + part * Dr + d, tl.sum(gy_t * u_t, axis=1), mask=dmask)
        if HAS_BIAS:
            tl.store(g_bias + part * Dr + d, tl.sum(g_dt_raw, axis=1), mask=dmask)
    store_bc_partials(g_BC, g_B_acc, g_C_acc, blk, mt, b, k, tok, pmask, N, 0, BLOCK_N)
    if TAIL_N > 0:
        store_bc_partials(g_BC, g_B_tail, g_C_tail, blk, mt, b, k, tok, pmask, N, BLOCK_N, TAIL_N)


@triton.jit
def store_bc_partials(g_BC, g_B_acc, g_C_acc, blk, mt, b, k, tok, pmask, N, N0: tl.constexpr, BLOCK: tl.constexpr):
    """scan_backward's program partials of g_B and g_C (g_BC = (g_B, g_C, their strides)) at states N0
    to N0 + BLOCK - 1."""
    g_B, g_C, s_gbc = g_BC
    n, nmask = state_block(N, N0, BLOCK)
    off = (blk * s_gbc[0] + mt[:, None] * s_gbc[1] + b * s_gbc[2] + k * s_gbc[3]
           + n[None, :] * s_gbc[4] + tok[:, None] * s_gbc[5])
    mask = pmask[:, None] & nmask[None, :]
    tl.store(g_B + off, g_B_acc, mask=mask)
    tl.store(g_C + off, g_C_acc, mask=mask)


@triton.jit
def backward_tile(A, states, adjoints, g_A, part, k, d, dmask, row, c, dt, dt_next, dt_prev, u, u_prev, gy,
                  Bm, Cm, C_rev, B_prev, Dr, N, n_chunks, N0: tl.constexpr, BLOCK: tl.constexpr, ACC: tl.constexpr):
    """The backward of channels d at states N0 to N0 + BLOCK - 1 over one chunk: writes their g_A and
    returns their parts of g_dt (before softplus), g_u and y (before D and the gate; unused without
    z, compiled away), (BLOCK_D, T) each, and of g_B and g_C, (T, BLOCK) each."""
    n, nmask = state_block(N, N0, BLOCK)
    smask = dmask[:, None] & nmask[None, :]
    An = load_A(A, k, d, n, smask, ACC)
    # h_{t-1} by scanning the inputs shifted one step (the chunk's first step starts from the
    # carried state), so that a_t h_{t-1} does not come from the cancellation h_t - dt_t B_t u_t
    h_prev = chunk_states(row, c, n, smask, dt_prev, u_prev, B_prev, An, states, N, n_chunks)
    Bu = Bm[None, :, :] * u[:, :, None]
    a_h_prev = tl.exp(dt[:, :, None] * An[:, None, :]) * h_prev
    h_t = a_h_prev + dt[:, :, None] * Bu
    after = tl.load(adjoints + (row[:, None] * n_chunks + c) * N + n[None, :], mask=smask, other=0.0)
    # g_t = gy_t C_t + a_{t+1} g_{t+1}, from the carried adjoint at the chunk's end
    a_next_rev = tl.exp(tl.flip(dt_next, 1)[:, :, None] * An[:, None, :])
    g = reverse_recurrence(a_next_rev, tl.flip(gy, 1)[:, :, None] * C_rev[None, :, :], after[:, None, :], 1)
    tl.store(g_A + (part * Dr + d[:, None]) * N + n[None, :], tl.sum(g * dt[:, :, None] * a_h_prev, axis=1),
             mask=smask)
    return (tl.sum(g * (Bu + An[:, None, :] * a_h_prev), axis=2), tl.sum(g * dt[:, :, None] * Bm[None, :, :], axis=2),
            tl.sum(h_t * Cm[None, :, :], axis=2), tl.sum(g * (dt * u)[:, :, None], axis=0),
            tl.sum(gy[:, :, None] * h_t, axis=0))
