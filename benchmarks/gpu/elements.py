"""Work per element of the networks' ops beside mamba-ssm's kernels and xscan's own selective_scan
(benchmarks/per_element.py)."""
from __future__ import annotations

import os
import shutil
import subprocess


from .binaries import find_tool
from .cuda_static import cuda_launch
from .network import OpCall



def element_cases(calls: list[OpCall]) -> list[dict]:
    """per_element.report's cases: each distinct op and shape with its CUDA layout on an H100 (float
    atomics where routes share an output: torch's default, non-deterministic mode)."""
    cases = {}
    for call in calls:
        s, launch = call.spec, cuda_launch(call.spec, False)
        op, shape = element_name(call)
        cases.setdefault((op, shape), dict(
            op=op, shape=shape, batch=s.batch, routes=s.routes, channels=s.channels, dstate=s.dstate,
            length=s.length(), policy=launch["policy"], warps_per_channel=launch["warps_per_channel"],
            chunk_length=launch["chunk_length"], tiles=launch["tiles"], segments=launch["spans"],
            span_length=launch["span_length"], softplus=bool(s.softplus), gated=s.view("z") is not None,
            atomic_routes=bool(s.route_sum and s.routes > 1), token_runs=token_runs(s, launch["policy"]),
            realigned_axis="" if s.source.name == "TOKEN" else s.source.name.split("_")[0].lower()))
    return list(cases.values())


def element_name(call: OpCall) -> tuple[str, str]:
    """(op, shape) of a call's per_element cases; its rows are "<op> fwd|bwd@<shape>"."""
    op, _, shape = call.label().partition(" ")
    return op, f"{shape} Bt={call.spec.batch}"


def beside_selective_scan(figures: dict, calls: list[OpCall], twins: list[OpCall]) -> None:
    """Adds to each call's per_element rows xscan's count for its selective_scan twin (same element
    count) and the ratio of the two."""
    for call, twin in zip(calls, twins):
        (op, shape), (twin_op, twin_shape) = element_name(call), element_name(twin)
        for label in ("fwd", "bwd"):
            row, base = figures.get(f"{op} {label}@{shape}"), figures.get(f"{twin_op} {label}@{twin_shape}")
            if row and base:
                row.update(selective_scan=base["xscan"], vs_selective_scan=round(row["xscan"] / base["xscan"], 2))


def token_runs(spec, policy: str) -> bool:
    """Whether the fp32 CUDA launch of a spec reads B and C as vector runs (with_token_runs,
    csrc/cuda/scan_kernel.cuh): a policy with runs, a route length of whole runs of 8 and as many
    positions as tokens (CROSS_PAIR: two a token), and every B and C row unit-stride on a 16-byte
    boundary (the allocation's own base taken as aligned, as torch's CUDA allocations are)."""
    import per_element
    from xscan.spec import POLICIES

    kind = POLICIES[policy]
    if not kind.token_runs or spec.length() % per_element.KERNEL_ITEMS:
        return False
    per_token = kind.positions_per_token
    for role in ("B", "C"):
        for view in spec.tensors[role]:
            *outer, stride_t = view.stride()
            if (view.shape[-1] * per_token != spec.length() or stride_t != 1 or view.storage_offset() % 4
                    or any(st % 4 for st in outer)):
                return False
    return True


def per_element_report(calls: list[OpCall], cache: str, mamba_dir: str | None, jobs: int) -> dict:
    """Thread-instructions per (channel x position x state) of xscan's CUDA passes and mamba-ssm's
    selective_scan kernels at each call's shape (benchmarks/per_element.py)."""
    import per_element

    nvcc = shutil.which(os.environ.get("NVCC", "nvcc"))
    cuobjdump = find_tool("cuobjdump", nvcc)
    if not nvcc or not cuobjdump:
        return dict(skipped=f"{'nvcc' if not nvcc else 'cuobjdump'} not found")
    try:
        return per_element.report(element_cases(calls), cache, mamba_dir or cache, nvcc, cuobjdump, jobs)
    except (RuntimeError, subprocess.CalledProcessError) as e:
        return dict(failed=[f"per element: {e}"])
