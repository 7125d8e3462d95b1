"""The CUDA backend's targets, measured side by side in one run.

    python benchmarks/cuda_targets.py [--repeats 20] [--dtype float32|float16|bfloat16] [--peak-gbps X]

1. selective_scan, Bt=32, Dm=192, L=3136, N=16 and N=1 (D, z, delta_bias, softplus; B, C (Bt, N, L)):
   xscan's cuda kernel vs mamba_ssm's CUDA ``selective_scan_fn``, forward and forward+backward.
2. cross_ss2d, Bt=4, Dm=72, N=32, H=W=64 (2L = 8192 per route): the fused cuda op vs S4Fusion's path,
   ``xscan.reference.cross_ss2d_materialized`` with scan = mamba's ``selective_scan_fn``, forward +
   backward time and peak memory.

For each xscan measurement the achieved bandwidth is printed against the device's peak. Traffic counted
is the compulsory one: forward reads every input once and writes every output once; forward+backward
adds a second read of the inputs, the output gradients and the writes of every input gradient. Peak
memory is ``torch.cuda.max_memory_allocated`` during one call minus what was allocated before it (the
inputs). Without a CUDA device or without the xscan cuda backend the script says so and exits 0;
without mamba_ssm's CUDA kernel it measures xscan alone.
"""
from __future__ import annotations

import argparse
import statistics

import torch

import xscan
from xscan import reference
from xscan.testing import load_mamba_selective_scan, make_inputs

# Peak DRAM bandwidth (GB/s) by device name, where torch does not report clock and bus width.
KNOWN_PEAK_GBPS = {"H200": 4800, "H100 SXM": 3350, "H100 80GB HBM3": 3350, "H100 PCIe": 2000, "H100": 3350,
                   "A100-SXM4-80GB": 2039, "A100-SXM4-40GB": 1555, "A100": 1555}


def peak_gbps(override):
    if override:
        return override
    props = torch.cuda.get_device_properties(0)
    clock_khz, bus_bits = getattr(props, "memory_clock_rate", 0), getattr(props, "memory_bus_width", 0)
    if clock_khz and bus_bits:
        return 2 * clock_khz * 1e3 * bus_bits / 8 / 1e9  # double data rate
    return next((v for k, v in KNOWN_PEAK_GBPS.items() if k in props.name), None)


def cuda_seconds(fn, repeats):
    """Median time of ``fn()`` by CUDA events, after two warm-up calls."""
    for _ in range(2):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def peak_bytes(fn):
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


def tensors(args, kwargs):
    return [t for t in list(args) + list(kwargs.values()) if isinstance(t, torch.Tensor)]


def nbytes(ts):
    return sum(t.numel() * t.element_size() for t in ts)


def forward_backward(fn, args, kwargs):
    """A closure: fn forward on fresh leaves, backward with ones as output gradients."""
    def run():
        a = [x.detach().requires_grad_() if isinstance(x, torch.Tensor) else x for x in args]
        k = {n: x.detach().requires_grad_() if isinstance(x, torch.Tensor) else x for n, x in kwargs.items()}
        out = fn(*a, **k)
        outs = out if isinstance(out, tuple) else (out,)
        torch.autograd.backward(outs, [torch.ones_like(o) for o in outs])
    return run


def on_cuda_backend(fn):
    def run(*a, **k):
        with xscan.use_backend("cuda"):
            return fn(*a, **k)
    return run


def report(label, seconds, traffic=None, peak=None, baseline=None):
    line = f"  {label:<46} {seconds * 1e3:9.3f} ms"
    if traffic is not None:
        gbps = traffic / seconds / 1e9
        line += f"  {gbps:8.1f} GB/s" + (f" ({100 * gbps / peak:4.1f}% of peak)" if peak else "")
    if baseline is not None:
        line += f"  {baseline / seconds:6.2f}x vs baseline"
    print(line)


