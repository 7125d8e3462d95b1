"""``xscan.selective_scan``: drop-in for ``mamba_ssm``'s ``selective_scan_fn`` (SPEC section 1)."""
from __future__ import annotations

import torch

from .._checks import Checker
from ..reference.selective_scan import accumulate_dtype
from ._define import define

ARGS = (("u", "Tensor"), ("delta", "Tensor"), ("A", "Tensor"), ("B", "Tensor"), ("C", "Tensor"),
        ("D", "Tensor?"), ("z", "Tensor?"), ("delta_bias", "Tensor?"), ("delta_softplus", "bool"))


def _fake(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    return u.new_empty(u.shape), u.new_empty((u.shape[0], u.shape[1], A.shape[1]),
                                             dtype=accumulate_dtype(u.dtype))


_op = define("selective_scan", ARGS, 2, _fake)


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False):
    """Same arguments, layouts and results as ``mamba_ssm.ops.selective_scan_interface.selective_scan_fn``.

    u, delta, z: (Bt, Dm, L); A: (Dm, N), real; B, C: (Bt, N, L), grouped (Bt, G, N, L), or
    constant (Dm, N); D, delta_bias: (Dm,). Returns y (Bt, Dm, L) in u's dtype, and with
    ``return_last_state`` also the last state (Bt, Dm, N) in fp32 (fp64 for fp64 inputs)."""
    c = Checker("selective_scan")
    c.tensor("u", u, "Bt Dm L")
    c.tensor("delta", delta, "Bt Dm L")
    if isinstance(A, torch.Tensor) and A.is_complex():
        c.fail("complex A is not supported (xscan scans real A = -exp(A_log))", TypeError)
    c.tensor("A", A, "Dm N")
    Bt, Dm, L = c.dims["Bt"], c.dims["Dm"], c.dims["L"]
    B, C = (_grouped(c, name, X, Bt, Dm, L) for name, X in (("B", B), ("C", C)))
    c.tensor("D", D, "Dm", optional=True)
    c.tensor("z", z, "Bt Dm L", optional=True)
    c.tensor("delta_bias", delta_bias, "Dm", optional=True)
    args = (u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus))
    y, last_state = _op(args, u.device)
    return (y, last_state) if return_last_state else y


def _grouped(c: Checker, name: str, X, Bt: int, Dm: int, L: int) -> torch.Tensor:
    """B or C as (Bt, G, N, L): a view for every layout mamba accepts."""
    dim = X.dim() if isinstance(X, torch.Tensor) else 0
    if dim == 2:  # constant over batch and time, one row per channel
        c.tensor(name, X, "Dm N")
        return X[None, :, :, None].expand(Bt, Dm, X.shape[1], L)
    if dim == 3:
        c.tensor(name, X, "Bt N L")
        return X.unsqueeze(1)
    G = f"G_{name}"
    c.tensor(name, X, f"Bt {G} N L")
    c.divides(G, "Dm", f"{name} groups must split the channels evenly")
    return X
