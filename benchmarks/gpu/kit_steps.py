"""The GPU session kit's steps: env, build (cached by the sources' digest), smoke, tests (JUnit read
back), bench, report."""
from __future__ import annotations

import hashlib
import json
import os
import shlex
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from .kit_config import FIRST_TESTS, GPU_TESTS, REHEARSE_TESTS, last_lines, one_line


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
