"""The hand-written CUDA backend (``xscan._C_cuda``, sources in csrc/cuda/): executes ``ScanSpec``s.

The same kernels (a forward, which saves its chunk start states when autograd needs a backward; a
backward, which reruns the forward to save them when it did not; the span summary and carry passes
of a split sequence) serve every op: the launch carries the spec's route, source and
geometry, and the kernels are instantiated per route policy (csrc/include/xscan/routes.h, the CPU
engine's own). This module packs a spec into the kernels' parameters (pointers, 64-bit strides of
the spec's views; the layout from csrc/cuda's plan_launch) and allocates the fp32 buffers they write.

Outputs and gradients are written in fp32. Sums across blocks (the routes' outputs and input
gradients where routes share a pixel; dB and dC over the channel tiles that share a group) are done
one of two ways:
- ``torch.use_deterministic_algorithms(True)``: one partial per route / per tile, summed here with
  ``torch.sum`` in a fixed order: bitwise repeatable, more memory;
- otherwise: float ``atomicAdd`` into one zeroed buffer (mamba's choice): less memory and traffic,
  summation order not fixed.
"""
from __future__ import annotations

import functools
import importlib
from typing import Optional

import torch

from .. import _registry
from ..spec import PER_TOKEN, ScanSpec, check_codes

try:
    _C = importlib.import_module("xscan._C_cuda")
except ImportError as e:
    _C = None
    _registry.set_available("cuda", (), f"xscan._C_cuda is not built ({e})")

DTYPE_CODE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
ROUTES_LIMIT = 65535  # gridDim.y (routes)
INT32_MAX = 2**31 - 1  # also gridDim.x: (batch, channel tile) pairs


def atomic_sums() -> bool:
    """Float atomics for cross-block sums, unless torch's deterministic mode is on."""
    return not torch.are_deterministic_algorithms_enabled()


def limits(spec: ScanSpec) -> None:
    """What the kernels cannot take, raised before any launch, naming the argument."""
    if spec.view("A").is_complex():
        raise ValueError("xscan.selective_scan (cuda backend): the CUDA kernels take a real A; complex A runs on the "
                         "reference and cpu backends (xscan.use_backend('reference') for CUDA tensors)")
    for name, (role, value) in spec.arguments.items():
        if role.name in PER_TOKEN and value is not None and value.dtype not in DTYPE_CODE:
            raise ValueError(f"xscan (cuda backend): {name} has dtype {value.dtype}; the CUDA kernels take float32, "
                             "float16 or bfloat16 (use xscan.use_backend('reference') for float64)")
    if not 1 <= spec.dstate <= _C.MAX_DSTATE:
        raise ValueError(f"xscan (cuda backend): d_state N = {spec.dstate} is outside the kernels' range "
                         f"1..{_C.MAX_DSTATE}")
    if spec.routes > ROUTES_LIMIT:
        raise ValueError(f"xscan (cuda backend): {spec.routes} routes exceed {ROUTES_LIMIT} (one grid row each)")
    if spec.largest_index() > INT32_MAX:
        raise ValueError(f"xscan (cuda backend): a route length, token count or map size of {spec.largest_index()} "
                         "exceeds 2^31 - 1 (the kernels index positions in 32 bits; offsets are 64-bit)")
    # the most blocks a layout can take: one warp per channel
    P = _sizes(spec)
    _C.plan(P, 0, MIN_SPAN, 1)
    blocks = spec.batch * P.group_tiles * P.tiles_per_group
    if blocks > INT32_MAX:
        raise ValueError(f"xscan (cuda backend): batch {spec.batch} needs {blocks} blocks per route, more than "
                         f"2^31 - 1")


# Layout (csrc/cuda/scan_params.h, plan_launch): a launch should bring RESIDENT_BLOCKS blocks per SM;
# it gets more warps per channel (up to MAX_WARPS), then, where it brings at most half of that,
# splits each sequence into spans of at least MIN_SPAN positions (a summary pass reruns the spans).
# Not yet tuned on a GPU.
RESIDENT_BLOCKS = 2
MIN_SPAN = 512
MAX_WARPS = 4
EMULATED_SMS = 132  # the host emulation plans as for an H100


@functools.cache
def _sm_count(device_index: Optional[int]) -> int:
    return torch.cuda.get_device_properties(device_index if device_index is not None else
                                            torch.cuda.current_device()).multi_processor_count


def _same_strides(views: list) -> list:
    """The kernel reads both modalities with one set of strides: make them agree."""
    if all(v.stride() == views[0].stride() for v in views):
        return views
    return [v.contiguous() for v in views]


