"""Distributed training: S4Fusion under DistributedDataParallel (gloo, two processes on this machine,
each on half of the batch) gives the same gradients as one process on the whole batch, for a first step
and for a second one after an optimiser update.

xscan's ops are ordinary autograd functions, so DDP's gradient all-reduce must see every parameter
gradient; a parameter an op dropped from the graph would differ here. The fusion loss is a per-pixel
mean, so the mean of the two half-batch gradients is the whole-batch gradient. S4Fusion, like its public
code, holds parameters its forward never uses (the first fusion stage's output is discarded and
``final_up.norm`` is never applied), so it needs ``find_unused_parameters=True``; the test checks that
exactly those are the ones without a gradient."""
from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import xscan
from xscan.models import S4Fusion
from xscan.models.losses import fusion_loss

BATCH, SIZE = 4, 12


def make_model_and_data():
    torch.manual_seed(0)
    net = S4Fusion(dims=(8, 16, 32))
    gen = torch.Generator().manual_seed(1)
    ir = torch.rand(BATCH, 1, SIZE, SIZE, generator=gen)
    vis = torch.rand(BATCH, 1, SIZE, SIZE, generator=gen)
    return net, ir, vis


def train_gradients(net, ir, vis, steps=2) -> list[dict[str, torch.Tensor]]:
    """The gradients of ``steps`` SGD steps, by parameter name (the parameters that got one)."""
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    grads = []
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        fusion_loss(net(ir, vis), ir, vis).backward()
        grads.append({name.removeprefix("module."): p.grad.detach().clone()
                      for name, p in net.named_parameters() if p.grad is not None})
        opt.step()
    return grads


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ddp_worker(rank: int, world: int, port: int, backend: str, out_dir: str):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        with xscan.use_backend(backend):
            net, ir, vis = make_model_and_data()
            ddp = torch.nn.parallel.DistributedDataParallel(net, find_unused_parameters=True)
            half = slice(rank * BATCH // world, (rank + 1) * BATCH // world)
            grads = train_gradients(ddp, ir[half], vis[half])
        torch.save(grads, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="torch built without gloo")
@pytest.mark.parametrize("backend", ["cpu"])
def test_ddp_step_matches_single_process(backend, tmp_path):
    if xscan.backends()[backend] is not True:
        pytest.skip(f"{backend} backend unavailable: {xscan.backends()[backend]}")
    mp.start_processes(ddp_worker, args=(2, free_port(), backend, str(tmp_path)), nprocs=2,
                       join=True, start_method="spawn")
    with xscan.use_backend(backend):
        net, ir, vis = make_model_and_data()
        whole = train_gradients(net, ir, vis)
    without_grad = {name for name, _ in net.named_parameters() if name not in whole[0]}
    assert without_grad and all(n.startswith(("fusion_layers.0.", "final_up.norm.")) for n in without_grad)
    for rank in range(2):
        ranked = torch.load(tmp_path / f"rank{rank}.pt")
        for step, (got, want) in enumerate(zip(ranked, whole)):
            assert got.keys() == want.keys(), f"rank {rank} step {step}"
            for name, g in want.items():
                torch.testing.assert_close(got[name], g, rtol=1e-4, atol=1e-6,
                                           msg=lambda m: f"rank {rank} step {step} {name}: {m}")
