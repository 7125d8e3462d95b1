"""Shared test set-up: hypothesis settings and the ``backend`` fixture.

Without a CUDA device the Triton kernels run on CPU tensors in Triton's interpreter: TRITON_INTERPRET
must be set before the kernels are decorated (xscan imports them on first use), and the triton
backend re-reads it to list "cpu" among its devices. The CUDA kernels run on CPU tensors through
their host emulation (tests/backends/cuda_emulator: each CUDA thread a fiber)."""
from __future__ import annotations

import functools
import importlib.util
import os

import pytest
import torch
from hypothesis import settings

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import xscan  # noqa: E402
from xscan import _registry  # noqa: E402

try:
    from xscan.backends import triton as _triton_backend
except Exception:  # triton missing or broken: the triton cases skip with the backend's reason
    pass
else:
    _triton_backend.refresh()

# The reference backend loops over time in Python: keep generated cases few and deadline-free.
settings.register_profile("xscan", max_examples=int(os.environ.get("XSCAN_HYPOTHESIS_EXAMPLES", "12")),
                          deadline=None, derandomize=True)
settings.load_profile("xscan")

HERE = os.path.dirname(os.path.abspath(__file__))


@functools.cache
def _cuda_emulator():
    """tests/backends/cuda_emulator, loaded by path (tests/ is not a package)."""
    path = os.path.join(HERE, "backends", "cuda_emulator", "__init__.py")
    spec = importlib.util.spec_from_file_location("xscan_tests_cuda_emulator", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def emulator():
    """The host emulation of the CUDA kernels as a drop-in for ``xscan._C_cuda`` (built once, cached
    by torch's extension builder; XSCAN_SKIP_CUDA_EMULATION=1 skips it)."""
    if os.environ.get("XSCAN_SKIP_CUDA_EMULATION") == "1":
        pytest.skip("XSCAN_SKIP_CUDA_EMULATION=1")
    try:
        return _cuda_emulator().build()
    except Exception as e:  # no host compiler: say so instead of failing every test
        pytest.skip(f"host emulation of the CUDA kernels could not be built: {type(e).__name__}: {e}")


@pytest.fixture
def emulated_cuda(emulator, monkeypatch) -> None:
    """The cuda backend running its kernels through the host emulation, on CPU tensors."""
    _cuda_emulator().install(emulator, monkeypatch.setattr)


BACKEND_TARGETS = ("reference", "cpu", "triton", "cuda", "cuda-emulated")


@pytest.fixture(params=BACKEND_TARGETS)
def backend(request, monkeypatch):
    """(backend name, device) for every backend that can run here: the reference and cpu on CPU
    tensors, triton on a GPU or in its interpreter, cuda on a GPU or through its host emulation."""
    target = request.param
    if target == "cuda-emulated":
        request.getfixturevalue("emulated_cuda")
        return "cuda", torch.device("cpu")
    status = xscan.backends()[target]
    if status is not True:
        pytest.skip(f"backend {target!r}: {status}")
    devices = _registry.backend(target).devices
    if "*" in devices or "cpu" in devices:
        return target, torch.device("cpu")
    return target, torch.device("cuda")