def selective_scan_targets(mamba, dtype, repeats, peak):
    for N in (16, 1):
        args, kwargs = make_inputs("selective_scan", Bt=32, Dm=192, N=N, L=3136, dtype=dtype, device="cuda")
        outs = xscan.selective_scan(*args, **kwargs)
        fwd_traffic = nbytes(tensors(args, kwargs)) + nbytes([outs])
        bwd_traffic = 3 * nbytes(tensors(args, kwargs)) + 2 * nbytes([outs])
        print(f"selective_scan Bt=32 Dm=192 L=3136 N={N} {dtype}")
        ours = on_cuda_backend(xscan.selective_scan)
        t_fwd = cuda_seconds(lambda: ours(*args, **kwargs), repeats)
        t_fb = cuda_seconds(forward_backward(ours, args, kwargs), repeats)
        base_fwd = base_fb = None
        if mamba is not None:
            base_fwd = cuda_seconds(lambda: mamba.selective_scan_fn(*args, **kwargs), repeats)
            base_fb = cuda_seconds(forward_backward(mamba.selective_scan_fn, args, kwargs), repeats)
            report("mamba_ssm selective_scan_fn forward", base_fwd, fwd_traffic, peak)
            report("mamba_ssm selective_scan_fn forward+backward", base_fb, bwd_traffic, peak)
        report("xscan cuda forward", t_fwd, fwd_traffic, peak, base_fwd)
        report("xscan cuda forward+backward", t_fb, bwd_traffic, peak, base_fb)


def cross_ss2d_targets(mamba, dtype, repeats, peak):
    args, kwargs = make_inputs("cross_ss2d", Bt=4, Dm=72, N=32, H=64, W=64, dtype=dtype, device="cuda")
    outs = xscan.cross_ss2d.cross_ss2d(*args, **kwargs)
    traffic = 3 * nbytes(tensors(args, kwargs)) + 2 * nbytes(outs)
    print(f"cross_ss2d Bt=4 Dm=72 N=32 H=W=64 (2L=8192) {dtype}, forward+backward")
    ours = forward_backward(on_cuda_backend(xscan.cross_ss2d.cross_ss2d), args, kwargs)
    base = None
    if mamba is not None:
        def materialised(*a, **k):
            return reference.cross_ss2d_materialized(*a, **k, scan=mamba.selective_scan_fn)
        s4fusion = forward_backward(materialised, args, kwargs)
        base = cuda_seconds(s4fusion, repeats)
        report("S4Fusion path (materialised + mamba kernel)", base, traffic, peak)
        print(f"  {'peak memory, S4Fusion path':<46} {peak_bytes(s4fusion) / 2**20:9.1f} MiB")
    report("xscan cuda fused cross_ss2d", cuda_seconds(ours, repeats), traffic, peak, base)
    print(f"  {'peak memory, xscan fused':<46} {peak_bytes(ours) / 2**20:9.1f} MiB")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32")
    parser.add_argument("--peak-gbps", type=float, default=None, help="device DRAM bandwidth, if not detected")
    opts = parser.parse_args()
    if not torch.cuda.is_available():
        print("cuda_targets: no CUDA device: nothing to measure")
        return
    if xscan.backends()["cuda"] is not True:
        print(f"cuda_targets: the xscan cuda backend is not available: {xscan.backends()['cuda']}")
        return
    mamba = load_mamba_selective_scan()
    if mamba is not None:
        try:
            import selective_scan_cuda  # noqa: F401  (mamba_ssm's compiled kernel)
            if not hasattr(selective_scan_cuda, "fwd"):
                raise ImportError("stub")
        except ImportError:
            mamba = None
    if mamba is None:
        print("cuda_targets: mamba_ssm's CUDA selective scan is not installed: measuring xscan alone")
    peak = peak_gbps(opts.peak_gbps)
    props = torch.cuda.get_device_properties(0)
    print(f"device: {props.name}, peak DRAM bandwidth: {f'{peak:.0f} GB/s' if peak else 'unknown'}; "
          f"torch {torch.__version__}")
    dtype = getattr(torch, opts.dtype)
    selective_scan_targets(mamba, dtype, opts.repeats, peak)
    cross_ss2d_targets(mamba, dtype, opts.repeats, peak)


if __name__ == "__main__":
    main()
