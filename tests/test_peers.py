"""The benchmarks' peers compute what the ops compute: the seeds' materialised paths (copies + one
selective scan) for every 2-D op, and mambapy's pscan with mamba's softplus/bias/z maths, against the
reference backend, forward and backward. A peer that computed something else would make every
speed-up in the benchmarks meaningless."""
import pytest
import torch

import xscan
from xscan import peers
from xscan.testing import make_inputs

MAP_SHAPE = dict(Bt=2, Dm=3, N=4, H=3, W=5)


def reference_scan(*args, **kwargs):
    with xscan.use_backend("reference"):
        return xscan.selective_scan(*args, **kwargs)


def gradients(fn, args, kwargs):
    args = [a.detach().double().requires_grad_() if isinstance(a, torch.Tensor) else a for a in args]
    kwargs = {k: v.detach().double().requires_grad_() if isinstance(v, torch.Tensor) else v
              for k, v in kwargs.items()}
    ys = fn(*args, **kwargs)
    ys = ys if isinstance(ys, tuple) else (ys,)
    torch.autograd.backward(ys, [torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y) for y in ys])
    tensors = [a for a in args + list(kwargs.values()) if isinstance(a, torch.Tensor)]
    return [y.detach() for y in ys] + [t.grad for t in tensors]


@pytest.mark.parametrize("op", sorted(peers.MATERIALISED))
@pytest.mark.parametrize("optional", [True, False], ids=["D_bias", "no_D_bias"])
def test_materialised_paths_equal_the_ops(op, optional):
    args, kwargs = make_inputs(op, **MAP_SHAPE, D=optional, delta_bias=optional, dtype=torch.float64)
    with xscan.use_backend("reference"):
        want = gradients(getattr(xscan, op) if op != "cross_ss2d" else xscan.cross_ss2d.cross_ss2d, args, kwargs)
    got = gradients(peers.materialised(op, reference_scan), args, kwargs)
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-10, msg=lambda m: f"{op} output/grad {i}: {m}")


@pytest.mark.skipif(not peers.has_mambapy(), reason="mambapy not installed (pip install mambapy)")
@pytest.mark.parametrize("options", [dict(), dict(D=False, z=False, delta_bias=False, softplus=False)],
                         ids=["all", "none"])
@pytest.mark.parametrize("L", [1, 7, 16])
def test_mambapy_scan_equals_the_reference(options, L):
    args, kwargs = make_inputs("selective_scan", Bt=2, Dm=3, N=4, L=L, dtype=torch.float64, **options)
    want = gradients(reference_scan, args, kwargs)
    got = gradients(peers.mambapy_selective_scan, args, kwargs)
    for i, (g, w) in enumerate(zip(got, want)):
        torch.testing.assert_close(g, w, rtol=1e-8, atol=1e-9, msg=lambda m: f"output/grad {i}: {m}")
