"""``xscan.fp32_output()`` on the backends that run on CPU tensors here (the Triton and CUDA backends
run the same check in tests/backends/): fp32, unrounded outputs for bf16 inputs, gradients in the
inputs' dtypes, and custom ops whose fake kernels agree (opcheck)."""
import pytest
import torch

import xscan
from xscan.testing import OPS, check_fp32_output, custom_op_args, make_inputs

SHAPE = dict(Bt=1, Dm=3, N=4, L=24, H=3, W=5, G=1, nh=2, P=2)
BACKENDS = [b for b in ("reference", "cpu") if xscan.backends()[b] is True]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", OPS)
def test_outputs_are_fp32_and_unrounded(op, backend):
    check_fp32_output(op, backend, **SHAPE)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", OPS)
def test_opcheck_with_fp32_output(op, backend):
    args, kwargs = make_inputs(op, dtype=torch.bfloat16, **dict(SHAPE, L=5, H=2, W=3))
    full = custom_op_args(op, args, kwargs, backend, fp32_output=True)
    full = tuple(a.requires_grad_() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in full)
    torch.library.opcheck(getattr(torch.ops.xscan, op).default, full)
