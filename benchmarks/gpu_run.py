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
import contextlib
import datetime
import functools
import hashlib
import importlib.util
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import tarfile
import time
import traceback
import xml.etree.ElementTree as ET
from pathlib import Path

try:  # the environment report's version; where triton is missing or broken, the smoke check says why
    import triton
except Exception as e:  # noqa: BLE001
    triton, TRITON_ERROR = None, f"triton cannot be imported ({type(e).__name__}: {e})"
else:
    TRITON_ERROR = None


STEPS = ("env", "build", "smoke", "tests", "bench", "report")
# Seconds per step, within --total (the device machine allows 600 s per command). Every step leaves
# the budgets of the selected steps after it; tests and bench also take what the steps before them
# left unused (a reused build leaves about 230 s).
BUDGET = dict(env=20, build=240, smoke=75, tests=90, bench=125, report=10)
ELASTIC = ("tests", "bench")
TOTAL = 560
TOLERANCE = dict(float32=2e-4, float16=2e-2, bfloat16=5e-2)  # largest relative error vs the reference
# The GPU's first test files; the rest follow in name order.
FIRST_TESTS = ("tests/backends/test_cuda.py", "tests/backends/test_triton.py", "tests/test_parity.py")
GPU_TESTS = ("-k", "(cuda or triton) and not emulated", "-m", "not slow")
REHEARSE_TESTS = ("tests/test_parity.py", "tests/backends/test_cuda.py", "-k", "selective_scan and not reference")
# What parts of the run need beyond torch: xscan.bench (tqdm), the tests (pytest, hypothesis), the
# benchmarks' peers (mambapy; mamba-ssm's Python side needs einops).
OPTIONAL_MODULES = ("tqdm", "pytest", "hypothesis", "mambapy", "einops")
# mamba-ssm's nvcc flags for selective_scan_cuda (its setup.py), without its list of architectures.
MAMBA_NVCC = ["-O3", "-std=c++17", "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__",
              "-U__CUDA_NO_BFLOAT16_OPERATORS__", "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
              "-U__CUDA_NO_BFLOAT162_OPERATORS__", "-U__CUDA_NO_BFLOAT162_CONVERSIONS__",
              "--expt-relaxed-constexpr", "--expt-extended-lambda", "--use_fast_math", "-lineinfo"]


def one_line(text, limit=300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def last_lines(path: Path, n=1) -> str:
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()] if path.exists() else []
    return one_line(" / ".join(lines[-n:])) or "(no output)"


# ------------------------------------------------------------------------------------------------
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
        return [sys.executable, Path(__file__).resolve(), "--worker", name, "--out", self.out, "--repo", self.repo,
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


def table(header, rows) -> list:
    def cell(v):
        return str(v).replace("|", "\\|")
    return ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|",
            *("| " + " | ".join(cell(v) for v in row) + " |" for row in rows)]


def render_report(run) -> str:
    e = run.env_info
    where = (f"{e['device']}, {e['sms']} SMs, driver {e['driver']}" if "capability" in e else
             f"CPU ({e['cpu']}, {e['cpus']} cores)" if e else "device not probed (no env step)")
    lines = [f"# xscan GPU run{' (rehearsal on CPU)' if run.rehearse else ''}: {where}", "",
             f"{run.started:%Y-%m-%d %H:%M} UTC, `python benchmarks/gpu_run.py {shlex.join(sys.argv[1:])}`; "
             f"torch {e.get('torch', '?')} (CUDA {e.get('torch_cuda')}), triton {e.get('triton', '?')}, "
             f"nvcc {e.get('nvcc', '?')}, Python {e.get('python', '?')}.", "",
             *table(["step", "outcome", "seconds", "details"],
                    [(s["step"], s["outcome"], s["seconds"], s["details"]) for s in run.steps])]
    for s in run.steps:
        if s["items"]:
            lines += ["", f"## {s['step']}", "",
                      *table(["item", "outcome", "seconds", "details"],
                             [(i["name"], i["outcome"], i["seconds"], one_line(i["details"])) for i in s["items"]])]
        if s["step"] == "tests" and run.tests:
            lines += ["", "## tests by file", "", *table(
                ["file", "passed", "failed", "errors", "skipped", "seconds"],
                [(f, c["passed"], c["failed"], c["errors"], c["skipped"], round(c["seconds"], 1))
                 for f, c in run.tests["files"].items()])]
            if run.tests["failures"]:
                lines += ["", "Failures (first 30):", ""] + [f"- `{n}`: {one_line(m, 200)}"
                                                              for n, m in run.tests["failures"][:30]]
        if s["step"] == "bench":
            lines += bench_sections(run)
    return "\n".join(lines) + "\n"


