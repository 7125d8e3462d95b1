"""Build the host emulation of the CUDA kernels (see emulator.cpp) as a drop-in for xscan._C_cuda."""
from __future__ import annotations

import os

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))


def build():
    """Compile csrc/cuda/bindings.cpp with emulator.cpp (cached by torch's extension builder)."""
    from torch.utils import cpp_extension

    return cpp_extension.load(
        name="xscan_cuda_host_emulation",
        sources=[os.path.join(ROOT, "csrc", "cuda", "bindings.cpp"), os.path.join(os.path.dirname(__file__), "emulator.cpp")],
        extra_include_paths=[os.path.join(ROOT, "csrc", "cuda"), os.path.join(ROOT, "csrc", "include")],
        extra_cflags=["-O1", "-std=c++17"], verbose=False)
