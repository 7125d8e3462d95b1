"""The GPU session kit's settings (steps, budgets, test selections) and small text helpers."""
from __future__ import annotations

from pathlib import Path


try:  # the environment report's version; where triton is missing or broken, the smoke check says why
    import triton
except Exception as e:  # noqa: BLE001
    triton, TRITON_ERROR = None, f"triton cannot be imported ({type(e).__name__}: {e})"
else:
    TRITON_ERROR = None


STEPS = ("env", "build", "smoke", "tests", "bench", "report")
# Seconds per step, within --total (the device machine allows 600 s per command). Every step leaves
# the budgets of the selected steps after it; tests and bench also take what the steps before them
# left unused (a reused build leaves about 230 s).
BUDGET = dict(env=20, build=240, smoke=75, tests=90, bench=125, report=10)
ELASTIC = ("tests", "bench")
TOTAL = 560
TOLERANCE = dict(float32=2e-4, float16=2e-2, bfloat16=5e-2)  # largest relative error vs the reference
# The GPU's first test files; the rest follow in name order.
FIRST_TESTS = ("tests/backends/test_cuda.py", "tests/backends/test_triton.py", "tests/test_parity.py")
GPU_TESTS = ("-k", "(cuda or triton) and not emulated", "-m", "not slow")
REHEARSE_TESTS = ("tests/test_parity.py", "tests/backends/test_cuda.py", "-k", "selective_scan and not reference")
# What parts of the run need beyond torch: xscan.bench (tqdm), the tests (pytest, hypothesis), the
# benchmarks' peers (mambapy; mamba-ssm's Python side needs einops).
OPTIONAL_MODULES = ("tqdm", "pytest", "hypothesis", "mambapy", "einops")
# mamba-ssm's nvcc flags for selective_scan_cuda (its setup.py), without its list of architectures.
MAMBA_NVCC = ["-O3", "-std=c++17", "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__",
              "-U__CUDA_NO_BFLOAT16_OPERATORS__", "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
              "-U__CUDA_NO_BFLOAT162_OPERATORS__", "-U__CUDA_NO_BFLOAT162_CONVERSIONS__",
              "--expt-relaxed-constexpr", "--expt-extended-lambda", "--use_fast_math", "-lineinfo"]


def one_line(text, limit=300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def last_lines(path: Path, n=1) -> str:
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()] if path.exists() else []
    return one_line(" / ".join(lines[-n:])) or "(no output)"