def bench_sections(run) -> list:
    lines = []
    bench = run.out / "bench.json"
    if bench.exists():
        data = json.loads(bench.read_text())
        lines += ["", f"### python -m xscan.bench ({data['device_name']}, torch {data['torch']})", "", *table(
            ["op", "shape", "implementation", "fwd ms", "fwd+bwd ms", "x fwd", "x f+b", "note"],
            [(r["op"], r["shape"], r["impl"], *("-" if r[k] is None else f"{r[k]:.{3 if 'ms' in k else 1}f}"
                                                for k in ("fwd_ms", "both_ms", "x_fwd", "x_both")), r["note"])
             for r in data["rows"]])]
    models = run.out / "models.jsonl"
    if models.exists():
        rows = [json.loads(line) for line in models.read_text().splitlines() if line.strip()]
        lines += ["", "### networks, images/s (batch 1)", "", *table(
            ["model", "size", "mode", "backend", "images/s", "note"],
            [(r["model"], r["size"], r["mode"], r["backend"],
              "-" if r["images_per_s"] is None else f"{r['images_per_s']:.2f}", r.get("note", "")) for r in rows])]
    for name in ("cuda_targets", "triton_targets"):
        log = run.logs / f"bench_{name}.log"
        if log.exists():
            lines += ["", f"### benchmarks/{name}.py", "", "```text", log.read_text(errors="replace").rstrip(), "```"]
    return lines


# -- steps: each returns (outcome, details) and may append items {name, outcome, seconds, details} ----

def step_env(run, limit, items):
    rc, info = run.worker("env", limit)
    if info is None:
        return "failed", f"the probe exited {rc}: {last_lines(run.logs / 'env.log')}"
    run.env_info = info
    backends = ", ".join(f"{k} {'yes' if v is True else 'no'}" for k, v in info["backends"].items())
    tools = (f"torch {info['torch']}, triton {info['triton']}, nvcc {info['nvcc']}, ninja {info['ninja']}, "
             f"missing modules: {', '.join(info['missing']) or 'none'}; backends: {backends}")
    if "capability" in info:
        return "ok", (f"{info['device']} (sm_{info['capability'].replace('.', '')}), {info['sms']} SMs, driver "
                      f"{info['driver']}, {info['free_gib']:.1f} of {info['memory_gib']:.1f} GiB free, "
                      f"{info['cpus']} CPU cores; {tools}")
    if not run.rehearse:
        return "failed", f"no CUDA device: {info['cuda']}; {tools}"
    return "ok", f"cpu: {info['cpu']}, {info['cpus']} cores, {info['memory_gib']:.1f} GiB; {tools}"


def sources_digest(repo: Path, arch: str) -> str:
    """What a build of the extensions depends on: csrc/, setup.py, the architecture, the python."""
    h = hashlib.sha256(f"{arch} {sys.executable}".encode())
    for path in sorted([*repo.glob("csrc/**/*"), repo / "setup.py"]):
        if path.is_file():
            h.update(str(path.relative_to(repo)).encode() + path.read_bytes())
    return h.hexdigest()


