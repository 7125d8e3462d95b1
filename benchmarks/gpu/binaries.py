"""The CUDA binary tools, read: ptxas' resource log, cuobjdump's SASS (instructions, CALL.REL
subroutines), demangled names."""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess




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
