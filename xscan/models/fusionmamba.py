"""FusionMamba (Xie et al., papers/002): a VM-UNet with Dynamic VSS blocks (ES2D scan + LDC + ECA),
one encoder shared by both modalities, and a Dynamic Feature Fusion Module (two DFEMs + CMFM) per scale.

Follows the public code ``millieXie/FusionMamba`` (``models/vmamba_Fusion_efficross.py`` and
``models/cross.py``, the versions at commits 8a0396ad and e8503691) with ``VSSM_Fusion()``'s defaults:
patch 4, dims [96, 192, 384, 768], depths [2, 2, 9, 2], decoder depths [2, 9, 2, 2], d_state 16,
d_inner = 2 * dim, drop-path rate 0.1, MLP ratio 4. Every scan is ES2D (``xscan.es2d``).

Readings and deviations (all documented where they happen):
- The training script calls ``VSSM_Fusion(vis_y, ir)``; ``model(ir, vis)`` here feeds the same order.
- CMFM: the public ``SS2D_cross_new`` gates the second stream with ``SiLU(SiLU(z1))`` (``z2 =
  act2(z1)``), so ``in_proj2``'s z half is unused; the default ``cmfm_gate="public"`` computes
  exactly that (public checkpoints load and give the public outputs), ``cmfm_gate="paper"`` gates
  it with ``SiLU(z2)`` as the paper's eq. (7) writes.
- The public ``LDC`` keeps an all-ones ``base_mask`` as a frozen Parameter; here it is a buffer of
  the same name (same state dict, not counted as a parameter). Modules the public code builds but
  never uses (``Differential_enhance.lastconv``) are kept so the state dict and count match it.
- Like the public code, the finest scale's fused features are computed but never used by the
  decoder; ``compute_unused_fusion=False`` skips that pass (same output).
- ``fuse`` zero-pads H and W to multiples of 32 (patch 4, three mergings) and crops back; the output
  adds ``2 * (ir + vis)`` to the decoded residual, as that version of the public code does.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from xscan import SS2D

from .common import (DropPath, FusionNet, PatchEmbed2D, PatchExpand2D, PatchMerging2D, VSSMixer, depth_to_space,
                     depthwise_conv, load_public_state_dict, pad_to, round_up, vmamba_init)
from .s4fusion import drop_path_rates


class LDC(nn.Module):
    """Learnable Descriptive Convolution (public ``LDC``): a 3x3 conv, no bias, whose centre tap is
    rescaled by ``1 - theta * mask * sum(kernel)`` per (out, in) channel pair. Channels-first."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.register_buffer("center_mask", torch.tensor([[0., 0., 0.], [0., 1., 0.], [0., 0., 0.]]),
                             persistent=False)
        self.register_buffer("base_mask", torch.ones_like(self.conv.weight))
        self.learnable_mask = nn.Parameter(torch.ones(channels, channels))
        self.learnable_theta = nn.Parameter(torch.full((1,), 0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.conv.weight
        mask = self.base_mask - self.learnable_theta * self.learnable_mask[:, :, None, None] * \
            self.center_mask * w.sum((2, 3))[:, :, None, None]
        return F.conv2d(x, w * mask, padding=1)


class ECA(nn.Module):
    """Efficient Channel Attention: global average, Conv1d(k=3) across channels, sigmoid; channels-last."""

    def __init__(self, k_size: int = 3):
        super().__init__()
        self.conv = nn.Conv1d(1, 1, k_size, padding=(k_size - 1) // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = torch.sigmoid(self.conv(x.mean((1, 2))[:, None, :]))  # (Bt, 1, C)
        return x * w[:, :, None, :]


class BiAttn(nn.Module):
    """Channel gate of the DVSS block (public ``BiAttn``): LN, global average, C -> C/8 -> C, sigmoid."""

    def __init__(self, channels: int, act_ratio: float = 0.125):
        super().__init__()
        reduced = int(channels * act_ratio)
        self.norm = nn.LayerNorm(channels)
        self.global_reduce = nn.Linear(channels, reduced)
        self.channel_select = nn.Linear(reduced, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = F.gelu(self.global_reduce(self.norm(x).mean((1, 2), keepdim=True)))
        return x * torch.sigmoid(self.channel_select(g))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class DVSSBlock(nn.Module):
    """Dynamic VSS block (public ``VSSBlock_new``), channels-last:
    ``s = ES2D-mixer(LN(x)); c = LDC(s + ECA(s)); x += DropPath(BiAttn(s) + BiAttn(c));
    x += DropPath(MLP(LN(x)))`` (one BiAttn applied to both terms)."""

    def __init__(self, dim: int, d_state: int = 16, expand: float = 2.0, drop_path: float = 0.0,
                 mlp_ratio: float = 4.0):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.op = VSSMixer(dim, d_state, expand, route="atrous")
        self.conv_branch = LDC(dim)
        self.self_attention_cross_channel = ECA()
        self.se = BiAttn(dim)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.op(self.norm(x))
        t = s + self.self_attention_cross_channel(s)
        c = self.conv_branch(t.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        x = x + self.drop_path(self.se(s) + self.se(c))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class DifferentialEnhance(nn.Module):
    """Dynamic difference perception: ``F_m + sigmoid(mean(x_m - x_other)) * fuse`` per modality."""

    def __init__(self, dim: int):
        super().__init__()
        self.lastconv = nn.Conv2d(dim, dim // 2, 1)  # built but unused by the public code

    def forward(self, fuse, x1, x2):
        w12 = torch.sigmoid((x1 - x2).mean((2, 3), keepdim=True))
        w21 = torch.sigmoid((x2 - x1).mean((2, 3), keepdim=True))
        return w12 * fuse + x1, w21 * fuse + x2


class DFEM(nn.Module):
    """The two Dynamic Feature Enhancement Modules (public ``Cross_layer``), channels-first:
    ``D_m = LDC_m(x_m) + DifferentialEnhance_m``."""

    def __init__(self, dim: int):
        super().__init__()
        self.texture_enhance1 = LDC(dim)
        self.texture_enhance2 = LDC(dim)
        self.Diff_enhance = DifferentialEnhance(dim)

    def forward(self, fuse, x1, x2):
        d1, d2 = self.Diff_enhance(fuse, x1, x2)
        return self.texture_enhance1(x1) + d1, self.texture_enhance2(x2) + d2


class CMFMMixer(SS2D):
    """The CMFM scan (public ``SS2D_cross_new``), channels-last (Bt, H, W, d_model) x2:
    per-modality ``in_proj -> (u_m, z_m)``, one shared depthwise conv + SiLU on each ``u_m``,
    ``h = u_1 * u_2 + u_1 + u_2``, a single ES2D scan of ``h``, ``out_norm``, then
    ``y * g_1 + y * g_2`` and ``out_proj`` (paper eqs. 6-7), with ``g_1 = SiLU(z_1)`` and
    ``g_2 = SiLU(g_1)`` (``gate="public"``, the public code) or ``g_2 = SiLU(z_2)`` (``gate="paper"``)."""

    GATES = ("public", "paper")

    def __init__(self, d_model: int, d_state: int = 16, expand: float = 2.0, gate: str = "public"):
        if gate not in self.GATES:
            raise ValueError(f"CMFMMixer: gate must be one of {self.GATES}, got {gate!r}")
        self.gate = gate
        d_inner = int(expand * d_model)
        super().__init__(d_inner, d_state, "auto", route="atrous", d_model=d_model)
        self.in_proj1 = nn.Linear(d_model, 2 * d_inner, bias=False)
        self.in_proj2 = nn.Linear(d_model, 2 * d_inner, bias=False)
        self.conv2d = depthwise_conv(d_inner)
        self.out_norm = nn.LayerNorm(d_inner)
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        u1, z1 = self.in_proj1(x1).chunk(2, dim=-1)
        u2, z2 = self.in_proj2(x2).chunk(2, dim=-1)
        u1 = F.silu(self.conv2d(u1.permute(0, 3, 1, 2)))
        u2 = F.silu(self.conv2d(u2.permute(0, 3, 1, 2)))
        y = self.out_norm(super().forward(u1 * u2 + u1 + u2).permute(0, 2, 3, 1))
        g1 = F.silu(z1)
        g2 = F.silu(g1) if self.gate == "public" else F.silu(z2)
        return self.out_proj(y * g1 + y * g2)


class CMFMBlock(nn.Module):
    """One DFFM (public ``VSSBlock_Cross_new``), channels-last: DFEMs on ``(x1 + x2, x1, x2)``, the
    CMFM mixer on their layer-normed outputs, ``out = x1 + x2 + H + ECA(H)``."""

    def __init__(self, dim: int, d_state: int = 16, gate: str = "public"):
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim)
        self.ln_2 = nn.LayerNorm(dim)
        self.Cross_layer = DFEM(dim)
        self.self_attention_cross = CMFMMixer(dim, d_state, gate=gate)
        self.self_attention_cross_spatial = ECA()

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        c1, c2 = x1.permute(0, 3, 1, 2), x2.permute(0, 3, 1, 2)
        d1, d2 = self.Cross_layer(c1 + c2, c1, c2)
        h = self.self_attention_cross(self.ln_1(d1.permute(0, 2, 3, 1)), self.ln_2(d2.permute(0, 2, 3, 1)))
        return x1 + x2 + h + self.self_attention_cross_spatial(h)


class FusionMamba(FusionNet):
    """FusionMamba ``VSSM_Fusion()`` (see the module docstring for the readings).

    Parameters: 164,538,645, the public model's trainable parameters. The public ``LDC`` layers also
    hold 60,880,896 frozen all-ones ``base_mask`` parameters; here they are buffers of the same names
    (in the state dict, out of ``parameters()`` and so out of the optimiser's way).
    ``cmfm_gate``: "public" (the public code's second gate) or "paper" (eq. 7), see CMFMMixer."""

    def __init__(self, dims=(96, 192, 384, 768), depths=(2, 2, 9, 2), depths_decoder=(2, 9, 2, 2), d_state=16,
                 expand=2.0, patch_size=4, drop_path_rate=0.1, mlp_ratio=4.0, compute_unused_fusion=True,
                 cmfm_gate="public"):
        super().__init__()
        dims, n = list(dims), len(dims)
        dims_decoder = dims[::-1]
        self.compute_unused_fusion = compute_unused_fusion
        self.stride = patch_size * 2 ** (n - 1)
        self.patch_embed1 = PatchEmbed2D(dims[0], patch=patch_size, stride=patch_size)
        self.patch_embed2 = PatchEmbed2D(dims[0], patch=patch_size, stride=patch_size)
        enc_dpr = drop_path_rates(drop_path_rate, depths)
        dec_dpr = drop_path_rates(drop_path_rate, depths_decoder, decoder=True)
        self.layers = nn.ModuleList()
        for i in range(n):
            layer = nn.Sequential()
            layer.blocks = nn.Sequential(*[DVSSBlock(dims[i], d_state, expand, p, mlp_ratio) for p in enc_dpr[i]])
            if i < n - 1:
                layer.downsample = PatchMerging2D(dims[i])
            self.layers.append(layer)
        self.layers_up = nn.ModuleList()
        for i in range(n):
            layer = nn.Sequential()
            if i != 0:
                layer.upsample = PatchExpand2D(dims_decoder[i])
            layer.blocks = nn.Sequential(
                *[DVSSBlock(dims_decoder[i], d_state, expand, p, mlp_ratio) for p in dec_dpr[i]])
            self.layers_up.append(layer)
        self.final_up = nn.Module()
        self.final_up.expand = nn.Linear(dims_decoder[-1], 4 * dims_decoder[-1], bias=False)
        self.final_up.norm = nn.LayerNorm(dims_decoder[-1] // 4)
        self.final_conv = nn.Conv2d(dims_decoder[-1] // 4, 1, 1)
        self.Cross_block = nn.ModuleList(CMFMBlock(d, d_state, gate=cmfm_gate) for d in dims)
        vmamba_init(self)

    @classmethod
    def from_public_state_dict(cls, state_dict: dict) -> FusionMamba:
        """A model in the public configuration (``VSSM_Fusion()``, the public CMFM gate) with the
        weights of a ``millieXie/FusionMamba`` checkpoint (``fusion_model.pth``: a plain state dict,
        ``base_mask`` included)."""
        return load_public_state_dict(cls(cmfm_gate="public"), state_dict, "millieXie/FusionMamba")

    def encode(self, x: torch.Tensor, embed: nn.Module):
        x, skips = embed(x), []
        for layer in self.layers:
            skips.append(x)
            x = layer(x)
        return x, skips

    def fuse(self, ir: torch.Tensor, vis: torch.Tensor) -> torch.Tensor:
        H, W = ir.shape[-2:]
        Hp, Wp = round_up(H, self.stride), round_up(W, self.stride)
        x1, x2 = pad_to(vis, Hp, Wp), pad_to(ir, Hp, Wp)  # the public training order: (vis, ir)
        e1, skips1 = self.encode(x1, self.patch_embed1)
        e2, skips2 = self.encode(x2, self.patch_embed2)
        first_used = 0 if self.compute_unused_fusion else 1
        fused = [None] * len(skips1)
        for i in range(first_used, len(skips1)):
            fused[i] = self.Cross_block[i](skips1[i], skips2[i])
        z = e1 + e2
        for i, layer_up in enumerate(self.layers_up):
            z = layer_up(z if i == 0 else z + fused[-i])
        z = self.final_up.norm(depth_to_space(self.final_up.expand(z), 4)).permute(0, 3, 1, 2)
        out = self.final_conv(z) + 2 * (x1 + x2)
        return out[..., :H, :W]
