"""gpu_static's tables and findings."""
from __future__ import annotations

import math


from .cuda_static import cuda_constants, cuda_launch
from .markdown import table
from .network import OpCall
from .occupancy import H100, occupancy



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
            + "\n".join(table(["kernel", "compiled in", "regs", "spill B st/ld", "static smem B", "SASS instr",
                               "CALL.REL (targets)", "warps/SM (limit)"], rows)))


def triton_table(tri: dict) -> str:
    if "skipped" in tri:
        return f"Triton: skipped: {tri['skipped']}"
    rows = [[f"`{k['kernel']}`", k["variant"], k["num_warps"], num(k["regs"]),
             f"{num(k['spill_stores'])}/{num(k['spill_loads'])}", f"{k['launch_shared']:,}",
             num(k.get("instructions")), calls(k), f"{k['warps_per_sm']} ({k['limit']})",
             f"{k['compile_seconds']}" + (" (cache)" if k["cached"] else "")] for k in tri["kernels"]]
    return (f"Triton {tri['version']} kernels for sm_90, fp32 inputs (the networks' dtype)\n\n"
            + "\n".join(table(["kernel", "variant", "warps", "regs", "spill B st/ld", "launch smem B", "SASS instr",
                               "CALL.REL (targets)", "warps/SM (limit)", "compile s"], rows)))


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
            + "\n".join(table(["op", "shape", "xscan", "mamba-ssm", "xscan / mamba", "xscan / selective_scan"], rows)))


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
            + "\n".join(table(["network", "op", "calls", "CUDA blocks", "warps/channel", "CUDA smem B", "CUDA waves",
                               "Triton forward programs", "Triton backward programs"], cells)))


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
