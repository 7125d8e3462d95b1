"""Reference selective scan (Mamba-1): the recurrence one time step at a time, and its backward.

    dt_t = softplus?(delta_t + delta_bias)            (per channel d)
    h_t  = exp(dt_t A) h_{t-1} + dt_t B_t u_t          (state of N per channel, h_{-1} = 0)
    y_t  = C_t . h_t + D u_t, then y_t * silu(z_t)

With a complex A (mamba's ``wtype=complex64``) the state is complex and ``C_t . h_t`` is replaced by
``2 Re(C_t . h_t)``, as mamba-ssm defines it; B and C are then complex too: constant (Dm, N)
complex tensors, or real per-token tensors of length 2L holding real and imaginary parts
interleaved.

The backward is written out (the adjoint recurrence), not taken by autograd: it runs inside a
``torch.library`` op, where autograd is not available, and is itself differentiable (double
backward). It is tested against autograd through the forward.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ..shapes import accumulate_dtype, state_dtype


def expand_bc(X: torch.Tensor, Bt: int, Dm: int, L: int, complex_dtype=None) -> torch.Tensor:
    """B or C in any mamba layout -> (Bt, Dm, N, L): (Dm, N) constant, (Bt, N, L), (Bt, G, N, L).
    With ``complex_dtype``, real per-token tensors hold (real, imaginary) pairs along the last axis
    (complex ones are taken as they are)."""
    if complex_dtype is not None:
        if X.dim() > 2 and not X.is_complex():
            real = torch.float64 if complex_dtype == torch.complex128 else torch.float32
            X = torch.view_as_complex(X.to(real).unflatten(-1, (L, 2)).contiguous())
        X = X.to(complex_dtype)
    if X.dim() == 2:
        return X[None, :, :, None].expand(Bt, Dm, X.shape[1], L)
    if X.dim() == 3:
        return X[:, None].expand(Bt, Dm, *X.shape[1:])
    return X.repeat_interleave(Dm // X.shape[1], dim=1)


def reduce_bc(grad: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """The gradient (Bt, Dm, N, L) of ``expand_bc(X)`` -> the gradient of X, in X's layout and dtype."""
    if X.dim() == 2:
        g = grad.sum((0, 3))
    elif X.dim() == 3:
        g = grad.sum(1)
    else:
        G = X.shape[1]
        g = grad.unflatten(1, (G, grad.shape[1] // G)).sum(2)
    if g.is_complex() and not X.is_complex():
        # a real constant's gradient is the real part; per-token tensors go back to (real, imaginary) pairs
        g = g.real if X.dim() == 2 else torch.view_as_real(g).flatten(-2)
    return g.to(X.dtype)


def step_sizes(delta, delta_bias, delta_softplus: bool, acc):
    """(dt, d dt / d delta): dt = softplus?(delta + delta_bias), per (Bt, Dm, L)."""
    raw = delta.to(acc)
    if delta_bias is not None:
        raw = raw + delta_bias.to(acc)[:, None]
    if delta_softplus:
        return F.softplus(raw), torch.sigmoid(raw)
    return raw, torch.ones_like(raw)


def _gate(z, acc):
    """silu(z) and its derivative, computed in ``acc`` (fp32 for half inputs)."""
    zf = z.to(acc)
    s = torch.sigmoid(zf)
    return zf * s, s * (1 + zf * (1 - s))


class _Scan:
    """The discretised inputs of one call, shared by the forward and the backward."""

    def __init__(self, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        self.acc = accumulate_dtype(u.dtype)
        self.state = state_dtype(u.dtype, A)
        self.complex = A.is_complex()
        Bt, Dm, L = u.shape
        self.u = u.to(self.acc)
        self.dt, self.ddt_ddelta = step_sizes(delta, delta_bias, delta_softplus, self.acc)
        self.A = A.to(self.state)
        cplx = self.state if self.complex else None
        self.B = expand_bc(B if self.complex else B.to(self.acc), Bt, Dm, L, cplx)
        self.C = expand_bc(C if self.complex else C.to(self.acc), Bt, Dm, L, cplx)
        self.D = None if D is None else D.to(self.acc)
        self.gate = None if z is None else _gate(z, self.acc)

    def states(self):
        """Every state h_t, (Bt, Dm, N, L), and the decays exp(dt_t A)."""
        Bt, Dm, L = self.u.shape
        decays = torch.exp(self.dt[:, :, None, :] * self.A[None, :, :, None])
        inputs = (self.dt * self.u)[:, :, None, :] * self.B
        h = torch.zeros(Bt, Dm, self.A.shape[1], dtype=self.state, device=self.u.device)
        hs = []
        for t in range(L):
            h = decays[..., t] * h + inputs[..., t]
            hs.append(h)
        return torch.stack(hs, dim=-1), decays

    def readout(self, hs):
        """C_t . h_t (2 Re(...) for a complex state) + D u_t, before the gate: (Bt, Dm, L)."""
        y = (self.C * hs).sum(2)
        y = 2 * y.real if self.complex else y
        return y if self.D is None else y + self.D[:, None] * self.u


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False, out_dtype: Optional[torch.dtype] = None):
    """u, delta, z: (Bt, Dm, L); A: (Dm, N) real or complex; B, C: (Bt, N, L), (Bt, G, N, L) or
    constant (Dm, N) (complex A: (Bt, [G,] N, 2L) real, or (Dm, N) complex); D, delta_bias: (Dm,).
    Returns y in ``out_dtype`` (default: u's dtype) and, if asked, the last state (Bt, Dm, N) in the
    accumulation dtype (fp32; fp64 for fp64 inputs; complex for a complex A)."""
    scan = _Scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    hs, _ = scan.states()
    y = scan.readout(hs)
    if scan.gate is not None:
        y = y * scan.gate[0]
    y = y.to(out_dtype or u.dtype)
    return (y, hs[..., -1]) if return_last_state else y


def selective_scan_backward(dy, dlast, u, delta, A, B, C, D=None, z=None, delta_bias=None,
                            delta_softplus=False) -> dict:
    """Gradients of ``selective_scan(..., return_last_state=True)`` for the output gradient ``dy``
    (Bt, Dm, L) and the last state's ``dlast`` (Bt, Dm, N) (either may be None: zero). Returns
    {argument name: gradient} in each argument's layout and dtype (None for absent arguments).

    With g_t = dL/dh_t (PyTorch's convention for complex tensors: dL/dRe + i dL/dIm):
        g_t = c gy_t conj(C_t) + conj(a_{t+1}) g_{t+1},  a_t = exp(dt_t A), c = 2 if complex else 1,
    where gy is the gradient of the readout (dy through the gate)."""
    scan = _Scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    Bt, Dm, L = scan.u.shape
    hs, decays = scan.states()
    gy = torch.zeros_like(scan.u) if dy is None else dy.to(scan.acc)
    grads = dict(D=None, z=None, delta_bias=None)
    if scan.gate is not None:
        silu, silu_grad = scan.gate
        grads["z"] = (gy * scan.readout(hs) * silu_grad).to(z.dtype)
        gy = gy * silu
    factor = 2 if scan.complex else 1
    g_h = factor * gy[:, :, None, :] * scan.C.conj()  # the readout's gradient at every h_t
    g = torch.zeros(Bt, Dm, A.shape[1], dtype=scan.state, device=u.device) if dlast is None else dlast.to(scan.state)
    adjoints = [None] * L
    for t in reversed(range(L)):
        g = g + g_h[..., t]
        adjoints[t] = g
        g = decays[..., t].conj() * g
    adj = torch.stack(adjoints, dim=-1)
    h_prev = torch.cat([torch.zeros_like(hs[..., :1]), hs[..., :-1]], dim=-1)
    decay_term = decays * h_prev  # a_t h_{t-1}
    # the step's inputs: d/d dt of (a_t h_{t-1} + dt u B_t) = A a_t h_{t-1} + u B_t
    g_dt = ((scan.A[None, :, :, None] * decay_term + scan.u[:, :, None, :] * scan.B).conj() * adj).sum(2)
    g_dt = g_dt.real if scan.complex else g_dt
    g_u = scan.dt * ((scan.B.conj() * adj).sum(2).real if scan.complex else (scan.B * adj).sum(2))
    if scan.D is not None:
        g_u = g_u + scan.D[:, None] * gy
        grads["D"] = (gy * scan.u).sum((0, 2)).to(D.dtype)
    g_A = (scan.dt[:, :, None, :] * decay_term).conj() * adj
    g_delta = g_dt * scan.ddt_ddelta
    if delta_bias is not None:
        grads["delta_bias"] = g_delta.sum((0, 2)).to(delta_bias.dtype)
    grads.update(
        u=g_u.to(u.dtype), delta=g_delta.to(delta.dtype),
        A=g_A.sum((0, 3)).to(A.dtype),
        B=reduce_bc((scan.dt * scan.u)[:, :, None, :] * adj, B),
        C=reduce_bc(factor * gy[:, :, None, :] * hs.conj(), C))
    return grads
