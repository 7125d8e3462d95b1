"""Every dimension of every tensor argument of every op, perturbed by -1 and +1, on every backend
that runs here, through the public function and through the registered ``torch.ops.xscan`` op:
either a ``ValueError`` that names the perturbed argument, or (where the op really takes that size)
a correct result. Each op runs in a subprocess, so a crash (an out-of-bounds write, a heap
corruption) fails the test instead of killing the run.

Also: the dtype rule for per-token tensors, the backward op's own checks, and the error messages'
wording (the argument that disagrees and the one that set the size)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import torch

import xscan
from xscan.testing import OPS, custom_op_args, make_inputs, public_op

# Distinct sizes, so that a perturbed dimension cannot match another by accident.
SHAPES = {
    "selective_scan": [dict(Bt=2, Dm=4, N=3, L=5), dict(Bt=2, Dm=4, N=3, L=5, G=2)],
    "ss2d": [dict(Bt=2, Dm=3, N=4, H=2, W=5)],
    "es2d": [dict(Bt=2, Dm=3, N=4, H=4, W=6)],
    "cross_ss2d": [dict(Bt=2, Dm=3, N=4, H=2, W=5)],
    "interleave_ss2d": [dict(Bt=2, Dm=3, N=4, H=2, W=5, mode=m, axis=a)
                        for m, a in (("column", "channel"), ("row", "width"), ("concat", "width"))],
    "ssd_exchange": [dict(Bt=2, L=5, nh=4, P=3, N=6, G=2)],
}


def _valid_perturbation(op: str, name: str, dim: int, size: int, shape: dict) -> bool:
    """Sizes the op really takes after a +-1 change (from the ops' definitions, not the checks):
    a B/C group count that still divides the channels, an ES2D map whose sub-lattices keep their size."""
    if op == "selective_scan" and name in ("B", "C") and dim == 1 and shape.get("G"):
        return size > 0 and shape["Dm"] % size == 0
    if op == "es2d" and name == "u" and dim in (2, 3):
        extent = shape["H"] if dim == 2 else shape["W"]
        return size > 0 and (size + 1) // 2 == (extent + 1) // 2
    return False


def _backends():
    return [b for b, ok in xscan.backends().items() if ok is True and b != "cuda"]


def _perturbations(op: str, shape: dict):
    """(argument name, dim, new size, args, kwargs) for every dimension of every tensor argument."""
    args, kwargs = make_inputs(op, **shape)
    names = [n for n, _ in __import__(f"xscan.ops.{op}", fromlist=["ARGS"]).ARGS]
    values = dict(zip(names, args), **kwargs)
    for name, t in values.items():
        if not isinstance(t, torch.Tensor):
            continue
        for dim in range(t.dim()):
            for size in (t.shape[dim] - 1, t.shape[dim] + 1):
                bad = list(t.shape)
                bad[dim] = size
                changed = dict(values, **{name: torch.randn(bad, dtype=t.dtype)})
                yield name, dim, size, tuple(changed[n] for n in names[:len(args)]), \
                    {k: changed[k] for k in kwargs}


def _outcome(fn) -> dict:
    try:
        out = fn()
    except Exception as e:  # noqa: BLE001 (recorded for the parent to judge)
        return dict(error=type(e).__name__, message=str(e))
    out = out if isinstance(out, tuple) else (out,)
    return dict(error=None, finite=all(bool(torch.isfinite(o).all()) for o in out))


def run_op(op: str) -> list[dict]:
    """Every perturbation of ``op`` on every backend, public function and registered op."""
    results = []
    for shape in SHAPES[op]:
        for name, dim, size, args, kwargs in _perturbations(op, shape):
            for backend in _backends():
                with xscan.use_backend(backend):
                    public = _outcome(lambda: public_op(op)(*args, **kwargs))
                direct = None
                if op != "selective_scan" or shape.get("G"):  # the registered op takes B, C grouped
                    full = custom_op_args(op, args, kwargs, backend)
                    direct = _outcome(lambda: getattr(torch.ops.xscan, op)(*full))
                results.append(dict(shape=shape, name=name, dim=dim, size=size, backend=backend, public=public,
                                    direct=direct, valid=_valid_perturbation(op, name, dim, size, shape)))
    return results


@pytest.mark.parametrize("op", OPS)
def test_every_dimension_of_every_argument_is_checked(op):
    env = dict(os.environ, TRITON_INTERPRET=os.environ.get("TRITON_INTERPRET", "1"))
    proc = subprocess.run([sys.executable, __file__, op], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, f"the {op} perturbations crashed (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert results, "no perturbations ran"
    backends = {r["backend"] for r in results}
    assert {"reference", "cpu"} <= backends or xscan.backends()["cpu"] is not True, backends
    bad = []
    for r in results:
        for path in ("public", "direct"):
            got = r[path]
            if got is None:
                continue
            if r["valid"]:
                ok = got["error"] is None and got["finite"]
            else:
                ok = got["error"] == "ValueError" and re.search(rf"\b{r['name']}\b", got["message"]) is not None
            if not ok:
                bad.append((r["name"], r["dim"], r["size"], r["backend"], path, got))
    assert not bad, f"{len(bad)} of {2 * len(results)} cases wrong, e.g. {bad[:5]}"


@pytest.mark.parametrize("op", OPS)
def test_per_token_inputs_must_share_one_dtype(op):
    args, kwargs = make_inputs(op)
    mixed = (args[0], args[1].to(torch.bfloat16)) + tuple(args[2:])
    second = "delta" if op == "selective_scan" else \
        [n for n, _ in __import__(f"xscan.ops.{op}", fromlist=["ARGS"]).ARGS][1]
    first = [n for n, _ in __import__(f"xscan.ops.{op}", fromlist=["ARGS"]).ARGS][0]
    with pytest.raises(TypeError, match=rf"{second} is torch.bfloat16 but {first} is torch.float32: the per-token "
                                        r"inputs must share one dtype"):
        public_op(op)(*mixed, **kwargs)


def test_parameters_may_keep_their_own_dtype():
    """A, D and delta_bias are weights (fp32 in mamba's modules): any floating dtype is taken."""
    args, kwargs = make_inputs("ss2d", dtype=torch.bfloat16, param_dtype=torch.float64)
    y = xscan.ss2d(*args, **kwargs)
    assert y.dtype == torch.bfloat16


@pytest.mark.parametrize("op", OPS)
def test_backward_op_checks_its_gradients(op):
    args, kwargs = make_inputs(op, G=1)
    full = custom_op_args(op, args, kwargs, "reference")  # G=1: selective_scan's B, C grouped as the op takes them
    *outs, _ = getattr(torch.ops.xscan, op)(*full)  # the outputs, the checkpoints
    grads = [torch.ones_like(o) for o in outs]
    getattr(torch.ops.xscan, f"{op}_backward")(grads, *full)  # well-formed: runs
    with pytest.raises(ValueError, match=rf"xscan.{op}_backward: grads must have the outputs' shapes"):
        getattr(torch.ops.xscan, f"{op}_backward")([g[..., :-1] for g in grads], *full)


@pytest.mark.parametrize("op", OPS)
def test_fake_kernels_apply_the_same_checks(op):
    """Under torch.compile the fake kernels run instead of the real ones: they refuse what the real
    ones refuse (here a per-token dtype mixture), at trace time."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    args, kwargs = make_inputs(op, G=1)
    full = list(custom_op_args(op, args, kwargs, "reference"))
    full[1] = full[1].to(torch.bfloat16)
    with FakeTensorMode() as mode:
        fake = [mode.from_tensor(t) if isinstance(t, torch.Tensor) else t for t in full]
        with pytest.raises(TypeError, match="the per-token inputs must share one dtype"):
            getattr(torch.ops.xscan, op)(*fake)


if __name__ == "__main__":
    print(json.dumps(run_op(sys.argv[1])))
