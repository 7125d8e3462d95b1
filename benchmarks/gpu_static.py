"""Static report of xscan's GPU kernels for an H100 (sm_90), computed on a machine without a GPU.

    python benchmarks/gpu_static.py [--quick] [--json FILE] [--size 256] [--batch 1] [--jobs 2]
                                    [--cache DIR] [--mamba-sdist DIR]

1. CUDA: csrc/cuda/scan_{forward,backward}_{fp32,fp16,bf16}.cu, each compiled alone to an sm_90
   cubin (nvcc -Xptxas -v). Per kernel instantiation: registers, spill bytes (stores/loads) and
   static shared memory (ptxas), SASS instructions and CALL.REL subroutine calls (cuobjdump -sass),
   theoretical warps per SM.
2. Triton: every kernel variant the Triton executor launches for the ops of the four fusion
   networks at --size x --size, compiled for sm_90 with triton.compile (both autotuned warp counts),
   nothing launched. The same columns; shared memory is what the launch requests.
3. Grids: per op of the networks, CUDA blocks and Triton programs against the H100's 132 SMs.
4. Work per element: per op of the networks and at cuda_targets.py's selective_scan shape, the
   thread-instructions per (channel x position x state) of the CUDA forward and backward (every
   kernel they launch) beside mamba-ssm's selective_scan forward and backward kernels at the same
   shape, compiled from its source distribution (pip download into --mamba-sdist; without it the
   mamba column says why it is missing), and beside xscan's own selective_scan over the same elements
   (selective_scan_twin): benchmarks/per_element.py. JSON: "per_element": {"<op> fwd|bwd@<shape>":
   {"xscan": n, "mamba": n, "ratio": r, "selective_scan": n, "vs_selective_scan": r}}. Compiled probes
   are cached.

The ops and their shapes come from running each network forward on the meta device and planning
every xscan op it calls (no weights, no arithmetic). --quick (CI): the fp32 CUDA files only (Triton
is compiled at every autotune config in both runs). Exit status 0 unless a
compilation fails; a part whose tools are missing says 'skipped: why'.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import torch
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # the xscan of this checkout, whose csrc/ is compiled


@dataclasses.dataclass(frozen=True)
class GPU:
    """The limits that bound occupancy (CUDA occupancy calculator, compute capability 9.0)."""
    name: str = "H100 SXM (sm_90)"
    sms: int = 132
    regs_per_sm: int = 65536
    reg_unit: int = 256                  # registers are allocated per warp, in units of 256
    smem_per_sm: int = 228 * 1024
    smem_unit: int = 128
    smem_reserved_per_block: int = 1024  # the driver's reservation per block (sm_80 and later)
    max_warps: int = 64
    max_blocks: int = 32


H100 = GPU()


def occupancy(regs: int, smem: int, warps_per_block: int, gpu: GPU = H100) -> tuple[int, str]:
    """(resident warps per SM, what limits them) for blocks of warps_per_block warps."""
    regs_per_warp = math.ceil(regs * 32 / gpu.reg_unit) * gpu.reg_unit
    smem_per_block = math.ceil(smem / gpu.smem_unit) * gpu.smem_unit + gpu.smem_reserved_per_block
    limits = {"regs": (gpu.regs_per_sm // regs_per_warp) // warps_per_block if regs else gpu.max_blocks,
              "smem": gpu.smem_per_sm // smem_per_block,
              "warps": gpu.max_warps // warps_per_block,
              "blocks": gpu.max_blocks}
    blocks = min(limits.values())
    return blocks * warps_per_block, next(k for k, v in limits.items() if v == blocks)


# ---- the networks' ops ----------------------------------------------------------------------------

@dataclasses.dataclass
class OpCall:
    """A distinct xscan op call of a network, as its ScanSpec (on meta tensors)."""
    network: str
    op: str
    spec: object
    calls: int = 1

    def label(self) -> str:
        s = self.spec
        H, W = s.scanned_map()
        if s.route.name == "HEADS":
            shape = f"L={W} nh={s.channels} P={H} N={s.dstate}"
        elif s.route.name == "LINE":
            shape = f"L={W} Dm={s.channels} N={s.dstate}"
        else:
            shape = f"{H}x{W} Dm={s.channels} N={s.dstate}"
        return f"{self.op} {shape}" + ("" if s.source.name == "TOKEN" else f" {s.source.name.lower()}")


class Planner(TorchDispatchMode):
    """Plans each xscan op call as its backend would (one OpCall per distinct call), then lets the fake
    kernel run."""

    def __init__(self, network):
        super().__init__()
        self.network, self.calls = network, {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        from xscan.ops._define import output_dtype

        ns, _, name = func._schema.name.partition("::")
        if ns == "xscan" and not name.endswith("_backward"):
            *a, fp32_output, _backend = args
            spec = importlib.import_module(f"xscan.ops.{name}").plan(*a, output_dtype(a[0].dtype, fp32_output))
            key = (name, spec.route, spec.source, spec.geometry, spec.softplus, str(spec.dtype()),
                   tuple((role, tuple(v.shape), v.stride()) for role, views in sorted(spec.tensors.items())
                         for v in views if v is not None))
            if key in self.calls:
                self.calls[key].calls += 1
            else:
                self.calls[key] = OpCall(self.network, name, spec)
        return func(*args, **(kwargs or {}))


def network_ops(size: int, batch: int) -> list[OpCall]:
    """Every distinct xscan op call in each network's forward at size x size (training runs the
    same calls, and the backward of each)."""
    from xscan.models import MODELS

    ops = []
    for network, cls in MODELS.items():
        net = cls().to("meta").eval()  # built on the CPU: some constructors read values
        images = [torch.rand(batch, 1, size, size, device="meta") for _ in range(2)]
        planner = Planner(network)
        with torch.no_grad(), planner:
            net(*images)
        ops += planner.calls.values()
    return ops


def planned_selective_scan(network: str, Bt: int, Dm: int, L: int, N: int, groups: int | None, D: bool, z: bool,
                           delta_bias: bool, softplus: bool) -> OpCall:
    """An xscan.selective_scan call on meta tensors, planned: B and C (Bt, N, L), or (Bt, groups, N, L);
    D, z, delta_bias present or not."""
    import xscan

    def empty(*shape):
        return torch.empty(*shape, device="meta")

    bc = (Bt, N, L) if groups is None else (Bt, groups, N, L)
    planner = Planner(network)
    with torch.no_grad(), planner:
        xscan.selective_scan(empty(Bt, Dm, L), empty(Bt, Dm, L), empty(Dm, N), empty(*bc), empty(*bc),
                             D=empty(Dm) if D else None, z=empty(Bt, Dm, L) if z else None,
                             delta_bias=empty(Dm) if delta_bias else None, delta_softplus=softplus)
    return next(iter(planner.calls.values()))


def target_op() -> OpCall:
    """benchmarks/cuda_targets.py's selective_scan: Bt=32 Dm=192 L=3136 N=16, D, z, delta_bias, softplus,
    B and C (Bt, N, L)."""
    return planned_selective_scan("cuda_targets", 32, 192, 3136, 16, None, True, True, True, True)


def selective_scan_twin(call: OpCall) -> OpCall:
    """xscan's selective_scan over as many elements as an op call, laid out as the call's routes:
    Bt sequences of its route length, routes x channels channels, its N, B and C one group per route,
    with the call's D, z, delta_bias and softplus. Issue #26's "every op <= 1.2x xscan's own
    selective_scan at the same element count" divides by this."""
    s = call.spec
    return planned_selective_scan(call.network, s.batch, s.routes * s.channels, s.length(), s.dstate, s.routes,
                                  *(s.view(role) is not None for role in ("D", "z", "delta_bias")), bool(s.softplus))


