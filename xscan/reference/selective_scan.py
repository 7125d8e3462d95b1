"""Reference selective scan (SPEC section 1): the recurrence, one time step at a time."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .._registry import output_dtype


def accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 accumulation for every input dtype; fp64 stays fp64 (gradcheck)."""
    return torch.promote_types(dtype, torch.float32)


def expand_bc(X: torch.Tensor, Bt: int, Dm: int, L: int) -> torch.Tensor:
    """B or C in any mamba layout -> (Bt, Dm, N, L): (Dm, N) constant, (Bt, N, L), (Bt, G, N, L)."""
    if X.dim() == 2:
        return X[None, :, :, None].expand(Bt, Dm, X.shape[1], L)
    if X.dim() == 3:
        return X[:, None].expand(Bt, Dm, *X.shape[1:])
    G = X.shape[1]
    return X.repeat_interleave(Dm // G, dim=1)


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False):
    """u, delta, z: (Bt, Dm, L); A: (Dm, N); B, C: (Bt, N, L), (Bt, G, N, L) or (Dm, N); D,
    delta_bias: (Dm,). Returns y (u's dtype) and, if asked, the fp32 last state (Bt, Dm, N)."""
    out_dtype, acc = output_dtype(u.dtype), accumulate_dtype(u.dtype)
    Bt, Dm, L = u.shape
    u, delta, A = u.to(acc), delta.to(acc), A.to(acc)
    if delta_bias is not None:
        delta = delta + delta_bias.to(acc)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    B = expand_bc(B.to(acc), Bt, Dm, L)
    C = expand_bc(C.to(acc), Bt, Dm, L)
    h = u.new_zeros(Bt, Dm, A.shape[1])
    ys = []
    for t in range(L):
        dt = delta[:, :, t, None]
        h = torch.exp(dt * A) * h + dt * B[..., t] * u[:, :, t, None]
        ys.append((h * C[..., t]).sum(-1))
    y = torch.stack(ys, dim=-1) if ys else u.new_zeros(Bt, Dm, 0)
    if D is not None:
        y = y + D.to(acc)[:, None] * u
    if z is not None:
        y = y * F.silu(z.to(acc))
    y = y.to(out_dtype)
    return (y, h) if return_last_state else y
