"""The CPU backend's targets, measured side by side in one run, printed as ratios.

    python benchmarks/cpu_targets.py [--repeats 5] [--quick]

1. selective_scan (D, z, delta_bias, softplus) at Bt=2, Dm=192, N=16, L=1024 and 4096 and at
   S4Fusion's fusion shape (Dm=72, N=18, 2L=15488): forward+backward against the forward (targets
   <= 3.5x, backward <= 2.5x), and against mambapy's pscan with the same maths
   (``xscan.peers.mambapy_selective_scan``; ``pip install mambapy``): forward >= 30x, forward+backward
   >= 20x. Then the forward against mamba_ssm's ``selective_scan_ref`` at L=1024.
2. cross_ss2d, Bt=2, Dm=72, N=32, H=W=32: the fused cpu op vs S4Fusion's materialised path
   (``xscan.reference.cross_ss2d_materialized``) with scan = mamba's ``selective_scan_ref`` (>= 30x,
   forward and forward+backward) and with scan = ``xscan.selective_scan`` on the cpu backend
   (>= 1.3x), and the peak memory of forward+backward (fused <= 1/3 of the materialised path).

Without mamba-ssm the script says so and uses ``xscan.reference`` (a loop over time like
``selective_scan_ref``) as the slow baseline.

Peak memory: torch's profiler with ``profile_memory=True`` attributes every allocation and free of
torch's CPU allocator to the op it happens in (all tensors: the op's outputs, gradients,
intermediates, and the CPU kernel's own output/partial-gradient buffers, which it allocates through
ATen and so are recorded too). The peak is the maximum of the running sum of those amounts, op by op
in time order, during one forward+backward; tensors alive before the call (the inputs) are not
counted. Both paths must allocate the outputs, their cotangents and the input gradients; the
peak above that floor is what a path adds (the materialised copies, their gradients, the scan's
intermediates), and its ratio is printed too. The CPU kernel's small per-thread std::vector scratch
(O(threads * (tile + L/chunk) * N * block) floats) is outside torch's allocator and not counted; it
is printed separately.
"""
from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import time
import warnings

import torch
from torch.profiler import ProfilerActivity, profile

import xscan
from xscan import peers, reference
from xscan.testing import load_mamba_selective_scan, make_inputs

CHUNK, FORWARD_TILE = 64, 256  # csrc/cpu/scan_views.h kChunk, kForwardTile


def workspace_bytes(N: int, block: int, tile: int, chunks: int) -> int:
    """One thread's scratch of the CPU engine (csrc/cpu/scan_views.h Workspace), in bytes; chunks = 0
    for the forward, which allocates none of the backward's buffers."""
    floats = 2 * tile * N + 4 * tile * block + 2 * N * block + 2 * block + 5 * tile
    offsets = 4 * tile
    if chunks:
        floats += (2 * tile * N + 5 * tile * block + 2 * tile * N * block + 2 * N * block + 3 * block
                   + chunks * N * block)
        offsets += 4 * tile
    return 4 * floats + 8 * offsets + tile * (72 + 8)  # tokens (72 bytes) and output pointers


def outputs_and_grads_bytes(fn, args, kwargs) -> int:
    """What any implementation allocates in forward_backward(fn): the outputs, their cotangents and
    the gradient of every tensor input."""
    outs = fn(*args, **kwargs)
    outs = outs if isinstance(outs, tuple) else (outs,)
    tensors = [x for x in list(args) + list(kwargs.values()) if isinstance(x, torch.Tensor)]
    return sum(t.numel() * t.element_size() for t in 2 * list(outs) + tensors)


