"""xscan's CUDA scan kernels against mamba-ssm's on GPGPU-Sim (no GPU needed), issue #26.

    python benchmarks/gpusim/run.py [--functional] [--json FILE] [--sms N] [--case NAME ...]
                                    [--Bt 1] [--Dm 32] [--L 1024] [--H 16] [--W 16] [--N 16]
                                    [--plan-sms N] [--xscan-rev REV] [--keep-log FILE]

1. Downloads mamba-ssm's source distribution (pip download, mamba_source.py) into the cache
   ($XSCAN_GPUSIM_CACHE, default ~/.cache/xscan-gpusim) and extracts csrc/selective_scan there: nothing
   of mamba's source is in this repository. mamba_kernels.cu compiles its
   selective_scan_{fwd,bwd}_cuda<float, float> against our stub c10/ATen headers (stubs/).
2. Builds harness.cu (xscan's csrc/cuda/scan_kernel.cuh, launched through run_forward/run_backward;
   ScanParams filled by xscan_plan.h) with the simulator's nvcc 11.8 (-arch=sm_80 --cudart shared);
   objects are cached by content hash.
3. Runs it under GPGPU-Sim (performance model on a copy of the RTX 3070 config cut to --sms SMs, or
   --functional: functional only, instruction counts, ~10x faster) and prints per case and
   implementation: simulated cycles (per-kernel gpu_sim_cycle summed), thread instructions (deltas of
   the simulator's instruction count), instructions per (channel x position x state) and the max
   relative error of every output and gradient against the harness's CPU double-precision loop.

Cases: ss_fwd, ss_fwd_noz, ss_fwdbwd, ss_fwdbwd_noz (selective_scan, N=16, B/C (Bt, 1, N, L),
delta_bias + softplus, D, with/without z), cross_fwd, cross_fwdbwd (cross_ss2d over two H x W maps:
xscan's CROSS_PAIR route vs interleaved copies + mamba over 2L + recover, the public networks' way),
ss2d_fwd, ss2d_fwdbwd (ss2d over one H x W map, xscan's CROSS route; xscan only: its instructions per
element are to be set beside selective_scan's).
--plan-sms: the SM count xscan's launch plan (sequence split) assumes: 0 = no split; default: the
simulated GPU's. Start-up of the simulator (ptxas over every kernel of the binary) takes 2-3 minutes
on a 2-core machine; all selected cases run in one simulator process.

Needs GPGPU-Sim as set up by tools/gpgpusim (GPGPUSIM_WORK, default /tmp/gpgpusim; GPGPUSIM_TOOLS:
the directory holding env.sh, default /work/shared/tools/gpgpusim).
"""
from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

from mamba_source import STUBS, fetch_mamba

HERE = os.path.dirname(os.path.abspath(__file__))
CASES = ("ss_fwd", "ss_fwd_noz", "ss_fwdbwd", "ss_fwdbwd_noz", "cross_fwd", "cross_fwdbwd", "ss2d_fwd", "ss2d_fwdbwd")
NVCC_FLAGS = ["-O3", "-std=c++17", "-arch=sm_80", "--cudart", "shared", "-diag-suppress", "20012"]


def log(msg: str) -> None:
    print(f"[gpusim] {msg}", file=sys.stderr, flush=True)


def default_xscan_root() -> str:
    return os.path.dirname(os.path.dirname(HERE))  # benchmarks/gpusim -> repository root


def sim_env(work: str, tools: str) -> dict:
    """The environment env.sh sets up (nvcc 11.8 on PATH, the simulator's libcudart first)."""
    out = subprocess.run(["bash", "-c", f"export GPGPUSIM_WORK={work}; source {tools}/env.sh >/dev/null; env -0"],
                         check=True, capture_output=True, cwd=tools).stdout.decode()
    return dict(kv.split("=", 1) for kv in out.split("\0") if "=" in kv)


def export_xscan(root: str, rev: str | None, cache: str) -> str:
    """The csrc/ directory to build: the checkout's, or `git archive REV csrc` into the cache."""
    if not rev:
        return os.path.join(root, "csrc")
    sha = subprocess.run(["git", "-C", root, "rev-parse", rev], check=True, capture_output=True,
                         text=True).stdout.strip()
    dest = os.path.join(cache, "xscan", sha)
    if not os.path.isdir(os.path.join(dest, "csrc")):
        os.makedirs(dest, exist_ok=True)
        archive = subprocess.run(["git", "-C", root, "archive", sha, "csrc"], check=True, capture_output=True).stdout
        subprocess.run(["tar", "x", "-C", dest], input=archive, check=True)
    log(f"xscan kernels of {rev} ({sha[:10]})")
    return os.path.join(dest, "csrc")


