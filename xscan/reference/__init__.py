"""Pure-PyTorch reference ops: the oracle every backend is tested against. Written for clarity, not
speed: sequences are materialised and the recurrence loops over time. Each op has a written-out
backward (``*_backward``) tested against autograd through its forward."""
from .cross_ss2d import cross_ss2d, cross_ss2d_backward, cross_ss2d_materialized
from .es2d import es2d, es2d_backward
from .realign import interleave_ss2d, interleave_ss2d_backward, realign
from .selective_scan import selective_scan, selective_scan_backward
from .ss2d import ss2d, ss2d_backward
from .ssd_exchange import ssd_exchange, ssd_exchange_backward, ssd_scan

__all__ = ["selective_scan", "ss2d", "cross_ss2d", "cross_ss2d_materialized", "es2d", "realign",
           "interleave_ss2d", "ssd_exchange", "ssd_scan", "selective_scan_backward", "ss2d_backward",
           "es2d_backward", "cross_ss2d_backward", "interleave_ss2d_backward", "ssd_exchange_backward"]