def seconds(fn, repeats: int) -> float:
    """Median wall time of ``fn()`` after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def leaves(args, kwargs):
    a = [x.detach().clone().requires_grad_() if isinstance(x, torch.Tensor) else x for x in args]
    k = {n: x.detach().clone().requires_grad_() if isinstance(x, torch.Tensor) else x for n, x in kwargs.items()}
    return a, k


def forward_backward(fn, args, kwargs):
    """A closure running fn forward and backward with fixed cotangents on fresh leaves."""
    a, k = leaves(args, kwargs)
    tensors = [x for x in list(a) + list(k.values()) if isinstance(x, torch.Tensor)]

    def run():
        for x in tensors:
            x.grad = None
        outs = fn(*a, **k)
        outs = outs if isinstance(outs, tuple) else (outs,)
        torch.autograd.backward(outs, [torch.ones_like(o) for o in outs])

    return run


def peak_bytes(fn) -> int:
    """Peak of torch CPU allocations (bytes) during fn(), above what was allocated before it."""
    fn()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            fn()
    live = peak = 0
    for e in sorted(prof.events(), key=lambda e: e.time_range.start):
        live += e.self_cpu_memory_usage  # allocations minus frees of this op outside its children
        peak = max(peak, live)
    return peak


def cpu_backend(fn):
    def run(*a, **k):
        with xscan.use_backend("cpu"):
            return fn(*a, **k)
    return run


def report(rows):
    width = max(len(r[0]) for r in rows)
    for name, value, target in rows:
        print(f"  {name:<{width}}  {value}{'' if target is None else '   (target ' + target + ')'}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of the xscan kernels (median)")
    parser.add_argument("--slow-repeats", type=int, default=1, help="timed runs of the Python-loop baselines")
    parser.add_argument("--quick", action="store_true", help="small shapes (a smoke test, not the targets)")
    opts = parser.parse_args(argv)

    mamba = load_mamba_selective_scan()
    if mamba is None:
        print("mamba-ssm is not installed: the slow baseline is xscan.reference.selective_scan instead of "
              "mamba_ssm's selective_scan_ref")
        slow_scan, slow_name = reference.selective_scan, "xscan.reference"
    else:
        slow_scan, slow_name = mamba.selective_scan_ref, "mamba selective_scan_ref"
    now = datetime.datetime.now(datetime.timezone.utc)
    print(f"# {now:%Y-%m-%d %H:%M} UTC, {platform.processor() or platform.machine()}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, xscan cpu backend: {xscan.backends()['cpu']}")

    # 1. selective_scan: the backward against the forward, and against mambapy
    shapes = ([dict(Bt=2, Dm=192, N=16, L=1024), dict(Bt=2, Dm=192, N=16, L=4096),
               dict(Bt=2, Dm=72, N=18, L=15488)] if not opts.quick else [dict(Bt=1, Dm=16, N=16, L=256)])
    fast = cpu_backend(xscan.selective_scan)
    for shape in shapes:
        args, kwargs = make_inputs("selective_scan", **shape)
        t_fast = seconds(lambda: fast(*args, **kwargs), opts.repeats)
        tb_fast = seconds(forward_backward(fast, args, kwargs), opts.repeats)
        rows = [("forward xscan cpu", f"{t_fast * 1e3:9.1f} ms", None),
                ("fwd+bwd xscan cpu", f"{tb_fast * 1e3:9.1f} ms", None),
                ("fwd+bwd / forward", f"{tb_fast / t_fast:9.2f} x", "<= 3.5x"),
                ("backward / forward", f"{(tb_fast - t_fast) / t_fast:9.2f} x", "<= 2.5x")]
        if peers.has_mambapy():
            t_py = seconds(lambda: peers.mambapy_selective_scan(*args, **kwargs), opts.slow_repeats)
            tb_py = seconds(forward_backward(peers.mambapy_selective_scan, args, kwargs), opts.slow_repeats)
            rows += [("forward mambapy", f"{t_py * 1e3:9.1f} ms", None),
                     ("fwd+bwd mambapy", f"{tb_py * 1e3:9.1f} ms", None),
                     ("forward speed-up vs mambapy", f"{t_py / t_fast:9.1f} x", ">= 30x"),
                     ("fwd+bwd speed-up vs mambapy", f"{tb_py / tb_fast:9.1f} x", ">= 20x")]
        else:
            rows.append(("mambapy", "not installed (pip install mambapy)", None))
        print(f"\nselective_scan {shape} (D, z, delta_bias, softplus):")
        report(rows)

    # selective_scan vs mamba-ssm's CPU path (a Python loop over time), forward only at L = 1024
    shape = dict(Bt=2, Dm=192, N=16, L=1024) if not opts.quick else dict(Bt=1, Dm=16, N=16, L=256)
    args, kwargs = make_inputs("selective_scan", **shape)
    t_fast = seconds(lambda: fast(*args, **kwargs), opts.repeats)
    t_slow = seconds(lambda: slow_scan(*args, **kwargs), opts.slow_repeats)
    print(f"\nselective_scan {shape}, forward, vs {slow_name}:")
    report([("forward xscan cpu", f"{t_fast * 1e3:9.1f} ms", None),
            (f"forward {slow_name}", f"{t_slow * 1e3:9.1f} ms", None),
            ("forward speed-up", f"{t_slow / t_fast:9.1f} x", None)])

    # 2. cross_ss2d
    shape = dict(Bt=2, Dm=72, N=32, H=32, W=32) if not opts.quick else dict(Bt=1, Dm=8, N=8, H=8, W=8)
    args, kwargs = make_inputs("cross_ss2d", **shape)
    fused = cpu_backend(xscan.cross_ss2d.cross_ss2d)

    def materialized(scan):
        return lambda *a, **k: reference.cross_ss2d_materialized(*a, **k, scan=scan)

    mat_fast = materialized(cpu_backend(xscan.selective_scan))
    mat_slow = materialized(slow_scan)
    t_fused = seconds(lambda: fused(*args, **kwargs), opts.repeats)
    t_mat_fast = seconds(lambda: mat_fast(*args, **kwargs), opts.repeats)
    t_mat_slow = seconds(lambda: mat_slow(*args, **kwargs), opts.slow_repeats)
    fb_fused = forward_backward(fused, args, kwargs)
    fb_mat_fast = forward_backward(mat_fast, args, kwargs)
    tb_fused = seconds(fb_fused, opts.repeats)
    tb_mat_fast = seconds(fb_mat_fast, opts.repeats)
    tb_mat_slow = seconds(forward_backward(mat_slow, args, kwargs), opts.slow_repeats)
    mem_fused, mem_mat = peak_bytes(fb_fused), peak_bytes(fb_mat_fast)
    L2 = 2 * shape["H"] * shape["W"]
    # blocks are at most 16 channels in the forward, 32 in the backward (scan_views.h: channel_block, backward_block)
    scratch = torch.get_num_threads() * max(
        workspace_bytes(shape["N"], min(shape["Dm"], 16), FORWARD_TILE, 0),
        workspace_bytes(shape["N"], min(shape["Dm"], 32), CHUNK, -(-L2 // CHUNK)))
    floor = outputs_and_grads_bytes(fused, args, kwargs)
    print(f"\ncross_ss2d {shape} (2L = {L2}), fused cpu op vs S4Fusion's materialised path:")
    report([("forward fused cpu", f"{t_fused * 1e3:9.1f} ms", None),
            (f"forward materialised + {slow_name}", f"{t_mat_slow * 1e3:9.1f} ms", None),
            ("forward materialised + xscan cpu selective_scan", f"{t_mat_fast * 1e3:9.1f} ms", None),
            (f"forward speed-up vs {slow_name} path", f"{t_mat_slow / t_fused:9.1f} x", ">= 30x"),
            ("forward speed-up vs xscan-scan path", f"{t_mat_fast / t_fused:9.2f} x", ">= 1.3x"),
            ("fwd+bwd fused cpu", f"{tb_fused * 1e3:9.1f} ms", None),
            (f"fwd+bwd materialised + {slow_name}", f"{tb_mat_slow * 1e3:9.1f} ms", None),
            ("fwd+bwd materialised + xscan cpu selective_scan", f"{tb_mat_fast * 1e3:9.1f} ms", None),
            (f"fwd+bwd speed-up vs {slow_name} path", f"{tb_mat_slow / tb_fused:9.1f} x", ">= 30x"),
            ("fwd+bwd speed-up vs xscan-scan path", f"{tb_mat_fast / tb_fused:9.2f} x", ">= 1.3x"),
            ("fwd+bwd peak torch memory, fused", f"{mem_fused / 2**20:9.2f} MiB", None),
            ("fwd+bwd peak torch memory, materialised + xscan scan", f"{mem_mat / 2**20:9.2f} MiB", None),
            ("memory ratio fused / materialised", f"{mem_fused / mem_mat:9.3f}", "<= 0.333"),
            ("outputs, cotangents, input gradients (both allocate)", f"{floor / 2**20:9.2f} MiB", None),
            ("memory ratio above that floor", f"{(mem_fused - floor) / (mem_mat - floor):9.3f}", None),
            ("kernel scratch outside torch (bound)", f"{scratch / 2**20:9.2f} MiB", None)])


if __name__ == "__main__":
    main()
