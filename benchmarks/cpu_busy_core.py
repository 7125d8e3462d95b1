"""The cpu backend beside a busy neighbour: default threads against one thread (issue #25, part 2).

    python benchmarks/cpu_busy_core.py [--rounds 7] [--shapes main,s4fusion]

A training loop always shares the machine (a DataLoader worker, a second job). This script starts its
own neighbour, a process spinning on one core, and times xscan's cpu backend (forward, and
forward+backward) on torch's default thread count and on one thread, rounds interleaved, with the
neighbour running and without it; it stops the neighbour before it exits. Target: with the neighbour,
the default threads take <= 1.15x the one-thread time. Medians over the rounds.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import time

import torch

import xscan
from xscan.testing import make_inputs

try:
    from cpu_targets import cpu_backend, forward_backward
except ImportError:  # run as a module from the repository root
    from benchmarks.cpu_targets import cpu_backend, forward_backward

SHAPES = {  # the main job's selective_scan shape; S4Fusion's fusion scan (Dm=72, N=18, 88x88 twice)
    "main": dict(Bt=2, Dm=192, N=16, L=2048),
    "s4fusion": dict(Bt=2, Dm=72, N=18, L=15488),
}


def spin(stop) -> None:
    """The neighbour: busy until told to stop."""
    x = 0
    while not stop.is_set():
        for _ in range(100_000):
            x += 1


def timed(fn, threads: int) -> float:
    torch.set_num_threads(threads)
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--shapes", default="main,s4fusion")
    opts = parser.parse_args(argv)
    default_threads = torch.get_num_threads()
    scan = cpu_backend(xscan.selective_scan)
    print(f"torch {torch.__version__}, default {default_threads} threads; neighbour: one spinning process")
    print("| shape | pass | neighbour | 1 thread ms | default threads ms | default / 1 thread |")
    print("|---|---|---|---|---|---|")
    for name in opts.shapes.split(","):
        args, kwargs = make_inputs("selective_scan", **SHAPES[name])
        passes = {"forward": lambda: scan(*args, **kwargs), "forward+backward": forward_backward(scan, args, kwargs)}
        for label, fn in passes.items():
            fn()
            times = {(busy, t): [] for busy in (False, True) for t in (1, default_threads)}
            for _ in range(opts.rounds):
                for busy in (False, True):
                    stop = mp.Event()
                    neighbour = mp.Process(target=spin, args=(stop,), daemon=True) if busy else None
                    if neighbour:
                        neighbour.start()
                        time.sleep(0.2)  # let the scheduler see it
                    try:
                        for threads in (1, default_threads):
                            times[busy, threads].append(timed(fn, threads))
                    finally:
                        if neighbour:
                            stop.set()
                            neighbour.join()
            torch.set_num_threads(default_threads)
            for busy in (False, True):
                one, many = (statistics.median(times[busy, t]) for t in (1, default_threads))
                print(f"| {name} | {label} | {'busy core' if busy else 'quiet'} | {one * 1e3:.1f} | "
                      f"{many * 1e3:.1f} | {many / one:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
