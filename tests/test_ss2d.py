"""ss2d (docs/ops.md): routes, and the reference against VMamba's materialised cross-scan/merge."""
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import xscan
from xscan import reference
from xscan.ops.ss2d import ROUTES as SS2D_ROUTES
from xscan.routes import MAP_ROUTES, cross_route, snake_route
from xscan.testing import compare, make_inputs, non_contiguous, tolerance


def test_routes_on_a_2x3_map():
    # s = 3h + w on a 2x3 map; docs/ops.md's table written out by hand
    assert cross_route(0, 2, 3).tolist() == [0, 1, 2, 3, 4, 5]
    assert cross_route(1, 2, 3).tolist() == [0, 3, 1, 4, 2, 5]
    assert cross_route(2, 2, 3).tolist() == [5, 4, 3, 2, 1, 0]
    assert cross_route(3, 2, 3).tolist() == [5, 2, 4, 1, 3, 0]


def vmamba_ss2d(u, dt, B, C, A, D, delta_bias, softplus):
    """VMamba's path: CrossScan copies (flip/transpose), one selective scan over (Bt, 4*Dm, L),
    CrossMerge. Per-token tensors are moved to route order with the same copies."""
    Bt, Dm, H, W = u.shape
    L = H * W

    def cross_scan(x):  # (Bt, C, H, W) -> (Bt, 4, C, L)
        hw_wh = torch.stack([x.flatten(2), x.transpose(2, 3).flatten(2)], dim=1)
        return torch.cat([hw_wh, hw_wh.flip(-1)], dim=1)

    def route_order(t):  # (Bt, 4, C, L) in spatial order -> each route's own order
        return torch.stack([cross_scan(t[:, k].reshape(Bt, -1, H, W))[:, k] for k in range(4)], dim=1)

    y = reference.selective_scan(cross_scan(u).reshape(Bt, 4 * Dm, L), route_order(dt).reshape(Bt, 4 * Dm, L),
                                 A.reshape(4 * Dm, -1), route_order(B), route_order(C),
                                 None if D is None else D.reshape(-1), None,
                                 None if delta_bias is None else delta_bias.reshape(-1), softplus)
    y = y.view(Bt, 4, Dm, L)
    y = y[:, 0:2] + y[:, 2:4].flip(-1)
    return (y[:, 0] + y[:, 1].view(Bt, Dm, W, H).transpose(2, 3).reshape(Bt, Dm, L)).view(Bt, Dm, H, W)


@given(Bt=st.integers(1, 2), Dm=st.integers(1, 3), N=st.integers(1, 4), H=st.integers(1, 5),
       W=st.integers(1, 5), options=st.booleans())
def test_reference_matches_vmamba_cross_scan(Bt, Dm, N, H, W, options):
    args, kwargs = make_inputs("ss2d", Bt=Bt, Dm=Dm, N=N, H=H, W=W, dtype=torch.float64, D=options,
                               delta_bias=options, softplus=options)
    y = xscan.ss2d(*args, **kwargs)
    assert y.shape == (Bt, Dm, H, W)
    torch.testing.assert_close(y, vmamba_ss2d(*args, kwargs["A"], kwargs["D"], kwargs["delta_bias"], kwargs["delta_softplus"]))


def test_non_contiguous_and_channels_last_inputs():
    args, kwargs = make_inputs("ss2d", Bt=2, Dm=3, N=2, H=3, W=4)
    expected = xscan.ss2d(*args, **kwargs)
    u = args[0].to(memory_format=torch.channels_last)
    torch.testing.assert_close(xscan.ss2d(u, *args[1:], **kwargs), expected)
    torch.testing.assert_close(xscan.ss2d(*(non_contiguous(a) for a in args), **kwargs), expected)


@pytest.mark.parametrize("route", SS2D_ROUTES)
def test_ss2d_layer_runs_every_route_and_backprops(route):
    x = torch.randn(1, 6, 5, 3)
    layer = xscan.SS2D(6, d_state=3, route=route)
    y = layer(x)
    assert y.shape == x.shape
    y.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in layer.parameters())
    if route in MAP_ROUTES:  # the layer scans the route it was given: its own projections through xscan.ss2d
        A, D, delta_bias = layer.scan_params()
        dt, B, C = layer.project(x.flatten(2), layer.x_proj_weight)
        for other in MAP_ROUTES:
            expected = xscan.ss2d(x, dt, B, C, A, D, delta_bias, True, route=other)
            assert torch.allclose(y, expected, atol=1e-6) == (other == route), other


def test_ss2d_layer_rejects_an_unknown_route():
    with pytest.raises(ValueError, match="route must be one of"):
        xscan.SS2D(6, route="diagonal")


def test_unknown_route_is_rejected():
    args, kwargs = make_inputs("ss2d")
    with pytest.raises(ValueError, match="route must be one of"):
        xscan.ss2d(*args, **kwargs, route="diagonal")


def test_snake_routes_on_a_2x3_map():
    # s = 3h + w on a 2x3 map, written out by hand: rows 0 -> right, 1 -> left; columns 0 down, 1 up, 2 down
    assert snake_route(0, 2, 3).tolist() == [0, 1, 2, 5, 4, 3]
    assert snake_route(1, 2, 3).tolist() == [0, 3, 4, 1, 2, 5]
    assert snake_route(2, 2, 3).tolist() == [3, 4, 5, 2, 1, 0]
    assert snake_route(3, 2, 3).tolist() == [5, 2, 1, 4, 3, 0]


@pytest.mark.parametrize("route", MAP_ROUTES)
def test_every_route_visits_every_pixel_once(route):
    _, positions = MAP_ROUTES[route]
    for H, W in [(1, 1), (1, 4), (4, 1), (2, 3), (3, 2), (5, 4)]:
        for k in range(4):
            assert sorted(positions(k, H, W).tolist()) == list(range(H * W)), (H, W, k)


@pytest.mark.parametrize("route", MAP_ROUTES)
@pytest.mark.parametrize("H,W", [(1, 1), (2, 3), (4, 5), (5, 2)])
def test_map_routes_on_every_backend(backend, route, H, W):
    """For every route over the map (xscan.spec.ROUTE_KINDS): the reference (gathering with the
    route's index maths) against the copies a materialising path would build, then every backend
    against the reference, forward and every gradient."""
    name, device = backend
    dtype = torch.float32 if name == "cuda" else torch.float64
    args, kwargs = make_inputs("ss2d", Bt=2, Dm=3, N=2, H=H, W=W, dtype=dtype, device=device)
    u, dt, B, C = args
    _, positions = MAP_ROUTES[route]
    order = torch.stack([positions(k, H, W) for k in range(4)])  # route position -> spatial index
    ys = [reference.selective_scan(u.flatten(2)[..., order[k]], dt[:, k][..., order[k]], kwargs["A"][k],
                                   B[:, k][..., order[k]], C[:, k][..., order[k]], kwargs["D"][k], None,
                                   kwargs["delta_bias"][k], True) for k in range(4)]
    expected = sum(torch.zeros_like(y).index_copy_(-1, order[k].to(device), y) for k, y in enumerate(ys))
    torch.testing.assert_close(reference.ss2d(*args, **kwargs, route=route), expected.view(u.shape))
    errors = compare("ss2d", args, dict(kwargs, route=route), name)
    assert all(err < tolerance(name, dtype) for _, err in errors), errors
