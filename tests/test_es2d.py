"""es2d (docs/ops.md): the atrous routes, and the reference against the public code's
EfficientScan / EfficientMerge formulation (transpose + strided slices)."""
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import xscan
from xscan import reference
from xscan.routes import atrous_grid, atrous_route, atrous_sublattices
from xscan.testing import make_inputs


def test_routes_on_a_4x4_map():
    # docs/ops.md's table on a 4x4 map, pixel s = 4h + w, written out by hand
    expected = {0: [0, 2, 8, 10], 1: [4, 12, 6, 14], 2: [1, 3, 9, 11], 3: [5, 13, 7, 15]}
    pixels = torch.arange(16.0).view(1, 1, 4, 4)
    subs = atrous_sublattices(pixels)[0, :, 0]  # (4, Lq) row-major per sub-lattice
    for k, want in expected.items():
        assert subs[k][atrous_route(k, 4, 4)].long().tolist() == want


def efficient_scan(x):
    """The public code's EfficientScan: pad to even, route k from strided slices of x or x^T."""
    x = F.pad(x, (0, x.shape[-1] % 2, 0, x.shape[-2] % 2))
    t = x.transpose(2, 3)
    return torch.stack([x[:, :, ::2, ::2].flatten(2), t[:, :, ::2, 1::2].flatten(2),
                        x[:, :, ::2, 1::2].flatten(2), t[:, :, 1::2, 1::2].flatten(2)], dim=1)


def efficient_merge(ys, H, W):
    Bt, _, C, _ = ys.shape
    Hq, Wq = atrous_grid(H, W)
    y = ys.new_empty(Bt, C, 2 * Hq, 2 * Wq)
    y[:, :, ::2, ::2] = ys[:, 0].view(Bt, C, Hq, Wq)
    y[:, :, 1::2, ::2] = ys[:, 1].view(Bt, C, Wq, Hq).transpose(2, 3)
    y[:, :, ::2, 1::2] = ys[:, 2].view(Bt, C, Hq, Wq)
    y[:, :, 1::2, 1::2] = ys[:, 3].view(Bt, C, Wq, Hq).transpose(2, 3)
    return y[:, :, :H, :W]


@given(Bt=st.integers(1, 2), Dm=st.integers(1, 3), N=st.integers(1, 3), H=st.integers(1, 7),
       W=st.integers(1, 7))
def test_reference_matches_efficient_scan_and_merge(Bt, Dm, N, H, W):
    args, kwargs = make_inputs("es2d", Bt=Bt, Dm=Dm, N=N, H=H, W=W, dtype=torch.float64)
    u, dt, B, C = args
    Hq, Wq = atrous_grid(H, W)

    def route_order(t):  # row-major per sub-lattice -> the public code's route order
        return torch.stack([t[:, k].reshape(Bt, -1, Hq, Wq).transpose(2, 3).flatten(2) if k % 2 else t[:, k]
                            for k in range(4)], dim=1)

    ys = reference.selective_scan(
        efficient_scan(u).reshape(Bt, 4 * Dm, -1), route_order(dt).reshape(Bt, 4 * Dm, -1),
        kwargs["A"].reshape(4 * Dm, -1), route_order(B), route_order(C), kwargs["D"].reshape(-1), None,
        kwargs["delta_bias"].reshape(-1), True).view(Bt, 4, Dm, -1)
    torch.testing.assert_close(xscan.es2d(*args, **kwargs), efficient_merge(ys, H, W))


def test_every_token_scanned_once():
    """With D = 0 and C = 0 except on one route, only that route's sub-lattice gets output."""
    args, kwargs = make_inputs("es2d", Bt=1, Dm=2, N=2, H=5, W=6, D=False)
    u, dt, B, C = args
    for k in range(4):
        Ck = torch.zeros_like(C)
        Ck[:, k] = C[:, k]
        y = xscan.es2d(u, dt, B, Ck, **kwargs)
        mask = torch.zeros(5, 6, dtype=torch.bool)
        mask[(k % 2)::2, (k // 2)::2] = True
        assert (y[..., ~mask] == 0).all() and (y[..., mask] != 0).all()


def test_ss2d_atrous_route_is_es2d():
    args, kwargs = make_inputs("es2d", H=5, W=3)
    torch.testing.assert_close(xscan.ss2d(*args, **kwargs, route="atrous"), xscan.es2d(*args, **kwargs))
