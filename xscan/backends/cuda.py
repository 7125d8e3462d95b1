"""The hand-written CUDA backend (``xscan._C_cuda``, sources in csrc/cuda/).

One kernel pair (forward, backward) serves every op: each op is a set of scans, one per (batch,
route, channel), and ``csrc/cuda/scan_kernel.cuh`` turns a route position into the token it reads
and the place its output goes (index maths: nothing is copied into route order). This module
describes each op to the kernel: pointers, 64-bit strides, geometry, and the fp32 buffers it writes.

Outputs and gradients are written in fp32. Sums across blocks (the four routes' outputs and input
gradients of ss2d, cross_ss2d and interleave_ss2d; dB and dC over the channel tiles that share a
group) are done one of two ways:
- ``torch.use_deterministic_algorithms(True)``: one partial per route / per tile, summed here with
  ``torch.sum`` in a fixed order: no float atomics, bitwise repeatable, more memory;
- otherwise: float ``atomicAdd`` into one zeroed buffer (mamba's choice): less memory and traffic,
  summation order not fixed.
Inside ``xscan.fp32_output()`` fp16/bf16 inputs get the fp32 outputs as computed.
"""
from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from typing import Optional

import torch

from .. import _registry
from ..ops._define import named_backward
from ..routes import atrous_grid

try:
    _C = importlib.import_module("xscan._C_cuda")
except ImportError as e:
    _C = None
    _registry.set_available("cuda", (), f"xscan._C_cuda is not built ({e})")

# ScanKind and dtype codes of csrc/cuda/scan_params.h; realign codes of scan_math.h.
KIND = {"selective_scan": 0, "ss2d": 1, "es2d": 2, "cross_ss2d": 3, "interleave_ss2d": 4}
DTYPE_CODE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
REALIGN_MODE = {"column": 0, "row": 1, "concat": 2}
REALIGN_AXIS = {"channel": 0, "width": 1}
MAX_DSTATE = 64
CHUNK_LENGTH = 32
THREADS_PER_BLOCK = 128
MAX_BATCH = 65535  # gridDim.z
INT32_MAX = 2**31 - 1


def atomic_sums() -> bool:
    """Float atomics for cross-block sums, unless torch's deterministic mode is on."""
    return not torch.are_deterministic_algorithms_enabled()


# ----------------------------------------------------------------------------------------------
# Limits: raised before launch, naming the argument.


def _check_token_dtypes(op: str, named: dict) -> None:
    for name, t in named.items():
        if t is not None and t.dtype not in DTYPE_CODE:
            raise ValueError(f"xscan.{op} (cuda backend): {name} has dtype {t.dtype}; the CUDA kernels take "
                             "float32, float16 or bfloat16 (use xscan.use_backend('reference') for float64)")


def _check_dstate(op: str, name: str, N: int) -> None:
    if not 1 <= N <= MAX_DSTATE:
        raise ValueError(f"xscan.{op} (cuda backend): d_state N = {N} (from {name}) is outside the "
                         f"kernels' range 1..{MAX_DSTATE}")


def _check_sizes(op: str, Bt: int, length: int) -> None:
    if Bt > MAX_BATCH:
        raise ValueError(f"xscan.{op} (cuda backend): batch {Bt} exceeds {MAX_BATCH}")
    if length > INT32_MAX:
        raise ValueError(f"xscan.{op} (cuda backend): sequence length {length} exceeds 2^31 - 1")


def _check_routes(op: str, dt: torch.Tensor) -> None:
    if dt.shape[1] != 4:
        raise ValueError(f"xscan.{op} (cuda backend): dt has {dt.shape[1]} routes; the kernels scan exactly 4")


def _limits_selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    if A.is_complex():
        raise ValueError("xscan.selective_scan (cuda backend): the CUDA kernels take a real A; complex A runs on the "
                         "reference and cpu backends (xscan.use_backend('reference') for CUDA tensors)")
    _check_token_dtypes("selective_scan", dict(u=u, delta=delta, B=B, C=C, z=z))
    _check_dstate("selective_scan", "A", A.shape[1])
    _check_sizes("selective_scan", u.shape[0], u.shape[2])


def _limits_map(op):
    def limits(u, dt, B, C, A, D, delta_bias, delta_softplus):
        _check_token_dtypes(op, dict(u=u, dt=dt, B=B, C=C))
        _check_dstate(op, "A", A.shape[2])
        _check_routes(op, dt)
        _check_sizes(op, u.shape[0], dt.shape[-1])
    return limits


