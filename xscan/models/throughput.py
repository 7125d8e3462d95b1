"""Images per second of a fusion network on one backend (used by ``benchmarks/models_throughput.py``
and ``xscan.bench``).

    from xscan.models.throughput import throughput
    throughput("S4Fusion", "cpu", "cpu", 128, train=False, iters=3)

A training step is forward, :func:`xscan.models.losses.fusion_loss` (SSIM + texture + intensity;
no perception loss, which needs a classifier) and backward; the optimizer step is left out.
Inputs are random grey images (Bt, 1, size, size) in [0, 1]."""
from __future__ import annotations

import time

import torch

import xscan

from . import MODELS
from .losses import fusion_loss


def build(model_name: str, device="cpu") -> torch.nn.Module:
    """The network ``model_name`` (a key of ``xscan.models.MODELS``, any case) with its defaults."""
    names = {k.lower(): k for k in MODELS}
    key = names.get(str(model_name).lower().replace("-", ""))
    if key is None:
        raise ValueError(f"throughput: model_name must be one of {sorted(MODELS)}, got {model_name!r}")
    torch.manual_seed(0)
    return MODELS[key]().to(device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def throughput(model_name, backend: str, device="cpu", size: int = 128, train: bool = False, iters: int = 3,
               batch: int = 1, warmup: int = 1, model: torch.nn.Module = None) -> float:
    """Images/s of ``iters`` timed inference passes (``train=False``, eval mode, no grad) or training
    steps (``train=True``) at ``size`` x ``size``, after ``warmup`` untimed ones, on ``backend``.
    ``model`` reuses an already built network (it must be on ``device``)."""
    if iters < 1 or warmup < 0:
        raise ValueError(f"throughput: iters must be >= 1 and warmup >= 0, got {iters}, {warmup}")
    device = torch.device(device)
    net = model if model is not None else build(model_name, device)
    net.train(train)
    g = torch.Generator().manual_seed(0)
    ir = torch.rand(batch, 1, size, size, generator=g).to(device)
    vis = torch.rand(batch, 1, size, size, generator=g).to(device)

    def step():
        if train:
            net.zero_grad(set_to_none=True)
            fusion_loss(net(ir, vis), ir, vis).backward()
        else:
            with torch.no_grad():
                net(ir, vis)

    with xscan.use_backend(backend):
        for _ in range(warmup):
            step()
        _sync(device)
        start = time.perf_counter()
        for _ in range(iters):
            step()
        _sync(device)
        elapsed = time.perf_counter() - start
    return batch * iters / elapsed


def default_size(device) -> int:
    """128 x 128 on CPU, 256 x 256 (the papers' training size) on a GPU."""
    return 256 if torch.device(device).type == "cuda" else 128


def model_rows(device, backends, models=None, size: int = None, iters: int = 1, warmup: int = 1,
               modes=("infer", "train")) -> list[dict]:
    """One dict per (model, backend, mode): model, backend, mode, size, images_per_s (None with a
    ``note`` when the backend cannot run the model here)."""
    device = torch.device(device)
    size = size or default_size(device)
    rows = []
    for name in models or list(MODELS):
        net = build(name, device)
        for backend in backends:
            for mode in modes:
                row = {"model": name, "backend": backend, "mode": mode, "size": size}
                try:
                    row["images_per_s"] = throughput(name, backend, device, size, mode == "train", iters,
                                                     warmup=warmup, model=net)
                except (RuntimeError, ValueError) as e:  # backend unavailable or missing a kernel
                    row["images_per_s"], row["note"] = None, str(e).splitlines()[0][:80]
                rows.append(row)
    return rows


def print_model_rows(device, backends, **kwargs) -> list[dict]:
    """Print :func:`model_rows` as a table (speed-up over the reference where it ran) and return them."""
    rows = model_rows(device, backends, **kwargs)
    ref = {(r["model"], r["mode"]): r["images_per_s"] for r in rows if r["backend"] == "reference"}
    print(f"{'model':<12} {'size':>5} {'mode':<6} {'backend':<10} {'images/s':>10} {'x ref':>7}")
    for r in rows:
        ips = r["images_per_s"]
        if ips is None:
            print(f"{r['model']:<12} {r['size']:>5} {r['mode']:<6} {r['backend']:<10} n/a: {r['note']}")
            continue
        base = ref.get((r["model"], r["mode"]))
        speedup = f"{ips / base:7.1f}" if base else "      -"
        print(f"{r['model']:<12} {r['size']:>5} {r['mode']:<6} {r['backend']:<10} {ips:>10.3f} {speedup}")
    return rows
