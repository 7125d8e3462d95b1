"""Thread-instructions per (channel x position x state) of xscan's CUDA scan kernels and of mamba-ssm's
selective_scan forward and backward kernels at the same shapes, from sm_90 SASS (issue #26).

Method: each kernel is compiled (nvcc -O3 --use_fast_math -arch=sm_90, both projects' flags) as the
instantiation a launch at the shape runs, and its SASS (cuobjdump) read per thread. Loops are the
natural loops of the control flow (a branch back to a header every path passes; code placed out of
line that returns into a loop is in it; BRA.DIV, a diverged warp's way round a shuffle, is never
taken). The state loop, the innermost loop holding MUFU.EX2 (every (position, state) element's decay
exp(dt A) is computed there), runs N times per trip of the chunk loop around it, which runs once per
chunk of the block's positions; any other loop counts once, and so does the code outside loops
(per-block set-up), but a row loop inside the state loop (a loop there that writes global memory:
xscan's backward sums a state's dB/dC row with the block's 128 threads over the chunk's positions)
runs once per 128 of the chunk's positions. Per element = threads x blocks x a thread's count /
(Bt K Dm L N), summed over the launches of a pass.
  - mamba-ssm (2.3.2.post1, from its sdist, compiled here against gpusim/stubs/):
    selective_scan_{fwd,bwd}_kernel<traits> as selective_scan_{fwd,bwd}_cuda pick them for seqlen L
    (threads, items, even length, variable B and C, z; the backward's softplus); Bt K Dm blocks of
    kNThreads threads, ceil(L / (kNThreads kNItems)) chunks.
  - xscan: every kernel a pass of training launches (scan_kernel.cuh: forward = [summary, carry,]
    forward, which saves its chunk start states as mamba-ssm's does; backward = [span_adjoint, carry,]
    backward, from those states) in
    plan_launch's layout for an H100 (gpu_static.py), compiled in a probe translation unit that calls
    the kernels as device functions with the launch-uniform parameters fixed (warps per channel W,
    split or not, softplus, z, outputs, float atomics, B and C as vector runs, a realignment's
    axis): nvcc drops the branches the launch never takes, as mamba's template parameters do.
  - Warp-dependent branches (xscan: the combine of a channel's W warps; mamba: cub's raking block
    scan, run by the first warp only): each warp's code is compiled with threadIdx pinned to that
    warp's lanes and the counts are averaged over the warps (xscan: the W parts of a channel; the
    block's other channels take the same path within 1%).
  - Route-dependent branches (xscan's map policies, ROUTE_PINNED: rows or columns, forwards or
    backwards, B and C read as vector runs or one by one): a block runs one route, so each route's
    code is compiled with blockIdx.y pinned as well and the counts are averaged over the four routes.
    nvcc may then fold what a block's code branches on at run time (the route is uniform there),
    so these figures leave out those branches themselves (a few instructions per state).
Known error (2026-12-03, the kernels of then), measured by the same method on PTX built as the
simulator's (nvcc 13, sm_80, no fast math) against GPGPU-Sim's dynamic counts (benchmarks/RESULTS.md;
selective_scan with z, Bt=1 Dm=16 L=2048 N=16, one warp per channel): xscan forward +2%, backward
(then with a forward rerun) -12%; mamba forward -15% (pinning a warp also folds cub's per-warp selects,
which every warp issues), backward -12%; the xscan / mamba ratio +19% forward, +0.5% backward, +5% forward + backward.
Data-dependent branches in a loop body (lane 0's stores, positions past the end or at padding)
count both sides. SASS counts are not PTX counts: fast math and SASS's fused operations make both
codes' figures smaller than the simulator's, mamba's more (its softplus and exp).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(HERE, "gpusim"))

from mamba_source import MAMBA_VERSION, STUBS, fetch_mamba  # noqa: E402

from xscan.spec import POLICIES  # noqa: E402

NVCC_FLAGS = ["-std=c++17", "-O3", "--use_fast_math", "-cubin", "-arch=sm_90", "-diag-suppress", "20012"]


def default_cache() -> str:
    return os.environ.get("XSCAN_GPUSIM_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "xscan-gpusim"))


# ---- counting ---------------------------------------------------------------------------------------

def unpredicated(text: str) -> str:
    """An instruction's text, its predicate (@P0, @!UP1, ...) left off."""
    return re.sub(r"^@!?U?P\w+\s+", "", text)