def step_build(run, limit, items):
    if run.rehearse:
        rc, result = run.worker("emulator", limit, log="build")
        if result is None:
            return "failed", f"the host emulation did not build (exit {rc}): {last_lines(run.logs / 'build.log')}"
        return "ok", (f"rehearse: no nvcc target; built the host emulation of the CUDA kernels instead "
                      f"({result['module']}, cuda backend on CPU tensors)")
    arch = run.arch()
    stamp = run.repo / "build" / "gpu_run" / "xscan_build.sha256"
    digest = sources_digest(run.repo, arch)
    built = any(run.repo.glob("xscan/_C_cuda*.so")) and any(run.repo.glob("xscan/_C.*.so"))
    if built and stamp.exists() and stamp.read_text() == digest and run.env_info["backends"]["cuda"] is True:
        return "ok", f"reused: xscan._C and xscan._C_cuda already built from these sources for sm_{arch}"
    jobs = os.cpu_count()
    env = dict(TORCH_CUDA_ARCH_LIST=arch, MAX_JOBS=str(jobs))
    t0 = time.monotonic()
    rc = run.execute([sys.executable, "setup.py", "build_ext", "--inplace"], "build", limit - 40, env)
    seconds = time.monotonic() - t0
    if rc is None:
        return "failed", (f"not finished in {seconds:.0f} s (ninja's objects stay under build/: a rerun on this "
                          f"machine resumes); logs/build.log")
    if rc:
        return "failed", f"setup.py build_ext exited {rc}: {last_lines(run.logs / 'build.log', 3)}"
    _, info = run.worker("env", 30, log="build")
    cuda = (info or {}).get("backends", {}).get("cuda", "the probe failed: logs/build.log")
    if cuda is not True:
        return "failed", f"built in {seconds:.0f} s, but the cuda backend is unavailable: {cuda}"
    run.env_info.update(info)
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(digest)
    return "ok", f"built xscan._C and xscan._C_cuda for sm_{arch} with MAX_JOBS={jobs} in {seconds:.0f} s"


def step_smoke(run, limit, items):
    if not run.rehearse:
        run.arch()  # no GPU: fail here, not in every check
    journal = run.out / "smoke.jsonl"
    journal.unlink(missing_ok=True)
    end = time.monotonic() + limit
    env = dict(TRITON_INTERPRET="1") if run.rehearse else None
    start, plan, results, seen = 0, None, {}, 0
    while True:
        rc = run.execute(run.worker_cmd("smoke", "--start", start), "smoke", end - time.monotonic(), env, show=True)
        events = [json.loads(line) for line in journal.read_text().splitlines()] if journal.exists() else []
        fresh, seen = events[seen:], len(events)
        plan = plan or next((e["names"] for e in events if e["event"] == "plan"), None)
        results.update({e["index"]: e for e in events if e["event"] == "result"})
        begun = [e["index"] for e in fresh if e["event"] == "start"]
        if plan is None or not begun:
            return "failed", f"the smoke worker exited {rc} before a check: {last_lines(run.logs / 'smoke.log')}"
        if begun[-1] not in results:  # the worker died or hung inside this check
            why = ("still running at the end of the smoke budget" if rc is None else
                   f"the worker died (exit status {rc}); see logs/smoke.log")
            results[begun[-1]] = dict(outcome="failed", seconds=0.0, details=why)
        start = begun[-1] + 1
        if rc in (0, None) or start >= len(plan) or end - time.monotonic() < 5:
            break
        run.say(f"smoke: restarting the worker after {plan[begun[-1]]!r} (exit status {rc})")
    for i, name in enumerate(plan):
        r = results.get(i, dict(outcome="skipped", seconds=0.0, details="not reached within the smoke budget"))
        items.append(dict(name=name, outcome=r["outcome"], seconds=r["seconds"], details=r["details"]))
    counts = {k: sum(i["outcome"] == k for i in items) for k in ("ok", "failed", "skipped")}
    summary = f"{counts['ok']} ok, {counts['failed']} failed, {counts['skipped']} not reached, of {len(items)}"
    return ("ok" if counts["ok"] == len(items) else "failed"), summary


