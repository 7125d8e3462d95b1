"""Building blocks shared by the four fusion networks: the VMamba SS2D block around xscan's scan core,
patch merging/expanding, stochastic depth, padding, colour handling and the VMamba weight init."""
from __future__ import annotations

import math
import re
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from xscan import SS2D


class VSSMixer(SS2D):
    """VMamba's ``SS2D`` module (the mixer of a VSS block) with xscan's scan core:
    ``in_proj -> (u, z)``; ``u -> depthwise conv -> SiLU -> scan -> out_norm``; ``* SiLU(z)``; ``out_proj``.

    Channels-last in and out: (Bt, H, W, d_model). ``route="cross"`` scans the four full routes
    (``xscan.ss2d``), ``route="atrous"`` is ES2D (``xscan.es2d``). The SSM parameters keep VMamba's
    names (``x_proj_weight``, ``dt_projs_weight``, ``dt_projs_bias``, ``A_logs``, ``Ds``)."""

    def __init__(self, d_model: int, d_state: int = 16, expand: float = 2.0, dt_rank="auto",
                 route: str = "cross", d_conv: int = 3):
        d_inner = int(expand * d_model)
        super().__init__(d_inner, d_state, dt_rank, route=route, d_model=d_model)
        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=False)
        self.conv2d = depthwise_conv(d_inner, d_conv)
        self.out_norm = nn.LayerNorm(d_inner)
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u, z = self.in_proj(x).chunk(2, dim=-1)
        u = F.silu(self.conv2d(u.permute(0, 3, 1, 2)))
        y = super().forward(u).permute(0, 2, 3, 1)
        return self.out_proj(self.out_norm(y) * F.silu(z))


def depthwise_conv(channels: int, kernel: int = 3) -> nn.Conv2d:
    return nn.Conv2d(channels, channels, kernel, padding=(kernel - 1) // 2, groups=channels)


class VSSBlock(nn.Module):
    """``x + DropPath(VSSMixer(LN(x)))`` (VMamba/VM-UNet ``VSSBlock``), channels-last."""

    def __init__(self, dim: int, d_state: int = 16, expand: float = 2.0, drop_path: float = 0.0,
                 route: str = "cross"):
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim)
        self.self_attention = VSSMixer(dim, d_state, expand, route=route)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.self_attention(self.ln_1(x)))


class DropPath(nn.Module):
    """Stochastic depth per sample (timm's ``DropPath``): identity in eval mode or at rate 0."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class PatchMerging2D(nn.Module):
    """2x2 space-to-depth (order (0,0), (1,0), (0,1), (1,1)), LN(4C), Linear(4C -> 2C); channels-last.
    An odd trailing row/column is dropped, as in VMamba."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[1] // 2 * 2, x.shape[2] // 2 * 2
        x = x[:, :H, :W]
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x))