def sass(cubin: str, cuobjdump: str) -> dict:
    """{function: [instruction text]} in address order, NOPs left out, predicates kept."""
    out = subprocess.run([cuobjdump, "-sass", cubin], capture_output=True, text=True, check=True).stdout
    functions, code = {}, None
    for line in out.splitlines():
        if m := re.match(r"\s+Function : (\S+)", line):
            code = functions[m[1]] = []
        elif code is not None and (m := re.match(r"\s+/\*([0-9a-f]+)\*/\s+(.*?)\s*;", line)):
            if not unpredicated(m[2]).startswith("NOP"):
                code.append((int(m[1], 16), m[2]))
    return functions


def successors(code: list) -> list:
    """Per instruction, the indices control can go to next. BRA.DIV (taken only by a diverged warp,
    before a shuffle) counts as not taken: the kernels' shuffles run converged."""
    index = {address: i for i, (address, _) in enumerate(code)}
    out = []
    for i, (_, text) in enumerate(code):
        conditional = bool(re.match(r"@!?U?P[0-6]", text))
        op = unpredicated(text)
        after = [i + 1] if i + 1 < len(code) else []
        if op.startswith("BRA") and not op.startswith("BRA.DIV"):
            target = index.get(int(re.findall(r"0x[0-9a-f]+", op)[-1], 16))
            taken = [] if target is None else [target]
            out.append(taken + after if conditional or re.match(r"BRA\S*\s+!?U?P\d", op) else taken)
        elif op.startswith(("EXIT", "RET")):
            out.append(after if conditional else [])
        else:
            out.append(after)
    return out


def loops(code: list) -> list:
    """The natural loops of the control flow: [set of instruction indices], one per loop header (a
    branch target that a later instruction jumps back to, every path from the entry passing it), its
    body every instruction that reaches the back edge without passing the header (so code placed
    out of line after the loop that returns into it is in the loop)."""
    succ = successors(code)
    pred = [[] for _ in code]
    for i, targets in enumerate(succ):
        for t in targets:
            pred[t].append(i)
    reach = {0}  # instructions reachable from the entry (dead copies are no loop)
    stack = [0]
    while stack:
        for t in succ[stack.pop()]:
            if t not in reach:
                reach.add(t)
                stack.append(t)
    bodies = {}
    for i in sorted(reach):
        for header in succ[i]:
            if header > i or (header == i and len(succ[i]) < 2):
                continue
            body, stack = {header}, [i]
            while stack:
                j = stack.pop()
                if j not in body:
                    body.add(j)
                    stack.extend(p for p in pred[j] if p in reach)
            if 0 not in body or header == 0:  # else the jump back skips the header: out-of-line code
                bodies.setdefault(header, set()).update(body)
    return list(bodies.values())


GLOBAL_WRITES = ("STG", "RED", "ATOM")  # opcodes that write global memory (REDG, ATOMG on sm_90)