def test_file(classname: str, repo: Path) -> str:
    parts = classname.split(".")
    for n in range(len(parts), 0, -1):
        path = "/".join(parts[:n]) + ".py"
        if (repo / path).exists():
            return path
    return classname


def junit_summary(path: Path, repo: Path) -> dict:
    files, failures = {}, []
    for case in ET.parse(path).getroot().iter("testcase"):
        if not case.get("name"):  # an interrupted session adds an empty one
            continue
        name = test_file(case.get("classname", ""), repo)
        counts = files.setdefault(name, dict(passed=0, failed=0, errors=0, skipped=0, seconds=0.0))
        counts["seconds"] += float(case.get("time") or 0)
        tags = {child.tag: child for child in case}
        kind = next((k for k in ("failure", "error", "skipped") if k in tags), None)
        counts[{"failure": "failed", "error": "errors", "skipped": "skipped", None: "passed"}[kind]] += 1
        if kind in ("failure", "error"):
            failures.append((f"{name}::{case.get('name')}", tags[kind].get("message") or kind))
    return dict(files=files, failures=failures)


def step_tests(run, limit, items):
    if not run.rehearse:
        run.arch()  # no GPU: fail here
    junit = run.out / "junit.xml"
    junit.unlink(missing_ok=True)
    if run.opts.pytest:
        selection = shlex.split(run.opts.pytest)
        label = f"pytest {run.opts.pytest}"
    elif run.rehearse:
        selection = list(REHEARSE_TESTS)
        label = f"pytest {shlex.join(selection)}"
    else:
        rest = sorted(str(p.relative_to(run.repo)) for p in run.repo.glob("tests/**/test_*.py"))
        selection = [*FIRST_TESTS, *(f for f in rest if f not in FIRST_TESTS), *GPU_TESTS]
        label = f"pytest tests {shlex.join(GPU_TESTS)} (GPU files first)"
    # On the GPU the host emulation of the CUDA kernels would only cost its build (minutes).
    env = None if run.rehearse else dict(XSCAN_SKIP_CUDA_EMULATION="1")
    cmd = [sys.executable, "-m", "pytest", *selection, "--junitxml", junit, "-q", "-p", "no:cacheprovider",
           "--continue-on-collection-errors"]
    t0 = time.monotonic()
    rc = run.execute(cmd, "tests", limit - 15, env)
    seconds = time.monotonic() - t0
    if not junit.exists():
        return "failed", f"pytest exited {rc} without a JUnit report: {last_lines(run.logs / 'tests.log', 3)}"
    run.tests = junit_summary(junit, run.repo)
    total = {k: sum(c[k] for c in run.tests["files"].values()) for k in ("passed", "failed", "errors", "skipped")}
    for name, c in run.tests["files"].items():
        print(f"    {name}: {c['passed']} passed, {c['failed']} failed, {c['errors']} errors, {c['skipped']} skipped "
              f"({c['seconds']:.1f} s)", flush=True)
    summary = (f"{total['passed']} passed, {total['failed']} failed, {total['errors']} errors, {total['skipped']} "
               f"skipped in {seconds:.0f} s; `{label}`; junit.xml, logs/tests.log")
    if rc is None:
        return "failed", f"stopped at its {limit - 15:.0f} s budget (rerun: --steps tests): {summary}"
    if rc == 0:
        return "ok", summary
    return "failed", f"pytest exited {rc}: {summary}"


def bench_mamba(run, timeout):
    if run.mamba is None:
        return "skipped", run.mamba_why
    rc = run.finish(run.mamba, timeout)
    if rc is None:
        return "skipped", ("its background build was not done in time and was stopped (ninja's objects stay under "
                           "build/gpu_run/mamba: a rerun on this machine resumes); logs/mamba_build.log")
    if rc:
        return "skipped", f"its build failed (exit {rc}): {last_lines(run.logs / 'mamba_build.log', 2)}"
    _, result = run.worker("mamba-check", 60, env=run.mamba_paths())
    if not result or not result["ok"]:
        return "skipped", f"built, but not usable: {(result or {}).get('why', 'see logs/mamba-check.log')}"
    run.bench_env = run.mamba_paths()
    return "ok", result["why"]


