"""The main job: time every op on every available backend against the reference (and mamba-ssm).

    python -m xscan.bench                 # CPU by default, the GPU when one is present
    python -m xscan.bench --device cpu --ops selective_scan cross_ss2d --full

Prints one row per (op, backend): forward and forward+backward times and speed-ups over the
reference measured side by side in the same run. ``--full`` uses the shapes of the issue targets
(slower on the reference backend).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from . import backends, use_backend
from .testing import OPS, load_mamba_selective_scan, make_inputs, public_op

# (shape for the CPU demo, shape for --full / GPU)
SHAPES = {
    "selective_scan": (dict(Bt=2, Dm=192, N=16, L=1024), dict(Bt=2, Dm=192, N=16, L=4096)),
    "ss2d": (dict(Bt=2, Dm=96, N=16, H=24, W=24), dict(Bt=4, Dm=96, N=16, H=56, W=56)),
    "es2d": (dict(Bt=2, Dm=96, N=16, H=32, W=32), dict(Bt=4, Dm=128, N=16, H=64, W=64)),
    "cross_ss2d": (dict(Bt=2, Dm=72, N=32, H=24, W=24), dict(Bt=2, Dm=72, N=32, H=32, W=32)),
    "interleave_ss2d": (dict(Bt=2, Dm=48, N=16, H=24, W=24, mode="column", axis="width"),
                        dict(Bt=4, Dm=64, N=16, H=32, W=32, mode="column", axis="width")),
    "ssd_exchange": (dict(Bt=2, L=1024, nh=8, P=16, N=16), dict(Bt=4, L=4096, nh=8, P=32, N=64)),
}


def timeit(fn, device: torch.device, min_time: float = 0.3, max_reps: int = 20) -> float:
    """Median seconds per call after one warm-up call."""
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()
    fn()
    sync()
    times, start = [], time.perf_counter()
    while len(times) < max_reps and (time.perf_counter() - start < min_time or len(times) < 3):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _tensors(out):
    return out if isinstance(out, tuple) else (out,)


def measure(fn, args, kwargs, device):
    """(forward seconds, forward+backward seconds) of ``fn(*args, **kwargs)``."""
    leaves = [a.detach().requires_grad_() if isinstance(a, torch.Tensor) and a.is_floating_point() else a
              for a in args]
    with torch.no_grad():
        fwd = timeit(lambda: fn(*args, **kwargs), device)

    def step():
        outs = _tensors(fn(*leaves, **kwargs))
        torch.autograd.backward(outs, [torch.ones_like(o) for o in outs])

    return fwd, timeit(step, device)


def run_op(op: str, device: torch.device, full: bool, names) -> list[dict]:
    shape = SHAPES[op][1 if full or device.type == "cuda" else 0]
    args, kwargs = make_inputs(op, device=device, **shape)
    rows, ref = [], None
    candidates = [("reference", None)] + [(n, n) for n in names if n != "reference"]
    mamba = load_mamba_selective_scan() if op == "selective_scan" else None
    for label, backend in candidates:
        try:
            with use_backend(backend or "reference"):
                fwd, both = measure(public_op(op), args, kwargs, device)
        except RuntimeError as e:  # this backend cannot run this op here
            rows.append(dict(op=op, backend=label, note=str(e).split(": ", 1)[-1][:60]))
            continue
        ref = ref or (fwd, both)
        rows.append(dict(op=op, backend=label, fwd=fwd, both=both, x_fwd=ref[0] / fwd, x_both=ref[1] / both))
    if mamba is not None:
        scan = mamba.selective_scan_fn if device.type == "cuda" else mamba.selective_scan_ref
        fwd, both = measure(scan, args, kwargs, device)
        rows.append(dict(op=op, backend=f"mamba_ssm.{scan.__name__}", fwd=fwd, both=both,
                         x_fwd=ref[0] / fwd, x_both=ref[1] / both))
    for r in rows:
        r["shape"] = " ".join(f"{k}={v}" for k, v in shape.items() if k not in ("mode", "axis"))
    return rows


def print_table(rows: list[dict]) -> None:
    header = f"{'op':<16} {'shape':<30} {'backend':<30} {'fwd ms':>9} {'fwd+bwd ms':>11} {'x fwd':>7} {'x f+b':>7}"
    print(header)
    print("-" * len(header))
    for r in rows:
        if "fwd" not in r:
            print(f"{r['op']:<16} {r['shape']:<30} {r['backend']:<30} {'n/a: ' + r['note']}")
            continue
        print(f"{r['op']:<16} {r['shape']:<30} {r['backend']:<30} {1e3 * r['fwd']:>9.2f} {1e3 * r['both']:>11.2f} "
              f"{r['x_fwd']:>7.1f} {r['x_both']:>7.1f}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m xscan.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (the GPU when present)")
    parser.add_argument("--ops", nargs="+", default=list(OPS), choices=OPS)
    parser.add_argument("--backends", nargs="+", default=None, help="backends to time (default: all available)")
    parser.add_argument("--full", action="store_true", help="the issue-target shapes (slow on the reference)")
    parser.add_argument("--models", action="store_true", help="also time the fusion networks (xscan.models)")
    opts = parser.parse_args(argv)
    device = torch.device("cuda" if opts.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if opts.device == "auto" else opts.device))
    status = backends()
    names = opts.backends or [n for n, ok in status.items() if ok is True]
    print(f"xscan benchmark on {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}), "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for name, ok in status.items():
        print(f"  backend {name:<10} {'available' if ok is True else 'unavailable: ' + ok}")
    if load_mamba_selective_scan() is None:
        print("  mamba-ssm not installed: no mamba_ssm row")
    rows = []
    for op in opts.ops:
        rows += run_op(op, device, opts.full, names)
    print("\nTimes are medians; 'x' columns are speed-ups over the reference backend in this run.\n")
    print_table(rows)
    if opts.models:
        from .models.throughput import print_model_rows
        print()
        print_model_rows(device, names)


if __name__ == "__main__":
    main()
