"""Scan routes and the realignment's sources as index maths inside the kernels: the numbers of
``xscan.spec.Route`` / ``Source``, the maths of xscan/routes.py and csrc/include/xscan/routes.h.

A scan program handles positions ``p`` of route ``k`` over a scanned map of ``H x W`` tokens; these
functions say where each position's data lies, so no gathered or interleaved copy is ever built.
Their divisions run in 32 bits (route lengths, map sizes and channel counts are below 2^31: the
executor's ``limits``), inline, where 64-bit ones are a subroutine call each; what they return is
64-bit, for offsets.
"""
import triton
import triton.language as tl

from ..spec import Route, Source

LINE = tl.constexpr(Route.LINE.value)
CROSS = tl.constexpr(Route.CROSS.value)
ATROUS = tl.constexpr(Route.ATROUS.value)
CROSS_PAIR = tl.constexpr(Route.CROSS_PAIR.value)
SNAKE = tl.constexpr(Route.SNAKE.value)
TOKEN = tl.constexpr(Source.TOKEN.value)
CHANNEL_COLUMN = tl.constexpr(Source.CHANNEL_COLUMN.value)
CHANNEL_HALVES = tl.constexpr(Source.CHANNEL_HALVES.value)
WIDTH_COLUMN = tl.constexpr(Source.WIDTH_COLUMN.value)


@triton.jit
def route_tokens(p, k, H, W, ROUTE: tl.constexpr):
    """Positions p of route k -> (tok, mt, h, w), int64: the token index into dt/B/C, the modality
    whose dt/B/C the position uses, and the position's (h, w) on the scanned map (ATROUS: on the map
    padded to even size, so h >= H or w >= W marks padding)."""
    p = p.to(tl.int32)
    k = k.to(tl.int32)
    zero = p * 0
    column_major = (k % 2) == 1
    if ROUTE == LINE:
        tok, mt, h, w = p, zero, zero, p
    elif ROUTE == ATROUS:
        Hq = (H + 1) // 2
        Wq = (W + 1) // 2
        tok = tl.where(column_major, (p % Hq) * Wq + p // Hq, p)
        h = 2 * (tok // Wq) + k % 2
        w = 2 * (tok % Wq) + k // 2
        mt = zero
    elif ROUTE == SNAKE:
        L = H * W
        j = tl.where(k >= 2, L - 1 - p, p)
        rows = (j // W) * W + tl.where((j // W) % 2 == 0, j % W, W - 1 - j % W)
        cols = tl.where((j // H) % 2 == 0, j % H, H - 1 - j % H) * W + j // H
        tok = tl.where(column_major, cols, rows)
        h = tok // W
        w = tok % W
        mt = zero
    else:
        tl.static_assert((ROUTE == CROSS) or (ROUTE == CROSS_PAIR), "route_tokens: a route kind it does not know")
        if ROUTE == CROSS_PAIR:
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
    return tok.to(tl.int64), mt.to(tl.int64), h.to(tl.int64), w.to(tl.int64)


@triton.jit
def source_of(d, h, w, mt, C, Ws, SOURCE: tl.constexpr):
    """Channels d (BLOCK_D, 1) at map positions (h, w) (1, T) of token modality mt (1, T) ->
    (m, c, hs, ws), each (BLOCK_D, T): the input u_m and its channel and position that the scanned
    map reads there (C, Ws: channels and width of each input map of a realignment), int64."""
    d = d.to(tl.int32)
    w = w.to(tl.int32)
    zero = d * 0 + w * 0
    if SOURCE == TOKEN:
        m, c, ws = mt + zero, d + zero, w + zero
    elif SOURCE == CHANNEL_COLUMN:
        m, c, ws = d % 2 + zero, d // 2 + zero, w + zero
    elif SOURCE == CHANNEL_HALVES:
        m, c, ws = d // C + zero, d % C + zero, w + zero
    elif SOURCE == WIDTH_COLUMN:
        m, c, ws = w % 2 + zero, d + zero, w // 2 + zero
    else:
        m, c, ws = w // Ws + zero, d + zero, w % Ws + zero
    return m.to(tl.int64), c.to(tl.int64), h + zero.to(tl.int64), ws.to(tl.int64)