def bench_script(name, cmd):
    def item(run, timeout):
        rc = run.execute(cmd(run), f"bench_{name}", timeout, run.bench_env)
        log = run.logs / f"bench_{name}.log"
        if rc is None:
            return "failed", f"timed out after {timeout:.0f} s; last output: {last_lines(log)}"
        return ("ok" if rc == 0 else "failed"), f"exit {rc}: {last_lines(log)}"
    return item


def bench_main(run):
    common = ["--json", run.out / "bench.json"]
    if run.rehearse:
        return [sys.executable, "-m", "xscan.bench", "--device", "cpu", "--ops", "selective_scan", "--backends", "cpu",
                *common]
    return [sys.executable, "-m", "xscan.bench", "--device", "cuda", "--backends", "cuda", "triton", *common]


def bench_models(run, timeout):
    (run.out / "models.jsonl").unlink(missing_ok=True)
    rc = run.execute(run.worker_cmd("models"), "bench_models", timeout, run.bench_env)
    rows = [json.loads(line) for line in (run.out / "models.jsonl").read_text().splitlines()] \
        if (run.out / "models.jsonl").exists() else []
    measured = sum(r["images_per_s"] is not None for r in rows)
    what = f"{measured} of {len(rows)} rows measured (models.jsonl)"
    if rc is None:
        return "failed", f"timed out after {timeout:.0f} s; {what}"
    if rc:
        return "failed", f"exit {rc}: {what}; {last_lines(run.logs / 'bench_models.log')}"
    return "ok", what


# (name, share of the bench budget, item): an item's time is its share of what is left.
BENCH_ITEMS = (
    ("mamba-ssm selective_scan_cuda (peer)", 0.1, bench_mamba),
    ("python -m xscan.bench", 0.3, bench_script("xscan", bench_main)),
    ("benchmarks/cuda_targets.py", 0.15, bench_script("cuda_targets", lambda run: [
        sys.executable, "benchmarks/cuda_targets.py", "--repeats", "10"])),
    ("networks images/s", 0.3, bench_models),
    ("benchmarks/triton_targets.py", 0.15, bench_script("triton_targets", lambda run: [
        sys.executable, "benchmarks/triton_targets.py", "--reps", "10"])),
)


def step_bench(run, limit, items):
    if not run.rehearse:
        run.arch()  # no GPU: fail here
    end = time.monotonic() + limit
    for i, (name, share, item) in enumerate(BENCH_ITEMS):
        timeout = (end - time.monotonic()) * share / sum(s for _, s, _ in BENCH_ITEMS[i:])
        t0 = time.monotonic()
        try:
            outcome, details = item(run, timeout) if timeout >= 5 else ("skipped", "no time left in the bench budget")
        except Exception as e:  # noqa: BLE001  (one item; the others still run)
            outcome, details = "failed", f"{type(e).__name__}: {e}"
        items.append(dict(name=name, outcome=outcome, seconds=round(time.monotonic() - t0, 1), details=details))
        run.say(f"  bench {outcome:<7} {name}: {one_line(details, 200)}")
    failed = [i["name"] for i in items if i["outcome"] == "failed"]
    return ("failed", f"failed: {', '.join(failed)}") if failed else (
        "ok", f"{sum(i['outcome'] == 'ok' for i in items)} of {len(items)} measured; bench.json, models.jsonl, logs/")


def step_report(run, limit, items):
    run.write()
    return "ok", f"{run.out / 'report.md'}, {run.out / 'results.json'}"


STEP_FUNCTIONS = dict(env=step_env, build=step_build, smoke=step_smoke, tests=step_tests, bench=step_bench,
                      report=step_report)