def loop_classes(code: list) -> dict:
    """How many instructions lie in state loops (innermost loops holding MUFU.EX2: every (position,
    state) element's decay exp(dt A) is computed there), in chunk loops (loops around a state loop)
    and in row loops (loops inside a state loop that write global memory: xscan's backward, each
    thread's share of a state's dB/dC row): {(in a state loop, in a chunk loop, in a row loop): count}."""
    found = loops(code)
    holds_ex2 = [lp for lp in found if any("MUFU.EX2" in code[j][1] for j in lp)]
    state = [a for a in holds_ex2 if not any(b is not a and b < a for b in holds_ex2)]
    chunk = [a for a in found if all(a is not s for s in state) and any(s < a for s in state)]
    row = [a for a in found if any(a < s for s in state)
           and any(unpredicated(code[j][1]).startswith(GLOBAL_WRITES) for j in a)]
    in_state, in_chunk, in_row = set().union(*state), set().union(*chunk), set().union(*row)
    classes = {(s, c, r): 0 for s in (False, True) for c in (False, True) for r in (False, True)}
    for j in range(len(code)):
        classes[(j in in_state, j in in_chunk, j in in_row)] += 1
    return classes


def cubin_classes(cubin: str, cuobjdump: str) -> dict:
    """{function: loop_classes} of a cubin, kept beside it (per version of this file)."""
    with open(__file__, "rb") as f:
        path = f"{cubin}.loops-{hashlib.sha256(f.read()).hexdigest()[:8]}.json"
    if not os.path.exists(path):
        every = {name: [[s, c, r, n] for (s, c, r), n in loop_classes(code).items()]
                 for name, code in sass(cubin, cuobjdump).items()}
        with open(path + ".tmp", "w") as f:
            json.dump(every, f)
        os.replace(path + ".tmp", path)
    with open(path) as f:
        return {name: {(s, c, r): n for s, c, r, n in rows} for name, rows in json.load(f).items()}


def per_thread(classes: dict, state_trips: float, chunk_trips: float, row_trips: float = 1) -> float:
    """A thread's instructions: the state loops run state_trips times per trip of the chunk loop
    around them, which runs chunk_trips times, and the row loops in them row_trips times per state;
    any other loop counts once."""
    return sum(n * (state_trips if s else 1) * (chunk_trips if c else 1) * (row_trips if r else 1)
               for (s, c, r), n in classes.items())


def compile_cubin(name: str, source: str, includes: list, cache: str, nvcc: str) -> str:
    """source (a generated translation unit) compiled to a cubin, cached by the contents of the source,
    of every header under includes and nvcc's version."""
    h = hashlib.sha256((source + " ".join(NVCC_FLAGS)).encode())
    h.update(subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout.encode())
    for inc in includes:
        for base, _, files in sorted(os.walk(inc)):
            for f in sorted(files):
                with open(os.path.join(base, f), "rb") as fh:
                    h.update(fh.read())
    os.makedirs(cache, exist_ok=True)
    cubin = os.path.join(cache, f"{name}-{h.hexdigest()[:16]}.cubin")
    if not os.path.exists(cubin):
        path = cubin.replace(".cubin", ".cu")
        with open(path, "w") as f:
            f.write(source)
        cmd = [nvcc, *NVCC_FLAGS, *[f"-I{i}" for i in includes], path, "-o", cubin + ".tmp"]
        run = subprocess.run(cmd, capture_output=True, text=True)
        if run.returncode:
            raise RuntimeError(f"nvcc {path}:\n{(run.stdout + run.stderr)[-3000:]}")
        os.replace(cubin + ".tmp", cubin)
    return cubin


# ---- mamba-ssm --------------------------------------------------------------------------------------

def mamba_kernel(L: int, backward: bool, has_z: bool, softplus: bool) -> tuple[str, int, int]:
    """(traits, threads, items) of the kernel selective_scan_{fwd,bwd}_cuda launches for seqlen L,
    fp32, variable B and C."""
    threads, items = ((32, 4) if L <= 128 else (32, 8) if L <= 256 else (32, 16) if L <= 512
                      else (64, 16) if L <= 1024 else (128, 16))
    even = str(L % (threads * items) == 0).lower()
    z = str(has_z).lower()
    if backward:
        traits = (f"Selective_Scan_bwd_kernel_traits<{threads}, {items}, {even}, true, true, "
                  f"{str(softplus).lower()}, {z}, float, float>")
    else:
        traits = f"Selective_Scan_fwd_kernel_traits<{threads}, {items}, 1, {even}, true, true, {z}, float, float>"
    return traits, threads, items


