"""The GPU session kit's workers: what imports torch runs here, in a subprocess (gpu_run.py --worker
NAME)."""
from __future__ import annotations

import functools
import importlib.util
import json
import os
import platform
import subprocess
import tarfile
import time
import traceback
from pathlib import Path

from .kit_config import MAMBA_NVCC, OPTIONAL_MODULES, TOLERANCE, TRITON_ERROR, one_line, triton


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