def digest(paths: list, extra: str) -> str:
    h = hashlib.sha256(extra.encode())
    for p in sorted(paths):
        h.update(p.encode())
        with open(p, "rb") as f:
            h.update(f.read())
    return h.hexdigest()[:16]


def build(cache: str, csrc: str, mamba_src: str, env: dict) -> str:
    nvcc = shutil.which("nvcc", path=env["PATH"])
    version = subprocess.run([nvcc, "--version"], capture_output=True, text=True, env=env).stdout
    stubs = STUBS
    objdir = os.path.join(cache, "obj")
    os.makedirs(objdir, exist_ok=True)
    mamba_files = glob.glob(os.path.join(mamba_src, "*")) + glob.glob(os.path.join(stubs, "**", "*"), recursive=True)
    mamba_files = [f for f in mamba_files if os.path.isfile(f)] + [os.path.join(HERE, "mamba_kernels.cu")]
    xscan_sources = glob.glob(os.path.join(csrc, "cuda", "*")) + glob.glob(os.path.join(csrc, "include", "xscan", "*"))
    xscan_files = [f for f in xscan_sources if os.path.isfile(f)] + [
        os.path.join(HERE, "harness.cu"), os.path.join(HERE, "xscan_plan.h"),
        os.path.join(mamba_src, "selective_scan.h")]
    flags = " ".join(NVCC_FLAGS) + version
    units = {
        "mamba_kernels": (os.path.join(HERE, "mamba_kernels.cu"), ["-I" + stubs, "-I" + mamba_src], mamba_files),
        "harness": (os.path.join(HERE, "harness.cu"),
                    ["-I" + os.path.join(csrc, "cuda"), "-I" + os.path.join(csrc, "include"), "-I" + mamba_src],
                    xscan_files),
    }
    procs, objs = [], []
    for name, (src, incs, deps) in units.items():
        obj = os.path.join(objdir, f"{name}-{digest(deps, flags)}.o")
        objs.append(obj)
        if os.path.exists(obj):
            continue
        log(f"compiling {os.path.basename(src)} (nvcc 11.8, a few minutes)")
        cmd = ["nice", "-n", "10", nvcc, *NVCC_FLAGS, *incs, "-c", src, "-o", obj + ".tmp"]
        procs.append((subprocess.Popen(cmd, env=env), obj, cmd))
    for p, obj, cmd in procs:
        if p.wait() != 0:
            sys.exit(f"compilation failed: {' '.join(cmd)}")
        os.replace(obj + ".tmp", obj)
    exe = os.path.join(objdir, "harness-" + hashlib.sha256("".join(objs).encode()).hexdigest()[:16])
    if not os.path.exists(exe):
        subprocess.run([nvcc, "-arch=sm_80", "--cudart", "shared", "-o", exe, *objs], env=env, check=True,
                       stderr=subprocess.DEVNULL)
    return exe


def config_dir(work: str, sms: int | None, cache: str) -> str:
    base = os.path.join(work, "configs", "SM86_RTX3070_fixed")
    if not sms:
        return base
    dest = os.path.join(cache, "configs", f"SM86_RTX3070_{sms}sm")
    os.makedirs(dest, exist_ok=True)
    for f in os.listdir(base):
        shutil.copy(os.path.join(base, f), dest)
    cfg = os.path.join(dest, "gpgpusim.config")
    with open(cfg) as f:
        text = f.read()
    text = re.sub(r"^-gpgpu_n_clusters\s+\d+", f"-gpgpu_n_clusters {sms}", text, flags=re.M)
    with open(cfg, "w") as f:
        f.write(text)
    return dest