def depth_to_space(x: torch.Tensor, scale: int) -> torch.Tensor:
    """(Bt, h, w, s*s*C) -> (Bt, h*s, w*s, C), channels ordered (p1, p2, c) as VM-UNet's rearrange."""
    Bt, h, w, c = x.shape
    C = c // (scale * scale)
    x = x.view(Bt, h, w, scale, scale, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(Bt, h * scale, w * scale, C)


class PatchExpand2D(nn.Module):
    """VM-UNet's ``PatchExpand2D(dim)``: (Bt, h, w, 2*dim) -> Linear(2dim -> 4dim) -> 2x depth-to-space
    -> LN(dim): (Bt, 2h, 2w, dim)."""

    def __init__(self, dim: int):
        super().__init__()
        self.expand = nn.Linear(2 * dim, 4 * dim, bias=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(depth_to_space(self.expand(x), 2))


class PatchEmbed2D(nn.Module):
    """Conv2d(in -> dim, kernel ``patch``, stride ``stride``) + LN, channels-last out."""

    def __init__(self, dim: int, patch: int = 4, stride: int = 4, in_chans: int = 1):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch, stride=stride)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


def vmamba_init(module: nn.Module) -> None:
    """The weight init the public VMamba-derived codes apply last: trunc-normal(0.02) Linear weights,
    zero Linear biases, LayerNorm (1, 0). Convs and the SSM parameters keep their own init."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def pad_to(x: torch.Tensor, H: int, W: int, centred: bool = False) -> torch.Tensor:
    """Zero-pad (Bt, C, h, w) to (Bt, C, H, W): at the bottom/right, or split evenly (extra row/column
    at the bottom/right) when ``centred``."""
    dh, dw = H - x.shape[-2], W - x.shape[-1]
    if dh == 0 and dw == 0:
        return x
    top, left = (dh // 2, dw // 2) if centred else (0, 0)
    return F.pad(x, (left, dw - left, top, dh - top))


def crop_from(x: torch.Tensor, H: int, W: int, padded: tuple[int, int], centred: bool = False):
    """Inverse of :func:`pad_to`: the (H, W) window of a map padded to ``padded``."""
    top, left = ((padded[0] - H) // 2, (padded[1] - W) // 2) if centred else (0, 0)
    return x[..., top:top + H, left:left + W]


def round_up(n: int, multiple: int) -> int:
    return math.ceil(n / multiple) * multiple


# RGB <-> YCbCr as the fusion papers' scripts convert (BT.601, offsets 0.5).
def rgb_to_ycbcr(rgb: torch.Tensor):
    """(Bt, 3, H, W) in [0, 1] -> Y, Cb, Cr, each (Bt, 1, H, W)."""
    R, G, B = rgb[:, 0:1], rgb[:, 1:2], rgb[:, 2:3]
    Y = 0.299 * R + 0.587 * G + 0.114 * B
    return Y, (B - Y) * 0.564 + 0.5, (R - Y) * 0.713 + 0.5


def ycbcr_to_rgb(Y: torch.Tensor, Cb: torch.Tensor, Cr: torch.Tensor) -> torch.Tensor:
    R = Y + 1.403 * (Cr - 0.5)
    G = Y - 0.714 * (Cr - 0.5) - 0.344 * (Cb - 0.5)
    B = Y + 1.773 * (Cb - 0.5)
    return torch.cat([R, G, B], dim=1).clamp(0, 1)


class FusionNet(nn.Module):
    """``model(ir, vis) -> fused`` for every network: checks the inputs, and for a colour visible image
    fuses its luminance and puts the visible chrominance back (YCbCr, as the papers do).

    ir: (Bt, 1, H, W); vis: (Bt, 1, H, W) or (Bt, 3, H, W) RGB, both in [0, 1]. Returns (Bt, 1, H, W),
    the network's raw output, for a grey ``vis``; (Bt, 3, H, W) RGB, with the fused luminance clamped
    to [0, 1] before the conversion (as the papers' test scripts do), for a colour one.
    Subclasses implement ``fuse(ir, vis_y)`` on any H, W (padding inside where a stride needs it)."""

    def forward(self, ir: torch.Tensor, vis: torch.Tensor) -> torch.Tensor:
        name = type(self).__name__
        for arg, t in (("ir", ir), ("vis", vis)):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{name}: {arg} must be a tensor, got {type(t).__name__}")
            if t.dim() != 4 or not t.is_floating_point():
                raise ValueError(f"{name}: {arg} must be a floating (Bt, C, H, W) tensor, got "
                                 f"{tuple(t.shape)} {t.dtype}")
        if ir.shape[1] != 1:
            raise ValueError(f"{name}: ir must have 1 channel (Bt, 1, H, W), got {tuple(ir.shape)}")
        if vis.shape[1] not in (1, 3):
            raise ValueError(f"{name}: vis must have 1 or 3 channels (Bt, 1|3, H, W), got {tuple(vis.shape)}")
        if vis.shape[0] != ir.shape[0] or vis.shape[2:] != ir.shape[2:]:
            raise ValueError(f"{name}: ir {tuple(ir.shape)} and vis {tuple(vis.shape)} must have the same "
                             "batch size, height and width")
        if vis.shape[1] == 1:
            return self.fuse(ir, vis)
        Y, Cb, Cr = rgb_to_ycbcr(vis)
        return ycbcr_to_rgb(self.fuse(ir, Y).clamp(0, 1), Cb, Cr)

    def fuse(self, ir: torch.Tensor, vis: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def load_public_state_dict(model: nn.Module, state_dict: dict, repository: str, prefix: str = "",
                           renames: tuple = (), fixed: Optional[Callable] = None) -> nn.Module:
    """Load ``state_dict`` as ``repository``'s training code saves it into ``model`` (strictly).

    ``prefix`` is stripped from every key (a wrapper module's name); ``renames`` are (regex,
    replacement) pairs applied in order to turn the public module names into this package's;
    ``fixed(key)`` returns the value of a constant the public code stores in its state dict (and
    this package does not), or None: such keys are checked against it and dropped. A ``module.``
    prefix (DDP) is removed first. Raises ValueError listing missing and unexpected keys, or the
    key and both shapes of a size mismatch."""
    where = f"expected the state_dict of {repository} as its training code saves it"
    sd = dict(state_dict)
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    if prefix:
        outside = [k for k in sd if not k.startswith(prefix)]
        if outside:
            raise ValueError(f"{type(model).__name__}.from_public_state_dict: {len(outside)} keys lack the prefix "
                             f"{prefix!r} (first: {outside[:5]}); {where}")
        sd = {k[len(prefix):]: v for k, v in sd.items()}
    renamed = {}
    for key, value in sd.items():
        expected = fixed(key) if fixed is not None else None
        if expected is not None:
            if value.shape != expected.shape or not torch.allclose(value.float().cpu(), expected, atol=1e-6):
                raise ValueError(f"{type(model).__name__}.from_public_state_dict: {key} holds {value.tolist()}, not "
                                 f"the constant {expected.tolist()} this model uses")
            continue
        for pattern, replacement in renames:
            key = re.sub(pattern, replacement, key)
        renamed[key] = value
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(renamed)), sorted(set(renamed) - set(own))
    if missing or unexpected:
        raise ValueError(f"{type(model).__name__}.from_public_state_dict: {len(missing)} missing keys "
                         f"{missing[:5]}, {len(unexpected)} unexpected keys {unexpected[:5]}; {where}")
    for key, value in renamed.items():
        if value.shape != own[key].shape:
            raise ValueError(f"{type(model).__name__}.from_public_state_dict: {key} has shape {tuple(value.shape)}, "
                             f"this model's is {tuple(own[key].shape)}; {where}")
    model.load_state_dict(renamed, strict=True)
    return model
