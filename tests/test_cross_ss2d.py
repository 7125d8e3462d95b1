"""cross_ss2d (docs/ops.md, S4Fusion Algorithm 1): the loop reference against the public code's
materialised interleave, and the CrossSS2D layer against FusionBlock.forward_core's computation."""
import torch
from hypothesis import given
from hypothesis import strategies as st

import xscan.cross_ss2d
from xscan import reference
from xscan.reference.cross_ss2d import interleave
from xscan.testing import make_inputs


def test_import_gives_op_and_layer():
    assert callable(xscan.cross_ss2d.cross_ss2d)
    assert issubclass(xscan.cross_ss2d.CrossSS2D, torch.nn.Module)


@given(Bt=st.integers(1, 2), Dm=st.integers(1, 3), N=st.integers(1, 4), H=st.integers(1, 4),
       W=st.integers(1, 5), options=st.booleans())
def test_reference_matches_materialised_s4fusion_path(Bt, Dm, N, H, W, options):
    args, kwargs = make_inputs("cross_ss2d", Bt=Bt, Dm=Dm, N=N, H=H, W=W, dtype=torch.float64, D=options,
                               delta_bias=options)
    y0, y1 = xscan.cross_ss2d.cross_ss2d(*args, **kwargs)
    e0, e1 = reference.cross_ss2d_materialized(*args, **kwargs)
    torch.testing.assert_close(y0, e0)
    torch.testing.assert_close(y1, e1)


def test_state_runs_through_both_modalities():
    """Changing modality 1's input changes modality 0's output (shared state), and swapping the
    modalities is not a symmetry (modality 0 comes first in every pair)."""
    args, kwargs = make_inputs("cross_ss2d", Bt=1, Dm=2, N=3, H=2, W=3, dtype=torch.float64)
    y0, _ = xscan.cross_ss2d.cross_ss2d(*args, **kwargs)
    u1_changed = args[1] + 1.0
    y0_changed, _ = xscan.cross_ss2d.cross_ss2d(args[0], u1_changed, *args[2:], **kwargs)
    assert (y0 - y0_changed).abs().max() > 1e-3
    u0, u1, dt0, dt1, B0, B1, C0, C1 = args
    s1, s0 = xscan.cross_ss2d.cross_ss2d(u1, u0, dt1, dt0, B1, B0, C1, C0, **kwargs)
    assert (s0 - y0).abs().max() > 1e-3


def fusion_block_core(layer, x, y):
    """S4Fusion's FusionBlock.forward_core computation, written from its description: route copies of
    each modality, per-route projections of the route-ordered tokens, the Patch Mark computed per
    route from the concatenated copies, then the materialised interleaved scan."""
    Bt, Dm, H, W = x.shape
    L, R, N = H * W, layer.dt_rank, layer.d_state

    def routes(t):
        hw_wh = torch.stack([t.flatten(2), t.transpose(2, 3).flatten(2)], dim=1)
        return torch.cat([hw_wh, hw_wh.flip(-1)], dim=1)  # (Bt, 4, Dm, L)

    xs, ys = routes(x), routes(y)
    x_dbl = torch.einsum("bkdl,kcd->bkcl", xs, layer.x_proj_weight)
    y_dbl = torch.einsum("bkdl,kcd->bkcl", ys, layer.y_proj_weight)
    x_dt, x_B, x_C = torch.split(x_dbl, [R, N, N], dim=2)
    y_dt, y_B, y_C = torch.split(y_dbl, [R, N, N], dim=2)
    x_dt = torch.einsum("bkrl,kdr->bkdl", x_dt, layer.dt_projs_weight)
    y_dt = torch.einsum("bkrl,kdr->bkdl", y_dt, layer.dt_projs_weight)
    mark = torch.einsum("bkCl,cC->bkcl", torch.cat([xs, ys], dim=2), layer.mark_proj)
    xs, ys = xs + mark, ys + mark
    inter = interleave
    out = reference.selective_scan(
        inter(xs, ys).reshape(Bt, 4 * Dm, 2 * L), inter(x_dt, y_dt).reshape(Bt, 4 * Dm, 2 * L),
        -torch.exp(layer.A_logs), inter(x_B, y_B), inter(x_C, y_C), layer.Ds, None,
        layer.dt_projs_bias.reshape(-1), True).view(Bt, 4, Dm, 2 * L)

    def recover(o):
        o = o[:, 0:2] + o[:, 2:4].flip(-1)
        return (o[:, 0] + o[:, 1].view(Bt, Dm, W, H).transpose(2, 3).reshape(Bt, Dm, L)).view(Bt, Dm, H, W)

    return recover(out[..., 0::2]), recover(out[..., 1::2])


def test_layer_matches_fusion_block_core():
    torch.manual_seed(0)
    layer = xscan.cross_ss2d.CrossSS2D(d_inner=6, d_state=4, dt_rank=2).double()
    x, y = torch.randn(2, 6, 3, 4, dtype=torch.float64), torch.randn(2, 6, 3, 4, dtype=torch.float64)
    got = layer(x, y)
    expected = fusion_block_core(layer, x, y)
    torch.testing.assert_close(got[0], expected[0])
    torch.testing.assert_close(got[1], expected[1])


def test_layer_parameter_count_matches_fusion_block_core():
    # S4Fusion FusionBlock core at d_model=48, expand 1.5, d_state 18: 2 x_proj (4, R+2N, Di), dt
    # projection (4, Di, R) + bias (4, Di), A_logs (4*Di, N), Ds (4*Di), mark (Di, 2 Di)
    Di, N, R = 72, 18, 3
    expected = 2 * 4 * (R + 2 * N) * Di + 4 * Di * R + 4 * Di + 4 * Di * N + 4 * Di + Di * 2 * Di
    layer = xscan.cross_ss2d.CrossSS2D(d_inner=Di, d_state=N, d_model=48)
    assert sum(p.numel() for p in layer.parameters()) == expected
