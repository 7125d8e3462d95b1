"""Every Triton kernel variant the networks' ops launch, compiled for sm_90 without a device
(xscan/triton_kernels/offline.py)."""
from __future__ import annotations

import contextlib
import dataclasses
import importlib
import io
import os
import subprocess
import tempfile
import time

import torch

from .binaries import find_tool, ptxas_usage, sass_counts
from .network import OpCall
from .occupancy import occupancy



def materialize(spec):
    """The spec on uninitialised CPU tensors of the same shapes, strides, offsets and identities, so
    that the Triton executor plans and specialises its launches as on a GPU."""
    cpu = {}

    def real(t):
        if t is not None and id(t) not in cpu:
            extent = t.storage_offset() + sum((n - 1) * s for n, s in zip(t.shape, t.stride())) + 1
            cpu[id(t)] = torch.empty(extent if t.numel() else 0, dtype=t.dtype).as_strided(
                t.shape, t.stride(), t.storage_offset() if t.numel() else 0)
        return None if t is None else cpu[id(t)]

    return dataclasses.replace(spec, arguments={n: (role, real(v)) for n, (role, v) in spec.arguments.items()})


def triton_compile(fn, args, kwargs, target, cuobjdump) -> dict:
    """Compile one launch's kernel as triton would for it; its resources from ptxas' log and the
    cubin's SASS."""
    from triton import knobs

    from xscan.triton_kernels.offline import BoundLaunch

    launch = BoundLaunch(fn, args, kwargs, target)
    start = time.time()
    log = io.StringIO()
    with contextlib.redirect_stdout(log), knobs.nvidia.scope():
        knobs.nvidia.dump_ptxas_log = True  # triton prints ptxas -v's log (when it runs ptxas)
        kernel = launch.compile()
    seconds = time.time() - start
    cached = "Used" not in log.getvalue()
    with tempfile.TemporaryDirectory() as workdir:
        if cached:  # from triton's cache: run its ptxas -v on the PTX ourselves
            log = io.StringIO(ptxas_log(kernel.asm["ptx"], workdir, target.arch))
        cubin = os.path.join(workdir, "kernel.cubin")
        with open(cubin, "wb") as f:
            f.write(kernel.asm["cubin"])
        usage = next(iter(ptxas_usage(log.getvalue()).values()), {})
        sass = next(iter(sass_counts(cubin, cuobjdump).values()), {})
    names = launch.constexprs
    row = dict(kernel=fn.fn.__name__, variant=variant_name(names), num_warps=kernel.metadata.num_warps,
               launch_shared=kernel.metadata.shared, regs=usage.get("regs"), spill_stores=usage.get("spill_stores"),
               spill_loads=usage.get("spill_loads"), stack=usage.get("stack"), smem=usage.get("smem", 0), **sass,
               constexprs=names, compile_seconds=round(seconds, 1), cached=cached)
    row["warps_per_sm"], row["limit"] = occupancy(row["regs"] or 0, row["launch_shared"] + row["smem"],
                                                  row["num_warps"])
    return row


def ptxas_log(ptx: str, workdir: str, capability: int) -> str:
    """ptxas -v on triton's PTX with the options triton's make_cubin passes."""
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability

    path = os.path.join(workdir, "kernel.ptx")
    with open(path, "w") as f:
        f.write(ptx)
    cmd = [get_ptxas(capability).path, "-lineinfo", "-v", "--regAllocOptLevel=2",
           f"--gpu-name={sm_arch_from_capability(capability)}", path, "-o", path + ".o"]
    return subprocess.run(cmd, capture_output=True, text=True).stderr


def variant_name(c: dict) -> str:
    """The constexprs that tell a kernel's variants apart, in short."""
    from xscan.spec import Route, Source

    parts = [kind(c[key]).name.lower() for key, kind in (("ROUTE", Route), ("SOURCE", Source)) if key in c]
    parts += [f"{k}={c[k]}" for k in ("BLOCK_D", "SUB", "BLOCK_P", "BLOCK_N", "BLOCK_R", "CHUNK") if k in c]
    parts += [k for k in ("BACKWARD", "REVERSE", "HAS_LAST", "HAS_INIT") if c.get(k) is True]
    if "FLAGS" in c and "ROUTE" in c:  # the Mamba-1 scans' (xscan/triton_kernels/scan.py): which modality-1 inputs
        parts += [k for k, on in zip(("TWO_U", "TWO_TOK"), c["FLAGS"]) if on]
    return " ".join(parts)


def triton_report(ops: list[OpCall]) -> dict:
    """Compile every kernel variant the ops launch; record each op's launches (kernel, grid)."""
    try:
        import triton
        from triton.backends.compiler import GPUTarget

        from xscan.triton_kernels.offline import intercepted_launches
    except ImportError as e:
        return dict(skipped=f"triton is not importable ({e})")
    if os.environ.get("TRITON_INTERPRET") == "1":
        return dict(skipped="TRITON_INTERPRET=1 (the kernels are decorated for the interpreter)")
    executor = importlib.import_module("xscan.triton_kernels.executor").TritonExecutor()
    target = GPUTarget("cuda", 90, 32)
    cuobjdump = find_tool("cuobjdump")
    compiled, launches, failed = {}, {}, []
    where = {}  # the op and pass being run

    def on_launch(fn, args, kwargs, grid):
        bound = dict(zip(fn.arg_names, args), **kwargs)
        variant = (fn.fn.__name__, tuple((p.name, bound.get(p.name)) for p in fn.params if p.is_constexpr))
        key = (*variant, kwargs.get("num_warps", 4))  # one compile each, at the first launch's arguments
        if key not in compiled:
            try:
                compiled[key] = triton_compile(fn, args, kwargs, target, cuobjdump)
            except Exception as e:  # report it, go on with the others
                compiled[key] = None
                failed.append(f"triton {fn.fn.__name__} {dict(variant[1])}: {type(e).__name__}: {e}")
        grid = tuple(grid) + (1,) * (3 - len(grid))
        launch = dict(kernel=fn.fn.__name__, grid=grid, variant=variant)
        per_op = launches.setdefault((where["op"], where["pass"]), [])
        if launch not in per_op:  # every autotune config launches it again
            per_op.append(launch)

    with intercepted_launches(on_launch):
        for i, call in enumerate(ops):
            spec = materialize(call.spec)
            where.update({"op": i, "pass": "forward"})
            outs = executor.forward(spec)
            where["pass"] = "backward"
            executor.backward(spec, [torch.empty(o.shape, dtype=o.dtype) for o in outs])
    report = dict(version=triton.__version__, kernels=[k for k in compiled.values() if k], launches=launches)
    if failed:
        report["failed"] = failed
    return report
