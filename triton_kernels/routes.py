"""Scan routes and channel realignment as index maths inside the kernels (xscan/routes.py in Triton).

A scan program handles positions ``p`` of route ``k`` over a scanned map of ``H x W`` tokens; these
functions say where each position's data lies, so no gathered or interleaved copy is ever built.
"""
import triton
import triton.language as tl

# Route kinds (constexpr ``ROUTE``).
LINE = 0        # selective_scan: position p is token p of a (1, L) map
CROSS = 1       # SS2D routes hf, vf, hb, vb over the map
CROSS_PAIR = 2  # cross_ss2d: position p is modality p % 2 at step p // 2 of the SS2D route
ATROUS = 3      # ES2D: route k scans stride-2 sub-lattice k of the map padded to even H, W

# Where the scanned map's channels / columns come from (constexpr ``SOURCE``), DIFF-MF realignment.
SAME = 0              # the scanned map is u0 itself
CHANNEL_COLUMN = 1    # channel d is channel d // 2 of u_{d % 2}
CHANNEL_HALVES = 2    # channel d is channel d % C of u_{d // C} (row / concat on the channel axis)
WIDTH_COLUMN = 3      # column w is column w // 2 of u_{w % 2}
WIDTH_HALVES = 4      # column w is column w % Ws of u_{w // Ws}
PAIR = 5              # cross_ss2d: the position's modality mt picks u_mt


@triton.jit
def route_tokens(p, k, H, W, ROUTE: tl.constexpr):
    """Positions p (int64) of route k -> (tok, mt, h, w): the token index into dt/B/C, the modality
    whose dt/B/C the position uses, and the position's (h, w) on the scanned map (ATROUS: on the map
    padded to even size, so h >= H or w >= W marks padding)."""
    zero = p * 0
    column_major = (k % 2) == 1
    if ROUTE == 0:
        tok, mt, h, w = p, zero, zero, p
    elif ROUTE == 3:
        Hq = (H + 1) // 2
        Wq = (W + 1) // 2
        tok = tl.where(column_major, (p % Hq) * Wq + p // Hq, p)
        h = 2 * (tok // Wq) + k % 2
        w = 2 * (tok % Wq) + k // 2
        mt = zero
    else:
        if ROUTE == 2:
            mt = p % 2
            j = p // 2
        else:
            mt = zero
            j = p
        L = H * W
        j = tl.where(k >= 2, L - 1 - j, j)
        tok = tl.where(column_major, (j % H) * W + j // H, j)
        h = tok // W
        w = tok % W
    return tok, mt, h, w


@triton.jit
def source_of(d, h, w, mt, C, Ws, SOURCE: tl.constexpr):
    """Channels d (BLOCK_D, 1) at map positions (h, w) (1, T) of modality mt (1, T) -> (m, c, hs, ws),
    each (BLOCK_D, T): the input u_m and its channel and position that the scanned map reads there."""
    zero = d * 0 + w * 0
    if SOURCE == 5:
        m, c, ws = mt + zero, d + zero, w + zero
    elif SOURCE == 1:
        m, c, ws = d % 2 + zero, d // 2 + zero, w + zero
    elif SOURCE == 2:
        m, c, ws = d // C + zero, d % C + zero, w + zero
    elif SOURCE == 3:
        m, c, ws = w % 2 + zero, d + zero, w // 2 + zero
    elif SOURCE == 4:
        m, c, ws = w // Ws + zero, d + zero, w % Ws + zero
    else:
        m, c, ws = zero, d + zero, w + zero
    return m, c, h + zero, ws