def simulate(exe: str, args: list, cfg: str, functional: bool, env: dict, work: str, logfile: str) -> str:
    run = tempfile.mkdtemp(prefix="run.", dir=os.path.join(work, "runs") if os.path.isdir(os.path.join(work, "runs"))
                           else None)
    for f in os.listdir(cfg):
        shutil.copy(os.path.join(cfg, f), run)
    env = dict(env)
    if functional:
        env["PTX_SIM_MODE_FUNC"] = "1"
    log(f"simulating ({'functional' if functional else 'performance model'}) in {run}; log {logfile}")
    t0 = time.time()
    with open(logfile, "w") as out:
        rc = subprocess.run(["nice", "-n", "19", exe, *args], cwd=run, env=env, stdout=out,
                            stderr=subprocess.STDOUT).returncode
    log(f"simulation took {time.time() - t0:.0f} s")
    with open(logfile) as f:
        text = f.read()
    if rc != 0 or "@@done" not in text:
        tail = "\n".join(text.splitlines()[-30:])
        sys.exit(f"harness failed (exit {rc}), log {logfile}:\n{tail}")
    shutil.rmtree(run, ignore_errors=True)
    return text


def parse(text: str) -> dict:
    """{case: {impl: {cycles, insn, kernels, errors: {tensor: rel}}, 'elements': n}}"""
    cases: dict = {}
    tot_insn = tot_cycle = 0  # the simulator's running totals
    section = None
    for line in text.splitlines():
        m = re.match(r"@@(begin|end|elements|err|plan) (\S+) ?(\S*) ?(.*)", line)
        if m:
            kind, case, impl, rest = m.groups()
            c = cases.setdefault(case, {})
            if kind == "elements":
                c["elements"] = int(impl)
            elif kind == "begin":
                section = c.setdefault(impl, dict(cycles=0, insn=0, kernels=[], errors={}))
                section["_start"] = (tot_insn, tot_cycle)
            elif kind == "end":
                section = None
            elif kind == "err":
                tensor, value = rest.split()
                c[impl]["errors"][tensor] = float(value)
            elif kind == "plan":
                c.setdefault("plan", {})[impl] = rest
            continue
        m = re.search(r"Done functional simulation \((\d+) instructions simulated\)", line)
        if m:  # functional mode: cumulative thread instructions
            n = int(m.group(1))
            if section is not None:
                section["insn"] += n - tot_insn
                section["kernels"].append(dict(insn=n - tot_insn))
            tot_insn = n
            continue
        m = re.match(r"gpu_sim_cycle = (\d+)", line)
        if m and section is not None:
            section["cycles"] += int(m.group(1))
            section["kernels"].append(dict(cycles=int(m.group(1))))
        m = re.match(r"gpu_tot_sim_insn = (\d+)", line)
        if m:
            n = int(m.group(1))
            if section is not None:
                section["insn"] += n - tot_insn
                if section["kernels"]:
                    section["kernels"][-1]["insn"] = n - tot_insn
            tot_insn = n
        m = re.match(r"kernel_name = (\S+)", line)
        if m and section is not None:
            section.setdefault("names", []).append(m.group(1))
    for c in cases.values():
        for impl in ("xscan", "mamba"):
            if impl in c:
                c[impl].pop("_start", None)
    return cases


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--functional", action="store_true", help="functional simulation: instruction counts only")
    ap.add_argument("--json", help="write {case: {xscan_cycles, mamba_cycles, ratio, max_rel_err, ...}}")
    ap.add_argument("--sms", type=int, default=2, help="simulated SMs (performance model); 0 = the config's 46")
    ap.add_argument("--case", action="append", choices=CASES, help="cases to run (default: all)")
    ap.add_argument("--Bt", type=int, default=1)
    ap.add_argument("--Dm", type=int, default=32)
    ap.add_argument("--L", type=int, default=1024, help="selective_scan sequence length")
    ap.add_argument("--H", type=int, default=16, help="cross_ss2d and ss2d map height")
    ap.add_argument("--W", type=int, default=16, help="cross_ss2d and ss2d map width")
    ap.add_argument("--N", type=int, default=16)
    ap.add_argument("--plan-sms", type=int, default=None,
                    help="SMs xscan's launch plan assumes (sequence split); 0 = no split; default: the simulated GPU's")
    ap.add_argument("--impl", choices=("both", "xscan", "mamba"), default="both")
    ap.add_argument("--deterministic", action="store_true",
                    help="xscan: per-tile dB/dC partials summed on the host instead of float atomics")
    ap.add_argument("--recompute-states", action="store_true",
                    help="xscan: the backward reruns the forward to save its chunk states (a backward without the "
                         "forward's checkpoints) instead of starting from the states the forward saved")
    ap.add_argument("--xscan-root", default=default_xscan_root(), help="repository whose csrc/ is built")
    ap.add_argument("--xscan-rev", help="build csrc/ of this git revision (git archive) instead of the work tree")
    ap.add_argument("--cache", default=os.environ.get("XSCAN_GPUSIM_CACHE",
                                                      os.path.expanduser("~/.cache/xscan-gpusim")))
    ap.add_argument("--keep-log", help="simulator log file (default: in the cache)")
    ap.add_argument("--build-only", action="store_true")
    a = ap.parse_args(argv)

    work = os.environ.get("GPGPUSIM_WORK", "/tmp/gpgpusim")
    # the set-up scripts beside a checkout on these machines (../shared/tools/gpgpusim)
    tools = os.environ.get("GPGPUSIM_TOOLS", os.path.join(default_xscan_root(), "..", "shared", "tools", "gpgpusim"))
    os.makedirs(a.cache, exist_ok=True)
    env = sim_env(work, tools)
    try:
        mamba_src = fetch_mamba(a.cache, log)
    except RuntimeError as e:
        sys.exit(str(e))
    csrc = export_xscan(a.xscan_root, a.xscan_rev, a.cache)
    exe = build(a.cache, csrc, mamba_src, env)
    log(f"harness {exe}")
    if a.build_only:
        return 0
    args = ["--Bt", a.Bt, "--Dm", a.Dm, "--L", a.L, "--H", a.H, "--W", a.W, "--N", a.N, "--impl", a.impl]
    if a.deterministic:
        args.append("--deterministic")
    if a.recompute_states:
        args.append("--recompute-states")
    if a.plan_sms is not None:
        args += ["--plan-sms", a.plan_sms]
    for c in a.case or []:
        args += ["--case", c]
    cfg = config_dir(work, None if a.functional else a.sms, a.cache)
    logfile = a.keep_log or os.path.join(a.cache, "last_run.log")
    cases = parse(simulate(exe, [str(x) for x in args], cfg, a.functional, env, work, logfile))

    mode = "functional" if a.functional else f"performance model, {a.sms or 46} SMs"
    print(f"GPGPU-Sim ({mode}); Bt={a.Bt} Dm={a.Dm} N={a.N}, selective_scan L={a.L}, cross_ss2d and ss2d {a.H}x{a.W}")
    head = (f"{'case':15s} {'impl':6s} {'kernels':>7s} {'cycles':>11s} {'thread insn':>13s} {'insn/elem':>9s} "
            f"{'max rel err':>11s}  worst")
    print(head)
    print("-" * len(head))
    result = {}
    for name, c in cases.items():
        row = {"xscan_cycles": None, "mamba_cycles": None, "ratio": None}
        for impl in ("xscan", "mamba"):
            if impl not in c:
                continue
            s = c[impl]
            per = s["insn"] / c["elements"]
            err = max(s["errors"].values()) if s["errors"] else float("nan")
            worst = max(s["errors"], key=s["errors"].get) if s["errors"] else "-"
            cyc = s["cycles"] if not a.functional else None
            print(f"{name:15s} {impl:6s} {len(s['kernels']):7d} {cyc if cyc is not None else '-':>11} {s['insn']:13d} "
                  f"{per:9.1f} {err:11.2e}  {worst}")
            row[f"{impl}_cycles"] = cyc
            row[f"{impl}_insn"] = s["insn"]
            row[f"{impl}_insn_per_element"] = round(per, 2)
            row[f"{impl}_max_rel_err"] = err
            row[f"{impl}_errors"] = s["errors"]
        if "plan" in c:
            row["xscan_plan"] = "; ".join(c["plan"].values())
        row["elements"] = c["elements"]
        if row.get("xscan_cycles") and row.get("mamba_cycles"):
            row["ratio"] = round(row["xscan_cycles"] / row["mamba_cycles"], 3)
        row["insn_ratio"] = (round(row["xscan_insn"] / row["mamba_insn"], 3)
                             if row.get("mamba_insn") and "xscan_insn" in row else None)
        errs = [row[k] for k in ("xscan_max_rel_err", "mamba_max_rel_err") if k in row]
        row["max_rel_err"] = max(errs) if errs else None
        result[name] = row
    for name, c in cases.items():
        if "plan" in c:
            print(f"  {name}: xscan layout {'; '.join(c['plan'].values())}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=1)
        log(f"wrote {a.json}")
    bad = [n for n, r in result.items() if r.get("max_rel_err") is not None and not r["max_rel_err"] < 1e-3]
    if bad:
        print(f"FAILED accuracy (max rel err >= 1e-3): {', '.join(bad)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
