"""Compile every kernel variant the ops launch for a GPU target, on a machine without a GPU.

    TRITON_INTERPRET=0 python -m xscan.triton_kernels.compile_check [--arch 80,90]

Runs each op's forward and backward on small CPU tensors with the Triton launches replaced by an
ahead-of-time compile to PTX/cubin for each ``sm_<arch>`` at each warp count the autotuner can pick
(nothing is launched, the numbers are not computed): it catches what the interpreter does not check
(types, layouts, unsupported ops, register-tile shapes). The ops run at d_state 16 and 18 (one tile
of 16 states; 16 and a tail tile of 2: the networks'), ssd_exchange also with fp16 and bf16 inputs,
and the backward's reverse scan alone (scan.reverse_recurrence_tile) at every tile shape
scan_backward can take. Prints one line per compiled variant and exits non-zero on the first error.
Then runs selective_scan, ss2d and ssd_exchange again at other sequence lengths and map sizes
(batch 2) whose strides keep their divisibility by 16: a variant compiled anew there is a recompile
on a new image size, and fails the check (the sizes are unspecialised; a stride's divisibility by 16
or a stride equal to 1 still selects a variant). The cross, atrous and interleaved routes still
recompile between such sizes (strides of their token layouts that become 1 or change class).
"""
from __future__ import annotations

import argparse
import os
import sys
import time


def resource_usage(cubin: bytes) -> str:
    """Registers, stack (spills) and shared memory of a cubin, from the cuobjdump bundled with triton."""
    import re
    import subprocess
    import tempfile

    import triton
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        try:
            out = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
        except OSError:
            return "resource usage unavailable"
    found = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+)", out)
    return f"{found[1]} regs, stack {found[2]} B, shared {found[3]} B" if found else "resource usage unavailable"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="90", help="compute capabilities, comma separated, e.g. 80,90")
    parser.add_argument("--dtypes", default="float32,bfloat16", help="input dtypes, comma separated")
    parser.add_argument("--warps", type=int, default=None, help="num_warps (default: every autotuned one)")
    opts = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("compile_check: unset TRITON_INTERPRET (the kernels must be decorated for compilation)")
        return 2

    from triton.backends.compiler import GPUTarget

    from . import tiles
    from .offline import BoundLaunch, intercepted_launches

    targets = [GPUTarget("cuda", int(arch), 32) for arch in opts.arch.split(",")]
    seen = set()

    def compile_instead_of_launch(fn, args, kwargs, grid):
        """At --warps, else the launch's own (an autotune config's; chunk_carry's), else every
        autotuned warp count (the reverse scan alone, as the backward runs it)."""
        warps = [opts.warps] if opts.warps else [kwargs["num_warps"]] if "num_warps" in kwargs else tiles.WARPS
        for target in targets:
            for w in warps:
                launch = BoundLaunch(fn, args, dict(kwargs, num_warps=w), target)
                if launch.key in seen:
                    continue
                seen.add(launch.key)
                start = time.time()
                kernel = launch.compile()
                print(f"  {fn.fn.__name__}: sm_{target.arch} ok, {kernel.metadata.num_warps} warps, "
                      f"{resource_usage(kernel.asm['cubin'])}, {time.time() - start:.1f}s", flush=True)

    with intercepted_launches(compile_instead_of_launch):
        return _compile_every_variant(opts, seen)


def _compile_every_variant(opts, seen: set) -> int:
    """Runs the ops (their launches compile instead, into ``seen``); 0, or 1 at the first failure."""
    import torch

    from ..inputs import make_inputs, spec_of
    from . import scan, tiles
    from .executor import TritonExecutor

    executor = TritonExecutor()

    cases = [("selective_scan", dict(Bt=1, Dm=4, N=16, L=8, G=2)), ("ss2d", dict(Bt=1, Dm=4, N=16, H=9, W=9)),
             ("es2d", dict(Bt=1, Dm=4, N=16, H=9, W=9)), ("cross_ss2d", dict(Bt=1, Dm=4, N=16, H=9, W=9)),
             ("interleave_ss2d", dict(Bt=1, Dm=4, N=16, H=9, W=9)), ("ssd_exchange", dict(Bt=1, L=8, nh=2, P=16, N=16)),
             ("selective_scan", dict(Bt=1, Dm=4, N=18, L=8, G=2)), ("ss2d", dict(Bt=1, Dm=4, N=18, H=9, W=9))]
    half = [("ssd_exchange", dict(Bt=1, L=8, nh=2, P=16, N=16), dtype) for dtype in ("float16", "bfloat16")]
    # maps of more than one 64-step chunk at both sizes (a one-chunk sequence makes a stride 1: a variant)
    resized = {"L": 24, "H": 7, "W": 11, "Bt": 2}

    def run(op, shape, dtype) -> bool:
        try:
            spec = spec_of(op, *make_inputs(op, dtype=getattr(torch, dtype), **shape))
            outs = executor.forward(spec)
            executor.backward(spec, [torch.zeros_like(o) for o in outs])
            return True
        except Exception as e:  # report which op and variant failed
            print(f"FAILED {op} ({dtype}): {type(e).__name__}: {e}")
            return False

    for op, shape, dtype in [(op, shape, d) for d in opts.dtypes.split(",") for op, shape in cases] + [
            c for c in half if c[2] not in opts.dtypes.split(",")]:
        print(f"{op} ({dtype}, N={shape['N']})", flush=True)
        if not run(op, shape, dtype):
            return 1
    print("the backward's reverse scan at its tile shapes", flush=True)
    for R, T, N in tiles.backward_scan_shapes():
        x = torch.empty(R, T, N)
        try:
            scan.reverse_recurrence_tile[(1,)](x, x, x, R=R, T=T, N=N)
        except Exception as e:  # report which shape failed
            print(f"FAILED reverse_recurrence_tile at {R}x{T}x{N}: {type(e).__name__}: {e}")
            return 1
    compiled = len(seen)
    dtype = opts.dtypes.split(",")[-1]
    for op, shape in cases[:6]:
        if op not in ("selective_scan", "ss2d", "ssd_exchange"):
            continue
        print(f"{op} ({dtype}) at other sizes", flush=True)
        if not run(op, {k: resized.get(k, v) for k, v in shape.items()}, dtype):
            return 1
    if len(seen) > compiled:
        print(f"FAILED: {len(seen) - compiled} kernel variants compiled again for new sizes (above)")
        return 1
    print(f"compiled {len(seen)} kernel variants for sm_{opts.arch.replace(',', ', sm_')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