# ------------------------------------------------------------------------------------------------
# Workers: subprocesses that import torch. One that returns a dict writes it to DIR/<name>.json
# (smoke writes DIR/smoke.jsonl as it goes, models DIR/models.jsonl).

def use_emulated_cuda(repo: Path) -> str:
    """The cuda backend on CPU tensors through the host emulation of its kernels. Returns the
    emulation's module name."""
    path = repo / "tests" / "backends" / "cuda_emulator" / "__init__.py"
    spec = importlib.util.spec_from_file_location("xscan_cuda_emulator", path)
    emulator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(emulator)
    return emulator.install().__name__


def worker_env(opts):
    import torch
    from torch.utils import cpp_extension

    def command(*cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.TimeoutExpired) as e:
            return f"unavailable ({type(e).__name__})"

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else "?"
    nvcc = os.path.join(cpp_extension.CUDA_HOME, "bin", "nvcc") if cpp_extension.CUDA_HOME else "nvcc"
    info = dict(python=platform.python_version(), torch=torch.__version__, torch_cuda=torch.version.cuda,
                triton=getattr(triton, "__version__", TRITON_ERROR), cpus=os.cpu_count(), cpu=cpu,
                nvcc=next((line.split("release", 1)[1].strip() for line in command(nvcc, "--version").splitlines()
                           if "release" in line), "not found"),
                ninja=cpp_extension.is_ninja_available(),
                missing=[m for m in OPTIONAL_MODULES if importlib.util.find_spec(m) is None])
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        free, total = torch.cuda.mem_get_info()
        info.update(device=p.name, capability=f"{p.major}.{p.minor}", sms=p.multi_processor_count,
                    memory_gib=total / 2**30, free_gib=free / 2**30,
                    driver=(command("nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader").splitlines()
                            or ["?"])[0])
    else:
        info.update(device="cpu", cuda=f"torch.cuda.is_available() is False (torch's CUDA: {torch.version.cuda})",
                    memory_gib=os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30)
    import xscan
    info["backends"] = {k: v if v is True else str(v) for k, v in xscan.backends().items()}
    return info


def worker_emulator(opts):
    return dict(module=use_emulated_cuda(Path(opts.repo)))


def reverse_scan_check(device):
    """The backward's reverse scan (scan.reverse_recurrence: forward tl.associative_scan over flipped
    tiles) at every tile shape scan_backward runs it at and every warp count the autotuner can pick,
    against a sequential fold from the end."""
    import torch
    if triton is None:
        return "failed", TRITON_ERROR
    from xscan.triton_kernels import scan, tiles
    g = torch.Generator().manual_seed(0)
    worst, bad = 0.0, []
    for R, T, N in tiles.backward_scan_shapes():
        a = torch.rand(R, T, N, generator=g) * 0.5 + 0.5
        b = torch.randn(R, T, N, generator=g)
        ref = torch.empty(R, T, N, dtype=torch.float64)
        x = torch.ones(R, N, dtype=torch.float64)  # past the chunk's end
        for i in range(T - 1, -1, -1):
            x = ref[:, i] = a[:, i] * x + b[:, i]
        for warps in tiles.WARPS:
            out = torch.empty(R, T, N, device=device)
            scan.reverse_recurrence_tile[(1,)](a.to(device), b.to(device), out, R=R, T=T, N=N, num_warps=warps)
            err = ((out.double().cpu() - ref).abs().max() / ref.abs().max()).item()
            worst = max(worst, err)
            if not err < 1e-5:
                bad.append(f"{R}x{T}x{N} at {warps} warps: {err:.1e}")
    text = f"{len(tiles.backward_scan_shapes())} tile shapes x warps {tiles.WARPS}, max rel err {worst:.1e}"
    return ("ok", text) if not bad else ("failed", f"{text}; over 1e-5: {', '.join(bad)}")