def _limits_cross_ss2d(u0, u1, dt0, dt1, B0, B1, C0, C1, A, D, delta_bias, delta_softplus):
    _check_token_dtypes("cross_ss2d", dict(u0=u0, u1=u1, dt0=dt0, dt1=dt1, B0=B0, B1=B1, C0=C0, C1=C1))
    _check_dstate("cross_ss2d", "A", A.shape[2])
    _check_routes("cross_ss2d", dt0)
    _check_sizes("cross_ss2d", u0.shape[0], 2 * dt0.shape[-1])


def _limits_interleave_ss2d(u0, u1, dt, B, C, A, D, delta_bias, delta_softplus, mode, axis):
    _check_token_dtypes("interleave_ss2d", dict(u0=u0, u1=u1, dt=dt, B=B, C=C))
    _check_dstate("interleave_ss2d", "A", A.shape[2])
    _check_routes("interleave_ss2d", dt)
    _check_sizes("interleave_ss2d", u0.shape[0], dt.shape[-1])


def _limits_ssd_exchange(x0, x1, dt0, dt1, A, B0, B1, C0, C1, D, dt_bias, dt_softplus):
    _check_token_dtypes("ssd_exchange", dict(x0=x0, x1=x1, dt0=dt0, dt1=dt1, B0=B0, B1=B1, C0=C0, C1=C1))
    _check_dstate("ssd_exchange", "B0", B0.shape[-1])
    _check_sizes("ssd_exchange", x0.shape[0], x0.shape[1])


# ----------------------------------------------------------------------------------------------
# Describing a scan to the kernel.


@dataclass
class Tokens:
    """A per-token tensor as the kernel reads it: one view per modality, all with the same strides,
    shaped (Bt, K, channels, T) (u, delta, z; K-stride 0 when there is no route axis) or
    (Bt, K, G, N, T) (B, C)."""
    views: list

    def describe(self):
        t = _C.TokenTensor()
        v = self.views[0]
        t.data0 = v.data_ptr()
        t.data1 = self.views[-1].data_ptr()
        if v.dim() == 4:
            t.stride_b, t.stride_k, t.stride_c, t.stride_t = v.stride()
        else:
            t.stride_b, t.stride_k, t.stride_c, t.stride_n, t.stride_t = v.stride()
        return t


def _same_strides(views: list) -> list:
    """The kernel reads both modalities with one set of strides: make them agree."""
    if all(v.stride() == views[0].stride() for v in views):
        return views
    return [v.contiguous() for v in views]


def _token_dtype(*tensors) -> torch.dtype:
    dtype = None
    for t in tensors:
        if t is not None:
            dtype = t.dtype if dtype is None else torch.promote_types(dtype, t.dtype)
    return dtype


