"""Pure-PyTorch reference ops: the oracle every backend is tested against. Written for clarity, not
speed: sequences are materialised and the recurrence loops over time."""
from .cross_ss2d import cross_ss2d, cross_ss2d_materialized
from .es2d import es2d
from .realign import interleave_ss2d, realign
from .selective_scan import selective_scan
from .ss2d import ss2d
from .ssd_exchange import ssd_exchange, ssd_scan

__all__ = ["selective_scan", "ss2d", "cross_ss2d", "cross_ss2d_materialized", "es2d", "realign",
           "interleave_ss2d", "ssd_exchange", "ssd_scan"]
