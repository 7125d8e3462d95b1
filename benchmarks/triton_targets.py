"""The Triton backend's GPU targets, measured side by side in one run.

    python benchmarks/triton_targets.py [--dtype float32|float16|bfloat16] [--reps 20] [--peak-gbs 3350]

1. S4Fusion fusion scan: cross_ss2d, Bt=4, Dm=72, N=32, H=W=64 (routes of 2L = 8192), forward and
   forward+backward: xscan's fused op on the triton backend vs S4Fusion's materialised path
   (``xscan.reference.cross_ss2d_materialized``: flip/transpose/interleave copies, one scan over
   (Bt, 4*Dm, 2L), recover) with scan = mamba_ssm's CUDA ``selective_scan_fn`` when importable, and
   with scan = xscan's own triton ``selective_scan`` (the same scan engine: isolates the copies).
2. VMamba-like selective_scan: Bt=32, Dm=192, N=16, L=3136 (D, z, delta_bias, softplus), xscan
   triton vs mamba_ssm's ``selective_scan_fn``; and the same with N=1.

Per row: median time (CUDA events), the compulsory traffic (every input read once, every output
and gradient written once) divided by the time as achieved bandwidth, its share of the device's
peak bandwidth (from the device properties, or --peak-gbs), and the peak memory allocated during
one call (torch.cuda.max_memory_allocated, inputs excluded). On a machine without a GPU the script
parses its arguments, says so and exits 0.
"""
from __future__ import annotations

import argparse
import statistics
import sys

import torch


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                   help="dtype of the per-token tensors (A, D, delta_bias stay fp32)")
    p.add_argument("--reps", type=int, default=20, help="timed repetitions (median reported)")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls first (autotuning, compilation)")
    p.add_argument("--peak-gbs", type=float, default=None, help="device peak bandwidth in GB/s")
    p.add_argument("--only", choices=["cross_ss2d", "selective_scan"], default=None)
    return p.parse_args(argv)


def mamba_scan():
    """mamba_ssm's CUDA selective_scan_fn, or (None, why not)."""
    try:
        import selective_scan_cuda  # noqa: F401  (the compiled extension selective_scan_fn needs)
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception as e:  # not installed, or built without CUDA
        return None, f"mamba_ssm CUDA selective_scan_fn not importable ({type(e).__name__}: {e})"
    return selective_scan_fn, None


def peak_bandwidth(override):
    if override:
        return override * 1e9
    props = torch.cuda.get_device_properties(0)
    clock_khz = getattr(props, "memory_clock_rate", None)
    bus_bits = getattr(props, "memory_bus_width", None)
    if not clock_khz or not bus_bits:
        return None
    return 2.0 * clock_khz * 1e3 * bus_bits / 8  # double data rate


def nbytes(tensors):
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


def outputs(out):
    return out if isinstance(out, tuple) else (out,)


