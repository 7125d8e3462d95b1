"""Build xscan: the C++ CPU extension always, the CUDA extension when the installed torch has CUDA.

    pip install -e . --no-build-isolation     # builds against the torch already installed

Environment: XSCAN_SKIP_CUDA=1 skips the CUDA extension; TORCH_CUDA_ARCH_LIST overrides the CUDA
architectures (default "8.0;9.0"); XSCAN_CPU_FLAGS overrides the CPU tuning flags.

CPU tuning: a local (editable) build tunes for this machine (-march=native). A wheel is meant to run
elsewhere, so `pip wheel .` / `python -m build` (setuptools' bdist_wheel command) and XSCAN_PORTABLE=1
build for any x86-64 machine with AVX2 and FMA (Haswell, 2013, and later) and for baseline aarch64.
"""
import glob
import os
import platform
import sys

from setuptools import find_packages, setup

try:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
except ImportError as e:  # build isolation hides the installed torch
    raise SystemExit("xscan compiles against the installed PyTorch: install torch first, then run "
                     "`pip install -e . --no-build-isolation`") from e

ROOT = os.path.dirname(os.path.abspath(__file__))
INCLUDE = [os.path.join(ROOT, "csrc", "include")]


def sources(pattern):
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def cpu_tuning_flags():
    if "XSCAN_CPU_FLAGS" in os.environ:
        return os.environ["XSCAN_CPU_FLAGS"].split()
    portable = os.environ.get("XSCAN_PORTABLE") == "1" or "bdist_wheel" in sys.argv
    if not portable:
        return ["-march=native"]
    if platform.machine().lower() in ("x86_64", "amd64"):
        return ["-mavx2", "-mfma"]
    return []


def cpu_extension():
    tuning = cpu_tuning_flags()
    return CppExtension(
        "xscan._C", sources("csrc/cpu/*.cpp"), include_dirs=INCLUDE,
        extra_compile_args={"cxx": ["-O3", "-std=c++17", "-fopenmp", "-fno-math-errno", *tuning]},
        extra_link_args=["-fopenmp"])


def cuda_extension():
    if os.environ.get("XSCAN_SKIP_CUDA") == "1" or torch.version.cuda is None or CUDA_HOME is None:
        return None
    files = sources("csrc/cuda/*.cu") + sources("csrc/cuda/*.cpp")
    if not files:
        return None
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
    return CUDAExtension(
        "xscan._C_cuda", files, include_dirs=INCLUDE,
        extra_compile_args={"cxx": ["-O3", "-std=c++17"],
                            "nvcc": ["-O3", "-std=c++17", "--use_fast_math", "-lineinfo"]})


setup(
    packages=find_packages(include=["xscan", "xscan.*"]),
    ext_modules=[e for e in (cpu_extension(), cuda_extension()) if e is not None],
    cmdclass={"build_ext": BuildExtension},
)
