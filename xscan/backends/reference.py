"""The pure-PyTorch reference as a backend: any device, backward by autograd through it."""
from __future__ import annotations

from .. import _registry, reference
from .autograd import autograd_backward


def _selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    return reference.selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state=True)


FORWARDS = {
    "selective_scan": _selective_scan,
    "ss2d": reference.ss2d,
    "es2d": reference.es2d,
    "cross_ss2d": reference.cross_ss2d,
    "interleave_ss2d": reference.interleave_ss2d,
    "ssd_exchange": reference.ssd_exchange,
}

for op, forward in FORWARDS.items():
    _registry.register("reference", op, forward, autograd_backward(forward))
_registry.set_available("reference", ("*",))
