"""xscan's CUDA kernels compiled for sm_90 and their launches at the networks' shapes (the layout rule
of csrc/cuda/scan_params.h)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor


from .binaries import demangle, find_tool, ptxas_usage, sass_counts
from .occupancy import H100, occupancy

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def cuda_constants() -> tuple[int, int]:
    """(kThreadsPerBlock, kItems) from csrc/cuda/scan_params.h."""
    with open(os.path.join(ROOT, "csrc", "cuda", "scan_params.h")) as f:
        text = f.read()
    return tuple(int(re.search(rf"constexpr int {name} = (\d+);", text)[1])
                 for name in ("kThreadsPerBlock", "kItems"))


def compile_cuda(name: str, nvcc: str, workdir: str) -> dict:
    cubin = os.path.join(workdir, name.replace(".cu", ".cubin"))
    cmd = [nvcc, "-std=c++17", "-O3", "--use_fast_math", "-cubin", "-arch=sm_90",
           "-I", os.path.join(ROOT, "csrc", "include"), "-Xptxas", "-v",
           os.path.join(ROOT, "csrc", "cuda", name), "-o", cubin]
    start = time.time()
    run = subprocess.run(cmd, capture_output=True, text=True)
    return dict(file=name, ok=run.returncode == 0, seconds=round(time.time() - start, 1),
                log=run.stdout + run.stderr, cubin=cubin)


def cuda_report(files: list[str], jobs: int) -> dict:
    nvcc = shutil.which(os.environ.get("NVCC", "nvcc"))
    if not nvcc:
        return dict(skipped="nvcc not found (set NVCC or put it on PATH)")
    cuobjdump = find_tool("cuobjdump", nvcc)
    threads, _ = cuda_constants()
    kernels, compiles, failed = [], [], []
    with tempfile.TemporaryDirectory() as workdir, ThreadPoolExecutor(jobs) as pool:
        for result in pool.map(lambda f: compile_cuda(f, nvcc, workdir), files):
            compiles.append({k: result[k] for k in ("file", "seconds", "ok")})
            if not result["ok"]:
                failed.append(f"nvcc {result['file']}:\n{result['log'][-3000:]}")
                continue
            sass = sass_counts(result["cubin"], cuobjdump)
            for mangled, usage in ptxas_usage(result["log"]).items():
                row = dict(mangled=mangled, **usage, **sass.get(mangled, {}))
                # the backward files instantiate the forward kernels again: one row unless they differ
                same = next((k for k in kernels if all(k[f] == v for f, v in row.items())), None)
                if same:
                    same["files"].append(result["file"])
                    continue
                row["warps_per_sm"], row["limit"] = occupancy(row["regs"], row["smem"], threads // 32)
                kernels.append(dict(row, files=[result["file"]]))
    names = demangle(sorted({k["mangled"] for k in kernels}))
    report = dict(threads_per_block=threads, compiles=compiles,
                  kernels=[dict(kernel=names[k["mangled"]], **k) for k in kernels])
    if not cuobjdump:
        report["note"] = "cuobjdump not found: no SASS counts"
    if failed:
        report["failed"] = failed
    return report


def cuda_launch(spec, backward: bool) -> dict:
    """A spec's CUDA forward or backward launch, by the kernels' own layout rule (plan_launch in
    csrc/cuda/scan_params.h, through xscan._C.cuda_layout) on an H100: the route policy its kernels
    are instantiated for, blocks (after the sequence split: spans per sequence), warps per channel,
    dynamic shared memory."""
    from xscan import _C
    from xscan.backends.cuda import MAX_WARPS, MIN_SPAN, RESIDENT_BLOCKS

    layout = _C.cuda_layout(spec.batch, spec.routes, spec.channels, spec.dstate, spec.length(),
                            spec.view("B").shape[2], spec.view("C").shape[2], RESIDENT_BLOCKS * H100.sms, MIN_SPAN,
                            MAX_WARPS)
    policy = spec.kind.policy_for(spec.source)
    blocks = layout["tiles"] * spec.routes * spec.batch
    return dict(policy=policy, blocks=blocks * layout["segments"], spans=layout["segments"],
                span_length=layout["span_length"], warps_per_channel=layout["warps_per_channel"],
                chunk_length=layout["chunk_length"], tiles=layout["tiles"],
                smem=layout["backward_shared_bytes" if backward else "forward_shared_bytes"])
