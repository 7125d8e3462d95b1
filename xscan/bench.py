"""The main job: every op on every backend that runs here, against what users would otherwise run.

    python -m xscan.bench                      # CPU by default, the GPU when one is present; about a minute
    python -m xscan.bench --full               # the long shapes (slower on the Python-loop baselines)
    python -m xscan.bench --json rows.json --plot time.png

Each row is printed as soon as it is measured (a progress bar counts the rows to come). Times are
medians of repeated calls (forward, and forward+backward); the speed-up columns divide the op's
baseline by the row, the baseline named in the op's first line:

- selective_scan: mambapy (the pure-PyTorch parallel scan) on CPU, mamba-ssm's CUDA kernel on a GPU,
  when installed; else the reference backend;
- the 2-D ops: the public networks' materialised path (copies + one selective scan, here xscan's own
  fastest) on the same device;
- ssd_exchange: the reference backend.

The reference backend (the oracle, a Python loop over time) is timed forward only at the op's shape,
so that the whole run takes about a minute; its rows say so.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional

import torch

from . import backends, peers, use_backend
from .inputs import OPS, make_inputs, public_op

# (CPU shape, GPU / --full shape)
SHAPES = {
    "selective_scan": (dict(Bt=2, Dm=192, N=16, L=1024), dict(Bt=2, Dm=192, N=16, L=4096)),
    "ss2d": (dict(Bt=2, Dm=96, N=16, H=24, W=24), dict(Bt=4, Dm=96, N=16, H=56, W=56)),
    "es2d": (dict(Bt=2, Dm=96, N=16, H=32, W=32), dict(Bt=4, Dm=128, N=16, H=64, W=64)),
    "cross_ss2d": (dict(Bt=2, Dm=72, N=18, H=24, W=24), dict(Bt=2, Dm=72, N=18, H=44, W=44)),
    "interleave_ss2d": (dict(Bt=2, Dm=48, N=16, H=24, W=24, mode="column", axis="width"),
                        dict(Bt=4, Dm=64, N=16, H=32, W=32, mode="column", axis="width")),
    "ssd_exchange": (dict(Bt=2, L=1024, nh=8, P=16, N=16), dict(Bt=4, L=4096, nh=8, P=32, N=64)),
}
SWEEP = (256, 512, 1024, 2048, 4096)  # --plot: selective_scan sequence lengths


@dataclass
class Row:
    op: str
    shape: str
    impl: str
    fwd_ms: Optional[float] = None
    both_ms: Optional[float] = None
    x_fwd: Optional[float] = None
    x_both: Optional[float] = None
    note: str = ""
    L: int = 0
    extra: dict = field(default_factory=dict)


def timeit(fn, device: torch.device, min_time: float = 0.25, max_reps: int = 15) -> float:
    """Median seconds per call after one warm-up call (at least 2 timed calls, more while under
    ``min_time``)."""
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    fn()
    sync()
    times, start = [], time.perf_counter()
    while len(times) < max_reps and (time.perf_counter() - start < min_time or len(times) < 2):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _outputs(out):
    return out if isinstance(out, tuple) else (out,)


def measure(fn: Callable, args, kwargs, device, backward: bool = True) -> tuple:
    """(forward seconds, forward+backward seconds or None) of ``fn(*args, **kwargs)``."""
    with torch.no_grad():
        fwd = timeit(lambda: fn(*args, **kwargs), device)
    if not backward:
        return fwd, None
    leaves = [a.detach().requires_grad_() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args]
    kw = {k: v.detach().requires_grad_() if isinstance(v, torch.Tensor) and v.is_floating_point() else v
          for k, v in kwargs.items()}

    def step():
        outs = _outputs(fn(*leaves, **kw))
        torch.autograd.backward(outs, [torch.ones_like(o) for o in outs])

    return fwd, timeit(step, device)


def on_backend(op: str, name: str) -> Callable:
    def run(*args, **kwargs):
        with use_backend(name):
            return public_op(op)(*args, **kwargs)
    return run


def fastest_scan(device: torch.device) -> tuple[str, Callable]:
    """xscan's selective scan on the fastest backend here (the materialised paths' scan)."""
    name = next(n for n in (("cuda", "triton") if device.type == "cuda" else ("cpu",)) + ("reference",)
                if backends()[n] is True)
    return name, on_backend("selective_scan", name)


def plan(op: str, device: torch.device, names: list, full: bool) -> list:
    """The rows of one op: (label, function, whether to time the backward, note), baseline first."""
    entries = []
    if op == "selective_scan":
        mamba = peers.mamba_ssm_scan(device)
        if device.type == "cpu" and peers.has_mambapy():
            entries.append(("mambapy (pure PyTorch)", peers.mambapy_selective_scan, True, "baseline"))
        elif device.type == "cuda" and mamba is not None:
            entries.append((mamba[0], mamba[1], True, "baseline"))
        if device.type == "cpu" and mamba is not None:
            entries.append((mamba[0], mamba[1], False, "forward only: a Python loop"))
    elif op in peers.MATERIALISED:
        scan_name, scan = fastest_scan(device)
        entries.append((f"materialised + xscan {scan_name} scan", peers.materialised(op, scan), True, "baseline"))
    for name in names:
        slow = name == "reference"
        entries.append((f"xscan {name}", on_backend(op, name), not slow,
                        "forward only: the oracle's Python loop" if slow else ""))
    if not any(note == "baseline" for *_, note in entries):  # the reference backend is the baseline then
        entries = [(label, fn, back, "baseline" if label == "xscan reference" else note)
                   for label, fn, back, note in entries]
    return entries


def run_op(op: str, device: torch.device, names: list, full: bool, progress) -> list:
    shape = SHAPES[op][1 if full or device.type == "cuda" else 0]
    args, kwargs = make_inputs(op, device=device, **shape)
    shape_text = " ".join(f"{k}={v}" for k, v in shape.items() if k not in ("mode", "axis"))
    rows, base = [], None
    for label, fn, backward, note in plan(op, device, names, full):
        try:
            fwd, both = measure(fn, args, kwargs, device, backward)
        except (RuntimeError, ValueError) as e:  # this backend cannot run this op here
            row = Row(op, shape_text, label, note=str(e).split(": ", 1)[-1][:70])
        else:
            if note == "baseline":
                base = (fwd, both)
            row = Row(op, shape_text, label, 1e3 * fwd, None if both is None else 1e3 * both,
                      note=note if note != "baseline" else f"baseline of {op}")
            if base is not None:
                row.x_fwd = base[0] / fwd
                row.x_both = None if both is None or base[1] is None else base[1] / both
        rows.append(row)
        progress(row)
    return rows


def sweep(device: torch.device, names: list, progress) -> list:
    """selective_scan time against sequence length, for the plot: every backend and peer, forward."""
    rows = []
    mamba = peers.mamba_ssm_scan(device)
    impls = [(f"xscan {n}", on_backend("selective_scan", n)) for n in names]
    if peers.has_mambapy() and device.type == "cpu":
        impls.append(("mambapy", peers.mambapy_selective_scan))
    if mamba is not None:
        impls.append((mamba[0], mamba[1]))
    for L in SWEEP:
        args, kwargs = make_inputs("selective_scan", device=device, Bt=2, Dm=192, N=16, L=L)
        for label, fn in impls:
            slow = label in ("xscan reference", "mamba_ssm.selective_scan_ref")
            if slow and L > 1024:  # Python loops: the trend is clear by then
                continue
            fwd, _ = measure(fn, args, kwargs, device, backward=False)
            row = Row("selective_scan", f"Bt=2 Dm=192 N=16 L={L}", label, 1e3 * fwd, L=L, note="sweep")
            rows.append(row)
            progress(row)
    return rows


def format_row(r: Row) -> str:
    def num(x, fmt):
        return format("-", fmt[0] + fmt[1:].split(".")[0]) if x is None else format(x, fmt)
    return (f"{r.op:<16} {r.shape:<28} {r.impl:<36} {num(r.fwd_ms, '>9.2f')} {num(r.both_ms, '>11.2f')} "
            f"{num(r.x_fwd, '>7.1f')} {num(r.x_both, '>7.1f')}  {r.note}")


HEADER = (f"{'op':<16} {'shape':<28} {'implementation':<36} {'fwd ms':>9} {'fwd+bwd ms':>11} {'x fwd':>7} "
          f"{'x f+b':>7}  note")


def plot(rows: list, path: str, device_text: str) -> None:
    """Time against sequence length per implementation, log-log (needs matplotlib)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise SystemExit(f"--plot needs matplotlib (pip install matplotlib): {e}") from e
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for impl in dict.fromkeys(r.impl for r in rows):
        pts = [(r.L, r.fwd_ms) for r in rows if r.impl == impl]
        ax.loglog([p[0] for p in pts], [p[1] for p in pts], "o-", label=impl)
    ax.set_xlabel("sequence length L (Bt=2, Dm=192, N=16)")
    ax.set_ylabel("selective_scan forward, ms")
    ax.set_title(f"xscan vs the alternatives, {device_text}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m xscan.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (the GPU when present)")
    parser.add_argument("--ops", nargs="+", default=list(OPS), choices=OPS)
    parser.add_argument("--backends", nargs="+", default=None, help="backends to time (default: all available)")
    parser.add_argument("--full", action="store_true", help="the long shapes (slow on the Python-loop baselines)")
    parser.add_argument("--json", metavar="FILE", help="write every row to FILE")
    parser.add_argument("--plot", metavar="FILE.png",
                        help="also sweep selective_scan's length and plot it (matplotlib)")
    parser.add_argument("--models", action="store_true", help="also time the fusion networks (xscan.models)")
    opts = parser.parse_args(argv)
    device = torch.device("cuda" if opts.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if opts.device == "auto" else opts.device))
    status = backends()
    names = opts.backends or [n for n, ok in status.items() if ok is True and
                              ("*" in _devices(n) or device.type in _devices(n))]
    device_text = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"xscan benchmark on {device} ({device_text}), torch {torch.__version__}, {torch.get_num_threads()} threads")
    for name, ok in status.items():
        print(f"  backend {name:<10} {'available' if ok is True else 'unavailable: ' + ok}")
    if not peers.has_mambapy():
        print("  mambapy not installed (pip install mambapy): no mambapy row")
    if peers.mamba_ssm_scan(device) is None:
        print("  mamba-ssm not installed (or no CUDA build of it on a GPU): no mamba_ssm row")
    from tqdm import tqdm
    total = sum(len(plan(op, device, names, opts.full)) for op in opts.ops)
    if opts.plot:
        total += len(SWEEP) * (len(names) + peers.has_mambapy() + (peers.mamba_ssm_scan(device) is not None))
    rows = []
    start = time.perf_counter()
    with tqdm(total=total, unit="row", file=sys.stderr, leave=False, dynamic_ncols=True,
              disable=None) as bar:  # None: no bar when stderr is not a terminal
        def progress(row):
            bar.update()
            if row.note != "sweep":
                tqdm.write(format_row(row))

        tqdm.write("\n" + HEADER + "\n" + "-" * len(HEADER))
        for op in opts.ops:
            rows += run_op(op, device, names, opts.full, progress)
        if opts.plot:
            rows += sweep(device, names, progress)
    print(f"\n{len(rows)} rows in {time.perf_counter() - start:.0f} s. Times are medians; 'x' columns: the op's "
          "baseline (its first row) divided by the row.")
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump(dict(device=str(device), device_name=device_text, torch=torch.__version__,
                           threads=torch.get_num_threads(), rows=[asdict(r) for r in rows]), f, indent=1)
        print(f"rows written to {opts.json}")
    if opts.plot:
        plot([r for r in rows if r.note == "sweep"], opts.plot, device_text)
        print(f"plot written to {opts.plot}")
    if opts.models:
        from .models.throughput import print_model_rows
        print()
        print_model_rows(device, names)


def _devices(name: str) -> tuple:
    from ._registry import backend
    return backend(name).devices


if __name__ == "__main__":
    main()
