"""Backend tests. Without a CUDA device the Triton kernels run on CPU tensors in Triton's
interpreter: TRITON_INTERPRET must be set before the kernels are decorated (xscan imports them on
first use), and the triton backend re-reads it to list "cpu" among its devices."""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

try:
    from xscan.backends import triton as _triton_backend
except Exception:  # triton missing or broken: test_triton.py skips with the backend's reason
    pass
else:
    _triton_backend.refresh()