def _sizes(spec: ScanSpec):
    """ScanParams with the spec's route, sizes and groups: what plan_launch reads."""
    P = _C.ScanParams()
    P.route, P.source, P.geometry = int(spec.route), int(spec.source), list(spec.geometry)
    P.batch, P.routes, P.channels, P.dstate = spec.batch, spec.routes, spec.channels, spec.dstate
    P.length, P.tokens, P.modalities = spec.length(), spec.tokens, spec.token_modalities()
    P.groups_B, P.groups_C = spec.view("B").shape[2], spec.view("C").shape[2]
    return P


def plan(spec: ScanSpec, sms: Optional[int] = None):
    """The launch layout of a spec on ``sms`` SMs (ScanParams, sizes and layout set); by default those
    of the spec's device (the host emulation's: EMULATED_SMS)."""
    if sms is None:
        device = spec.view("u").device
        sms = _sm_count(device.index) if device.type == "cuda" else EMULATED_SMS
    P = _sizes(spec)
    _C.plan(P, RESIDENT_BLOCKS * sms, MIN_SPAN, MAX_WARPS)
    return P


def checkpoints(spec: ScanSpec) -> tuple:
    """(shape, dtype) of the checkpoints the forward saves for its backward when autograd needs one:
    the state at every chunk start of the launch's layout, (Bt, K, Dm, chunks, N) fp32."""
    limits(spec)
    P = plan(spec)
    return (spec.batch, spec.routes, spec.channels, P.chunks, spec.dstate), torch.float32


def _chunk_states(run: _Launch, states: Optional[torch.Tensor]) -> Optional[int]:
    """The address of the forward's checkpoints for a launch, checked against its layout and device;
    None if none."""
    if states is None or not states.numel():
        return None
    P = run.P
    want = (P.batch, P.routes, P.channels, P.chunks, P.dstate)
    if (tuple(states.shape) != want or states.dtype != torch.float32 or not states.is_contiguous()
            or states.device != run.device):
        raise ValueError(f"xscan (cuda backend): checkpoints must be a contiguous float32 tensor of shape {want} on "
                         f"{run.device} (the forward's, of the same launch layout), got {states.dtype} "
                         f"{tuple(states.shape)} on {states.device}")
    return states.data_ptr()


class _Launch:
    """One spec packed into ScanParams; keeps every tensor it points at alive."""

    def __init__(self, spec: ScanSpec):
        limits(spec)
        self.spec, self.keep = spec, []
        self.device = spec.view("u").device
        self.f32 = dict(device=self.device, dtype=torch.float32)
        P = self.P = plan(spec)
        P.delta_softplus = spec.softplus
        self.tiles = P.group_tiles * P.tiles_per_group
        P.u = self._map(_C.MapTensor(), self._pair("u"))
        if spec.view("z") is not None:
            P.z = self._map(_C.MapTensor(), [spec.view("z")])
        P.delta, P.B, P.C = (self._tokens(self._pair(role)) for role in ("dt", "B", "C"))
        params = {name: None if spec.view(name) is None else self._keep(spec.view(name).float().contiguous())
                  for name in ("A", "D", "delta_bias")}
        P.A = params["A"].data_ptr()
        P.D = 0 if params["D"] is None else params["D"].data_ptr()
        P.delta_bias = 0 if params["delta_bias"] is None else params["delta_bias"].data_ptr()
        self.code = DTYPE_CODE[spec.dtype()]
        if P.segments > 1:
            rows = P.batch * P.routes * P.channels * P.segments
            P.span_states = self._keep(torch.empty(rows, P.dstate, **self.f32)).data_ptr()
            P.span_dt = self._keep(torch.empty(rows, **self.f32)).data_ptr()

    def _keep(self, t):
        self.keep.append(t)
        return t

    def _pair(self, role: str) -> list:
        views = [self.spec.view(role, m) for m in range(self.spec.modalities)]
        if role in ("B", "C") and (views[0].shape[-1] - 1) * views[0].stride(-1) > INT32_MAX:
            views = [v.contiguous() for v in views]  # the kernels step along T in 32 bits
        return [self._keep(v) for v in _same_strides(views)]

    @staticmethod
    def _map(target, views: list):
        target.data0, target.data1 = views[0].data_ptr(), views[-1].data_ptr()
        target.stride_b, target.stride_c, target.stride_h, target.stride_w = views[0].stride()
        return target

    @staticmethod
    def _tokens(views: list):
        t = _C.TokenTensor()
        t.data0, t.data1 = views[0].data_ptr(), views[-1].data_ptr()
        if views[0].dim() == 4:  # dt (Bt, K, Dm, T)
            t.stride_b, t.stride_k, t.stride_c, t.stride_t = views[0].stride()
        else:                    # B, C (Bt, K, G, N, T)
            t.stride_b, t.stride_k, t.stride_c, t.stride_n, t.stride_t = views[0].stride()
        return t

    def output_map(self, shape, per_route: bool, zeroed: bool, views_of) -> tuple:
        """An fp32 OutputMap over one buffer per modality slot: (K, slots, *shape) route partials, or
        (1, slots, *shape) for one sum (zeroed: atomics add into it) or direct writes.
        ``views_of(buf_slot)`` -> {slot: 4-D (b, c, h, w) view}. Returns (OutputMap, buffer)."""
        slots = self.spec.modalities
        make = torch.zeros if zeroed else torch.empty
        buf = make(self.spec.routes if per_route else 1, slots, *shape, **self.f32)
        o = _C.OutputMap()
        views = {}
        for m in range(slots):
            views.update(views_of(buf[0], m))
        o.data0, o.data1 = views[0].data_ptr(), views[slots - 1].data_ptr()
        o.stride_b, o.stride_c, o.stride_h, o.stride_w = views[0].stride()
        o.stride_k = buf.stride(0) if per_route else 0
        return o, buf

    def run(self, entry) -> None:
        """``entry`` (``_C.forward`` or ``_C.backward``) on the current stream of the device. CPU tensors
        only reach here through the host emulation of the kernels (tests), which has no stream."""
        if self.device.type != "cuda":
            entry(self.P, self.code, 0)
            return
        with torch.cuda.device(self.device):
            entry(self.P, self.code, torch.cuda.current_stream(self.device).cuda_stream)


