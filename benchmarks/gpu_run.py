#!/usr/bin/env python
"""One command for a GPU session: environment, build, smoke checks, tests, benchmarks, report.

    python benchmarks/gpu_run.py --out DIR [--steps env,build,smoke,tests,bench,report] [--rehearse]

The steps run in order, each within a time budget (--budget STEP=SECONDS, all of them within
--total), and each is recorded as ok, failed or skipped, with the reason, even when a later one fails.
Everything that imports torch runs in a subprocess (this script needs only the standard library), so
a crash, a hang or a broken CUDA context costs one step or one smoke item, not the run. Logs: DIR/logs/.
See benchmarks/GPU.md.

  env     GPU, SM count, driver, torch / triton / nvcc versions, free memory, xscan's backends
  build   xscan._C and xscan._C_cuda for this GPU's architecture only (setup.py build_ext --inplace,
          MAX_JOBS = all cores); reused when already built from the same sources for the same GPU
  smoke   the riskiest primitives one at a time: the Triton backward's reverse scan at its tile shapes,
          one launch of every CUDA kernel (op x dtype x one, two or three states per lane) against the
          reference, a backward that needs more than 48 KiB of dynamic shared memory
  tests   pytest with JUnit XML (default: the cuda and triton cases without the slow ones, GPU files
          first), one summary line per test file
  bench   python -m xscan.bench, benchmarks/cuda_targets.py, the networks' images/s at 256x256,
          benchmarks/triton_targets.py; mamba-ssm's CUDA selective_scan as a peer when its sdist is
          here (built for this GPU in the background while smoke and tests run)
  report  DIR/report.md (markdown tables for benchmarks/RESULTS.md) and DIR/results.json

--rehearse runs the same on a CPU machine: the CUDA kernels through their host emulation
(tests/backends/cuda_emulator), Triton in its interpreter, a small test subset, CPU benchmarks.
Exit status 1 if a selected step failed.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gpu.kit import Run
from gpu.kit_config import BUDGET, STEPS, TOTAL
from gpu.kit_workers import WORKERS


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog="See benchmarks/GPU.md.")
    p.add_argument("--out", required=True, help="directory for report.md, results.json, junit.xml, logs/")
    p.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated, run in this order: {','.join(STEPS)}")
    p.add_argument("--rehearse", action="store_true", help="on a CPU machine: emulated CUDA, interpreted Triton")
    p.add_argument("--repo", default=str(Path(__file__).resolve().parents[1]),
                   help="xscan's root (default: the parent of this script's directory)")
    p.add_argument("--budget", action="append", default=[], metavar="STEP=SECONDS",
                   help=f"a step's time budget (defaults: {', '.join(f'{k} {v}' for k, v in BUDGET.items())}; "
                        "tests and bench also take what earlier steps left unused)")
    p.add_argument("--total", type=float, default=TOTAL, help=f"seconds for the whole run (default {TOTAL})")
    p.add_argument("--pytest", default=None, help="pytest selection replacing the default (one quoted string)")
    p.add_argument("--mamba-sdist", default=None, help="mamba-ssm's sdist (default: shared/mamba_ssm-*.tar.gz)")
    p.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    p.add_argument("--start", type=int, default=0, help=argparse.SUPPRESS)
    opts = p.parse_args(argv)
    opts.steps = [s.strip() for s in opts.steps.split(",") if s.strip()]
    unknown = [s for s in opts.steps if s not in STEPS]
    if unknown or not opts.steps:
        p.error(f"unknown steps {unknown}; choose from {','.join(STEPS)}")
    opts.steps = [s for s in STEPS if s in opts.steps]
    try:
        opts.budget = {k: float(v) for k, v in (b.split("=") for b in opts.budget)}
    except ValueError:
        p.error("--budget takes STEP=SECONDS")
    if set(opts.budget) - set(STEPS):
        p.error(f"--budget: unknown steps {sorted(set(opts.budget) - set(STEPS))}")
    return opts


def main(argv=None) -> int:
    opts = parse(argv)
    if opts.worker:
        result = WORKERS[opts.worker](opts)
        if isinstance(result, dict):
            (Path(opts.out) / f"{opts.worker}.json").write_text(json.dumps(result, indent=1))
            return 0
        return result
    run = Run(opts)
    run.say(f"xscan gpu_run{' --rehearse' if run.rehearse else ''}: steps {','.join(opts.steps)} in {run.repo}, "
            f"results in {run.out}")
    for step in opts.steps:
        run.run_step(step)
    if run.mamba is not None and run.mamba.poll() is None:
        run.finish(run.mamba, 0)  # a build the bench step did not wait for
    failed = [s["step"] for s in run.steps if s["outcome"] == "failed"]
    run.say(f"done: {'failed: ' + ', '.join(failed) if failed else 'no step failed'}; {run.out / 'report.md'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
