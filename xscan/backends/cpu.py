"""The C++/OpenMP CPU backend (``xscan._C``): executes ``ScanSpec``s with one engine
(csrc/cpu/scan_engine.h) for every op; the route kind picks its route policy (csrc/include/xscan/routes.h).

The engine reads every argument through the spec's views and accumulates outputs and gradients
into zeroed buffers seen through the same views, so it writes each gradient exactly where it read
the input (broadcast views accumulate: per-range partials keep that race-free). A forward for
training also writes its checkpoints (the state at every chunk start), from which the backward runs
without rerunning the forward's recurrence. selective_scan with a complex A runs its own kernel
(csrc/cpu/complex_scan.cpp), which keeps none.
"""
from __future__ import annotations

import importlib
from typing import Optional

import torch

from .. import _registry
from ..shapes import accumulate_dtype, state_dtype
from ..spec import ScanSpec, check_codes

MAP_ROLES = ("u", "dt", "B", "C")  # per modality slot


class CpuExecutor(_registry.Executor):
    def __init__(self, ext):
        self.C = ext

    def limits(self, spec: ScanSpec) -> None:
        """None: the engine takes every spec (64-bit indices, any d_state, complex A)."""

    def _inputs(self, spec: ScanSpec, with_grads: bool = False):
        """The engine's inputs (and, with_grads, zeroed gradient buffers of each argument's shape in
        the accumulation dtype, their views, and the buffers by argument name)."""
        acc = accumulate_dtype(spec.dtype())
        lists = {r: [None] * spec.modalities for r in MAP_ROLES}
        single = dict(z=None, A=None, D=None, delta_bias=None)
        grad_lists = {r: [None] * spec.modalities for r in MAP_ROLES}
        grad_single = dict(z=None, A=None, D=None, delta_bias=None)
        buffers = {}
        for name, (role, value) in spec.arguments.items():
            if role is None or value is None:
                continue
            grad = None
            if with_grads:
                buffers[name] = torch.zeros(value.shape, dtype=acc)
                grad = role.view(buffers[name])
            if role.name in lists:
                for s in role.slots:
                    lists[role.name][s] = spec.view(role.name, s)
                    grad_lists[role.name][s] = grad
            else:
                view = spec.view("z") if role.name == "z" else role.view(value.to(acc))
                single[role.name], grad_single[role.name] = view, grad
        engine_in = [lists["u"], lists["dt"], lists["B"], lists["C"], single["z"], single["A"], single["D"],
                     single["delta_bias"]]
        return engine_in, grad_lists, grad_single, buffers, acc

    def _outputs(self, spec: ScanSpec, acc, make):
        """Engine output buffers: y views per modality slot, last_state, and the op's outputs."""
        ys, last_state, outs = [None] * spec.modalities, None, []
        for out in spec.outputs:
            buf = make(out, acc)
            outs.append(buf)
            if out.role == "last_state":
                last_state = out.view(buf)
            for s in out.slots:
                ys[s] = out.view(buf)
        return ys, last_state, outs

    def checkpoints(self, spec: ScanSpec) -> Optional[tuple]:
        """(shape, dtype) of the checkpoints the engine's forward can save for its backward: the state
        at the start of every chunk of ``xscan._C.CHUNK`` positions after the first,
        (Bt, K, chunks - 1, Dm, N) in the accumulation dtype; None for a complex A."""
        if spec.view("A").is_complex():
            return None
        chunks = (spec.length() + self.C.CHUNK - 1) // self.C.CHUNK
        return (spec.batch, spec.routes, chunks - 1, spec.channels, spec.dstate), accumulate_dtype(spec.dtype())

    def forward(self, spec: ScanSpec, checkpoints: Optional[torch.Tensor] = None) -> list:
        """The op's outputs; fills ``checkpoints`` (of ``self.checkpoints(spec)``) when given."""
        if spec.view("A").is_complex():
            return self._complex(spec)
        engine_in, _, _, _, acc = self._inputs(spec)
        ys, last_state, outs = self._outputs(spec, acc, lambda out, acc: torch.zeros(out.shape, dtype=acc))
        self.C.scan_forward(int(spec.route), int(spec.source), list(spec.geometry), *engine_in, spec.softplus,
                            ys, last_state, checkpoints)
        return [buf.to(out.dtype) for buf, out in zip(outs, spec.outputs)]

    def backward(self, spec: ScanSpec, grads: list, checkpoints: Optional[torch.Tensor] = None) -> dict:
        """Gradients by argument name, from the forward's checkpoints when given (else recomputed)."""
        if spec.view("A").is_complex():
            return self._complex(spec, grads)
        engine_in, gl, gs, buffers, acc = self._inputs(spec, with_grads=True)
        grads = iter(grads)
        dys, dlast, _ = self._outputs(spec, acc, lambda out, acc: next(grads).to(acc).expand(out.shape))
        self.C.scan_backward(int(spec.route), int(spec.source), list(spec.geometry), *engine_in, spec.softplus,
                             dys, dlast, gl["u"], gl["dt"], gl["B"], gl["C"], gs["z"], gs["A"], gs["D"],
                             gs["delta_bias"], checkpoints)
        return {name: g.to(spec.arguments[name][1].dtype) for name, g in buffers.items()}

    def _complex(self, spec: ScanSpec, grads: Optional[list] = None):
        """selective_scan with a complex A: the arguments of its own kernel, by name."""
        a = {name: value for name, (_, value) in spec.arguments.items()}
        u = a["u"]
        cplx = state_dtype(u.dtype, a["A"])
        real = torch.float64 if cplx == torch.complex128 else torch.float32
        r = lambda t: None if t is None else t.to(real).contiguous()  # noqa: E731
        inputs = (r(u), r(a["delta"]), a["A"].to(cplx).contiguous(), a["B"].to(cplx), a["C"].to(cplx), r(a["D"]),
                  r(a["z"]), r(a["delta_bias"]), spec.softplus)
        Bt, Dm, _ = u.shape
        N = a["A"].shape[1]
        if grads is None:
            y, last = torch.empty(u.shape, dtype=real), torch.empty(Bt, Dm, N, dtype=cplx)
            self.C.complex_scan_forward(*inputs, y, last)
            return [y.to(spec.outputs[0].dtype), last]
        du, ddelta = torch.empty(u.shape, dtype=real), torch.empty(u.shape, dtype=real)
        dA = torch.zeros(Bt, Dm, N, dtype=cplx)
        dB, dC = torch.zeros(a["B"].shape, dtype=cplx), torch.zeros(a["C"].shape, dtype=cplx)
        dD, dbias = torch.empty(Bt, Dm, dtype=real), torch.empty(Bt, Dm, dtype=real)
        dz = None if a["z"] is None else torch.empty(u.shape, dtype=real)
        self.C.complex_scan_backward(*inputs, grads[0].to(real), grads[1].to(cplx).contiguous(), du, ddelta, dA, dB,
                                     dC, dD, dbias, dz)
        g = dict(u=du, delta=ddelta, A=dA.sum(0), B=dB, C=dC, D=dD.sum(0), z=dz, delta_bias=dbias.sum(0))
        return {name: g[name].to(value.dtype) for name, value in a.items() if isinstance(value, torch.Tensor)}


def _load() -> Optional[str]:
    try:
        ext = importlib.import_module("xscan._C")
    except ImportError as e:
        return f"xscan._C is not built ({e}); run `pip install -e .`"
    if not hasattr(ext, "CHUNK"):
        return "xscan._C is an old build; run `pip install -e .`"
    check_codes(ext, "xscan._C")
    _registry.backend("cpu").executor = CpuExecutor(ext)
    return None


_reason = _load()
_registry.set_available("cpu", ("cpu",) if _reason is None else (), _reason)
