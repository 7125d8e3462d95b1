"""Public surface: backends and dispatch, and argument checks that name the argument."""
import subprocess
import sys

import pytest
import torch

import xscan
from xscan.testing import make_inputs


def test_backends_reports_every_backend():
    status = xscan.backends()
    assert set(status) == {"reference", "cpu", "triton", "cuda"}
    assert status["reference"] is True
    for name, value in status.items():
        assert value is True or (isinstance(value, str) and value), name


def test_default_backend_is_the_fastest_available_on_cpu():
    expected = "cpu" if xscan.backends()["cpu"] is True else "reference"
    assert xscan.selected_backend("selective_scan", "cpu") == expected


def test_use_backend_overrides_and_restores():
    before = xscan.selected_backend("ss2d", "cpu")
    with xscan.use_backend("reference"):
        assert xscan.selected_backend("ss2d", "cpu") == "reference"
    assert xscan.selected_backend("ss2d", "cpu") == before


def test_use_backend_rejects_unknown_and_unavailable():
    with pytest.raises(ValueError, match="unknown backend 'fastest'"):
        with xscan.use_backend("fastest"):
            pass
    unavailable = [n for n, v in xscan.backends().items() if v is not True]
    for name in unavailable:
        with pytest.raises(RuntimeError, match=f"backend '{name}' is not available"):
            with xscan.use_backend(name):
                pass


def test_import_never_fails_without_compiled_backends():
    # a fresh interpreter where the compiled extensions cannot be imported
    code = ("import sys; sys.modules['xscan._C'] = None; sys.modules['xscan._C_cuda'] = None\n"
            "import xscan, xscan.cross_ss2d\n"
            "s = xscan.backends(); assert s['reference'] is True and isinstance(s['cpu'], str), s\n"
            "print(xscan.selected_backend('ss2d', 'cpu'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "reference"


# ---- argument checks: raised before any kernel runs, naming the argument and the expected shape ----

def call(op, args, kwargs):
    fn = xscan.cross_ss2d.cross_ss2d if op == "cross_ss2d" else getattr(xscan, op)
    return fn(*args, **kwargs)


@pytest.mark.parametrize("op,index,bad,pattern", [
    ("selective_scan", 1, lambda t: t[..., :-1],
     r"delta must have shape \(Bt=2 from u, Dm=4 from u, L=16 from u\), got \(2, 4, 15\)"),
    ("selective_scan", 2, lambda t: t[:, :3], r"B must have shape \(Bt=2 from u, N=3 from A, L=16 from u\), got \(2, 4, 16\)"),
    ("ss2d", 1, lambda t: t[:, :3], r"dt must have shape \(Bt=2 from u, 4, Dm=4 from u, L=15 from u\), got \(2, 3, 4, 15\)"),
    ("es2d", 2, lambda t: t[..., :-1], r"B must have shape \(Bt=2 from u, 4, N=4, Lq=6 from u\), got \(2, 4, 4, 5\)"),
    ("cross_ss2d", 1, lambda t: t[..., :-1], r"u1 must have shape \(Bt=2 from u0, Dm=4 from u0, H=3 from u0, W=5 from u0\), got \(2, 4, 3, 4\)"),
    ("cross_ss2d", 7, lambda t: t[:, :, :2], r"C1 must have shape \(Bt=2 from u0, 4, N=4 from B0, L=15 from u0\)"),
    ("ssd_exchange", 4, lambda t: t[:1], r"A must have shape \(nh=2 from x0\), got \(1,\)"),
])
def test_shape_errors_name_the_argument(op, index, bad, pattern):
    args, kwargs = make_inputs(op)
    args = list(args)
    args[index] = bad(args[index])
    with pytest.raises(ValueError, match=pattern):
        call(op, args, kwargs)


def test_dtype_device_and_empty_errors():
    args, kwargs = make_inputs("selective_scan")
    with pytest.raises(TypeError, match="u must be a real floating tensor"):
        xscan.selective_scan(args[0].long(), *args[1:], **kwargs)
    # complex A takes B and C as (real, imaginary) pairs over 2L positions
    with pytest.raises(ValueError, match=r"B must have shape \(Bt=2 from u, N=4 from A, L2=32 from u\), got \(2, 4, 16\)"):
        xscan.selective_scan(*args[:2], args[2].to(torch.complex64), *args[3:], **kwargs)
    with pytest.raises(TypeError, match="u must be a torch.Tensor"):
        xscan.selective_scan(args[0].tolist(), *args[1:], **kwargs)
    with pytest.raises(ValueError, match="B has a zero-size dimension|u has a zero-size dimension L"):
        xscan.selective_scan(*(a[..., :0] if a.dim() == 3 else a for a in args), **dict(kwargs, z=None))
    with pytest.raises(ValueError, match="is on meta but the other inputs are on cpu"):
        xscan.selective_scan(*args[:4], args[4].to("meta"), **kwargs)
    with pytest.raises(ValueError, match=r"B groups must split the channels evenly: Dm=4 \(from u\) is not a multiple of G_B=3 \(from B\)"):
        xscan.selective_scan(*args[:3], args[3][:, None].expand(2, 3, 4, 16), args[4], **kwargs)