def measure(fn, args, kwargs, reps, warmup, backward):
    """Median seconds, peak bytes allocated beyond the inputs, and the output/grad tensors of one call."""
    leaves = [a.detach().requires_grad_(backward) if isinstance(a, torch.Tensor) else a for a in args]
    kw = {k: v.detach().requires_grad_(backward) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    grads_out = None

    def call():
        nonlocal grads_out
        for t in list(leaves) + list(kw.values()):
            if isinstance(t, torch.Tensor):
                t.grad = None
        if not backward:
            with torch.no_grad():
                return outputs(fn(*leaves, **kw))
        outs = outputs(fn(*leaves, **kw))
        grads_out = grads_out or [torch.randn_like(o) for o in outs]
        torch.autograd.backward(outs, grads_out)
        return outs

    for _ in range(warmup):
        call()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        call()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    outs = call()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    inputs = [t for t in list(leaves) + list(kw.values()) if isinstance(t, torch.Tensor)]
    traffic = nbytes(inputs) + nbytes(outs)
    if backward:  # the backward reads the inputs and output grads again, writes one grad per input
        traffic += nbytes(inputs) + nbytes(outs) + nbytes(inputs)
    return statistics.median(times), peak, traffic


def report(name, seconds, peak, traffic, peak_bw, baseline=None):
    bw = traffic / seconds
    share = f"{100 * bw / peak_bw:5.1f}% of peak" if peak_bw else "peak unknown"
    ratio = f"  {baseline / seconds:6.2f}x vs baseline" if baseline else ""
    print(f"  {name:<48s} {seconds * 1e3:9.3f} ms  {bw / 1e9:8.1f} GB/s ({share})  "
          f"peak mem {peak / 2**20:9.1f} MiB{ratio}", flush=True)


def run_cross_ss2d(opts, dtype, peak_bw, mamba_fn):
    import xscan
    from xscan import reference
    from xscan.cross_ss2d import cross_ss2d
    from xscan.testing import make_inputs

    args, kwargs = make_inputs("cross_ss2d", Bt=4, Dm=72, N=32, H=64, W=64, dtype=dtype, device="cuda")
    print("cross_ss2d  Bt=4 Dm=72 N=32 H=W=64 (2L=8192), D, delta_bias, softplus")

    def fused(*a, **k):
        with xscan.use_backend("triton"):
            return cross_ss2d(*a, **k)

    def materialized_with(scan):
        return lambda *a, **k: reference.cross_ss2d_materialized(*a, **k, scan=scan)

    def xscan_scan(*a):
        with xscan.use_backend("triton"):
            return xscan.selective_scan(*a)

    paths = [("S4Fusion path + mamba selective_scan_fn", materialized_with(mamba_fn))] if mamba_fn else []
    paths += [("S4Fusion path + xscan triton selective_scan", materialized_with(xscan_scan)),
              ("xscan fused cross_ss2d (triton)", fused)]
    for backward in (False, True):
        print(f" {'forward+backward' if backward else 'forward'}")
        baseline = None
        for name, fn in paths:
            seconds, peak, traffic = measure(fn, args, kwargs, opts.reps, opts.warmup, backward)
            report(name, seconds, peak, traffic, peak_bw, baseline)
            baseline = baseline or seconds


def run_selective_scan(opts, dtype, peak_bw, mamba_fn):
    import xscan
    from xscan.testing import make_inputs

    for N in (16, 1):
        args, kwargs = make_inputs("selective_scan", Bt=32, Dm=192, N=N, L=3136, dtype=dtype, device="cuda")
        print(f"selective_scan  Bt=32 Dm=192 N={N} L=3136, D, z, delta_bias, softplus")

        def ours(*a, **k):
            with xscan.use_backend("triton"):
                return xscan.selective_scan(*a, **k)

        paths = ([("mamba selective_scan_fn (CUDA)", mamba_fn)] if mamba_fn else []) + [("xscan triton", ours)]
        for backward in (False, True):
            print(f" {'forward+backward' if backward else 'forward'}")
            baseline = None
            for name, fn in paths:
                seconds, peak, traffic = measure(fn, args, kwargs, opts.reps, opts.warmup, backward)
                report(name, seconds, peak, traffic, peak_bw, baseline)
                baseline = baseline or seconds


def main(argv=None) -> int:
    opts = parse(argv)
    if not torch.cuda.is_available():
        print("triton_targets: no GPU present (torch.cuda.is_available() is False); nothing measured.")
        return 0
    import xscan
    status = xscan.backends()["triton"]
    if status is not True:
        print(f"triton_targets: the triton backend is unavailable: {status}")
        return 1
    dtype = getattr(torch, opts.dtype)
    peak_bw = peak_bandwidth(opts.peak_gbs)
    mamba_fn, why = mamba_scan()
    props = torch.cuda.get_device_properties(0)
    print(f"device: {props.name}, peak bandwidth "
          f"{'%.0f GB/s' % (peak_bw / 1e9) if peak_bw else 'unknown'}; dtype {opts.dtype}; torch {torch.__version__}")
    if why:
        print(f"note: {why}; mamba rows skipped")
    if opts.only in (None, "cross_ss2d"):
        run_cross_ss2d(opts, dtype, peak_bw, mamba_fn)
    if opts.only in (None, "selective_scan"):
        run_selective_scan(opts, dtype, peak_bw, mamba_fn)
    return 0


if __name__ == "__main__":
    sys.exit(main())
