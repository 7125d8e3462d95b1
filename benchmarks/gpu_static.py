"""Static report of xscan's GPU kernels for an H100 (sm_90), computed on a machine without a GPU.

    python benchmarks/gpu_static.py [--quick] [--json FILE] [--size 256] [--batch 1] [--jobs 2]
                                    [--cache DIR] [--mamba-sdist DIR]

1. CUDA: csrc/cuda/scan_{forward,backward}_{fp32,fp16,bf16}.cu, each compiled alone to an sm_90
   cubin (nvcc -Xptxas -v). Per kernel instantiation: registers, spill bytes (stores/loads) and
   static shared memory (ptxas), SASS instructions and CALL.REL subroutine calls (cuobjdump -sass),
   theoretical warps per SM.
2. Triton: every kernel variant the Triton executor launches for the ops of the four fusion
   networks at --size x --size, compiled for sm_90 with triton.compile (both autotuned warp counts),
   nothing launched. The same columns; shared memory is what the launch requests.
3. Grids: per op of the networks, CUDA blocks and Triton programs against the H100's 132 SMs.
4. Work per element: per op of the networks and at cuda_targets.py's selective_scan shape, the
   thread-instructions per (channel x position x state) of the CUDA forward and backward (every
   kernel they launch) beside mamba-ssm's selective_scan forward and backward kernels at the same
   shape, compiled from its source distribution (pip download into --mamba-sdist; without it the
   mamba column says why it is missing), and beside xscan's own selective_scan over the same elements
   (selective_scan_twin): benchmarks/per_element.py. JSON: "per_element": {"<op> fwd|bwd@<shape>":
   {"xscan": n, "mamba": n, "ratio": r, "selective_scan": n, "vs_selective_scan": r}}. Compiled probes
   are cached.

The ops and their shapes come from running each network forward on the meta device and planning
every xscan op it calls (no weights, no arithmetic). --quick (CI): the fp32 CUDA files only (Triton
is compiled at every autotune config in both runs). Exit status 0 unless a
compilation fails; a part whose tools are missing says 'skipped: why'.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # the xscan of this checkout, whose csrc/ is compiled

from gpu.cuda_static import cuda_report  # noqa: E402
from gpu.elements import beside_selective_scan, per_element_report  # noqa: E402
from gpu.network import network_ops, selective_scan_twin, target_op  # noqa: E402
from gpu.occupancy import H100  # noqa: E402
from gpu.report import cuda_table, findings, ops_rows, ops_table, per_element_table, triton_table  # noqa: E402
from gpu.triton_static import triton_report  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fp32 CUDA files only")
    parser.add_argument("--json", metavar="FILE", help="also write everything as JSON")
    parser.add_argument("--size", type=int, default=256, help="image side of the networks' inputs")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=2, help="nvcc processes at a time")
    parser.add_argument("--no-cuda", action="store_true")
    parser.add_argument("--no-triton", action="store_true")
    parser.add_argument("--cache", default=None, help="compiled probes and mamba-ssm's source (default "
                        "$XSCAN_GPUSIM_CACHE or ~/.cache/xscan-gpusim)")
    parser.add_argument("--mamba-sdist", metavar="DIR", help="where to download and extract mamba-ssm's source "
                        "distribution (default: the cache)")
    opts = parser.parse_args(argv)
    start = time.time()

    ops = network_ops(opts.size, opts.batch)
    seconds = dict(shapes=round(time.time() - start, 1))
    dtypes = ("fp32",) if opts.quick else ("fp32", "fp16", "bf16")
    files = [f"scan_{kind}_{d}.cu" for d in dtypes for kind in ("backward", "forward")]  # longest first

    def timed(part, f, *args):
        t = time.time()
        result = f(*args)
        seconds[part] = round(time.time() - t, 1)
        return result

    twins = [selective_scan_twin(call) for call in ops]
    with ThreadPoolExecutor(1) as background:  # nvcc runs while triton compiles, one part after the other
        cuda = background.submit(timed, "cuda", cuda_report, files, opts.jobs) if not opts.no_cuda else None
        pe = None
        if not opts.no_cuda:
            import per_element

            pe = background.submit(timed, "per_element", per_element_report, ops + twins + [target_op()],
                                   opts.cache or per_element.default_cache(), opts.mamba_sdist, opts.jobs)
        tri = timed("triton", triton_report, ops) if not opts.no_triton else dict(skipped="--no-triton")
        cuda = cuda.result() if cuda else dict(skipped="--no-cuda")
        pe = pe.result() if pe else dict(skipped="--no-cuda")
    if "per_element" in pe:
        beside_selective_scan(pe["per_element"], ops, twins)
    rows = ops_rows(ops, cuda, tri)
    notes = findings(cuda, tri, rows, pe)
    seconds["total"] = round(time.time() - start, 1)

    print(f"# GPU kernels, static report for {H100.name}\n\n{'quick' if opts.quick else 'full'} run; the networks' "
          f"ops at {opts.size}x{opts.size}, batch {opts.batch}; seconds: "
          + ", ".join(f"{k} {v}" for k, v in seconds.items()) + "\n")
    print(cuda_table(cuda) + "\n")
    print(triton_table(tri) + "\n")
    print(ops_table(rows, opts.batch) + "\n")
    print(per_element_table(pe) + "\n")
    print("Findings\n\n" + ("\n".join(f"- {n}" for n in notes) or "- none"))
    failures = cuda.get("failed", []) + tri.get("failed", []) + pe.get("failed", [])
    for f in failures:
        print(f"FAILED {f}", file=sys.stderr)
    if opts.json:
        tri = {k: v for k, v in tri.items() if k != "launches"}  # in rows, per op
        with open(opts.json, "w") as f:
            json.dump(dict(gpu=dataclasses.asdict(H100), size=opts.size, batch=opts.batch, quick=opts.quick,
                           seconds=seconds, cuda=cuda, triton=tri, ops=rows, findings=notes,
                           per_element=pe.get("per_element", {}),
                           per_element_detail={k: v for k, v in pe.items() if k != "per_element"}), f, indent=1,
                      default=str)  # constexpr values such as tl.float32
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