PINNED = """__device__ __forceinline__ uint3 probe_thread() {{
  return make_uint3({warp} * 32 + threadIdx.x % 32, threadIdx.y, threadIdx.z);
}}
#define threadIdx probe_thread()"""

# xscan's probes of a route policy whose code depends on the route (ROUTE_PINNED): blockIdx.y, the
# block's route, fixed as well.
PINNED_ROUTE = """__device__ __forceinline__ uint3 probe_block() {{
  return make_uint3(blockIdx.x, {route}, blockIdx.z);
}}
#define blockIdx probe_block()"""


def mamba_source(warp: int, kernels: list) -> str:
    """A translation unit instantiating mamba's kernels for the given traits, every thread a lane of
    warp `warp` of its block."""
    lines = ["// Generated by benchmarks/per_element.py: mamba-ssm's selective-scan kernels, the instantiations",
             "// its launchers pick at the shapes counted, every thread a lane of one warp of the block.",
             "#include <algorithm>", "#include <cstdint>", "#include <initializer_list>", PINNED.format(warp=warp),
             '#include "selective_scan_fwd_kernel.cuh"', '#include "selective_scan_bwd_kernel.cuh"']
    for traits in kernels:
        kind = "bwd" if "_bwd_" in traits else "fwd"
        params = "SSMParamsBwd" if kind == "bwd" else "SSMParamsBase"
        lines.append(f"template __global__ void selective_scan_{kind}_kernel<{traits}>({params});")
    return "\n".join(lines) + "\n"


# ---- xscan ------------------------------------------------------------------------------------------

# The kernels a forward or backward launches, without or with the sequence split, in order
# (scan_kernel.cuh, forward_passes and backward_passes) under autograd: the forward saves the chunk
# start states, the backward starts from them. The summary pass is the forward kernel with other outputs.
# Consecutive positions per lane: the backward's (csrc/cuda/scan_params.h, kItems); the forward's
# most by route policy (scan_device.cuh, kForwardItems; each probe asserts it), a launch's by
# forward_items (mirrored in launch_forward_items).
KERNEL_ITEMS = 8
FORWARD_ITEMS = dict(CrossPairRoutes=8)
FORWARD_ITEMS_DEFAULT = 16
# The policies whose four routes take different paths through the kernels (xscan.spec.RouteKind's
# distinct_routes: the route's direction, rows or columns, token runs forwards, backwards or none):
# a block runs one route, so each route's code is compiled with blockIdx.y pinned to it and the
# counts are averaged over the routes (each has the same blocks). HEADS' routes share one path.
ROUTE_PINNED = {policy for policy, kind in POLICIES.items() if kind.distinct_routes}
PINNED_ROUTES = 4
FORWARD_KERNEL = dict(forward=dict(outputs=True, saving=True, summary=False),
                      summary=dict(outputs=False, saving=False, summary=True))
PASSES = {(False, False): ["forward"], (False, True): ["summary", "carry", "forward"],
          (True, False): ["backward"], (True, True): ["adjoint", "carry_reverse", "backward"]}


