"""The pure-PyTorch reference as a backend: any device; each op's own functions (not a ScanSpec),
its backward the reference's written-out adjoint (differentiable, so it also serves every
backend's double backward)."""
from __future__ import annotations

from .. import _registry
from .. import reference as ref


def _selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, out_dtype):
    return ref.selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state=True,
                              out_dtype=out_dtype)


def _selective_scan_backward(grads, *args):
    return ref.selective_scan_backward(grads[0], grads[1], *args)


def _grads_first(backward, outputs=1):
    """backward(*output grads, *args) -> backward(grads, *args)."""
    return lambda grads, *args: backward(*grads[:outputs], *args)


OPS = {
    "selective_scan": (_selective_scan, _selective_scan_backward),
    "ss2d": (ref.ss2d, _grads_first(ref.ss2d_backward)),
    "es2d": (ref.es2d, _grads_first(ref.es2d_backward)),
    "cross_ss2d": (ref.cross_ss2d, _grads_first(ref.cross_ss2d_backward, 2)),
    "interleave_ss2d": (ref.interleave_ss2d, _grads_first(ref.interleave_ss2d_backward)),
    "ssd_exchange": (ref.ssd_exchange, _grads_first(ref.ssd_exchange_backward, 2)),
}

_registry.backend("reference").ops.update(OPS)
_registry.set_available("reference", ("*",))