def op_check(op, device, dtype, N, shape):
    """One op forward and backward on the cuda backend against the reference: the largest relative
    error over the outputs and gradients."""
    import torch
    from xscan.testing import compare, make_inputs
    args, kwargs = make_inputs(op, device=device, dtype=getattr(torch, dtype), N=N, **shape)
    errors = compare(op, args, kwargs, "cuda")
    tol = TOLERANCE[dtype]
    what, worst = max(errors, key=lambda e: e[1] if e[1] == e[1] else float("inf"))  # NaN counts as worst
    bad = [w for w, e in errors if not e < tol]
    text = f"max rel err {worst:.1e} ({what}), tolerance {tol:.0e}"
    return ("ok", text) if not bad else ("failed", f"{text}; over it: {', '.join(bad)}")


def shared_memory_check(device, shape):
    """ssd_exchange with d_state 256, the kernels' largest: the backward's dynamic shared memory
    (shared_bytes in csrc/cuda/scan_params.h) is reported and, past 48 KiB, raised with
    cudaFuncSetAttribute."""
    outcome, text = op_check("ssd_exchange", device, "float32", 256, shape)
    from xscan.backends import cuda as cuda_backend
    from xscan.testing import make_inputs, spec_of
    spec = spec_of("ssd_exchange", *make_inputs("ssd_exchange", device=device, N=256, **shape))
    shared = cuda_backend._C.shared_bytes(cuda_backend.plan(spec, 132), True)
    return outcome, f"backward dynamic shared memory {shared // 1024} KiB; {text}"


def smoke_plan(rehearse) -> list:
    """(name, check) pairs, riskiest first; a check returns (outcome, details)."""
    from xscan.testing import OPS
    device = "cpu" if rehearse else "cuda"
    shape = (dict(Bt=1, Dm=4, L=12, H=3, W=4, nh=2, P=2, G=1) if rehearse else
             dict(Bt=2, Dm=8, L=70, H=5, W=7, nh=4, P=8, G=1))
    big = dict(Bt=1, L=40, nh=2, P=4, G=1) if rehearse else dict(Bt=2, L=1024, nh=8, P=64, G=1)
    plan = [("triton reverse scan at the backward's tile shapes and warp counts",
             functools.partial(reverse_scan_check, device)),
            ("cuda ssd_exchange float32 N=256 (the largest d_state)",
             functools.partial(shared_memory_check, device, big))]
    # d_state of the networks (12, 16, 18) and a wide one
    for dtype in ("float32", "float16", "bfloat16"):
        for N in (12, 18, 64):
            plan += [(f"cuda {op} {dtype} N={N}", functools.partial(op_check, op, device, dtype, N, shape))
                     for op in OPS]
    return plan


def cuda_context_ok() -> bool:
    import torch
    try:
        torch.cuda.synchronize()
        return torch.ones(1, device="cuda").add(1).item() == 2
    except Exception:  # noqa: BLE001  (a sticky error: this process can launch nothing more)
        return False


def worker_smoke(opts):
    if opts.rehearse:
        use_emulated_cuda(Path(opts.repo))
    plan = smoke_plan(opts.rehearse)
    journal = Path(opts.out) / "smoke.jsonl"

    def note(**event):
        with open(journal, "a") as f:
            f.write(json.dumps(event) + "\n")

    if opts.start == 0:
        note(event="plan", names=[name for name, _ in plan])
    for i in range(opts.start, len(plan)):
        name, check = plan[i]
        note(event="start", index=i)
        t0, broken = time.monotonic(), False
        try:
            outcome, details = check()
        except Exception as e:  # noqa: BLE001  (the check failed; its traceback goes to the log)
            traceback.print_exc()
            outcome, details = "failed", f"{type(e).__name__}: {one_line(e, 240)}"
            broken = not opts.rehearse and not cuda_context_ok()
        seconds = round(time.monotonic() - t0, 2)
        note(event="result", index=i, outcome=outcome, seconds=seconds, details=details)
        print(f"    smoke {outcome:<6} {name} ({seconds:.1f} s): {details}", flush=True)
        if broken:
            return 3  # the CUDA context is unusable: the orchestrator goes on in a fresh process
    return 0