def probe_kernel(name: str, kernel: str, policy: str, split: bool, softplus: bool, gated: bool,
                 atomic_routes: bool, W: int, token_runs: bool, items: int, realigned_axis: str) -> str:
    """One probe kernel: the launch-uniform parameters fixed (also a realignment's axis, "channel"
    or "width", a field of the RealignRoutes every block of the launch is given), then the kernel's
    body."""
    if kernel.startswith("carry"):
        return (f'extern "C" __global__ void {name}(ScanParams P) {{\n'
                f"  span_carry_kernel<{str(kernel == 'carry_reverse').lower()}>(P);\n}}\n")
    routes = f"{policy}<int32_t, FastDivisor>"
    flags = FORWARD_KERNEL.get(kernel, dict(outputs=False, saving=False, summary=False))

    def pointer(field, non_null):
        return f"  __builtin_assume({field} != nullptr);" if non_null else f"  {field} = nullptr;"

    body = [f"  P.warps_per_channel = {W};",
            "  __builtin_assume(P.segments > 1);" if split else "  P.segments = 1;",
            f"  P.span_summary = {str(flags['summary']).lower()};",
            f"  P.delta_softplus = {str(softplus).lower()};", f"  P.atomic_routes = {str(atomic_routes).lower()};",
            f"  P.token_runs = {str(token_runs).lower()};",
            "  P.atomic_state_grads = true;", pointer("P.z.data[0]", gated), f"  {routes} launched = routes;"]
    if realigned_axis:
        body.append(f"  launched.on_channels = {str(realigned_axis == 'channel').lower()};")
    if kernel in FORWARD_KERNEL:
        body += [pointer("P.y.data[0]", flags["outputs"]), pointer("P.chunk_states", flags["saving"])]
    call = {"adjoint": "span_adjoint_kernel", "backward": "scan_backward_kernel"}.get(kernel, "scan_forward_kernel")
    forward = call == "scan_forward_kernel"
    blocks = f"kForwardBlocksPerSM<{items}>" if forward else "kBackwardBlocksPerSM"
    check = (f"static_assert(kForwardItems<{routes}> == {forward_items(policy)}, "
             f'"benchmarks/per_element.py: FORWARD_ITEMS disagrees with kForwardItems");\n')
    arguments = f"float, {routes}" + (f", {items}" if forward else "")
    return (check + f'extern "C" __global__ void __launch_bounds__(kThreadsPerBlock, {blocks})\n{name}(ScanParams P, '
            f"const {routes} routes) {{\n" + "\n".join(body) + f"\n  {call}<{arguments}>(P, launched);\n}}\n")


def forward_items(policy: str) -> int:
    """The most positions per lane of the policy's forward."""
    return FORWARD_ITEMS.get(policy, FORWARD_ITEMS_DEFAULT)


def launch_forward_items(case: dict) -> int:
    """A launch's forward positions per lane (scan_device.cuh, forward_items): the policy's most where
    the blocks' spans hold a whole chunk of them."""
    most = forward_items(case["policy"])
    span = case["span_length"] if case["segments"] > 1 else case["length"]
    return most if span >= most // KERNEL_ITEMS * case["chunk_length"] else KERNEL_ITEMS


def xscan_source(warp: int, route: int | None, kernels: dict) -> str:
    """A translation unit of probe kernels ({name: probe_kernel's text}), every thread a lane of warp
    `warp` of its block, every block on route `route` (None: any)."""
    pinned = [PINNED.format(warp=warp)] + ([PINNED_ROUTE.format(route=route)] if route is not None else [])
    return "\n".join([
        "// Generated by benchmarks/per_element.py: xscan's scan kernels as device functions, each called by a",
        "// kernel that fixes a launch's uniform parameters; every thread is a lane of one warp of the block.",
        "#include <cuda_runtime.h>", "#include <cuda_bf16.h>", "#include <cuda_fp16.h>", *pinned,
        "#define XSCAN_KERNEL(blocks) __device__ __forceinline__ void", '#include "scan_kernel.cuh"',
        "#undef threadIdx", "#undef blockIdx", "using namespace xscan;", "using namespace xscan::cuda;",
        *kernels.values()])


def xscan_kernels(case: dict, backward: bool) -> list[tuple]:
    """The probe variants of a case's forward or backward passes, in launch order: (kernel, policy,
    split, softplus, z, atomic routes, W, token runs, forward items, realigned axis), the flags a
    kernel never reads left off (the span carry reads none; only y and du are summed over routes;
    the summary pass has no y). Token runs: the case's token_runs (B and C read as vectors where a
    route's tokens run, scan_kernel.cuh's with_token_runs)."""
    split = case["segments"] > 1
    token_runs = case["token_runs"]

    def variant(kernel):
        if kernel.startswith("carry"):
            return (kernel, "", True, False, False, False, 1, False, 0, "")
        return (kernel, case["policy"], split, case["softplus"],
                case["gated"] and kernel in ("forward", "adjoint", "backward"),
                case["atomic_routes"] and kernel in ("forward", "backward"), case["warps_per_channel"],
                token_runs and kernel != "summary", launch_forward_items(case) if kernel in FORWARD_KERNEL else 0,
                case["realigned_axis"])

    return [variant(kernel) for kernel in PASSES[(backward, split)]]


