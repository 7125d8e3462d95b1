"""S4Fusion (Ma et al., papers/000): VM-UNet-style encoders, Cross-Modal Spatial Awareness fusion at
every scale (Patch Mark + interleaved Cross SS2D), VSS decoder, overlapping patch embedding and fold.

Follows the public code ``zipper112/S4Fusion`` (``S4Fusion.py``, ``modules/``) with its ``MambaNet()``
defaults; its parameter count (3,562,981, all trainable) is reproduced exactly. Module and parameter
names follow it (without the wrapper's ``vmunet.`` prefix): ``S4Fusion.from_public_state_dict`` loads
its checkpoints.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from xscan.cross_ss2d import CrossSS2D

from .common import (FusionNet, PatchEmbed2D, PatchExpand2D, PatchMerging2D, VSSBlock, crop_from, depthwise_conv,
                     load_public_state_dict, pad_to, vmamba_init)


class FusionBlock(CrossSS2D):
    """One CMSA block (public ``FusionBlock``), both modalities channels-last (Bt, H, W, d_model):
    shared ``in_proj -> (u, z)``, shared 3x3 depthwise conv + SiLU, the Cross SS2D core
    (``xscan.cross_ss2d.CrossSS2D``: per-modality x_proj, Patch Mark, interleaved scan, Recover),
    shared ``out_norm``, gate ``* SiLU(z)``, shared ``out_proj``. Returns the two block outputs (the
    residual is added by :class:`FusionLayer`). Like the public code there is no input LayerNorm."""

    def __init__(self, d_model: int, d_state: int = 18, expand: float = 1.5, d_conv: int = 3):
        d_inner = int(expand * d_model)
        super().__init__(d_inner, d_state, "auto", d_model=d_model)
        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=False)
        self.conv2d = depthwise_conv(d_inner, d_conv)
        self.out_norm = nn.LayerNorm(d_inner)
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)

    def forward(self, x: torch.Tensor, y: torch.Tensor):
        ux, zx = self.in_proj(x).chunk(2, dim=-1)
        uy, zy = self.in_proj(y).chunk(2, dim=-1)
        ux = F.silu(self.conv2d(ux.permute(0, 3, 1, 2)))
        uy = F.silu(self.conv2d(uy.permute(0, 3, 1, 2)))
        fx, fy = super().forward(ux, uy)
        return self.gate_out(fx, zx), self.gate_out(fy, zy)

    def gate_out(self, f: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.out_proj(self.out_norm(f.permute(0, 2, 3, 1)) * F.silu(z))


class FusionLayer(nn.Module):
    """CMSA at one scale: K blocks with residuals on both streams, then ``R = I + V``."""

    def __init__(self, d_model: int, d_state: int, num_blocks: int = 3):
        super().__init__()
        self.layers = nn.ModuleList(FusionBlock(d_model, d_state) for _ in range(num_blocks))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            dx, dy = layer(x, y)
            x, y = x + dx, y + dy
        return x + y


class VSSLayer(nn.Sequential):
    """``depth`` VSS blocks, then an optional patch merging (encoder)."""

    def __init__(self, dim, depth, d_state, expand, drop_path, downsample):
        blocks = [VSSBlock(dim, d_state, expand, drop_path=drop_path[i]) for i in range(depth)]
        super().__init__()
        self.blocks = nn.Sequential(*blocks)
        if downsample:
            self.downsample = PatchMerging2D(dim)


class VSSLayerUp(nn.Sequential):
    """An optional patch expanding, then ``depth`` VSS blocks (decoder)."""

    def __init__(self, dim, depth, d_state, expand, drop_path, upsample):
        super().__init__()
        if upsample:
            self.upsample = PatchExpand2D(dim)
        self.blocks = nn.Sequential(*[VSSBlock(dim, d_state, expand, drop_path=drop_path[i]) for i in range(depth)])


def drop_path_rates(rate: float, depths, decoder: bool = False) -> list[list[float]]:
    """timm's linear stochastic-depth rule, one list per stage of ``depths`` blocks. The VM-UNet
    decoders reverse the flat list of rates (the deepest block first), then slice it by their
    depths."""
    rates = torch.linspace(0, rate, sum(depths)).tolist()
    if decoder:
        rates = rates[::-1]
    out, start = [], 0
    for d in depths:
        out.append(rates[start:start + d])
        start += d
    return out


class S4Fusion(FusionNet):
    """S4Fusion ``MambaNet`` (public defaults): dims [48, 96, 192], encoder/decoder depths [1, 2, 1],
    expand 1.5, d_state 12 in the VSS blocks and 18 in the fusion blocks, 3 CMSA blocks per scale, two
    encoders with separate weights, patch embedding Conv2d(k=4, stride=3) and ``F.fold(k=4, stride=3)``.

    ``fuse(ir, vis)``: inputs are zero-padded, centred, to the next 12k+1 size (as the public test
    dataset does) and the output cropped back. Like the public code, the decoder consumes the fused
    features of the two coarser scales only: the finest scale's CMSA output is discarded, and
    ``final_up.norm`` is never applied. Both are kept so the parameter count and state dict match;
    ``compute_unused_fusion=False`` skips the discarded CMSA pass (same output, less work), the default
    runs it as the public code does.
    """

    def __init__(self, dims=(48, 96, 192), depths=(1, 2, 1), depths_decoder=(1, 2, 1), d_state=12,
                 d_state_fusion=18, fusion_blocks=3, expand=1.5, drop_path_rate=0.0,
                 compute_unused_fusion=True):
        super().__init__()
        dims, n = list(dims), len(dims)
        dims_decoder = dims[::-1]
        self.compute_unused_fusion = compute_unused_fusion
        self.patch_embed_x = PatchEmbed2D(dims[0], patch=4, stride=3)
        self.patch_embed_y = PatchEmbed2D(dims[0], patch=4, stride=3)
        enc_dpr = drop_path_rates(drop_path_rate, depths)
        dec_dpr = drop_path_rates(drop_path_rate, depths_decoder, decoder=True)

        def encoder():
            return nn.ModuleList(VSSLayer(dims[i], depths[i], d_state, expand, enc_dpr[i], i < n - 1)
                                 for i in range(n))
        self.layers_x, self.layers_y = encoder(), encoder()
        self.fusion_layers = nn.ModuleList(FusionLayer(d, d_state_fusion, fusion_blocks) for d in dims)
        self.layers_up = nn.ModuleList(
            VSSLayerUp(dims_decoder[i], depths_decoder[i], d_state, expand, dec_dpr[i], i != 0) for i in range(n))
        final_dim = dims_decoder[-1]
        self.final_up = nn.Module()
        self.final_up.expand = nn.Linear(final_dim, 4 * final_dim, bias=False)
        self.final_up.norm = nn.LayerNorm(final_dim // 4)  # unused, as in the public code
        self.final_conv = nn.Conv2d(final_dim // 4, 1, 1)
        vmamba_init(self)

    @classmethod
    def from_public_state_dict(cls, state_dict: dict) -> S4Fusion:
        """A model in the public configuration with the weights of a ``zipper112/S4Fusion`` checkpoint:
        the state dict of its ``MambaNet`` (keys under ``vmunet.``), or the checkpoint dict its
        ``test.py`` reads (``{"model": state_dict, ...}``)."""
        if isinstance(state_dict.get("model"), dict):
            state_dict = state_dict["model"]
        return load_public_state_dict(cls(), state_dict, "zipper112/S4Fusion", prefix="vmunet.")

    @staticmethod
    def padded_size(n: int) -> int:
        """Smallest 12k+1 >= n (k >= 1): the size the patch embedding, two mergings and the fold tile."""
        return max(13, n + (1 - n) % 12)

    def fuse(self, ir: torch.Tensor, vis: torch.Tensor) -> torch.Tensor:
        H, W = ir.shape[-2:]
        Hp, Wp = self.padded_size(H), self.padded_size(W)
        x = self.patch_embed_x(pad_to(ir, Hp, Wp, centred=True))
        y = self.patch_embed_y(pad_to(vis, Hp, Wp, centred=True))
        skips = []
        for layer_x, layer_y in zip(self.layers_x, self.layers_y):
            skips.append((x, y))
            x, y = layer_x(x), layer_y(y)
        first_used = 0 if self.compute_unused_fusion else 1
        fused = [None] * len(skips)
        for i in range(first_used, len(skips)):
            fused[i] = self.fusion_layers[i](*skips[i])
        z = x + y
        for i, layer_up in enumerate(self.layers_up):
            z = layer_up(z if i == 0 else z + fused[-i])
        z = self.final_up.expand(z).permute(0, 3, 1, 2).flatten(2)  # (Bt, 16 * C/4, h*w)
        z = self.final_conv(F.fold(z, (Hp, Wp), kernel_size=4, stride=3))
        return crop_from(z, H, W, (Hp, Wp), centred=True)