def _route_sum(spec: ScanSpec) -> tuple:
    """(per-route partials, zeroed sum) for outputs the routes share."""
    shared = spec.route_sum and spec.routes > 1
    atomic = shared and atomic_sums()
    return shared and not atomic, atomic


def forward(spec: ScanSpec, checkpoints: Optional[torch.Tensor] = None) -> list:
    """The op's outputs; fills ``checkpoints`` (of ``checkpoints(spec)``) when given."""
    run = _Launch(spec)
    P = run.P
    saved = _chunk_states(run, checkpoints)
    if saved is not None:
        P.chunk_states = saved
    y_outs = [o for o in spec.outputs if o.role == "y"]
    partial, atomic = _route_sum(spec)
    P.atomic_routes = atomic

    def y_views(buf, m):  # the output whose slots hold modality m, seen in the engine layout
        i = next(i for i, o in enumerate(y_outs) if m in o.slots)
        return {m: y_outs[i].view(buf[i if len(y_outs) > 1 else 0])}

    P.y, ybuf = run.output_map(y_outs[0].shape, partial, atomic, y_views)
    last = None
    if any(o.role == "last_state" for o in spec.outputs):
        last = torch.empty(spec.batch, spec.routes, spec.channels, spec.dstate, **run.f32)
        P.last_state = last.data_ptr()
    if P.length > 0:
        run.run(_C.forward)
    ys = ybuf.sum(0) if partial else ybuf[0]
    result = [ys[i if len(y_outs) > 1 else 0].to(o.dtype) for i, o in enumerate(y_outs)]
    for o in spec.outputs:
        if o.role == "last_state":
            result.append(o.view.transpose(last, torch.empty(o.shape, device="meta")))
    return result


