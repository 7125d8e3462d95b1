"""Training losses of the four papers, on (Bt, C, H, W) images in [0, 1].

- :func:`ssim` / :func:`ssim_loss`: Gaussian-window SSIM (11x11, sigma 1.5, C1 = 0.01^2, C2 = 0.03^2);
  the loss ``w_ir (1 - SSIM(F, I)) + w_vis (1 - SSIM(F, V))`` (DIFF-MF eq. 11, FusionMamba eq. 12).
- :func:`sobel_gradient` / :func:`texture_loss`: ``mean | |grad F| - max(|grad I|, |grad V|) |``
  with ``|grad| = |Sobel_x| + |Sobel_y|`` (S4Fusion's L_grad, DIFF-MF eq. 12, FusionMamba eq. 10).
- :func:`intensity_loss`: ``mean |F - max(I, V)|^p`` (max-intensity, p = 1 as DIFF-MF eq. 13 and
  SwinFusion; p = 2 for FusionMamba's eq. 11 reading), or any other element-wise aggregation.
- :func:`perception_loss`: S4Fusion's perception-enhanced loss, the entropy of
  ``softmax(classifier(F))`` averaged over the batch (eq. 14), for any classifier module.
- :func:`s4fusion_loss`, :func:`fusion_loss`: the weighted sums the papers train with.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

SOBEL_X = ((1.0, 0.0, -1.0), (2.0, 0.0, -2.0), (1.0, 0.0, -1.0))


def _gaussian_window(size: int, sigma: float, like: torch.Tensor) -> torch.Tensor:
    coords = torch.arange(size, dtype=like.dtype, device=like.device) - (size - 1) / 2
    g = torch.exp(-coords ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(x: torch.Tensor, y: torch.Tensor, window_size: int = 11, sigma: float = 1.5,
         data_range: float = 1.0) -> torch.Tensor:
    """Mean SSIM of two (Bt, C, H, W) images (per channel, Gaussian window, 'valid' borders when the
    image is at least window-sized, else the window shrinks to the image)."""
    if x.shape != y.shape or x.dim() != 4:
        raise ValueError(f"ssim: x and y must be (Bt, C, H, W) of the same shape, got {tuple(x.shape)} "
                         f"and {tuple(y.shape)}")
    size = min(window_size, x.shape[-2], x.shape[-1])
    C = x.shape[1]
    w = _gaussian_window(size, sigma, x).expand(C, 1, size, size)

    def blur(t):
        return F.conv2d(t, w, groups=C)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x ** 2
    var_y = blur(y * y) - mu_y ** 2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    return s.mean()


def ssim_loss(fused, ir, vis, weights=(0.5, 0.5)) -> torch.Tensor:
    return weights[0] * (1 - ssim(fused, ir)) + weights[1] * (1 - ssim(fused, vis))


def sobel_gradient(x: torch.Tensor) -> torch.Tensor:
    """``|Sobel_x * x| + |Sobel_y * x|`` per channel, zero padding, same size as x."""
    kx = torch.tensor(SOBEL_X, dtype=x.dtype, device=x.device)
    k = torch.stack([kx, kx.t()])[:, None].repeat(x.shape[1], 1, 1, 1)  # (2C, 1, 3, 3)
    g = F.conv2d(x, k, padding=1, groups=x.shape[1])
    return g[:, 0::2].abs() + g[:, 1::2].abs()


def texture_loss(fused, ir, vis) -> torch.Tensor:
    target = torch.maximum(sobel_gradient(ir), sobel_gradient(vis))
    return F.l1_loss(sobel_gradient(fused), target)


def intensity_loss(fused, ir, vis, aggregate: Callable = torch.maximum, p: int = 1) -> torch.Tensor:
    if p not in (1, 2):
        raise ValueError(f"intensity_loss: p must be 1 or 2, got {p!r}")
    diff = fused - aggregate(ir, vis)
    return diff.abs().mean() if p == 1 else diff.pow(2).mean()


def perception_loss(fused: torch.Tensor, classifier: nn.Module, to_rgb: bool = True) -> torch.Tensor:
    """S4Fusion's L_per: mean over the batch of ``-sum_i y_i log y_i``, ``y = softmax(classifier(F))``.
    A one-channel ``fused`` is repeated to three channels when ``to_rgb`` (for ImageNet classifiers,
    e.g. the paper's ResNet50; normalise inside ``classifier`` if it needs it). The classifier's own
    parameters are not frozen here: freeze them (``requires_grad_(False)``) for the paper's setting."""
    if to_rgb and fused.shape[1] == 1:
        fused = fused.expand(-1, 3, -1, -1)
    logits = classifier(fused)
    if logits.dim() != 2:
        raise ValueError(f"perception_loss: classifier must return (Bt, classes) logits, got {tuple(logits.shape)}")
    log_p = F.log_softmax(logits.float(), dim=-1)
    return -(log_p.exp() * log_p).sum(-1).mean()


def fusion_loss(fused, ir, vis, weights=(1.0, 1.0, 1.0), p: int = 1) -> torch.Tensor:
    """``w_ssim * L_ssim + w_text * L_text + w_int * L_int`` (DIFF-MF eq. 14, FusionMamba eq. 9)."""
    return (weights[0] * ssim_loss(fused, ir, vis) + weights[1] * texture_loss(fused, ir, vis)
            + weights[2] * intensity_loss(fused, ir, vis, p=p))


def s4fusion_loss(fused, ir, vis, classifier: Optional[nn.Module] = None, alphas=(15.0, 15.0, 15.0),
                  source_weights=(0.5, 0.5)) -> torch.Tensor:
    """S4Fusion eq. 13: ``L_per + a1 L_L1 + a2 L_ssim + a3 L_grad`` with ``L_L1 = w_I |F - I| + w_V |F - V|``
    and ``L_ssim`` weighted by the same (w_I, w_V) (the paper estimates them per pair with a ResNet50;
    pass them in). ``classifier=None`` drops L_per."""
    w_i, w_v = source_weights
    l1 = w_i * (fused - ir).abs().mean() + w_v * (fused - vis).abs().mean()
    total = alphas[0] * l1 + alphas[1] * ssim_loss(fused, ir, vis, source_weights) + \
        alphas[2] * texture_loss(fused, ir, vis)
    if classifier is not None:
        total = total + perception_loss(fused, classifier)
    return total
