"""pytest-benchmark timings of the CPU backend, forward and forward+backward of every op at layer
sizes (the papers' d_inner / d_state on a small map). Run with

    python -m pytest benchmarks/test_bench_cpu.py --benchmark-only

(`benchmarks/` is outside the default test paths; the target ratios are in cpu_targets.py)."""
import pytest
import torch

import xscan
from xscan.testing import make_inputs, public_op

pytestmark = pytest.mark.skipif(xscan.backends()["cpu"] is not True, reason="the cpu backend is not built")

CASES = {
    "selective_scan": dict(Bt=2, Dm=192, N=16, L=1024),
    "ss2d": dict(Bt=1, Dm=96, N=16, H=32, W=32),
    "es2d": dict(Bt=1, Dm=96, N=16, H=32, W=32),
    "cross_ss2d": dict(Bt=1, Dm=72, N=18, H=22, W=22),
    "interleave_ss2d": dict(Bt=1, Dm=48, N=16, H=32, W=32),
    "ssd_exchange": dict(Bt=1, L=1024, nh=8, P=16, N=64),
}


def call(op, args, kwargs):
    with xscan.use_backend("cpu"):
        return public_op(op)(*args, **kwargs)


@pytest.mark.parametrize("op", CASES)
def test_forward(benchmark, op):
    args, kwargs = make_inputs(op, **CASES[op])
    benchmark.group = f"{op} {CASES[op]}"
    benchmark(call, op, args, kwargs)


@pytest.mark.parametrize("op", CASES)
def test_forward_backward(benchmark, op):
    args, kwargs = make_inputs(op, **CASES[op])
    leaves = [a.requires_grad_() for a in args]
    kw = {k: v.requires_grad_() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    benchmark.group = f"{op} {CASES[op]}"

    def run():
        outs = call(op, leaves, kw)
        outs = outs if isinstance(outs, tuple) else (outs,)
        torch.autograd.backward(outs, [torch.ones_like(o) for o in outs])

    benchmark(run)
