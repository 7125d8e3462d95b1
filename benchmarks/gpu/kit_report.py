"""The GPU session kit's report (report.md)."""
from __future__ import annotations

import json
import shlex
import sys

from .kit_config import one_line
from .markdown import table


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