def worker_models(opts):
    import torch
    from xscan.models import MODELS
    from xscan.models.throughput import build, throughput
    if opts.rehearse:
        device, models, backends, size, iters, warmup, modes = "cpu", ["ISFM"], ["cpu"], 32, 1, 0, ["infer"]
    else:
        device, models, backends, size, iters, warmup, modes = "cuda", list(MODELS), ["cuda", "triton"], 256, 3, 1, \
            ["infer", "train"]
    for name in models:
        net = build(name, device)
        for backend in backends:
            for mode in modes:
                row = dict(model=name, backend=backend, mode=mode, size=size, images_per_s=None)
                try:
                    row["images_per_s"] = throughput(name, backend, device, size, mode == "train", iters,
                                                     warmup=warmup, model=net)
                except (RuntimeError, ValueError) as e:  # this backend cannot run it here (or out of memory)
                    row["note"] = one_line(e, 120)
                with open(Path(opts.out) / "models.jsonl", "a") as f:
                    f.write(json.dumps(row) + "\n")
                print(row, flush=True)
                if device == "cuda":
                    torch.cuda.empty_cache()
    return 0


def worker_mamba_build(opts):
    """selective_scan_cuda from mamba-ssm's sdist, for TORCH_CUDA_ARCH_LIST only, under
    build/gpu_run/mamba (ninja: a rerun resumes)."""
    from torch.utils.cpp_extension import load
    base = Path(opts.repo) / "build" / "gpu_run" / "mamba"
    src_dir = base / "src"
    if not list(src_dir.glob("mamba_ssm-*/setup.py")):
        with tarfile.open(opts.mamba_sdist) as tar:
            tar.extractall(src_dir, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    root = sorted(src_dir.glob("mamba_ssm-*/setup.py"))[-1].parent
    csrc = root / "csrc" / "selective_scan"
    (base / "ext").mkdir(parents=True, exist_ok=True)
    load("selective_scan_cuda", sorted(map(str, [*csrc.glob("*.cpp"), *csrc.glob("*.cu")])),
         extra_cflags=["-O3", "-std=c++17"], extra_cuda_cflags=MAMBA_NVCC, extra_include_paths=[str(csrc)],
         build_directory=str(base / "ext"), verbose=True)
    return 0


def worker_mamba_check(opts):
    """Whether xscan's benchmarks find mamba-ssm's CUDA selective_scan_fn, and that it computes the
    reference's selective scan."""
    import torch
    try:
        import einops  # noqa: F401  (mamba_ssm's selective_scan_interface needs it)
        import selective_scan_cuda
        from xscan import peers, reference
        from xscan.testing import make_inputs
        found = peers.mamba_ssm_scan(torch.device("cuda"))
        if found is None:
            return dict(ok=False, why="xscan.peers.mamba_ssm_scan('cuda') finds no CUDA build of mamba-ssm")
        args, kwargs = make_inputs("selective_scan", Bt=2, Dm=8, N=16, L=100, device="cuda")
        y, ref = found[1](*args, **kwargs), reference.selective_scan(*args, **kwargs)
        err = ((y - ref).abs().max() / ref.abs().max()).item()
    except Exception as e:  # noqa: BLE001  (why it cannot be the peer)
        return dict(ok=False, why=f"{type(e).__name__}: {one_line(e, 200)}")
    return dict(ok=err < 1e-4, why=f"{found[0]} ({selective_scan_cuda.__file__}) vs xscan's reference: "
                                   f"max rel err {err:.1e}")


WORKERS = {"env": worker_env, "emulator": worker_emulator, "smoke": worker_smoke, "models": worker_models,
           "mamba-build": worker_mamba_build, "mamba-check": worker_mamba_check}


# ------------------------------------------------------------------------------------------------

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
