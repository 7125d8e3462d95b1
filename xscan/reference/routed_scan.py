"""The 2-D ops as what they are: K routes of plain selective scans over gathered sequences.

An op is described by three index maps (``Routes``); the reference gathers every route's sequence
with them, runs one selective scan over all routes' channels, and adds the outputs back where they
belong. The backward is the same in reverse: gather the output gradient, run the selective scan's
backward, add the input gradients back. Gathers and scatters are the only op-specific part.

Sources are flattened per batch: u and y as (Bt, S) with one extra slot at the end that reads as 0
and swallows writes (padding); the per-token tensors dt, B, C as (Bt, K, rows, M * T): route k's
tokens of every modality side by side.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from ..shapes import accumulate_dtype
from .selective_scan import selective_scan, selective_scan_backward


@dataclass
class Routes:
    """Where the K routes of Dr channels and P positions read and write.

    u_at: (K, Dr, P) index into the u source (Bt, S_u + 1); token_at: (K, P) index into the last axis
    of the per-token sources (M * T); y_at: (K, Dr, P) index into the output (Bt, S_y + 1)."""
    u_at: torch.Tensor
    token_at: torch.Tensor
    y_at: torch.Tensor
    S_u: int
    S_y: int

    @property
    def shape(self):
        return self.u_at.shape  # (K, Dr, P)


def cached(builder):
    """Memoise a ``Routes`` builder on its (int) sizes; under tracing with symbolic sizes (which
    cannot be hashed) it builds afresh."""
    memo = functools.lru_cache(maxsize=64)(builder)

    @functools.wraps(builder)
    def build(*sizes):
        if all(isinstance(s, (int, str, torch.device)) for s in sizes):
            return memo(*sizes)
        return builder(*sizes)
    return build


def _padded(x: torch.Tensor) -> torch.Tensor:
    """(Bt, S) -> (Bt, S + 1) with a zero in the padding slot."""
    return torch.cat([x, x.new_zeros(x.shape[0], 1)], dim=1)


def _gather_tokens(src: torch.Tensor, token_at: torch.Tensor) -> torch.Tensor:
    """(Bt, K, rows, M*T) -> (Bt, K, rows, P): route k's tokens in its order."""
    index = token_at[None, :, None, :].expand(src.shape[0], -1, src.shape[2], -1)
    return src.gather(3, index)


def _sequences(routes: Routes, u_src, dt_src, B_src, C_src):
    """The gathered operands of the one selective scan: u, delta (Bt, K*Dr, P); B, C (Bt, K, N, P)
    (one group per route)."""
    K, Dr, P = routes.shape
    Bt = u_src.shape[0]
    u = _padded(u_src).gather(1, routes.u_at.reshape(1, -1).expand(Bt, -1)).view(Bt, K * Dr, P)
    dt = _gather_tokens(dt_src, routes.token_at).reshape(Bt, K * Dr, P)
    return u, dt, _gather_tokens(B_src, routes.token_at), _gather_tokens(C_src, routes.token_at)


def _flat_params(A, D, delta_bias):
    K, Dr, N = A.shape
    return (A.reshape(K * Dr, N), None if D is None else D.reshape(K * Dr),
            None if delta_bias is None else delta_bias.reshape(K * Dr))


def routed_scan(routes: Routes, u_src, dt_src, B_src, C_src, A, D, delta_bias, delta_softplus, out_dtype):
    """The op's output, flattened (Bt, S_y), in ``out_dtype``: routes summed in the accumulation dtype."""
    u, dt, B, C = _sequences(routes, u_src, dt_src, B_src, C_src)
    acc = accumulate_dtype(u.dtype)
    A_, D_, bias_ = _flat_params(A, D, delta_bias)
    y = selective_scan(u, dt, A_, B, C, D_, None, bias_, delta_softplus, out_dtype=acc)
    Bt = u.shape[0]
    out = torch.zeros(Bt, routes.S_y + 1, dtype=acc, device=u.device)
    out.scatter_add_(1, routes.y_at.reshape(1, -1).expand(Bt, -1), y.reshape(Bt, -1))
    return out[:, :routes.S_y].to(out_dtype)


def _scatter_tokens(grad: torch.Tensor, token_at: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The transpose of ``_gather_tokens``: (Bt, K, rows, P) -> (Bt, K, rows, M*T) like ``like``."""
    index = token_at[None, :, None, :].expand(grad.shape[0], -1, grad.shape[2], -1)
    out = torch.zeros(like.shape, dtype=grad.dtype, device=grad.device)
    return out.scatter_add(3, index, grad)


def routed_scan_backward(routes: Routes, dy_src, u_src, dt_src, B_src, C_src, A, D, delta_bias,
                         delta_softplus) -> dict:
    """Gradients of ``routed_scan`` for the flattened output gradient ``dy_src`` (Bt, S_y): the u
    source (Bt, S_u), the token sources and the parameters, each in its source's shape and dtype."""
    K, Dr, P = routes.shape
    u, dt, B, C = _sequences(routes, u_src, dt_src, B_src, C_src)
    Bt = u.shape[0]
    dy = _padded(dy_src).gather(1, routes.y_at.reshape(1, -1).expand(Bt, -1)).view(Bt, K * Dr, P)
    A_, D_, bias_ = _flat_params(A, D, delta_bias)
    g = selective_scan_backward(dy, None, u, dt, A_, B, C, D_, None, bias_, delta_softplus)
    g_u = torch.zeros(Bt, routes.S_u + 1, dtype=g["u"].dtype, device=u.device)
    g_u = g_u.scatter_add(1, routes.u_at.reshape(1, -1).expand(Bt, -1), g["u"].reshape(Bt, -1))
    return dict(
        u=g_u[:, :routes.S_u], dt=_scatter_tokens(g["delta"].view(Bt, K, Dr, P), routes.token_at, dt_src),
        B=_scatter_tokens(g["B"], routes.token_at, B_src), C=_scatter_tokens(g["C"], routes.token_at, C_src),
        A=g["A"].view(A.shape), D=None if D is None else g["D"].view(D.shape),
        delta_bias=None if delta_bias is None else g["delta_bias"].view(delta_bias.shape))
