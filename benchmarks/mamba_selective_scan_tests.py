"""mamba-ssm's own ``tests/ops/test_selective_scan.py`` on CPU, its ``selective_scan_fn`` running on
xscan (``xscan.install_mamba_shim()``) with one xscan backend, over the parameter lists its file
names (the ones it comments out too): wtype fp32/complex64 x itype x seqlen 128..4096 x variable or
constant B and C, groups 1/2 x has_D, has_z, has_delta_bias, delta_softplus (return_last_state on).

The test file is not part of mamba-ssm's wheel or sdist: take it from its repository at the
installed version's tag, e.g. ``git show v2.3.2.post1:tests/ops/test_selective_scan.py > t.py``.

    python benchmarks/mamba_selective_scan_tests.py t.py --backend cpu --itype fp16 bf16

Prints one line per failing case (the assertion or error) and the pass/fail/skip counts per
(wtype, itype, B, C) class.

``--arbitrate`` settles each failing case against fp64: the same test runs twice more with its
``selective_scan_ref`` replaced by an fp64 oracle (``xscan.reference`` on the same half or fp32
values, widened to fp64, its results rounded to the dtypes mamba's reference returns), once with
xscan under test and once with mamba's ``selective_scan_ref`` under test, every ``torch.allclose``
of the test recorded (its largest absolute difference and whether it holds) and let pass, so that
every comparison runs. The verdict: ``xscan closer`` where, on every comparison that failed
between xscan and mamba's reference, xscan's difference from fp64 is the smaller; else ``mamba
closer`` naming those comparisons; and whether xscan meets all of the test's tolerances against fp64.
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


def fp64_oracle(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False):
    """``selective_scan_ref``'s contract computed in fp64 by xscan's reference backend: the output in
    u's dtype, the last state in fp32 (complex64 for a complex A), gradients back to each input's dtype."""
    def wide(x):
        return None if x is None else x.to(torch.complex128 if x.is_complex() else torch.float64)

    with xscan.use_backend("reference"):
        out, last = xscan.selective_scan(wide(u), wide(delta), wide(A), wide(B), wide(C), wide(D), z=wide(z),
                                         delta_bias=wide(delta_bias), delta_softplus=delta_softplus,
                                         return_last_state=True)
    out = out.to(u.dtype)
    if not return_last_state:
        return out
    return out, last.to(torch.complex64 if A.is_complex() else torch.float32)


def load(path: str):
    """The test module with its device on CPU, its selective_scan_fn on xscan, and a function that
    runs it with ``selective_scan_fn``/``selective_scan_ref`` swapped for others."""
    xscan.install_mamba_shim()
    with open(path) as f:
        source = f.read()
    if "device = 'cuda'" not in source:
        sys.exit(f"{path}: no `device = 'cuda'` line to move to CPU; is this mamba-ssm's test_selective_scan.py?")
    namespace = {"__name__": "mamba_test_selective_scan"}
    exec(compile(source.replace("device = 'cuda'", "device = 'cpu'"), path, "exec"), namespace)
    test, under_test, reference = (namespace[k] for k in ("test_selective_scan", "selective_scan_fn",
                                                          "selective_scan_ref"))

    def run(args, fn=under_test, ref=reference, record: list | None = None) -> str | None:
        """None if the case passes, else why it failed; pytest's skip propagates. With ``record``,
        every allclose of the test appends (largest absolute difference, holds) to it and passes."""
        namespace["selective_scan_fn"], namespace["selective_scan_ref"] = fn, ref
        if record is not None:
            namespace["torch"] = RecordingTorch(record)
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # the test prints its max differences
                test(*args)
        except pytest.skip.Exception:
            raise
        except Exception as e:  # AssertionError or an error the shim raised
            return failure(e, path)
        finally:
            namespace["selective_scan_fn"], namespace["selective_scan_ref"], namespace["torch"] = \
                under_test, reference, torch
        return None

    return run, reference


class RecordingTorch:
    """``torch`` for the test's namespace, its ``allclose`` recording instead of deciding."""

    def __init__(self, record: list):
        self.record = record

    def __getattr__(self, name):
        return getattr(torch, name)

    def allclose(self, a, b, rtol=1e-5, atol=1e-8, equal_nan=False) -> bool:
        self.record.append(((a - b).abs().max().item(), torch.isclose(a, b, rtol, atol, equal_nan).all().item()))
        return True


# the test's allclose comparisons in order (D, z and delta_bias where the case has them)
COMPARED = ("out", "last_state", "u.grad", "delta.grad", "A.grad", "B.grad", "C.grad", "D.grad", "z.grad",
            "delta_bias.grad")


def arbitrate(run, args, mamba_reference) -> str:
    """The verdict on a failing case against fp64 (see the module's doc)."""
    has = dict(zip(("D.grad", "z.grad", "delta_bias.grad"), args[3:6]))
    names = [n for n in COMPARED if has.get(n, True)]
    against_mamba, xscan_fp64, mamba_fp64 = [], [], []
    run(args, record=against_mamba)
    run(args, ref=fp64_oracle, record=xscan_fp64)
    run(args, fn=mamba_reference, ref=fp64_oracle, record=mamba_fp64)
    worse = [f"{name} {x[0]:.2e} vs {r[0]:.2e}" for name, m, x, r in zip(names, against_mamba, xscan_fp64, mamba_fp64)
             if not m[1] and x[0] > r[0]]
    verdict = f"mamba closer on {', '.join(worse)}" if worse else "xscan closer"
    return verdict + ("" if all(ok for _, ok in xscan_fp64) else "; xscan misses fp64")


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
    p.add_argument("--arbitrate", action="store_true", help="settle each failing case against an fp64 oracle")
    opts = p.parse_args()
    run, mamba_reference = load(opts.test_file)
    counts = collections.defaultdict(collections.Counter)
    reasons = collections.Counter()
    verdicts = collections.Counter()
    flags = list(itertools.product((False, True), repeat=4))
    with xscan.use_backend(opts.backend):
        for wtype, itype, seqlen, var_B, var_C, groups, (has_D, has_z, has_bias, softplus) in itertools.product(
                opts.wtype, opts.itype, opts.seqlen, (False, True), (False, True), (1, 2), flags):
            key = (wtype, itype, "B var" if var_B else "B const", "C var" if var_C else "C const", f"G={groups}")
            args = (var_B, var_C, groups, has_D, has_z, has_bias, softplus, True, seqlen, DTYPES[itype], DTYPES[wtype])
            try:
                why = run(args)
            except pytest.skip.Exception:
                counts[key]["skip"] += 1
                continue
            if why is not None:
                counts[key]["fail"] += 1
                reasons[(key, why)] += 1
                verdict = ""
                if opts.arbitrate:
                    verdict = arbitrate(run, args, mamba_reference)
                    verdicts[verdict.split(" on ")[0]] += 1
                    verdict = f" [{verdict}]"
                print(f"FAIL {key} L={seqlen} D={has_D} z={has_z} bias={has_bias} softplus={softplus}: {why}{verdict}",
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
    if opts.arbitrate:
        print("against fp64: " + ", ".join(f"{n} {v}" for v, n in sorted(verdicts.items())))


if __name__ == "__main__":
    main()
