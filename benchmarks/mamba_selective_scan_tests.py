"""mamba-ssm's own ``tests/ops/test_selective_scan.py`` on CPU, its ``selective_scan_fn`` running on
xscan (``xscan.install_mamba_shim()``) with one xscan backend, over the parameter lists its file
names (the ones it comments out too): wtype fp32/complex64 x itype x seqlen 128..4096 x variable or
constant B and C, groups 1/2 x has_D, has_z, has_delta_bias, delta_softplus (return_last_state on).

The test file is not part of mamba-ssm's wheel or sdist: take it from its repository at the
installed version's tag, e.g. ``git show v2.3.2.post1:tests/ops/test_selective_scan.py > t.py``.

    python benchmarks/mamba_selective_scan_tests.py t.py --backend cpu --itype fp16 bf16

Prints one line per failing case (the assertion or error) and the pass/fail/skip counts per
(wtype, itype, B, C) class.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import io
import itertools
import sys
import traceback

import pytest
import torch

import xscan

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "complex64": torch.complex64}
SEQLENS = (128, 256, 512, 1024, 2048, 4096)


def load(path: str):
    """The test module with its device on CPU, its selective_scan_fn on xscan."""
    xscan.install_mamba_shim()
    with open(path) as f:
        source = f.read()
    if "device = 'cuda'" not in source:
        sys.exit(f"{path}: no `device = 'cuda'` line to move to CPU; is this mamba-ssm's test_selective_scan.py?")
    namespace = {"__name__": "mamba_test_selective_scan"}
    exec(compile(source.replace("device = 'cuda'", "device = 'cpu'"), path, "exec"), namespace)
    return namespace["test_selective_scan"]


def failure(e: BaseException, path: str) -> str:
    """The failing line of the test (its assertion), or the error."""
    frames = [f for f in traceback.extract_tb(e.__traceback__) if f.filename == path]
    where = frames[-1].line.strip() if frames else ""
    if isinstance(e, AssertionError):
        return where
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("test_file")
    p.add_argument("--backend", default="cpu")
    p.add_argument("--itype", nargs="+", default=["fp16", "bf16"], choices=["fp32", "fp16", "bf16"])
    p.add_argument("--wtype", nargs="+", default=["fp32", "complex64"], choices=["fp32", "complex64"])
    p.add_argument("--seqlen", nargs="+", type=int, default=list(SEQLENS))
    opts = p.parse_args()
    test = load(opts.test_file)
    counts = collections.defaultdict(collections.Counter)
    reasons = collections.Counter()
    flags = list(itertools.product((False, True), repeat=4))
    with xscan.use_backend(opts.backend):
        for wtype, itype, seqlen, var_B, var_C, groups, (has_D, has_z, has_bias, softplus) in itertools.product(
                opts.wtype, opts.itype, opts.seqlen, (False, True), (False, True), (1, 2), flags):
            key = (wtype, itype, "B var" if var_B else "B const", "C var" if var_C else "C const", f"G={groups}")
            try:
                with contextlib.redirect_stdout(io.StringIO()):  # the test prints its max differences
                        test(var_B, var_C, groups, has_D, has_z, has_bias, softplus, True, seqlen, DTYPES[itype],
                         DTYPES[wtype])
            except pytest.skip.Exception:
                counts[key]["skip"] += 1
                continue
            except Exception as e:  # AssertionError or an error the shim raised
                why = failure(e, opts.test_file)
                counts[key]["fail"] += 1
                reasons[(key, why)] += 1
                print(f"FAIL {key} L={seqlen} D={has_D} z={has_z} bias={has_bias} softplus={softplus}: {why}",
                      flush=True)
                continue
            counts[key]["pass"] += 1
    print(f"\nbackend {opts.backend}: class, pass, fail, skip")
    total = collections.Counter()
    for key, c in counts.items():
        total.update(c)
        if c["pass"] or c["fail"]:
            print(f"  {' '.join(key)}: {c['pass']} pass, {c['fail']} fail")
    print(f"  total: {total['pass']} pass, {total['fail']} fail ({total['skip']} skipped: groups > 1 with a constant)")
    for (key, why), n in sorted(reasons.items()):
        print(f"  {n:4d} x {' '.join(key)}: {why}")


if __name__ == "__main__":
    main()