@dataclass
class Scan:
    """One launch: the op kind, its geometry and inputs; ``forward``/``backward`` allocate the fp32
    buffers and run the kernels."""
    kind: int
    Bt: int
    K: int
    Dm: int
    N: int
    length: int        # route positions per sequence
    tokens: int        # tokens per modality of delta/B/C
    M: int             # modalities
    u: Tokens
    delta: Tokens
    B: Tokens
    C: Tokens
    A: torch.Tensor    # (K, Dm, N) fp32 contiguous
    D: Optional[torch.Tensor]
    delta_bias: Optional[torch.Tensor]
    softplus: bool
    dtype: torch.dtype
    z: Optional[Tokens] = None
    groups_B: int = 1
    groups_C: int = 1
    geometry: tuple = (1, 1, 1, 1)  # height, width, sub_height, sub_width
    realign: tuple = (0, 0, 0, 0)   # mode, axis, u_channels, u_width
    delta_channel_divisor: int = 1
    atomic_routes: bool = False     # routes add y, du into one zeroed buffer

    def params(self):
        P = _C.ScanParams()
        P.kind, P.batch, P.routes, P.channels, P.dstate = self.kind, self.Bt, self.K, self.Dm, self.N
        P.length, P.tokens, P.modalities = self.length, self.tokens, self.M
        P.height, P.width, P.sub_height, P.sub_width = self.geometry
        P.realign_mode, P.realign_axis, P.u_channels, P.u_width = self.realign
        lanes = 32 if self.N > 32 else 1 << (self.N - 1).bit_length()
        group_tiles = math.lcm(self.groups_B, self.groups_C)
        per_tile = THREADS_PER_BLOCK // lanes
        P.lanes_per_channel, P.channels_per_tile = lanes, per_tile
        P.group_tiles, P.tiles_per_group = group_tiles, -(-(self.Dm // group_tiles) // per_tile)
        P.groups_B, P.groups_C = self.groups_B, self.groups_C
        P.delta_softplus, P.delta_channel_divisor = self.softplus, self.delta_channel_divisor
        P.atomic_routes = self.atomic_routes
        P.u, P.delta, P.B, P.C = (x.describe() for x in (self.u, self.delta, self.B, self.C))
        if self.z is not None:
            P.z = self.z.describe()
        P.A = self.A.data_ptr()
        P.D = 0 if self.D is None else self.D.data_ptr()
        P.delta_bias = 0 if self.delta_bias is None else self.delta_bias.data_ptr()
        return P

    def forward(self, y: list, y_strides: tuple, last_state: Optional[torch.Tensor] = None):
        """Run the forward into the fp32 views ``y`` (one per modality; (b, k, c, t) strides)."""
        if self.length == 0:
            return
        P = self.params()
        P.y0, P.y1 = y[0].data_ptr(), y[-1].data_ptr()
        P.y_stride_b, P.y_stride_k, P.y_stride_c, P.y_stride_t = y_strides
        if last_state is not None:
            P.last_state = last_state.data_ptr()
        _launch(_C.forward, P, self.dtype, self.A.device)

    def backward(self, dout: list, dout_strides: tuple, du: list, du_strides: tuple, ddelta: list,
                 ddelta_strides: tuple, dz: Optional[torch.Tensor] = None,
                 dlast_state: Optional[torch.Tensor] = None):
        """Run the backward. Returns the fp32 reductions (dB, dC: (Bt, K, G, N, M, tokens); dA:
        (K, Dm, N); dD, ddelta_bias: (K, Dm)); du, ddelta, dz are written into the given buffers."""
        dev = self.A.device
        P = self.params()
        tiles = P.group_tiles * P.tiles_per_group
        chunks = -(-self.length // CHUNK_LENGTH)
        f32 = dict(device=dev, dtype=torch.float32)
        atomic = atomic_sums()
        if atomic:  # the kernel adds straight into (Bt, K, G, N, M * tokens)
            dB_part = torch.zeros(self.Bt, self.K, self.groups_B, self.N, self.M * self.tokens, **f32)
            dC_part = torch.zeros(self.Bt, self.K, self.groups_C, self.N, self.M * self.tokens, **f32)
            P.atomic_state_grads = True
        else:
            dB_part = torch.empty(self.Bt, self.K, tiles, self.N, self.M * self.tokens, **f32)
            dC_part = torch.empty_like(dB_part)
        dA_part = torch.empty(self.Bt, self.K, self.Dm, self.N, **f32)
        dD_part = torch.empty(self.Bt, self.K, self.Dm, **f32)
        dbias_part = torch.empty_like(dD_part)
        if self.length > 0:
            states = torch.empty(self.Bt, self.K, self.Dm, chunks, self.N, **f32)
            P.chunk_states, P.chunks = states.data_ptr(), chunks
            P.dout0, P.dout1 = dout[0].data_ptr(), dout[-1].data_ptr()
            P.dout_stride_b, P.dout_stride_c, P.dout_stride_t = dout_strides
            if dlast_state is not None:
                P.dlast_state = dlast_state.data_ptr()
            P.du0, P.du1 = du[0].data_ptr(), du[-1].data_ptr()
            P.y_stride_b, P.y_stride_k, P.y_stride_c, P.y_stride_t = du_strides
            P.ddelta0, P.ddelta1 = ddelta[0].data_ptr(), ddelta[-1].data_ptr()
            P.ddelta_stride_b, P.ddelta_stride_k, P.ddelta_stride_c, P.ddelta_stride_t = ddelta_strides
            if dz is not None:
                P.dz = dz.data_ptr()
            P.dB_part, P.dC_part, P.dA_part = dB_part.data_ptr(), dC_part.data_ptr(), dA_part.data_ptr()
            P.dD_part, P.ddelta_bias_part = dD_part.data_ptr(), dbias_part.data_ptr()
            _launch(_C.backward, P, self.dtype, dev)
        else:
            for t in (dB_part, dC_part, dA_part, dD_part, dbias_part):
                t.zero_()

        def by_group(part, G):  # sum the tiles of each group in a fixed order
            if atomic:
                return part.view(self.Bt, self.K, G, self.N, self.M, self.tokens)
            return part.view(self.Bt, self.K, G, tiles // G, self.N, self.M, self.tokens).sum(3)

        return (by_group(dB_part, self.groups_B), by_group(dC_part, self.groups_C), dA_part.sum(0),
                dD_part.sum(0), dbias_part.sum(0))


def _launch(entry, P, dtype: torch.dtype, device: torch.device) -> None:
    """Run ``entry`` (``_C.forward`` or ``_C.backward``) on the current stream of ``device``. CPU
    tensors only reach here through the host emulation of the kernels (tests), which has no stream."""
    if device.type != "cuda":
        entry(P, DTYPE_CODE[dtype], 0)
        return
    with torch.cuda.device(device):
        entry(P, DTYPE_CODE[dtype], torch.cuda.current_stream(device).cuda_stream)


def _params(A, D, delta_bias, K, Dm):
    """A -> (K, Dm, N); D, delta_bias -> (K, Dm); fp32 contiguous (small)."""
    f = dict(dtype=torch.float32)
    A = A.to(**f).reshape(K, Dm, -1).contiguous()
    D = None if D is None else D.to(**f).reshape(K, Dm).contiguous()
    delta_bias = None if delta_bias is None else delta_bias.to(**f).reshape(K, Dm).contiguous()
    return A, D, delta_bias


def _out(y: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return y.to(_registry.output_dtype(dtype))


def _param_grads(dA, dD, dbias, A, D, delta_bias):
    return (dA.view(A.shape).to(A.dtype), None if D is None else dD.view(D.shape).to(D.dtype),
            None if delta_bias is None else dbias.view(delta_bias.shape).to(delta_bias.dtype))


def _dout(g: Optional[torch.Tensor], shape, device) -> torch.Tensor:
    """An output gradient as fp32 (zeros when autograd passes none)."""
    if g is None:
        return torch.zeros(shape, device=device, dtype=torch.float32)
    return g.to(torch.float32)


# ----------------------------------------------------------------------------------------------
# selective_scan


def _selective_scan_setup(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    Bt, Dm, L = u.shape
    dtype = _token_dtype(u, delta, B, C, z)
    cast = lambda t: None if t is None else t.to(dtype)  # noqa: E731
    u, delta, B, C, z = map(cast, (u, delta, B, C, z))
    A32, D32, bias32 = _params(A, D, delta_bias, 1, Dm)
    return Scan(KIND["selective_scan"], Bt, 1, Dm, A.shape[1], L, L, 1,
                u=Tokens([u[:, None]]), delta=Tokens([delta[:, None]]), B=Tokens([B[:, None]]),
                C=Tokens([C[:, None]]), A=A32, D=D32, delta_bias=bias32, softplus=bool(delta_softplus),
                dtype=dtype, z=None if z is None else Tokens([z[:, None]]), groups_B=B.shape[1],
                groups_C=C.shape[1])


def _strides3(t: torch.Tensor) -> tuple:
    """(b, k, c, t) strides of a (Bt, Dm, L) buffer without a route axis."""
    return t.stride(0), 0, t.stride(1), t.stride(2)


def _selective_scan_forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    scan = _selective_scan_setup(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    y = torch.empty(u.shape, device=u.device, dtype=torch.float32)
    last = torch.zeros(u.shape[0], u.shape[1], scan.N, device=u.device, dtype=torch.float32)
    scan.forward([y], _strides3(y), last)
    return _out(y, u.dtype), last


def _selective_scan_backward(grads, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    scan = _selective_scan_setup(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    dy = _dout(grads[0], u.shape, u.device)
    dlast = None if len(grads) < 2 or grads[1] is None else grads[1].to(torch.float32).contiguous()
    f32 = dict(device=u.device, dtype=torch.float32)
    du, ddelta = torch.empty(u.shape, **f32), torch.empty(u.shape, **f32)
    dz = None if z is None else torch.empty(u.shape, **f32)
    dB, dC, dA, dD, dbias = scan.backward([dy], (dy.stride(0), dy.stride(1), dy.stride(2)), [du], _strides3(du),
                                          [ddelta], _strides3(ddelta), dz, dlast)
    dA, dD, dbias = _param_grads(dA, dD, dbias, A, D, delta_bias)
    return [du.to(u.dtype), ddelta.to(delta.dtype), dA, dB[:, 0, :, :, 0].to(B.dtype),
            dC[:, 0, :, :, 0].to(C.dtype), dD, None if z is None else dz.to(z.dtype), dbias]


# ----------------------------------------------------------------------------------------------
# The map ops: ss2d, es2d, interleave_ss2d (one modality of tokens), cross_ss2d (two)


def _map_scan(kind, u_views, dts, Bs, Cs, A, D, delta_bias, delta_softplus, geometry, length, realign=(0, 0, 0, 0)):
    """u_views: per-modality (Bt, C, L) views; dts: (Bt, 4, Dm, T); Bs, Cs: (Bt, 4, N, T)."""
    Bt, K, Dm, T = dts[0].shape
    dtype = _token_dtype(*u_views, *dts, *Bs, *Cs)
    cast = lambda ts: _same_strides([t.to(dtype) for t in ts])  # noqa: E731
    A32, D32, bias32 = _params(A, D, delta_bias, K, Dm)
    return Scan(kind, Bt, K, Dm, A.shape[-1], length, T, len(dts),
                u=Tokens([v[:, None] for v in cast(u_views)]), delta=Tokens(cast(dts)),
                B=Tokens([b[:, :, None] for b in cast(Bs)]), C=Tokens([c[:, :, None] for c in cast(Cs)]),
                A=A32, D=D32, delta_bias=bias32, softplus=bool(delta_softplus), dtype=dtype,
                geometry=geometry, realign=realign)


def _flat(u: torch.Tensor) -> torch.Tensor:
    return u.reshape(u.shape[0], u.shape[1], -1)


def _route_sum_buffers(scan: Scan, Bt, Dm, L, outputs: int):
    """fp32 buffers for per-route outputs (or input gradients) and their (b, k, c, t) strides: one
    zeroed (Bt, Dm, L) sum per output with atomics, else (Bt, 4, Dm, L) partials. Sets the scan's mode."""
    f32 = dict(device=scan.A.device, dtype=torch.float32)
    scan.atomic_routes = atomic_sums()
    if scan.atomic_routes:
        bufs = [torch.zeros(Bt, Dm, L, **f32) for _ in range(outputs)]
        return bufs, _strides3(bufs[0])
    bufs = [torch.empty(Bt, 4, Dm, L, **f32) for _ in range(outputs)]
    return bufs, bufs[0].stride()


def _route_sums(scan: Scan, bufs):
    return bufs if scan.atomic_routes else [b.sum(1) for b in bufs]  # fixed-order sum over routes


def _route_summed_forward(scan: Scan, Bt, Dm, L, outputs=None):
    """The route-summed fp32 outputs (Bt, Dm, L), one per output map."""
    ys, strides = _route_sum_buffers(scan, Bt, Dm, L, outputs or scan.M)
    scan.forward(ys, strides)
    return _route_sums(scan, ys)


def _route_summed_backward(scan: Scan, douts, Bt, Dm, L, ddelta_like):
    """Backward of a route-summing op. Returns (du list, ddelta list, dB, dC, dA, dD, dbias)."""
    dev = scan.A.device
    douts = [d.reshape(Bt, Dm, L) for d in douts]
    douts = _same_strides(douts)
    dus, du_strides = _route_sum_buffers(scan, Bt, Dm, L, len(douts))
    ddeltas = [torch.empty(ddelta_like.shape, device=dev, dtype=torch.float32) for _ in range(scan.M)]
    rest = scan.backward(douts, douts[0].stride(), dus, du_strides, ddeltas, ddeltas[0].stride())
    return _route_sums(scan, dus), ddeltas, *rest


def _ss2d_forward(u, dt, B, C, A, D, delta_bias, delta_softplus):
    Bt, Dm, H, W = u.shape
    scan = _map_scan(KIND["ss2d"], [_flat(u)], [dt], [B], [C], A, D, delta_bias, delta_softplus, (H, W, 1, 1), H * W)
    (y,) = _route_summed_forward(scan, Bt, Dm, H * W)
    return _out(y.view(Bt, Dm, H, W), u.dtype)


def _ss2d_backward(grads, u, dt, B, C, A, D, delta_bias, delta_softplus):
    Bt, Dm, H, W = u.shape
    scan = _map_scan(KIND["ss2d"], [_flat(u)], [dt], [B], [C], A, D, delta_bias, delta_softplus, (H, W, 1, 1), H * W)
    (du,), (ddt,), dB, dC, dA, dD, dbias = _route_summed_backward(
        scan, [_dout(grads[0], u.shape, u.device)], Bt, Dm, H * W, dt)
    return [du.view(u.shape).to(u.dtype), ddt.to(dt.dtype), dB[:, :, 0, :, 0].to(B.dtype),
            dC[:, :, 0, :, 0].to(C.dtype), *_param_grads(dA, dD, dbias, A, D, delta_bias)]


def _es2d_scan(u, dt, B, C, A, D, delta_bias, delta_softplus):
    Bt, Dm, H, W = u.shape
    Hq, Wq = atrous_grid(H, W)
    return _map_scan(KIND["es2d"], [_flat(u)], [dt], [B], [C], A, D, delta_bias, delta_softplus,
                     (H, W, Hq, Wq), Hq * Wq)


def _es2d_forward(u, dt, B, C, A, D, delta_bias, delta_softplus):
    # every pixel belongs to exactly one route: the routes write one output directly
    scan = _es2d_scan(u, dt, B, C, A, D, delta_bias, delta_softplus)
    y = torch.empty(u.shape, device=u.device, dtype=torch.float32)
    scan.forward([y], _strides3(_flat(y)))
    return _out(y, u.dtype)


def _es2d_backward(grads, u, dt, B, C, A, D, delta_bias, delta_softplus):
    scan = _es2d_scan(u, dt, B, C, A, D, delta_bias, delta_softplus)
    dy = _flat(_dout(grads[0], u.shape, u.device))
    du = torch.empty(u.shape, device=u.device, dtype=torch.float32)
    ddt = torch.empty(dt.shape, device=u.device, dtype=torch.float32)
    dB, dC, dA, dD, dbias = scan.backward([dy], dy.stride(), [du], _strides3(_flat(du)), [ddt], ddt.stride())
    return [du.to(u.dtype), ddt.to(dt.dtype), dB[:, :, 0, :, 0].to(B.dtype), dC[:, :, 0, :, 0].to(C.dtype),
            *_param_grads(dA, dD, dbias, A, D, delta_bias)]


def _cross_scan(u0, u1, dt0, dt1, B0, B1, C0, C1, A, D, delta_bias, delta_softplus):
    Bt, Dm, H, W = u0.shape
    return _map_scan(KIND["cross_ss2d"], [_flat(u0), _flat(u1)], [dt0, dt1], [B0, B1], [C0, C1], A, D,
                     delta_bias, delta_softplus, (H, W, 1, 1), 2 * H * W)


def _cross_ss2d_forward(u0, u1, dt0, dt1, B0, B1, C0, C1, A, D, delta_bias, delta_softplus):
    Bt, Dm, H, W = u0.shape
    scan = _cross_scan(u0, u1, dt0, dt1, B0, B1, C0, C1, A, D, delta_bias, delta_softplus)
    y0, y1 = _route_summed_forward(scan, Bt, Dm, H * W)
    dtype = _token_dtype(u0, u1)
    return _out(y0.view(u0.shape), dtype), _out(y1.view(u1.shape), dtype)


def _cross_ss2d_backward(grads, u0, u1, dt0, dt1, B0, B1, C0, C1, A, D, delta_bias, delta_softplus):
    Bt, Dm, H, W = u0.shape
    scan = _cross_scan(u0, u1, dt0, dt1, B0, B1, C0, C1, A, D, delta_bias, delta_softplus)
    douts = [_dout(g, u0.shape, u0.device) for g in grads]
    (du0, du1), (ddt0, ddt1), dB, dC, dA, dD, dbias = _route_summed_backward(scan, douts, Bt, Dm, H * W, dt0)
    return [du0.view(u0.shape).to(u0.dtype), du1.view(u1.shape).to(u1.dtype), ddt0.to(dt0.dtype),
            ddt1.to(dt1.dtype), dB[:, :, 0, :, 0].to(B0.dtype), dB[:, :, 0, :, 1].to(B1.dtype),
            dC[:, :, 0, :, 0].to(C0.dtype), dC[:, :, 0, :, 1].to(C1.dtype),
            *_param_grads(dA, dD, dbias, A, D, delta_bias)]


def _realigned(u0, mode, axis):
    """(Hr, Wr) of the realigned map and the realign tuple of the kernel."""
    Bt, Cu, H, W = u0.shape
    on_width = axis == "width" and mode != "concat"
    return (H, 2 * W if on_width else W), (REALIGN_MODE[mode], REALIGN_AXIS[axis], Cu, W)


def _interleave_scan(u0, u1, dt, B, C, A, D, delta_bias, delta_softplus, mode, axis):
    (Hr, Wr), realign = _realigned(u0, mode, axis)
    return _map_scan(KIND["interleave_ss2d"], [_flat(u0), _flat(u1)], [dt], [B], [C], A, D, delta_bias,
                     delta_softplus, (Hr, Wr, 1, 1), Hr * Wr, realign), (Hr, Wr)


def _interleave_ss2d_forward(u0, u1, dt, B, C, A, D, delta_bias, delta_softplus, mode, axis):
    scan, (Hr, Wr) = _interleave_scan(u0, u1, dt, B, C, A, D, delta_bias, delta_softplus, mode, axis)
    Bt, Dr = dt.shape[0], dt.shape[2]
    (y,) = _route_summed_forward(scan, Bt, Dr, Hr * Wr, outputs=1)
    return _out(y.view(Bt, Dr, Hr, Wr), _token_dtype(u0, u1))


def _interleave_ss2d_backward(grads, u0, u1, dt, B, C, A, D, delta_bias, delta_softplus, mode, axis):
    scan, (Hr, Wr) = _interleave_scan(u0, u1, dt, B, C, A, D, delta_bias, delta_softplus, mode, axis)
    Bt, Dr = dt.shape[0], dt.shape[2]
    # du comes back in the realigned layout
    dy = _dout(grads[0], (Bt, Dr, Hr, Wr), u0.device)
    (du,), (ddt,), dB, dC, dA, dD, dbias = _route_summed_backward(scan, [dy], Bt, Dr, Hr * Wr, dt)
    du0, du1 = _unrealign(du.view(Bt, Dr, Hr, Wr), u0.shape, mode, axis)
    return [du0.to(u0.dtype), du1.to(u1.dtype), ddt.to(dt.dtype), dB[:, :, 0, :, 0].to(B.dtype),
            dC[:, :, 0, :, 0].to(C.dtype), *_param_grads(dA, dD, dbias, A, D, delta_bias)]


def _unrealign(r: torch.Tensor, shape, mode, axis):
    """The inverse of ``realign`` as views: the realigned map's gradient -> (du0, du1)."""
    Bt, Cu, H, W = shape
    if mode == "concat" or axis == "channel":
        if mode == "column":
            pair = r.view(Bt, Cu, 2, H, W)
            return pair[:, :, 0], pair[:, :, 1]
        return r[:, :Cu], r[:, Cu:]
    if mode == "column":
        pair = r.view(Bt, Cu, H, W, 2)
        return pair[..., 0], pair[..., 1]
    return r[..., :W], r[..., W:]


# ----------------------------------------------------------------------------------------------
# ssd_exchange: Mamba-2's scalar-A SSM is a selective scan over nh*P channels with the head's dt
# (read through delta_channel_divisor = P), A and D broadcast, and B, C grouped by head group.


def _ssd_scan(x, dt, A, B, C, D, dt_bias, dt_softplus):
    Bt, L, nh, P = x.shape
    Dm, N = nh * P, B.shape[-1]
    dtype = _token_dtype(x, dt, B, C)
    x, dt, B, C = (t.to(dtype) for t in (x, dt, B, C))
    u = x.reshape(Bt, L, Dm).transpose(1, 2)             # (Bt, Dm, L), a view for contiguous x
    delta = dt.transpose(1, 2)                           # (Bt, nh, L): channel d reads head d // P
    Bv, Cv = B.permute(0, 2, 3, 1), C.permute(0, 2, 3, 1)  # (Bt, G, N, L)
    A32 = A.to(torch.float32)[:, None, None].expand(nh, P, N).reshape(1, Dm, N).contiguous()
    D32 = None if D is None else D.to(torch.float32)[:, None].expand(nh, P).reshape(1, Dm).contiguous()
    bias32 = None if dt_bias is None else dt_bias.to(torch.float32)[:, None].expand(nh, P).reshape(1, Dm).contiguous()
    return Scan(KIND["selective_scan"], Bt, 1, Dm, N, L, L, 1, u=Tokens([u[:, None]]),
                delta=Tokens([delta[:, None]]), B=Tokens([Bv[:, None]]), C=Tokens([Cv[:, None]]), A=A32, D=D32,
                delta_bias=bias32, softplus=bool(dt_softplus), dtype=dtype, groups_B=B.shape[2],
                groups_C=C.shape[2], delta_channel_divisor=P)


def _ssd_direction_forward(x, dt, A, B, C, D, dt_bias, dt_softplus):
    scan = _ssd_scan(x, dt, A, B, C, D, dt_bias, dt_softplus)
    Bt, L, nh, P = x.shape
    y = torch.empty(Bt, L, nh, P, device=x.device, dtype=torch.float32)
    yv = y.view(Bt, L, nh * P).transpose(1, 2)
    scan.forward([yv], _strides3(yv))
    return _out(y, x.dtype)


def _ssd_direction_backward(dy, x, dt, A, B, C, D, dt_bias, dt_softplus):
    """Gradients of one direction: dx, ddt, dB, dC, dA, dD, ddt_bias (fp32)."""
    scan = _ssd_scan(x, dt, A, B, C, D, dt_bias, dt_softplus)
    Bt, L, nh, P = x.shape
    f32 = dict(device=x.device, dtype=torch.float32)
    dyv = _dout(dy, x.shape, x.device).reshape(Bt, L, nh * P).transpose(1, 2)
    dx = torch.empty(Bt, L, nh, P, **f32)
    dxv = dx.view(Bt, L, nh * P).transpose(1, 2)
    ddelta = torch.empty(Bt, L, nh, P, **f32)  # per channel; the head's dt gets the sum over P
    ddv = ddelta.view(Bt, L, nh * P).transpose(1, 2)
    dB, dC, dA, dD, dbias = scan.backward([dyv], (dyv.stride(0), dyv.stride(1), dyv.stride(2)), [dxv],
                                          _strides3(dxv), [ddv], _strides3(ddv))
    return (dx, ddelta.sum(3), dB[:, 0, :, :, 0].permute(0, 3, 1, 2), dC[:, 0, :, :, 0].permute(0, 3, 1, 2),
            dA.view(nh, P * B.shape[-1]).sum(1), dD.view(nh, P).sum(1), dbias.view(nh, P).sum(1))


def _ssd_exchange_forward(x0, x1, dt0, dt1, A, B0, B1, C0, C1, D, dt_bias, dt_softplus):
    return (_ssd_direction_forward(x0, dt0, A, B1, C1, D, dt_bias, dt_softplus),
            _ssd_direction_forward(x1, dt1, A, B0, C0, D, dt_bias, dt_softplus))


def _ssd_exchange_backward(grads, x0, x1, dt0, dt1, A, B0, B1, C0, C1, D, dt_bias, dt_softplus):
    dx0, ddt0, dB1, dC1, dA0, dD0, db0 = _ssd_direction_backward(grads[0], x0, dt0, A, B1, C1, D, dt_bias, dt_softplus)
    dx1, ddt1, dB0, dC0, dA1, dD1, db1 = _ssd_direction_backward(grads[1], x1, dt1, A, B0, C0, D, dt_bias, dt_softplus)
    return [dx0.to(x0.dtype), dx1.to(x1.dtype), ddt0.to(dt0.dtype), ddt1.to(dt1.dtype), (dA0 + dA1).to(A.dtype),
            dB0.to(B0.dtype), dB1.to(B1.dtype), dC0.to(C0.dtype), dC1.to(C1.dtype),
            None if D is None else (dD0 + dD1).to(D.dtype), None if dt_bias is None else (db0 + db1).to(dt_bias.dtype)]


_OPS = {
    "selective_scan": (_selective_scan_forward, _selective_scan_backward, _limits_selective_scan),
    "ss2d": (_ss2d_forward, _ss2d_backward, _limits_map("ss2d")),
    "es2d": (_es2d_forward, _es2d_backward, _limits_map("es2d")),
    "cross_ss2d": (_cross_ss2d_forward, _cross_ss2d_backward, _limits_cross_ss2d),
    "interleave_ss2d": (_interleave_ss2d_forward, _interleave_ss2d_backward, _limits_interleave_ss2d),
    "ssd_exchange": (_ssd_exchange_forward, _ssd_exchange_backward, _limits_ssd_exchange),
}
# (forward, backward with gradients by name, limits) per op
OPS = {op: (forward, named_backward(op, backward), limits) for op, (forward, backward, limits) in _OPS.items()}

if _C is not None:
    if not torch.cuda.is_available():
        _registry.set_available("cuda", (), "xscan._C_cuda is built but torch.cuda.is_available() is False")
    else:
        for _op, (_forward, _backward, _limits) in OPS.items():
            _registry.register("cuda", _op, _forward, _backward, _limits)
        _registry.set_available("cuda", ("cuda",))
