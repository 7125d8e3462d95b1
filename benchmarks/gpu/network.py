"""The networks' xscan op calls and their ScanSpecs, captured on the meta device (no weights, no arithmetic)."""
from __future__ import annotations

import dataclasses
import importlib

import torch
from torch.utils._python_dispatch import TorchDispatchMode



@dataclasses.dataclass
class OpCall:
    """A distinct xscan op call of a network, as its ScanSpec (on meta tensors)."""
    network: str
    op: str
    spec: object
    calls: int = 1

    def label(self) -> str:
        s = self.spec
        H, W = s.scanned_map()
        if s.route.name == "HEADS":
            shape = f"L={W} nh={s.channels} P={H} N={s.dstate}"
        elif s.route.name == "LINE":
            shape = f"L={W} Dm={s.channels} N={s.dstate}"
        else:
            shape = f"{H}x{W} Dm={s.channels} N={s.dstate}"
        return f"{self.op} {shape}" + ("" if s.source.name == "TOKEN" else f" {s.source.name.lower()}")


class Planner(TorchDispatchMode):
    """Plans each xscan op call as its backend would (one OpCall per distinct call), then lets the fake
    kernel run."""

    def __init__(self, network):
        super().__init__()
        self.network, self.calls = network, {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        from xscan.ops._define import output_dtype

        ns, _, name = func._schema.name.partition("::")
        if ns == "xscan" and not name.endswith("_backward"):
            *a, fp32_output, _backend = args
            spec = importlib.import_module(f"xscan.ops.{name}").plan(*a, output_dtype(a[0].dtype, fp32_output))
            key = (name, spec.route, spec.source, spec.geometry, spec.softplus, str(spec.dtype()),
                   tuple((role, tuple(v.shape), v.stride()) for role, views in sorted(spec.tensors.items())
                         for v in views if v is not None))
            if key in self.calls:
                self.calls[key].calls += 1
            else:
                self.calls[key] = OpCall(self.network, name, spec)
        return func(*args, **(kwargs or {}))


def network_ops(size: int, batch: int) -> list[OpCall]:
    """Every distinct xscan op call in each network's forward at size x size (training runs the
    same calls, and the backward of each)."""
    from xscan.models import MODELS

    ops = []
    for network, cls in MODELS.items():
        net = cls().to("meta").eval()  # built on the CPU: some constructors read values
        images = [torch.rand(batch, 1, size, size, device="meta") for _ in range(2)]
        planner = Planner(network)
        with torch.no_grad(), planner:
            net(*images)
        ops += planner.calls.values()
    return ops


def planned_selective_scan(network: str, Bt: int, Dm: int, L: int, N: int, groups: int | None, D: bool, z: bool,
                           delta_bias: bool, softplus: bool) -> OpCall:
    """An xscan.selective_scan call on meta tensors, planned: B and C (Bt, N, L), or (Bt, groups, N, L);
    D, z, delta_bias present or not."""
    import xscan

    def empty(*shape):
        return torch.empty(*shape, device="meta")

    bc = (Bt, N, L) if groups is None else (Bt, groups, N, L)
    planner = Planner(network)
    with torch.no_grad(), planner:
        xscan.selective_scan(empty(Bt, Dm, L), empty(Bt, Dm, L), empty(Dm, N), empty(*bc), empty(*bc),
                             D=empty(Dm) if D else None, z=empty(Bt, Dm, L) if z else None,
                             delta_bias=empty(Dm) if delta_bias else None, delta_softplus=softplus)
    return next(iter(planner.calls.values()))


def target_op() -> OpCall:
    """benchmarks/cuda_targets.py's selective_scan: Bt=32 Dm=192 L=3136 N=16, D, z, delta_bias, softplus,
    B and C (Bt, N, L)."""
    return planned_selective_scan("cuda_targets", 32, 192, 3136, 16, None, True, True, True, True)


def selective_scan_twin(call: OpCall) -> OpCall:
    """xscan's selective_scan over as many elements as an op call, laid out as the call's routes:
    Bt sequences of its route length, routes x channels channels, its N, B and C one group per route,
    with the call's D, z, delta_bias and softplus. Issue #26's "every op <= 1.2x xscan's own
    selective_scan at the same element count" divides by this."""
    s = call.spec
    return planned_selective_scan(call.network, s.batch, s.routes * s.channels, s.length(), s.dstate, s.routes,
                                  *(s.view(role) is not None for role in ("D", "z", "delta_bias")), bool(s.softplus))
