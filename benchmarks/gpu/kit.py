"""The GPU session kit's orchestrator (benchmarks/gpu_run.py): runs the steps within their budgets."""
from __future__ import annotations

import contextlib
import datetime
import json
import os
import shlex
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

from .kit_config import BUDGET, ELASTIC, one_line
from .kit_report import render_report
from .kit_steps import STEP_FUNCTIONS
from .kit_workers import WORKERS

SCRIPT = Path(__file__).resolve().parents[1] / "gpu_run.py"  # the command line the workers run through


# The orchestrator: it imports no torch; whatever does runs in a worker subprocess

class Run:
    def __init__(self, opts):
        self.opts = opts
        self.repo = Path(opts.repo).resolve()
        self.out = Path(opts.out).resolve()
        self.logs = self.out / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        outputs = ["results.json", "report.md", "junit.xml", "smoke.jsonl", "bench.json", "models.jsonl",
                   *(f"{name}.json" for name in WORKERS)]
        for old in [*self.logs.glob("*.log"), *(self.out / name for name in outputs)]:  # an earlier run's
            old.unlink(missing_ok=True)
        self.rehearse = opts.rehearse
        self.started = datetime.datetime.now(datetime.timezone.utc)
        self.t0 = time.monotonic()
        self.budget = dict(BUDGET, **opts.budget)
        scale = min(1.0, opts.total / sum(self.budget[s] for s in opts.steps))  # a short --total: all shrink
        self.budget = {s: b * scale for s, b in self.budget.items()}
        self.steps = []          # {step, outcome, seconds, details, items}
        self.env_info = {}
        self.tests = None        # {files: {file: counts}, failures: [...]}
        self.bench_env = {}      # extra environment of the benchmarks (mamba-ssm's paths)
        self.mamba, self.mamba_why = None, "no mamba-ssm sdist (shared/mamba_ssm-*.tar.gz or --mamba-sdist)"

    def say(self, text):
        print(f"[{time.monotonic() - self.t0:6.1f}s] {text}", flush=True)

    def environ(self, extra=None) -> dict:
        """Our environment with the repository and any pure-Python wheels in shared/ (tqdm, einops, ...:
        the GPU machine has no network) first on PYTHONPATH, then ``extra``."""
        env = dict(os.environ)
        wheels = sorted(map(str, self.repo.glob("shared/*-py3-none-any.whl")))
        env["PYTHONPATH"] = os.pathsep.join([str(self.repo), *wheels] + [p for p in [env.get("PYTHONPATH")] if p])
        for key, value in (extra or {}).items():
            env[key] = os.pathsep.join([value, env[key]]) if key == "PYTHONPATH" else value
        return env

    def spawn(self, cmd, log, env=None, show=False) -> subprocess.Popen:
        """Start cmd in its own process group, output appended to logs/<log>.log (stdout to ours
        as well when ``show``: live progress lines)."""
        with open(self.logs / f"{log}.log", "a") as f:
            f.write(f"$ {shlex.join(map(str, cmd))}\n")
            f.flush()
            return subprocess.Popen(list(map(str, cmd)), cwd=self.repo, env=self.environ(env),
                                    stdout=None if show else f, stderr=f, start_new_session=True)

    @staticmethod
    def finish(proc, timeout):
        """Wait for proc; past ``timeout`` interrupt its group (SIGINT: pytest still writes its
        report), then kill it. Returns the exit status, None on timeout."""
        try:
            return proc.wait(timeout=max(timeout, 1))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # what is left of the group (ninja, nvcc)
            proc.wait()
            return None

    def execute(self, cmd, log, timeout, env=None, show=False):
        return self.finish(self.spawn(cmd, log, env, show), timeout)

    def worker_cmd(self, name, *args):
        return [sys.executable, SCRIPT, "--worker", name, "--out", self.out, "--repo", self.repo,
                *(["--rehearse"] if self.rehearse else []), *args]

    def worker(self, name, timeout, *args, env=None, log=None):
        """Run a worker; returns (exit status, the dict it wrote to DIR/<name>.json or None)."""
        result = self.out / f"{name}.json"
        result.unlink(missing_ok=True)
        rc = self.execute(self.worker_cmd(name, *args), log or name, timeout, env)
        return rc, json.loads(result.read_text()) if result.exists() else None

    def left(self, step) -> float:
        """Seconds this step may take: what is left of --total less the budgets of the selected steps
        after it, at most its own budget unless it is elastic."""
        later = self.opts.steps[self.opts.steps.index(step) + 1:]
        left = self.t0 + self.opts.total - time.monotonic() - sum(self.budget[s] for s in later)
        return left if step in ELASTIC else min(self.budget[step], left)

    def arch(self) -> str:
        """This GPU's compute capability, e.g. "9.0" (from the env step, or a probe now)."""
        if not self.env_info:
            _, info = self.worker("env", 60)
            self.env_info.update(info or {})
        if "capability" not in self.env_info:
            raise RuntimeError(f"no CUDA device: {self.env_info.get('cuda', 'the env probe failed, see logs/env.log')}")
        return self.env_info["capability"]

    # -- mamba-ssm, built in the background -------------------------------------------------------

    def mamba_sdist(self):
        if self.opts.mamba_sdist:
            return Path(self.opts.mamba_sdist).resolve()
        found = sorted(self.repo.glob("shared/mamba_ssm-*.tar.gz"))
        return found[-1] if found else None

    def start_mamba_build(self):
        sdist = self.mamba_sdist()
        if self.mamba is not None or sdist is None or "bench" not in self.opts.steps:
            return
        if self.rehearse:
            self.mamba_why = f"rehearse: no CUDA build of {sdist.name} here"
            return
        if not sdist.exists():
            self.mamba_why = f"{sdist} does not exist"
            return
        try:
            arch = self.arch()
        except RuntimeError as e:
            self.mamba_why = str(e)
            return
        # four cores stay with the smoke checks and the tests meanwhile
        env = dict(TORCH_CUDA_ARCH_LIST=arch, MAX_JOBS=str(max(1, os.cpu_count() - 4)))
        self.mamba = self.spawn(self.worker_cmd("mamba-build", "--mamba-sdist", sdist), "mamba_build", env)
        self.say(f"mamba-ssm: building selective_scan_cuda from {sdist.name} for sm_{arch} in the background")

    def mamba_paths(self) -> dict:
        """PYTHONPATH for mamba-ssm: its built extension and its Python sources."""
        base = self.repo / "build" / "gpu_run" / "mamba"
        return dict(PYTHONPATH=os.pathsep.join(map(str, [base / "ext", *sorted(base.glob("src/mamba_ssm-*"))])))

    # -- record and report --------------------------------------------------------------------------

    def run_step(self, step):
        if step in ("smoke", "tests", "bench"):
            self.start_mamba_build()
        limit = self.left(step)
        self.say(f"{step}: start (budget {limit:.0f} s)")
        t0 = time.monotonic()
        items = []
        if limit <= 0:
            outcome, details = "skipped", f"no time left within --total {self.opts.total} s"
        else:
            try:
                outcome, details = STEP_FUNCTIONS[step](self, limit, items)
            except Exception as e:  # noqa: BLE001  (recorded; the next step still runs)
                with open(self.logs / f"{step}.log", "a") as f:
                    traceback.print_exc(file=f)
                outcome, details = "failed", f"{type(e).__name__}: {e}"
        record = dict(step=step, outcome=outcome, seconds=round(time.monotonic() - t0, 1),
                      details=one_line(details, 600), items=items)
        self.steps.append(record)
        self.say(f"{step}: {outcome} in {record['seconds']:.1f} s: {record['details']}")
        self.write()

    def write(self):
        results = dict(started=self.started.isoformat(timespec="seconds"), rehearse=self.rehearse,
                       repo=str(self.repo), argv=sys.argv[1:], env=self.env_info, steps=self.steps, tests=self.tests)
        (self.out / "results.json").write_text(json.dumps(results, indent=1))
        (self.out / "report.md").write_text(render_report(self))
