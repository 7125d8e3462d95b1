"""Random cases for every op on every backend that runs here, against the reference.

    python tests/fuzz.py --cases 2000 --seed 0      # prints a summary line per 100 cases and at the end
    python tests/fuzz.py --cases 500 --emulated-cuda # the cuda backend among them, on its host emulation

A case is a random op, shape (odd sizes, size 1), route (ss2d: any over the map), dtype, set of
optional inputs, memory layout (non-contiguous, channels-last) and backend; one case in three is made invalid (a dimension off by
one, a per-token dtype mixture, a tensor on the meta device, a non-tensor) and must be refused with
a ``ValueError``/``TypeError`` naming the argument. Valid cases compare outputs and every gradient
with the reference. Cases run in child processes of at most ``--batch`` cases, so a crash (a
segfault, an abort, a heap corruption) is caught and reported with the case that caused it.
With ``--emulated-cuda`` the cuda backend runs too (tests/backends/cuda_emulator), its sequences split
into spans of 16, 32 or 512 positions (xscan.backends.cuda.MIN_SPAN) so that short cases split.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import re
import subprocess
import sys

import torch

from xscan.routes import MAP_ROUTES
from xscan.testing import OPS

TOL = {torch.float64: 1e-8, torch.float32: 5e-4, torch.float16: 3e-2, torch.bfloat16: 8e-2}


def draw(seed: int) -> dict:
    """The parameters of case ``seed`` (reproducible on their own)."""
    r = random.Random(seed)
    op = r.choice(OPS)
    shape = dict(Bt=r.randint(1, 3), Dm=r.choice([1, 2, 3, 4, 6, 8]), N=r.randint(1, 9), L=r.randint(1, 70),
                 H=r.randint(1, 7), W=r.randint(1, 7), nh=r.choice([1, 2, 4]), P=r.randint(1, 4))
    shape["G"] = r.choice([None, 1, 2]) if op == "selective_scan" else r.choice([1, 2])
    if op == "selective_scan" and shape["G"] == 2 and shape["Dm"] % 2:
        shape["G"] = 1
    if op == "ssd_exchange" and shape["nh"] % shape["G"]:
        shape["G"] = 1
    if op == "interleave_ss2d":
        shape.update(mode=r.choice(["column", "row", "concat"]), axis=r.choice(["channel", "width"]))
    flags = dict(D=r.random() < 0.7, delta_bias=r.random() < 0.7, softplus=r.random() < 0.8)
    if op == "selective_scan":
        flags["z"] = r.random() < 0.6
    case = dict(seed=seed, op=op, shape=shape, flags=flags, dtype=r.choice(["float32", "float32", "float64", "bfloat16"]),
                layout=r.choice(["contiguous", "non_contiguous", "channels_last"]),
                mutation=r.choice([None, None, "dim", "dtype", "device", "type"]), backend_pick=r.random(),
                pick=r.random(), min_span=r.choice([16, 32, 512]))
    route = r.choice(sorted(MAP_ROUTES))  # every route over the map (xscan.spec.ROUTE_KINDS)
    if op == "ss2d":
        shape["route"] = route
    return case


def run_case(case: dict) -> dict:
    """Run one case; returns {"ok": bool, "detail": str}."""
    import xscan
    from xscan.testing import make_inputs, non_contiguous, public_op
    op, dtype = case["op"], getattr(torch, case["dtype"])
    backends = [b for b, ok in xscan.backends().items() if ok is True and b != "reference"
                and ("cpu" in xscan._registry.backend(b).devices)]
    if dtype == torch.bfloat16:
        backends = [b for b in backends if b in ("cpu", "cuda")] or ["reference"]
    if dtype == torch.float64:  # the cuda kernels refuse fp64 (a clear error, tested apart)
        backends = [b for b in backends if b != "cuda"] or ["reference"]
    backend = backends[int(case["backend_pick"] * len(backends))] if backends else "reference"
    if backend == "cuda":
        from xscan.backends import cuda as cuda_backend
        cuda_backend.MIN_SPAN = case["min_span"]
    args, kwargs = make_inputs(op, dtype=dtype, seed=case["seed"], **case["shape"], **case["flags"])
    layout = {"contiguous": lambda t: t, "non_contiguous": non_contiguous,
              "channels_last": lambda t: t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t}
    relayout = layout[case["layout"]]
    args = tuple(relayout(a) if isinstance(a, torch.Tensor) else a for a in args)
    kwargs = {k: relayout(v) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    names = [n for n, _ in __import__(f"xscan.ops.{op}", fromlist=["ARGS"]).ARGS]
    values = dict(zip(names, args), **kwargs)
    tensors = [n for n, v in values.items() if isinstance(v, torch.Tensor)]
    mutation, target = case["mutation"], tensors[int(case["pick"] * len(tensors))]
    if mutation == "dim":
        t = values[target]
        shape = list(t.shape)
        d = int(case["pick"] * 97) % len(shape)
        shape[d] += 1 if case["backend_pick"] < 0.5 or shape[d] == 1 else -1
        values[target] = torch.randn(shape, dtype=t.dtype)
    elif mutation == "dtype":
        target = names[1]  # the second per-token tensor: its dtype differs from the first's
        values[target] = values[target].to(torch.float64 if dtype != torch.float64 else torch.float32)
    elif mutation == "device":
        values[target] = values[target].to("meta")
    elif mutation == "type":
        values[target] = values[target].tolist()
    args = tuple(values[n] for n in names[:len(args)])
    kwargs = {k: values[k] for k in kwargs}

    def run(be):
        leaves = [a.detach().requires_grad_() if isinstance(a, torch.Tensor) else a for a in args]
        kw = {k: v.detach().requires_grad_() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
        with xscan.use_backend(be):
            outs = public_op(op)(*leaves, **kw)
        outs = outs if isinstance(outs, tuple) else (outs,)
        g = torch.Generator().manual_seed(1)
        torch.autograd.backward(outs, [torch.randn(o.shape, generator=g).to(o) for o in outs])
        return [o.detach() for o in outs] + [x.grad for x in leaves + list(kw.values()) if isinstance(x, torch.Tensor)]

    if mutation is not None:
        try:
            run(backend)
        except (ValueError, TypeError) as e:
            named = re.search(rf"\b{target}\b", str(e)) is not None
            if mutation == "dim" and not named:
                return dict(ok=False, detail=f"{backend}: error does not name {target}: {e}")
            return dict(ok=True, detail="refused")
        except Exception as e:  # noqa: BLE001
            return dict(ok=False, detail=f"{backend}: {type(e).__name__} instead of a clear error: {e}")
        # a +-1 change the op really takes (a group count that divides, an ES2D map of the same sub-lattices)
        return dict(ok=True, detail="accepted a valid perturbation")
    expected, got = run("reference"), run(backend)
    worst = 0.0
    for a, b in zip(got, expected):
        if a is None or b is None:
            if (a is None) != (b is None):
                return dict(ok=False, detail=f"{backend}: a gradient is missing")
            continue
        err = ((a.double() - b.double()).abs().max() / (b.double().abs().max() + 1e-6)).item()
        worst = max(worst, err)
    ok = worst <= TOL[dtype]
    return dict(ok=ok, detail=f"{backend}: worst relative error {worst:.2e}")


def child(seeds: list[int]) -> None:
    if os.environ.get("XSCAN_FUZZ_EMULATED_CUDA") == "1":
        spec = importlib.util.spec_from_file_location(
            "xscan_cuda_emulator", os.path.join(os.path.dirname(os.path.abspath(__file__)), "backends",
                                                "cuda_emulator", "__init__.py"))
        emulator = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(emulator)
        emulator.install()
    for seed in seeds:
        case = draw(seed)
        print(json.dumps(dict(seed=seed, started=True)), flush=True)
        print(json.dumps(dict(case, **run_case(case))), flush=True)


def fuzz(cases: int, seed: int, batch: int, log=print, emulated_cuda: bool = False) -> dict:
    """Run ``cases`` cases from ``seed`` in child processes. Returns the summary."""
    env = dict(os.environ, TRITON_INTERPRET=os.environ.get("TRITON_INTERPRET", "1"),
               XSCAN_FUZZ_EMULATED_CUDA="1" if emulated_cuda else "0")
    seeds = list(range(seed, seed + cases))
    done, failures, crashes = 0, [], []
    for start in range(0, cases, batch):
        part = seeds[start:start + batch]
        while part:
            proc = subprocess.run([sys.executable, __file__, "--child", *map(str, part)], capture_output=True,
                                  text=True, env=env, timeout=3600)
            lines = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
            results = [x for x in lines if "ok" in x]
            for res in results:
                done += 1
                if not res["ok"]:
                    failures.append(res)
            finished = {x["seed"] for x in results}
            part = [s for s in part if s not in finished]
            if proc.returncode != 0:
                started = [x["seed"] for x in lines if x.get("started") and x["seed"] not in finished]
                culprit = started[-1] if started else part[0]
                crashes.append(dict(draw(culprit), exit=proc.returncode, stderr=proc.stderr[-500:]))
                done += 1
                part = [s for s in part if s != culprit]
        log(f"{done} cases: {len(failures)} wrong, {len(crashes)} crashes")
    return dict(cases=done, wrong=failures, crashes=crashes)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--emulated-cuda", action="store_true",
                        help="also the cuda backend, on the host emulation of its kernels")
    parser.add_argument("--child", nargs="*", type=int, help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    if opts.child is not None:
        child(opts.child)
        return 0
    summary = fuzz(opts.cases, opts.seed, opts.batch, emulated_cuda=opts.emulated_cuda)
    for f in summary["wrong"][:10] + summary["crashes"][:10]:
        print(json.dumps(f))
    return 1 if summary["wrong"] or summary["crashes"] else 0


if __name__ == "__main__":
    sys.exit(main())
