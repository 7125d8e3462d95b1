"""Channel-interleaved scanning (docs/ops.md): the realignments written out element by element,
and interleave_ss2d == ss2d over the realigned map."""
import pytest
import torch

import xscan
from xscan.testing import make_inputs


def realign_by_hand(m0, m1, mode, axis):
    Bt, C, H, W = m0.shape
    maps = (m0, m1)
    if mode == "concat" or axis == "channel":
        out = m0.new_empty(Bt, 2 * C, H, W)
        for r in range(2 * C):
            m, c = (r % 2, r // 2) if mode == "column" else (r // C, r % C)
            out[:, r] = maps[m][:, c]
        return out
    out = m0.new_empty(Bt, C, H, 2 * W)
    for x in range(2 * W):
        m, w = (x % 2, x // 2) if mode == "column" else (x // W, x % W)
        out[..., x] = maps[m][..., w]
    return out


@pytest.mark.parametrize("mode", ["column", "row", "concat"])
@pytest.mark.parametrize("axis", ["channel", "width"])
def test_realign_matches_paper_layouts(mode, axis):
    m0, m1 = torch.randn(2, 3, 2, 4), torch.randn(2, 3, 2, 4)
    torch.testing.assert_close(xscan.realign(m0, m1, mode, axis), realign_by_hand(m0, m1, mode, axis))


@pytest.mark.parametrize("mode", ["column", "row", "concat"])
@pytest.mark.parametrize("axis", ["channel", "width"])
def test_interleave_ss2d_is_ss2d_of_the_realigned_map(mode, axis):
    args, kwargs = make_inputs("interleave_ss2d", Bt=1, Dm=2, N=3, H=3, W=3, mode=mode, axis=axis,
                               dtype=torch.float64)
    u0, u1, dt, B, C = args
    params = {k: kwargs[k] for k in ("A", "D", "delta_bias", "delta_softplus")}
    expected = xscan.ss2d(realign_by_hand(u0, u1, mode, axis), dt, B, C, **params)
    torch.testing.assert_close(xscan.interleave_ss2d(*args, **kwargs), expected)


def test_bad_mode_and_axis_are_rejected():
    args, kwargs = make_inputs("interleave_ss2d")
    with pytest.raises(ValueError, match="mode must be one of"):
        xscan.interleave_ss2d(*args, **dict(kwargs, mode="diagonal"))
    with pytest.raises(ValueError, match="axis must be one of"):
        xscan.interleave_ss2d(*args, **dict(kwargs, axis="height"))
    with pytest.raises(ValueError, match=r"dt must have shape \(Bt=2 from u0, 4, Dr=4 from u0, Lr=30 from u0\), got \(2, 4, 8, 15\)"):
        xscan.interleave_ss2d(*args, **dict(kwargs, axis="width"))