def variant_label(v: tuple) -> str:
    kernel, policy, split, softplus, gated, atomic_routes, W, token_runs, items, realigned_axis = v
    flags = [f for f, on in (("split", split), ("softplus", softplus), ("z", gated), ("atomic routes", atomic_routes),
                             ("token runs", token_runs), (f"{realigned_axis} axis", realigned_axis)) if on]
    if items:
        flags.append(f"{items} per lane")
    return f"xscan {kernel}" + (f" {policy} W={W}" + "".join(f", {f}" for f in flags) if policy else "")


def warp_mean(per_warp: list, state_trips: float, chunk_trips: float, row_trips: float = 1) -> float:
    """A thread's instructions averaged over warps (loop_classes of each warp's SASS)."""
    return sum(per_thread(classes, state_trips, chunk_trips, row_trips) for classes in per_warp) / len(per_warp)


def xscan_count(case: dict, kernel: str, per_warp: list) -> float:
    """Thread-instructions of one launch of a probe kernel at the case's layout."""
    if kernel.startswith("carry"):  # grid (ceil(K Dm / threads), N, Bt), its loop over the spans
        blocks = math.ceil(case["routes"] * case["channels"] / 128) * case["dstate"] * case["batch"]
        return 128 * blocks * warp_mean(per_warp, case["segments"], 1)
    L, S = case["length"], case["segments"]
    span = case["span_length"] if S > 1 else L
    # the forward kernel's chunks hold launch_forward_items positions per lane, the backward's KERNEL_ITEMS
    chunk = case["chunk_length"] * (launch_forward_items(case) // KERNEL_ITEMS if kernel in FORWARD_KERNEL else 1)
    total = 0.0
    for s in range(S):  # the last span may be shorter, and its last chunk
        length = min(span, L - s * span)
        chunks = math.ceil(length / chunk)
        # a row loop: the block's 128 threads over a chunk's positions
        rows = sum(math.ceil(min(chunk, length - i * chunk) / 128) for i in range(chunks)) / chunks
        total += warp_mean(per_warp, case["dstate"], chunks, rows)
    return 128 * case["tiles"] * case["routes"] * case["batch"] * total


def elements(case: dict) -> int:
    return case["batch"] * case["routes"] * case["channels"] * case["length"] * case["dstate"]


def mangled_traits(traits: str) -> str:
    """The traits' template numbers as they appear in a mangled kernel name."""
    numbers = re.findall(r"\d+|true|false", traits.split("<", 1)[1])
    return "".join(f"Li{n}E" if n.isdigit() else f"Lb{int(n == 'true')}E" for n in numbers)


def report(cases: list, cache: str, mamba_dir: str, nvcc: str, cuobjdump: str, jobs: int = 1) -> dict:
    """Per case (dict: op, shape (a label), batch, routes, channels, dstate, length, the layout of
    xscan._C.cuda_layout as policy, warps_per_channel, chunk_length, tiles, segments, span_length, and
    softplus, gated, atomic_routes, token_runs (B and C read as vector runs), realigned_axis ("channel",
    "width" or "" where u is not realigned)): xscan's and mamba's forward and backward thread-instructions
    per element. {"per_element": {"<op> fwd|bwd@<shape>": {xscan, mamba, ratio}}, "loops": each
    kernel's instructions in its state loop, in its chunk loop outside that, and elsewhere (warp 0),
    "mamba_missing": why, when mamba's source could not be had}. Up to `jobs` nvcc at a time."""
    sass_dir = os.path.join(cache, "sm90")
    variants = sorted({v for c in cases for bwd in (False, True) for v in xscan_kernels(c, bwd)})
    names = {v: f"xscan_{i}" for i, v in enumerate(variants)}

    def warps(v):  # the warps whose paths differ: the W parts of a channel (the span carry: one)
        return 1 if v[0].startswith("carry") else v[6]

    def routes(v):  # the routes whose paths differ, or [None]: one probe for any route
        return list(range(PINNED_ROUTES)) if v[1] in ROUTE_PINNED else [None]

    paths = sorted({(w, r) for v in variants for w in range(warps(v)) for r in routes(v)},
                   key=lambda p: (p[0], -1 if p[1] is None else p[1]))
    includes = [os.path.join(ROOT, "csrc", "cuda"), os.path.join(ROOT, "csrc", "include")]
    units = [(f"xscan_probe_warp{w}" + ("" if r is None else f"_route{r}"),
              xscan_source(w, r, {names[v]: probe_kernel(names[v], *v)
                                  for v in variants if w < warps(v) and r in routes(v)}), includes)
             for w, r in paths]
    first_mamba = len(units)
    theirs, missing, wanted = {}, None, []
    try:
        src = fetch_mamba(mamba_dir, lambda msg: print(f"[per_element] {msg}", file=sys.stderr, flush=True))
        wanted = sorted({mamba_kernel(c["length"], bwd, c["gated"], c["softplus"]) for c in cases
                         for bwd in (False, True)})
        units += [(f"mamba_probe_warp{w}", mamba_source(w, [t for t, threads, _ in wanted if w * 32 < threads]),
                   [STUBS, src]) for w in range(max(threads for _, threads, _ in wanted) // 32)]
    except RuntimeError as e:
        missing = str(e)
    with ThreadPoolExecutor(jobs) as pool:
        functions = list(pool.map(lambda u: cubin_classes(compile_cubin(*u, sass_dir, nvcc), cuobjdump), units))
    ours = {v: [functions[paths.index((w, r))][names[v]] for w in range(warps(v)) for r in routes(v)]
            for v in variants}
    for traits, threads, _ in wanted:
        kind = "bwd" if "_bwd_" in traits else "fwd"
        theirs[traits] = [next(classes for f, classes in functions[first_mamba + w].items()
                               if f"selective_scan_{kind}_kernel" in f and mangled_traits(traits) in f)
                          for w in range(threads // 32)]
    sizes = {variant_label(v): ours[v][0] for v in variants}
    sizes.update({f"mamba {traits}": per_warp[0] for traits, per_warp in theirs.items()})

    figures = {}
    for c in cases:
        for bwd, label in ((False, "fwd"), (True, "bwd")):
            x = sum(xscan_count(c, v[0], ours[v]) for v in xscan_kernels(c, bwd)) / elements(c)
            row = dict(xscan=round(x, 1), mamba=None, ratio=None)
            if not missing:
                traits, threads, items = mamba_kernel(c["length"], bwd, c["gated"], c["softplus"])
                chunks = math.ceil(c["length"] / (threads * items))
                m = threads * c["batch"] * c["routes"] * c["channels"] * warp_mean(theirs[traits], c["dstate"], chunks)
                row.update(mamba=round(m / elements(c), 1), ratio=round(x * elements(c) / m, 2))
            figures[f"{c['op']} {label}@{c['shape']}"] = row
    out = dict(per_element=figures, mamba_version=MAMBA_VERSION,
               loops={k: {"state": sum(n for (s, _, _), n in v.items() if s),
                          "row": sum(n for (_, _, r), n in v.items() if r),
                          "chunk": sum(n for (s, c, _), n in v.items() if c and not s),
                          "other": v[(False, False, False)]} for k, v in sizes.items()})
    if missing:
        out["mamba_missing"] = missing
    return out
