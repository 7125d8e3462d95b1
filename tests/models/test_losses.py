"""The fusion losses against independent formulations and closed-form cases."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from xscan.models import losses


def ssim_by_windows(x, y, size=11, sigma=1.5):
    """SSIM from explicit windows (unfold), one weighted mean per window."""
    coords = torch.arange(size, dtype=x.dtype) - (size - 1) / 2
    g = torch.exp(-coords ** 2 / (2 * sigma ** 2))
    w = (g[:, None] * g[None, :]).flatten()
    w = w / w.sum()
    px = nn.functional.unfold(x, size)  # (Bt, C*size*size, windows), C == 1 here
    py = nn.functional.unfold(y, size)
    mx, my = (w[:, None] * px).sum(1), (w[:, None] * py).sum(1)
    vx = (w[:, None] * (px - mx[:, None]) ** 2).sum(1)
    vy = (w[:, None] * (py - my[:, None]) ** 2).sum(1)
    cxy = (w[:, None] * (px - mx[:, None]) * (py - my[:, None])).sum(1)
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    return (((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))).mean()


def test_ssim_matches_windowed_definition():
    torch.manual_seed(0)
    x = torch.rand(2, 1, 16, 19, dtype=torch.float64)
    y = (x + 0.1 * torch.randn_like(x)).clamp(0, 1)
    torch.testing.assert_close(losses.ssim(x, y), ssim_by_windows(x, y))
    assert losses.ssim(x, x).item() == pytest.approx(1.0)
    assert losses.ssim(x, y).item() < 1.0
    torch.testing.assert_close(losses.ssim_loss(x, x, x), torch.zeros((), dtype=torch.float64))


def test_sobel_gradient_of_a_ramp():
    ramp = torch.arange(8, dtype=torch.float32).repeat(6, 1)[None, None]  # x(h, w) = w
    g = losses.sobel_gradient(ramp)
    assert torch.all(g[..., 1:-1, 1:-1] == 8)  # |(1+2+1) * (w-1 - (w+1))| + 0
    assert losses.sobel_gradient(torch.ones(1, 2, 5, 5))[..., 1:-1, 1:-1].abs().max() == 0


def test_texture_and_intensity_losses():
    torch.manual_seed(0)
    vis = torch.rand(1, 1, 10, 10)
    flat_ir = torch.full_like(vis, 0.2)
    interior = (slice(None), slice(None), slice(1, -1), slice(1, -1))
    # with a constant ir, the max gradient is the visible one inside the image
    assert losses.texture_loss(vis[interior], flat_ir[interior], vis[interior]).item() == 0
    fused = torch.maximum(flat_ir, vis)
    assert losses.intensity_loss(fused, flat_ir, vis).item() == 0
    assert losses.intensity_loss(fused + 0.5, flat_ir, vis, p=2).item() == pytest.approx(0.25)
    with pytest.raises(ValueError, match="p must be 1 or 2"):
        losses.intensity_loss(fused, flat_ir, vis, p=3)


def test_perception_loss_is_the_softmax_entropy():
    torch.manual_seed(0)
    classifier = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 10))
    fused = torch.rand(3, 1, 4, 4, requires_grad=True)
    loss = losses.perception_loss(fused, classifier)
    logits = classifier(fused.expand(-1, 3, -1, -1))
    expected = torch.distributions.Categorical(logits=logits).entropy().mean()
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert fused.grad.abs().sum() > 0
    uniform = nn.Sequential(nn.Flatten(), nn.Linear(48, 7))
    nn.init.zeros_(uniform[1].weight)
    nn.init.zeros_(uniform[1].bias)
    assert losses.perception_loss(fused, uniform).item() == pytest.approx(math.log(7))


def test_combined_losses_are_the_weighted_sums():
    torch.manual_seed(0)
    f, i, v = (torch.rand(1, 1, 12, 12) for _ in range(3))
    expected = 2 * losses.ssim_loss(f, i, v) + 3 * losses.texture_loss(f, i, v) + 4 * losses.intensity_loss(f, i, v)
    torch.testing.assert_close(losses.fusion_loss(f, i, v, weights=(2, 3, 4)), expected)
    l1 = 0.3 * (f - i).abs().mean() + 0.7 * (f - v).abs().mean()
    s4 = 15 * l1 + 15 * losses.ssim_loss(f, i, v, (0.3, 0.7)) + 15 * losses.texture_loss(f, i, v)
    torch.testing.assert_close(losses.s4fusion_loss(f, i, v, source_weights=(0.3, 0.7)), s4)
