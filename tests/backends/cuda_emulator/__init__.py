"""Build the host emulation of the CUDA kernels (see emulator.cpp) as a drop-in for xscan._C_cuda."""
from __future__ import annotations

import glob
import hashlib
import os

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
CUDA_DIR = os.path.join(ROOT, "csrc", "cuda")
INCLUDE_DIR = os.path.join(ROOT, "csrc", "include")
SOURCES = [os.path.join(CUDA_DIR, "bindings.cpp"), os.path.join(HERE, "emulator.cpp")]
# torch's extension cache keys on the listed sources only: name the build after the headers too, so
# that a kernel change rebuilds it.
HEADERS = [os.path.join(CUDA_DIR, name) for name in ("scan_device.cuh", "scan_kernel.cuh", "scan_params.h")] + sorted(
    glob.glob(os.path.join(INCLUDE_DIR, "xscan", "*.h")))


def build():
    """Compile csrc/cuda/bindings.cpp with emulator.cpp (cached by torch's extension builder)."""
    from torch.utils import cpp_extension

    digest = hashlib.sha256()
    for path in SOURCES + HEADERS:
        with open(path, "rb") as f:
            digest.update(f.read())
    return cpp_extension.load(
        name=f"xscan_cuda_host_emulation_{digest.hexdigest()[:12]}", sources=SOURCES,
        extra_include_paths=[CUDA_DIR, INCLUDE_DIR],
        # every file sees the declarations of emulator.cpp's __expf and exp2f (csrc/include/xscan/scan_math.h)
        extra_cflags=["-O1", "-std=c++17", "-DXSCAN_HOST_EXPF=xscan_emulated_expf",
                      "-DXSCAN_HOST_EXP2F=xscan_emulated_exp2f"], verbose=False)


def install(module=None, set_field=setattr):
    """Make xscan's cuda backend run on CPU tensors through the emulation (``module``, or built now):
    for the rest of the process (benchmarks/gpu_run.py --rehearse, tests/fuzz.py --emulated-cuda), or
    undoably where ``set_field`` undoes what it sets (the tests' ``emulated_cuda`` fixture passes
    ``monkeypatch.setattr``). Returns the module."""
    from xscan import _registry
    from xscan.backends import cuda as cuda_backend
    module = module or build()
    backend = _registry.backend("cuda")
    for target, field, value in ((cuda_backend, "_C", module), (backend, "executor", cuda_backend.CudaExecutor()),
                                 (backend, "devices", ("cpu",)), (backend, "reason", None)):
        set_field(target, field, value)
    return module

