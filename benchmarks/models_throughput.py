"""Throughput of the four fusion networks (images/s), reference backend vs each fused backend.

    python benchmarks/models_throughput.py                       # 128x128 on CPU (256x256 on a GPU)
    python benchmarks/models_throughput.py --size 32 --iters 1   # small enough for the reference
    python benchmarks/models_throughput.py --models S4Fusion --backends cpu --modes infer

Inference: eval mode, no grad. Training step: forward + SSIM/texture/intensity loss + backward
(no optimizer step). Random grey 1 x 1 x size x size inputs, default constructors. The reference
backend loops over time in Python: at 128x128 one ISFM pass takes minutes, so time it at a small
``--size`` (and say so) rather than with many iterations.
"""
from __future__ import annotations

import argparse
import datetime
import platform

import torch

import xscan
from xscan.models import MODELS
from xscan.models.throughput import default_size, print_model_rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (the GPU when present)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--backends", nargs="+", default=None, help="default: every available backend")
    parser.add_argument("--size", type=int, default=None, help="image side (default 128 on CPU, 256 on GPU)")
    parser.add_argument("--iters", type=int, default=1, help="timed iterations per row")
    parser.add_argument("--warmup", type=int, default=1, help="untimed iterations per row")
    parser.add_argument("--modes", nargs="+", default=["infer", "train"], choices=["infer", "train"])
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    opts = parser.parse_args(argv)
    if opts.threads:
        torch.set_num_threads(opts.threads)
    device = torch.device("cuda" if opts.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if opts.device == "auto" else opts.device))
    status = xscan.backends()
    names = opts.backends or [n for n, ok in status.items() if ok is True]
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "CPU"
    print(f"models throughput, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {device} ({where}), "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, size {opts.size or default_size(device)}, "
          f"{opts.iters} timed iter(s) after {opts.warmup} warm-up")
    for name, ok in status.items():
        print(f"  backend {name:<10} {'available' if ok is True else 'unavailable: ' + ok}")
    print_model_rows(device, names, models=opts.models, size=opts.size, iters=opts.iters, warmup=opts.warmup,
                     modes=tuple(opts.modes))


if __name__ == "__main__":
    main()