def backward(spec: ScanSpec, grads: list, checkpoints: Optional[torch.Tensor] = None) -> dict:
    """Gradients by argument name, from the forward's checkpoints when given (else the forward is rerun
    to save them first)."""
    run = _Launch(spec)
    P = run.P
    f32 = run.f32
    N, K, Bt, Dm = spec.dstate, spec.routes, spec.batch, spec.channels
    partial, atomic = _route_sum(spec)
    P.atomic_routes = atomic
    saved = _chunk_states(run, checkpoints)
    P.states_saved = saved is not None
    P.chunk_states = saved if P.states_saved else run._keep(torch.empty(Bt, K, Dm, P.chunks, N, **f32)).data_ptr()
    y_outs = [(o, g.float()) for o, g in zip(spec.outputs, grads) if o.role == "y"]
    gys = {m: run._keep(o.view(g)) for o, g in y_outs for m in o.slots}
    gys = _same_strides([gys[m] for m in range(spec.modalities)])
    P.dout = _C.OutputMap()
    P.dout.data0, P.dout.data1 = gys[0].data_ptr(), gys[-1].data_ptr()
    P.dout.stride_b, P.dout.stride_c, P.dout.stride_h, P.dout.stride_w = gys[0].stride()
    for o, g in zip(spec.outputs, grads):
        if o.role == "last_state":
            P.dlast_state = run._keep(o.view(g.float()).contiguous()).data_ptr()
    u_shape = spec.view("u").shape
    P.du, du = run.output_map(u_shape, partial, atomic, lambda buf, m: {m: buf[m]})
    M = spec.token_modalities()
    # a route that reads one modality's tokens (HEADS) leaves the other's rows of dt, dB, dC at 0
    fresh = torch.zeros if spec.kind.routes_read_one_modality() else torch.empty
    ddelta = fresh(M, Bt, K, Dm, spec.tokens, **f32)
    P.ddelta0, P.ddelta1 = ddelta[0].data_ptr(), ddelta[M - 1].data_ptr()
    P.ddelta_stride_b, P.ddelta_stride_k, P.ddelta_stride_c, P.ddelta_stride_t = ddelta[0].stride()
    dz = None
    if spec.view("z") is not None:
        dz = torch.empty(spec.view("z").shape, **f32)
        P.dz = dz.data_ptr()
        P.dz_stride_b, P.dz_stride_c, P.dz_stride_h, P.dz_stride_w = dz.stride()
    state_grads = {}
    P.atomic_state_grads = atomic_sums()
    for role in ("B", "C"):
        G = spec.view(role).shape[2]
        if P.atomic_state_grads:  # the kernel adds straight into (Bt, K, G, N, M * T)
            state_grads[role] = torch.zeros(Bt, K, G, N, M * spec.tokens, **f32)
        else:
            state_grads[role] = fresh(Bt, K, run.tiles, N, M * spec.tokens, **f32)
    P.dB_part, P.dC_part = state_grads["B"].data_ptr(), state_grads["C"].data_ptr()
    S = P.segments  # a partial per span of a split sequence
    if S > 1:
        P.span_adjoints = run._keep(torch.empty(Bt * K * Dm * S, N, **f32)).data_ptr()
    dA = torch.empty(Bt, K, Dm, S, N, **f32)
    dD, dbias = torch.empty(Bt, K, Dm, S, **f32), torch.empty(Bt, K, Dm, S, **f32)
    P.dA_part, P.dD_part, P.ddelta_bias_part = dA.data_ptr(), dD.data_ptr(), dbias.data_ptr()
    if P.length > 0:
        run.run(_C.backward)
    g_u = du.sum(0)

    def by_group(role):  # (M, Bt, K, G, N, T): tiles of a group summed in a fixed order
        part, G = state_grads[role], spec.view(role).shape[2]
        if not P.atomic_state_grads:
            part = part.view(Bt, K, G, run.tiles // G, N, M * spec.tokens).sum(3)
        return part.view(Bt, K, G, N, M, spec.tokens).permute(4, 0, 1, 2, 3, 5)

    tokens = dict(dt=ddelta, B=by_group("B"), C=by_group("C"))
    params = dict(A=dA.sum((0, 3)), D=dD.sum((0, 3)), delta_bias=dbias.sum((0, 3)), z=dz)
    return spec.argument_gradients(lambda role, slot: g_u[slot] if role == "u" else tokens[role][slot]
                                   if role in tokens else params[role])


class CudaExecutor(_registry.Executor):
    """This module's limits, checkpoints, forward and backward."""

    def limits(self, spec: ScanSpec) -> None:
        limits(spec)

    def checkpoints(self, spec: ScanSpec) -> tuple:
        return checkpoints(spec)

    def forward(self, spec: ScanSpec, checkpoints: Optional[torch.Tensor] = None) -> list:
        return forward(spec, checkpoints)

    def backward(self, spec: ScanSpec, grads: list, checkpoints: Optional[torch.Tensor] = None) -> dict:
        return backward(spec, grads, checkpoints)


def _load() -> Optional[str]:
    if _C is None:
        return None  # the reason is set above
    check_codes(_C, "xscan._C_cuda")
    _registry.backend("cuda").executor = CudaExecutor()
    if not torch.cuda.is_available():
        return "xscan._C_cuda is built but torch.cuda.is_available() is False"
    return None


_reason = _load()
if _C is not None:
    _registry.set_available("cuda", ("cuda",) if _reason is None else (), _reason)
