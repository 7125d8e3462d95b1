"""ssd_exchange (docs/ops.md): the sequential recurrence against the SSD quadratic (attention-like)
form and against selective_scan with A shared over the state, and the exchange of B and C."""
import pytest
import torch
import torch.nn.functional as F

import xscan
from xscan import reference
from xscan.testing import make_inputs


def ssd_quadratic(x, dt, A, B, C, D, dt_bias, softplus):
    """y = (L o (C B^T)) (dt x) + D x with L[t, s] = exp(A * sum_{s<r<=t} dt_r) for s <= t."""
    x, A = x.double(), A.double()
    dt = dt.double() + (0 if dt_bias is None else dt_bias.double())
    dt = F.softplus(dt) if softplus else dt
    nh = x.shape[2]
    B = B.double().repeat_interleave(nh // B.shape[2], dim=2)
    C = C.double().repeat_interleave(nh // C.shape[2], dim=2)
    cum = torch.cumsum(dt, dim=1)  # (Bt, L, nh)
    seg = cum[:, :, None, :] - cum[:, None, :, :]  # (Bt, t, s, nh)
    Lmask = torch.exp(seg * A) * torch.ones(x.shape[1], x.shape[1]).tril()[None, :, :, None]
    scores = torch.einsum("btgn,bsgn->btsg", C, B) * Lmask
    y = torch.einsum("btsh,bshp->bthp", scores, x * dt[..., None])
    return y + (0 if D is None else D.double()[:, None] * x)


@pytest.mark.parametrize("G", [1, 2])
@pytest.mark.parametrize("options", [True, False])
def test_reference_matches_quadratic_form(G, options):
    args, kwargs = make_inputs("ssd_exchange", Bt=2, L=9, nh=4, P=3, N=5, G=G, dtype=torch.float64,
                               D=options, delta_bias=options, softplus=options)
    x0, x1, dt0, dt1, A, B0, B1, C0, C1 = args
    y0, y1 = xscan.ssd_exchange(*args, **kwargs)
    flags = (kwargs["D"], kwargs["dt_bias"], kwargs["dt_softplus"])
    torch.testing.assert_close(y0, ssd_quadratic(x0, dt0, A, B1, C1, *flags))  # x0 read through modality 1
    torch.testing.assert_close(y1, ssd_quadratic(x1, dt1, A, B0, C0, *flags))


def test_ssd_equals_selective_scan_with_a_shared_over_the_state():
    args, kwargs = make_inputs("ssd_exchange", Bt=1, L=7, nh=2, P=3, N=4, G=1, dtype=torch.float64)
    x0, _, dt0, _, A, _, B1, _, C1 = args
    Bt, L, nh, P = x0.shape
    u = x0.permute(0, 2, 3, 1).reshape(Bt, nh * P, L)  # channel = (head, p)
    delta = dt0.permute(0, 2, 1).repeat_interleave(P, dim=1)
    A_full = A.repeat_interleave(P)[:, None].expand(nh * P, 4)
    y = reference.selective_scan(u, delta, A_full, B1[:, :, 0].transpose(1, 2), C1[:, :, 0].transpose(1, 2),
                                 kwargs["D"].repeat_interleave(P), None, kwargs["dt_bias"].repeat_interleave(P), True)
    y0, _ = xscan.ssd_exchange(*args, **kwargs)
    torch.testing.assert_close(y0, y.view(Bt, nh, P, L).permute(0, 3, 1, 2))
