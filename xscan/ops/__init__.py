"""Public scan ops: argument checks, backend choice, and the ``torch.library`` custom ops."""
from .cross_ss2d import cross_ss2d
from .es2d import es2d
from .interleave_ss2d import interleave_ss2d
from .selective_scan import selective_scan
from .ss2d import ss2d
from .ssd_exchange import ssd_exchange

__all__ = ["selective_scan", "ss2d", "es2d", "cross_ss2d", "interleave_ss2d", "ssd_exchange"]
