"""mamba-ssm's selective-scan CUDA source, from its source distribution (never copied into this
repository): downloaded with pip and extracted on demand. Shared by gpusim/run.py (the simulator
harness) and per_element.py (static instruction counts), which compile it against stubs/."""
from __future__ import annotations

import glob
import os
import subprocess
import sys
import tarfile

MAMBA_VERSION = "2.3.2.post1"
STUBS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "stubs")  # our c10/ATen stand-ins


def fetch_mamba(dest: str, log=lambda msg: print(msg, file=sys.stderr, flush=True)) -> str:
    """mamba-ssm's csrc/selective_scan from its sdist, downloaded (pip download) and extracted into
    dest; raises RuntimeError saying why when pip cannot get it."""
    src = os.path.join(dest, f"mamba_ssm-{MAMBA_VERSION}", "csrc", "selective_scan")
    if os.path.isfile(os.path.join(src, "selective_scan_fwd_kernel.cuh")):
        return src
    sdist_dir = os.path.join(dest, "sdist")
    os.makedirs(sdist_dir, exist_ok=True)
    tars = glob.glob(os.path.join(sdist_dir, f"mamba_ssm-{MAMBA_VERSION}.tar.gz"))
    if not tars:
        log(f"downloading mamba-ssm=={MAMBA_VERSION} (sdist) into {sdist_dir}")
        env = dict(os.environ, MAMBA_SKIP_CUDA_BUILD="TRUE", MAMBA_FORCE_BUILD="TRUE")
        base = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-d", sdist_dir,
                f"mamba-ssm=={MAMBA_VERSION}"]
        # metadata without an isolated build env (which would build ninja etc. from source); needs torch
        # importable, else fall back to pip's isolated build
        errors = ""
        for cmd in (base + ["--no-build-isolation"], base):
            run = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if run.returncode == 0:
                break
            errors = (run.stdout + run.stderr).strip()
        tars = glob.glob(os.path.join(sdist_dir, f"mamba_ssm-{MAMBA_VERSION}.tar.gz"))
        if not tars:
            said = [line for line in errors.splitlines() if line.startswith("ERROR")] or errors.splitlines()[-1:]
            raise RuntimeError(f"pip download mamba-ssm=={MAMBA_VERSION} --no-binary :all: got no source "
                               f"distribution (no network or index access?): {'; '.join(said) or 'no sdist written'}")
    with tarfile.open(tars[0]) as tf:
        members = [m for m in tf.getmembers() if "/csrc/selective_scan/" in m.name and m.isfile()]
        tf.extractall(dest, members=members)
    return src