# ---- binary tools ---------------------------------------------------------------------------------

def find_tool(name: str, nvcc: str | None = None) -> str | None:
    """A CUDA tool on PATH, beside nvcc, in $CUDA_HOME/bin, or the copy bundled with triton."""
    dirs = [os.path.dirname(os.path.realpath(nvcc))] if nvcc else []
    dirs.append(os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin"))
    with contextlib.suppress(ImportError):
        import triton
        dirs.append(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin"))
    paths = [os.path.join(d, name) for d in dirs]
    return shutil.which(name) or next((p for p in paths if os.access(p, os.X_OK)), None)


def demangle(names: list[str]) -> dict:
    """Mangled name -> short name: no namespaces, return type or parameter list."""
    tool = find_tool("cu++filt") or shutil.which("c++filt")
    full = names
    if tool and names:
        out = subprocess.run([tool], input="\n".join(names), capture_output=True, text=True).stdout.splitlines()
        full = out if len(out) == len(names) else names
    short = {}
    for mangled, name in zip(names, full):
        name = name.removeprefix("void ").replace("xscan::cuda::", "").replace("xscan::", "")
        name = re.sub(r"<int, FastDivisor>\s*", "", name)
        depth, end = 0, len(name)
        for i, ch in enumerate(name):  # the parameter list: the first '(' outside <...>
            depth += (ch == "<") - (ch == ">")
            if ch == "(" and depth == 0:
                end = i
                break
        short[mangled] = name[:end]
    return short


def ptxas_usage(log: str) -> dict:
    """ptxas -v output -> {entry function: regs, stack, spill_stores, spill_loads, smem (static)}."""
    usage, entry, props = {}, None, None
    for line in log.splitlines():
        if m := re.search(r"Compiling entry function '(\S+)'", line):
            entry = m[1]
            usage[entry] = dict(regs=0, stack=0, spill_stores=0, spill_loads=0, smem=0)
        elif m := re.search(r"Function properties for (\S+)", line):
            props = m[1]
        elif (m := re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)) \
                and props in usage:
            usage[props].update(stack=int(m[1]), spill_stores=int(m[2]), spill_loads=int(m[3]))
        elif (m := re.search(r"Used (\d+) registers", line)) and entry:
            usage[entry]["regs"] = int(m[1])
            if s := re.search(r"(\d+) bytes smem", line):
                usage[entry]["smem"] = int(s[1])
    return usage


def sass_counts(cubin: str, cuobjdump: str | None) -> dict:
    """{function: instructions (NOPs not counted), CALL.REL call sites, distinct targets, what the
    called subroutines are}, from cuobjdump -sass."""
    if not cuobjdump:
        return {}
    try:
        out = subprocess.run([cuobjdump, "-sass", cubin], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return {}
    functions, code = {}, None
    for line in out.splitlines():
        if m := re.match(r"\s+Function : (\S+)", line):
            code = functions[m[1]] = {}
        elif code is not None and (m := re.match(r"\s+/\*([0-9a-f]+)\*/\s+(.*?)\s*;", line)):
            instruction = re.sub(r"^@!?U?P\w+\s+", "", m[2])  # without its predicate
            if not instruction.startswith("NOP"):
                code[int(m[1], 16)] = instruction
    counts = {}
    for name, code in functions.items():
        sites = [i for i in code.values() if i.startswith("CALL.REL")]
        targets = {int(i.split()[-1], 16) for i in sites}
        counts[name] = dict(instructions=len(code), calls=len(sites), targets=len(targets),
                            subroutines=sorted({subroutine(code, t) for t in targets}))
    return counts


def subroutine(code: dict, start: int) -> str:
    """What a called subroutine is, from its first instructions."""
    head = [code[a] for a in sorted(a for a in code if a >= start)[:24]]
    if any(i.startswith("I2F.U64.RP") for i in head):
        return "int64 div/mod"
    if any(i.startswith("MUFU.RCP") for i in head):
        return "fp division"
    return "other"


# ---- CUDA -----------------------------------------------------------------------------------------

def cuda_constants() -> tuple[int, int]:
    """(kThreadsPerBlock, kItems) from csrc/cuda/scan_params.h."""
    with open(os.path.join(ROOT, "csrc", "cuda", "scan_params.h")) as f:
        text = f.read()
    return tuple(int(re.search(rf"constexpr int {name} = (\d+);", text)[1])
                 for name in ("kThreadsPerBlock", "kItems"))


def compile_cuda(name: str, nvcc: str, workdir: str) -> dict:
    cubin = os.path.join(workdir, name.replace(".cu", ".cubin"))
    cmd = [nvcc, "-std=c++17", "-O3", "--use_fast_math", "-cubin", "-arch=sm_90",
           "-I", os.path.join(ROOT, "csrc", "include"), "-Xptxas", "-v",
           os.path.join(ROOT, "csrc", "cuda", name), "-o", cubin]
    start = time.time()
    run = subprocess.run(cmd, capture_output=True, text=True)
    return dict(file=name, ok=run.returncode == 0, seconds=round(time.time() - start, 1),
                log=run.stdout + run.stderr, cubin=cubin)


def cuda_report(files: list[str], jobs: int) -> dict:
    nvcc = shutil.which(os.environ.get("NVCC", "nvcc"))
    if not nvcc:
        return dict(skipped="nvcc not found (set NVCC or put it on PATH)")
    cuobjdump = find_tool("cuobjdump", nvcc)
    threads, _ = cuda_constants()
    kernels, compiles, failed = [], [], []
    with tempfile.TemporaryDirectory() as workdir, ThreadPoolExecutor(jobs) as pool:
        for result in pool.map(lambda f: compile_cuda(f, nvcc, workdir), files):
            compiles.append({k: result[k] for k in ("file", "seconds", "ok")})
            if not result["ok"]:
                failed.append(f"nvcc {result['file']}:\n{result['log'][-3000:]}")
                continue
            sass = sass_counts(result["cubin"], cuobjdump)
            for mangled, usage in ptxas_usage(result["log"]).items():
                row = dict(mangled=mangled, **usage, **sass.get(mangled, {}))
                # the backward files instantiate the forward kernels again: one row unless they differ
                same = next((k for k in kernels if all(k[f] == v for f, v in row.items())), None)
                if same:
                    same["files"].append(result["file"])
                    continue
                row["warps_per_sm"], row["limit"] = occupancy(row["regs"], row["smem"], threads // 32)
                kernels.append(dict(row, files=[result["file"]]))
    names = demangle(sorted({k["mangled"] for k in kernels}))
    report = dict(threads_per_block=threads, compiles=compiles,
                  kernels=[dict(kernel=names[k["mangled"]], **k) for k in kernels])
    if not cuobjdump:
        report["note"] = "cuobjdump not found: no SASS counts"
    if failed:
        report["failed"] = failed
    return report


def cuda_launch(spec, backward: bool) -> dict:
    """A spec's CUDA forward or backward launch, by the kernels' own layout rule (plan_launch in
    csrc/cuda/scan_params.h, through xscan._C.cuda_layout) on an H100: the route policy its kernels
    are instantiated for, blocks (after the sequence split: spans per sequence), warps per channel,
    dynamic shared memory."""
    from xscan import _C
    from xscan.backends.cuda import MAX_WARPS, MIN_SPAN, RESIDENT_BLOCKS

    layout = _C.cuda_layout(spec.batch, spec.routes, spec.channels, spec.dstate, spec.length(),
                            spec.view("B").shape[2], spec.view("C").shape[2], RESIDENT_BLOCKS * H100.sms, MIN_SPAN,
                            MAX_WARPS)
    policy = spec.kind.policy_for(spec.source)
    blocks = layout["tiles"] * spec.routes * spec.batch
    return dict(policy=policy, blocks=blocks * layout["segments"], spans=layout["segments"],
                span_length=layout["span_length"], warps_per_channel=layout["warps_per_channel"],
                chunk_length=layout["chunk_length"], tiles=layout["tiles"],
                smem=layout["backward_shared_bytes" if backward else "forward_shared_bytes"])


# ---- work per element -----------------------------------------------------------------------------

def element_cases(calls: list[OpCall]) -> list[dict]:
    """per_element.report's cases: each distinct op and shape with its CUDA layout on an H100 (float
    atomics where routes share an output: torch's default, non-deterministic mode)."""
    cases = {}
    for call in calls:
        s, launch = call.spec, cuda_launch(call.spec, False)
        op, shape = element_name(call)
        cases.setdefault((op, shape), dict(
            op=op, shape=shape, batch=s.batch, routes=s.routes, channels=s.channels, dstate=s.dstate,
            length=s.length(), policy=launch["policy"], warps_per_channel=launch["warps_per_channel"],
            chunk_length=launch["chunk_length"], tiles=launch["tiles"], segments=launch["spans"],
            span_length=launch["span_length"], softplus=bool(s.softplus), gated=s.view("z") is not None,
            atomic_routes=bool(s.route_sum and s.routes > 1), token_runs=token_runs(s, launch["policy"]),
            realigned_axis="" if s.source.name == "TOKEN" else s.source.name.split("_")[0].lower()))
    return list(cases.values())


def element_name(call: OpCall) -> tuple[str, str]:
    """(op, shape) of a call's per_element cases; its rows are "<op> fwd|bwd@<shape>"."""
    op, _, shape = call.label().partition(" ")
    return op, f"{shape} Bt={call.spec.batch}"


def beside_selective_scan(figures: dict, calls: list[OpCall], twins: list[OpCall]) -> None:
    """Adds to each call's per_element rows xscan's count for its selective_scan twin (same element
    count) and the ratio of the two."""
    for call, twin in zip(calls, twins):
        (op, shape), (twin_op, twin_shape) = element_name(call), element_name(twin)
        for label in ("fwd", "bwd"):
            row, base = figures.get(f"{op} {label}@{shape}"), figures.get(f"{twin_op} {label}@{twin_shape}")
            if row and base:
                row.update(selective_scan=base["xscan"], vs_selective_scan=round(row["xscan"] / base["xscan"], 2))


def token_runs(spec, policy: str) -> bool:
    """Whether the fp32 CUDA launch of a spec reads B and C as vector runs (with_token_runs,
    csrc/cuda/scan_kernel.cuh): a policy with runs, a route length of whole runs of 8 and as many
    positions as tokens (CROSS_PAIR: two a token), and every B and C row unit-stride on a 16-byte
    boundary (the allocation's own base taken as aligned, as torch's CUDA allocations are)."""
    import per_element
    from xscan.spec import POLICIES

    kind = POLICIES[policy]
    if not kind.token_runs or spec.length() % per_element.KERNEL_ITEMS:
        return False
    per_token = kind.positions_per_token
    for role in ("B", "C"):
        for view in spec.tensors[role]:
            *outer, stride_t = view.stride()
            if (view.shape[-1] * per_token != spec.length() or stride_t != 1 or view.storage_offset() % 4
                    or any(st % 4 for st in outer)):
                return False
    return True


def per_element_report(calls: list[OpCall], cache: str, mamba_dir: str | None, jobs: int) -> dict:
    """Thread-instructions per (channel x position x state) of xscan's CUDA passes and mamba-ssm's
    selective_scan kernels at each call's shape (benchmarks/per_element.py)."""
    import per_element

    nvcc = shutil.which(os.environ.get("NVCC", "nvcc"))
    cuobjdump = find_tool("cuobjdump", nvcc)
    if not nvcc or not cuobjdump:
        return dict(skipped=f"{'nvcc' if not nvcc else 'cuobjdump'} not found")
    try:
        return per_element.report(element_cases(calls), cache, mamba_dir or cache, nvcc, cuobjdump, jobs)
    except (RuntimeError, subprocess.CalledProcessError) as e:
        return dict(failed=[f"per element: {e}"])


# ---- Triton ---------------------------------------------------------------------------------------

def materialize(spec):
    """The spec on uninitialised CPU tensors of the same shapes, strides, offsets and identities, so
    that the Triton executor plans and specialises its launches as on a GPU."""
    cpu = {}

    def real(t):
        if t is not None and id(t) not in cpu:
            extent = t.storage_offset() + sum((n - 1) * s for n, s in zip(t.shape, t.stride())) + 1
            cpu[id(t)] = torch.empty(extent if t.numel() else 0, dtype=t.dtype).as_strided(
                t.shape, t.stride(), t.storage_offset() if t.numel() else 0)
        return None if t is None else cpu[id(t)]

    return dataclasses.replace(spec, arguments={n: (role, real(v)) for n, (role, v) in spec.arguments.items()})


def triton_compile(fn, args, kwargs, target, cuobjdump) -> dict:
    """Compile one launch's kernel as triton would for it; its resources from ptxas' log and the
    cubin's SASS."""
    from triton import knobs

    from xscan.triton_kernels.offline import BoundLaunch

    launch = BoundLaunch(fn, args, kwargs, target)
    start = time.time()
    log = io.StringIO()
    with contextlib.redirect_stdout(log), knobs.nvidia.scope():
        knobs.nvidia.dump_ptxas_log = True  # triton prints ptxas -v's log (when it runs ptxas)
        kernel = launch.compile()
    seconds = time.time() - start
    cached = "Used" not in log.getvalue()
    with tempfile.TemporaryDirectory() as workdir:
        if cached:  # from triton's cache: run its ptxas -v on the PTX ourselves
            log = io.StringIO(ptxas_log(kernel.asm["ptx"], workdir, target.arch))
        cubin = os.path.join(workdir, "kernel.cubin")
        with open(cubin, "wb") as f:
            f.write(kernel.asm["cubin"])
        usage = next(iter(ptxas_usage(log.getvalue()).values()), {})
        sass = next(iter(sass_counts(cubin, cuobjdump).values()), {})
    names = launch.constexprs
    row = dict(kernel=fn.fn.__name__, variant=variant_name(names), num_warps=kernel.metadata.num_warps,
               launch_shared=kernel.metadata.shared, regs=usage.get("regs"), spill_stores=usage.get("spill_stores"),
               spill_loads=usage.get("spill_loads"), stack=usage.get("stack"), smem=usage.get("smem", 0), **sass,
               constexprs=names, compile_seconds=round(seconds, 1), cached=cached)
    row["warps_per_sm"], row["limit"] = occupancy(row["regs"] or 0, row["launch_shared"] + row["smem"],
                                                  row["num_warps"])
    return row


def ptxas_log(ptx: str, workdir: str, capability: int) -> str:
    """ptxas -v on triton's PTX with the options triton's make_cubin passes."""
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability

    path = os.path.join(workdir, "kernel.ptx")
    with open(path, "w") as f:
        f.write(ptx)
    cmd = [get_ptxas(capability).path, "-lineinfo", "-v", "--regAllocOptLevel=2",
           f"--gpu-name={sm_arch_from_capability(capability)}", path, "-o", path + ".o"]
    return subprocess.run(cmd, capture_output=True, text=True).stderr


def variant_name(c: dict) -> str:
    """The constexprs that tell a kernel's variants apart, in short."""
    from xscan.spec import Route, Source

    parts = [kind(c[key]).name.lower() for key, kind in (("ROUTE", Route), ("SOURCE", Source)) if key in c]
    parts += [f"{k}={c[k]}" for k in ("BLOCK_D", "SUB", "BLOCK_P", "BLOCK_N", "BLOCK_R", "CHUNK") if k in c]
    parts += [k for k in ("BACKWARD", "REVERSE", "HAS_LAST", "HAS_INIT") if c.get(k) is True]
    if "FLAGS" in c and "ROUTE" in c:  # the Mamba-1 scans' (xscan/triton_kernels/scan.py): which modality-1 inputs
        parts += [k for k, on in zip(("TWO_U", "TWO_TOK"), c["FLAGS"]) if on]
    return " ".join(parts)


def triton_report(ops: list[OpCall]) -> dict:
    """Compile every kernel variant the ops launch; record each op's launches (kernel, grid)."""
    try:
        import triton
        from triton.backends.compiler import GPUTarget

        from xscan.triton_kernels.offline import intercepted_launches
    except ImportError as e:
        return dict(skipped=f"triton is not importable ({e})")
    if os.environ.get("TRITON_INTERPRET") == "1":
        return dict(skipped="TRITON_INTERPRET=1 (the kernels are decorated for the interpreter)")
    executor = importlib.import_module("xscan.triton_kernels.executor").TritonExecutor()
    target = GPUTarget("cuda", 90, 32)
    cuobjdump = find_tool("cuobjdump")
    compiled, launches, failed = {}, {}, []
    where = {}  # the op and pass being run

    def on_launch(fn, args, kwargs, grid):
        bound = dict(zip(fn.arg_names, args), **kwargs)
        variant = (fn.fn.__name__, tuple((p.name, bound.get(p.name)) for p in fn.params if p.is_constexpr))
        key = (*variant, kwargs.get("num_warps", 4))  # one compile each, at the first launch's arguments
        if key not in compiled:
            try:
                compiled[key] = triton_compile(fn, args, kwargs, target, cuobjdump)
            except Exception as e:  # report it, go on with the others
                compiled[key] = None
                failed.append(f"triton {fn.fn.__name__} {dict(variant[1])}: {type(e).__name__}: {e}")
        grid = tuple(grid) + (1,) * (3 - len(grid))
        launch = dict(kernel=fn.fn.__name__, grid=grid, variant=variant)
        per_op = launches.setdefault((where["op"], where["pass"]), [])
        if launch not in per_op:  # every autotune config launches it again
            per_op.append(launch)

    with intercepted_launches(on_launch):
        for i, call in enumerate(ops):
            spec = materialize(call.spec)
            where.update({"op": i, "pass": "forward"})
            outs = executor.forward(spec)
            where["pass"] = "backward"
            executor.backward(spec, [torch.empty(o.shape, dtype=o.dtype) for o in outs])
    report = dict(version=triton.__version__, kernels=[k for k in compiled.values() if k], launches=launches)
    if failed:
        report["failed"] = failed
    return report


# ---- report ---------------------------------------------------------------------------------------

def table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows])


def num(n) -> str:
    return "-" if n is None else f"{n:,}"


def calls(k: dict) -> str:
    """CALL.REL call sites (distinct subroutines: what they are)."""
    if "calls" not in k:
        return "-"
    return f"{k['calls']:,} ({k['targets']}: {', '.join(k['subroutines'])})" if k["calls"] else "0"


def cuda_table(cuda: dict) -> str:
    if "skipped" in cuda:
        return f"CUDA: skipped: {cuda['skipped']}"
    rows = [[f"`{k['kernel']}`", ", ".join(f.removesuffix(".cu") for f in k["files"]), k["regs"],
             f"{k['spill_stores']:,}/{k['spill_loads']:,}", k["smem"], num(k.get("instructions")), calls(k),
             f"{k['warps_per_sm']} ({k['limit']})"] for k in cuda["kernels"]]
    if not rows:
        rows = [["no kernel compiled"] + [""] * 7]
    times = ", ".join(f"{c['file']} {c['seconds']} s" for c in cuda["compiles"])
    return (f"CUDA kernels for sm_90, {cuda['threads_per_block']} threads per block (nvcc: {times})"
            + (f"; {cuda['note']}" if "note" in cuda else "") + "\n\n"
            + table(["kernel", "compiled in", "regs", "spill B st/ld", "static smem B", "SASS instr",
                     "CALL.REL (targets)", "warps/SM (limit)"], rows))


def triton_table(tri: dict) -> str:
    if "skipped" in tri:
        return f"Triton: skipped: {tri['skipped']}"
    rows = [[f"`{k['kernel']}`", k["variant"], k["num_warps"], num(k["regs"]),
             f"{num(k['spill_stores'])}/{num(k['spill_loads'])}", f"{k['launch_shared']:,}",
             num(k.get("instructions")), calls(k), f"{k['warps_per_sm']} ({k['limit']})",
             f"{k['compile_seconds']}" + (" (cache)" if k["cached"] else "")] for k in tri["kernels"]]
    return (f"Triton {tri['version']} kernels for sm_90, fp32 inputs (the networks' dtype)\n\n"
            + table(["kernel", "variant", "warps", "regs", "spill B st/ld", "launch smem B", "SASS instr",
                     "CALL.REL (targets)", "warps/SM (limit)", "compile s"], rows))


SHORT = {"chunk_summary": "summary", "chunk_carry": "carry", "scan_forward": "fwd", "scan_backward": "bwd",
         "ssd_summary": "summary", "ssd_forward": "fwd", "ssd_backward": "bwd"}


def ops_rows(ops: list[OpCall], cuda: dict, tri: dict) -> list[dict]:
    """Per op call: the CUDA launches (blocks, waves at the fp32 kernels' occupancy) and the Triton
    launches (kernel, grid) of its forward and backward."""
    import per_element

    threads, _ = cuda_constants()
    by_name = {k["kernel"]: k for k in cuda.get("kernels", [])}
    rows = []
    for i, call in enumerate(ops):
        launches = {}
        for kind in ("forward", "backward"):
            launch = launches[kind] = cuda_launch(call.spec, kind == "backward")
            items = per_element.launch_forward_items(dict(
                policy=launch["policy"], segments=launch["spans"], span_length=launch["span_length"],
                length=call.spec.length(), chunk_length=launch["chunk_length"]))
            items_arg = f", {items}" if kind == "forward" else ""
            k = by_name.get(f"scan_{kind}_kernel<float, {launch['policy']}{items_arg}>")
            if k:
                warps, _ = occupancy(k["regs"], k["smem"] + launch["smem"], threads // 32)
                launch["waves"] = round(launch["blocks"] / (H100.sms * (warps // (threads // 32))), 3)
        triton = tri.get("launches", {})
        rows.append(dict(network=call.network, op=call.label(), calls=call.calls, cuda=launches,
                         **{f"triton_{kind}": [dict(kernel=x["kernel"], grid=x["grid"]) for x in
                                               triton.get((i, kind), [])] for kind in ("forward", "backward")}))
    return rows


def per_element_table(pe: dict) -> str:
    if "skipped" in pe or "failed" in pe:
        return f"Work per element: {'skipped: ' + pe['skipped'] if 'skipped' in pe else 'failed (below)'}"
    rows = [[*key.split("@"), f"{r['xscan']:.1f}", "-" if r["mamba"] is None else f"{r['mamba']:.1f}",
             "-" if r["ratio"] is None else f"{r['ratio']:.2f}",
             f"{r['vs_selective_scan']:.2f}" if "vs_selective_scan" in r else "-"]
            for key, r in pe["per_element"].items()]
    missing = (f"\n\nmamba-ssm column missing: {pe['mamba_missing']}" if "mamba_missing" in pe else "")
    return (f"Work per element: thread-instructions per (channel x position x state), sm_90 SASS of each kernel "
            f"instantiation a launch runs x its loop trip counts (benchmarks/per_element.py: method and known error), "
            f"fwd = the forward's passes (saving the chunk states, as under autograd), bwd = the backward's; "
            f"mamba-ssm {pe['mamba_version']}: selective_scan_fwd/bwd_kernel as its launchers pick them for the same "
            f"sequence length, compiled here from its source distribution; xscan / selective_scan: the op against "
            f"xscan's selective_scan over the same elements (Bt, routes x channels, the route length, N, B and C one "
            f"group per route; its rows are listed too){missing}\n\n"
            + table(["op", "shape", "xscan", "mamba-ssm", "xscan / mamba", "xscan / selective_scan"], rows))


def ops_table(rows: list[dict], batch: int) -> str:
    def blocks(c):
        if c["spans"] == 1:
            return f"{c['blocks']:,}"
        return f"{c['blocks']:,} = {c['blocks'] // c['spans']:,} x {c['spans']} spans of {c['span_length']:,}"

    cells = []
    for r in rows:
        f, b = r["cuda"]["forward"], r["cuda"]["backward"]
        cells.append([r["network"], r["op"], r["calls"], f"{blocks(f)} / {blocks(b)}",
                      f"{f['warps_per_channel']}", f"{f['smem']:,} / {b['smem']:,}",
                      " / ".join(f"{c['waves']:.2f}" if "waves" in c else "-" for c in (f, b))]
                     + [" · ".join(f"{SHORT.get(x['kernel'], x['kernel'])} {math.prod(x['grid']):,}"
                                   for x in r[f"triton_{kind}"]) or "-" for kind in ("forward", "backward")])
    threads, _ = cuda_constants()
    return (f"Grids per op call at batch {batch} ({H100.sms} SMs). CUDA, forward / backward: blocks of {threads} "
            "threads of the scan kernels (a launch of fewer than two blocks per SM runs its sequences as spans, one "
            "block each, after a summary pass on the same grid and a carry pass); warps per channel (the forward "
            "and backward share the layout); dynamic shared memory in bytes; waves: blocks / (SMs x resident "
            "blocks per SM) for the fp32 kernels with their dynamic shared memory. Triton: programs per launch. "
            "calls: per network forward.\n\n"
            + table(["network", "op", "calls", "CUDA blocks", "warps/channel", "CUDA smem B", "CUDA waves",
                     "Triton forward programs", "Triton backward programs"], cells))


# (what, does kernel k have it, how bad, how it reads)
CHECKS = [
    ("spills", lambda k: k.get("spill_stores") or k.get("spill_loads"), lambda k: k["spill_stores"] + k["spill_loads"],
     lambda k: f"{k['spill_stores']:,}/{k['spill_loads']:,} B stored/loaded"),
    ("CALL.REL", lambda k: k.get("calls"), lambda k: k["calls"],
     lambda k: f"{k['calls']:,} call sites ({', '.join(k['subroutines'])})"),
    ("over 20,000 SASS instructions", lambda k: (k.get("instructions") or 0) > 20000, lambda k: k["instructions"],
     lambda k: f"{k['instructions']:,}"),
    ("at most 8 warps/SM", lambda k: k["warps_per_sm"] <= 8, lambda k: -k["warps_per_sm"],
     lambda k: f"{k['warps_per_sm']} warps/SM ({k['regs']} regs)"),
]


def findings(cuda: dict, tri: dict, rows: list[dict], pe: dict) -> list[str]:
    """What deserves a look: per kernel (its instantiations or variants together) spills, subroutine
    calls, long code, low occupancy; grids of fewer blocks than SMs; more work per element than
    mamba-ssm's kernel."""
    out = [f"mamba-ssm column missing: {pe['mamba_missing']}"] if "mamba_missing" in pe else []
    over = {k: r["ratio"] for k, r in pe.get("per_element", {}).items() if r["ratio"] and r["ratio"] > 1}
    if over:
        worst = max(over, key=over.get)
        out.append(f"Work per element above mamba-ssm's in {len(over)} of {len(pe['per_element'])} (op, pass); "
                   f"worst {over[worst]:.2f}x ({worst})")
    for backend, kernels in (("CUDA", cuda.get("kernels", [])), ("Triton", tri.get("kernels", []))):
        by_name = {}
        for k in kernels:
            by_name.setdefault(k["kernel"].split("<")[0], []).append(k)
        for name, ks in by_name.items():
            for what, has, badness, reads in CHECKS:
                hits = [k for k in ks if has(k)]
                if hits:
                    top = max(hits, key=badness)
                    which = f"{top['variant']}, {top['num_warps']} warps" if "variant" in top else top["kernel"]
                    out.append(f"{backend} `{name}`: {what} in {len(hits)} of {len(ks)}; worst {reads(top)} ({which})")
    low = [f"{r['network']} {r['op']} {kind}: {c['blocks']}" for r in rows for kind, c in r["cuda"].items()
           if c["blocks"] < H100.sms]
    if low:
        out.append(f"CUDA grids under {H100.sms} blocks in {len(low)} of {2 * len(rows)} launches (op calls x forward, "
                   "backward): " + "; ".join(low))
    small = {}
    for r in rows:
        for x in r["triton_forward"] + r["triton_backward"]:
            if math.prod(x["grid"]) < H100.sms:
                small.setdefault(x["kernel"], []).append(math.prod(x["grid"]))
    out += [f"Triton `{k}` grids under {H100.sms} programs: {len(v)} launches of {min(v)}-{max(v)} programs"
            for k, v in small.items()]
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fp32 CUDA files only")
    parser.add_argument("--json", metavar="FILE", help="also write everything as JSON")
    parser.add_argument("--size", type=int, default=256, help="image side of the networks' inputs")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=2, help="nvcc processes at a time")
    parser.add_argument("--no-cuda", action="store_true")
    parser.add_argument("--no-triton", action="store_true")
    parser.add_argument("--cache", default=None, help="compiled probes and mamba-ssm's source (default "
                        "$XSCAN_GPUSIM_CACHE or ~/.cache/xscan-gpusim)")
    parser.add_argument("--mamba-sdist", metavar="DIR", help="where to download and extract mamba-ssm's source "
                        "distribution (default: the cache)")
    opts = parser.parse_args(argv)
    start = time.time()

    ops = network_ops(opts.size, opts.batch)
    seconds = dict(shapes=round(time.time() - start, 1))
    dtypes = ("fp32",) if opts.quick else ("fp32", "fp16", "bf16")
    files = [f"scan_{kind}_{d}.cu" for d in dtypes for kind in ("backward", "forward")]  # longest first

    def timed(part, f, *args):
        t = time.time()
        result = f(*args)
        seconds[part] = round(time.time() - t, 1)
        return result

    twins = [selective_scan_twin(call) for call in ops]
    with ThreadPoolExecutor(1) as background:  # nvcc runs while triton compiles, one part after the other
        cuda = background.submit(timed, "cuda", cuda_report, files, opts.jobs) if not opts.no_cuda else None
        pe = None
        if not opts.no_cuda:
            import per_element

            pe = background.submit(timed, "per_element", per_element_report, ops + twins + [target_op()],
                                   opts.cache or per_element.default_cache(), opts.mamba_sdist, opts.jobs)
        tri = timed("triton", triton_report, ops) if not opts.no_triton else dict(skipped="--no-triton")
        cuda = cuda.result() if cuda else dict(skipped="--no-cuda")
        pe = pe.result() if pe else dict(skipped="--no-cuda")
    if "per_element" in pe:
        beside_selective_scan(pe["per_element"], ops, twins)
    rows = ops_rows(ops, cuda, tri)
    notes = findings(cuda, tri, rows, pe)
    seconds["total"] = round(time.time() - start, 1)

    print(f"# GPU kernels, static report for {H100.name}\n\n{'quick' if opts.quick else 'full'} run; the networks' "
          f"ops at {opts.size}x{opts.size}, batch {opts.batch}; seconds: "
          + ", ".join(f"{k} {v}" for k, v in seconds.items()) + "\n")
    print(cuda_table(cuda) + "\n")
    print(triton_table(tri) + "\n")
    print(ops_table(rows, opts.batch) + "\n")
    print(per_element_table(pe) + "\n")
    print("Findings\n\n" + ("\n".join(f"- {n}" for n in notes) or "- none"))
    failures = cuda.get("failed", []) + tri.get("failed", []) + pe.get("failed", [])
    for f in failures:
        print(f"FAILED {f}", file=sys.stderr)
    if opts.json:
        tri = {k: v for k, v in tri.items() if k != "launches"}  # in rows, per op
        with open(opts.json, "w") as f:
            json.dump(dict(gpu=dataclasses.asdict(H100), size=opts.size, batch=opts.batch, quick=opts.quick,
                           seconds=seconds, cuda=cuda, triton=tri, ops=rows, findings=notes,
                           per_element=pe.get("per_element", {}),
                           per_element_detail={k: v for k, v in pe.items() if k != "per_element"}), f, indent=1,
                      default=str)  # constexpr values such as tl.float32
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
