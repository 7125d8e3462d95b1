"""ISFM (papers/003): per-modality VSS stacks, then four pairs of a wavelet-domain fusion module (MFF) and
a frequency-guided spatial fusion module (ISF, with ``FG_SS2D``), all at full resolution.

Follows the public code ``Namn23/ISFM`` (``modeling/bulid_ISFM.py``, ``ISF.py``, ``MFF.py``,
``mamba_layer_base.py``) with the released config (``configs/train.yaml``: EMBED_DIM 128, DEPTHS
[1, 1, 1, 1], MLP_RATIO 2): d_inner 256, d_state 16, dt_rank 8, plain four-route SS2D everywhere
(``xscan.ss2d``). ``FG_SS2D`` shares one set of SSM parameters between the modalities and scans each
separately. Haar DWT/IDWT are stride-2 depthwise convolutions, channel layout [LL | LH | HL | HH].
The parameter count is the public 9,147,905, including the LayerNorm ``norm`` the public forward
never uses (kept so the state dict matches). Any H, W >= 2 works without padding: an odd size is
handled by the IDWT's bilinear resize back, as in the public code; the Haar DWT needs two rows and
two columns, so H = 1 or W = 1 is refused with a clear error (the public code fails inside conv2d).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from xscan import SS2D

from .common import DropPath, FusionNet, VSSMixer, depthwise_conv, load_public_state_dict, vmamba_init


def conv_silu(cin: int, cout: int, k: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2), nn.SiLU())


class HaarDWT(nn.Module):
    """One-level orthonormal Haar DWT per channel: (Bt, C, H, W) -> (Bt, 4C, H//2, W//2), [LL|LH|HL|HH].
    ``inverse`` maps (Bt, 4C, h, w) back to (Bt, C, 2h, 2w). The filters are pywt's ``haar``
    (decomposition filters reversed) as the public ``DWT_2D``/``IDWT_2D`` build them."""

    def __init__(self):
        super().__init__()
        # filter[i][j] = column-filter[i] * row-filter[j] with lo = (1, 1) / sqrt 2, hi = (1, -1) / sqrt 2:
        # LL, LH (vertical detail), HL, HH, every tap exactly +-1/2
        lo, hi = torch.tensor([1.0, 1.0]), torch.tensor([1.0, -1.0])
        filters = 0.5 * torch.stack([lo[:, None] * lo[None, :], hi[:, None] * lo[None, :],
                                     lo[:, None] * hi[None, :], hi[:, None] * hi[None, :]])
        self.register_buffer("filters", filters[:, None], persistent=False)  # (4, 1, 2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        Bt, C, H, W = x.shape
        y = F.conv2d(x.reshape(Bt * C, 1, H, W), self.filters.to(x.dtype), stride=2)
        return y.view(Bt, C, 4, *y.shape[-2:]).transpose(1, 2).reshape(Bt, 4 * C, *y.shape[-2:])

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        Bt, C4, h, w = x.shape
        C = C4 // 4
        x = x.view(Bt, 4, C, h, w).transpose(1, 2).reshape(Bt * C, 4, h, w)
        return F.conv_transpose2d(x, self.filters.to(x.dtype), stride=2).view(Bt, C, 2 * h, 2 * w)


class LowFrequencyFusionBlock(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.conv1 = conv_silu(2 * dim, dim)
        self.conv2 = conv_silu(dim, dim, 1)
        self.conv3 = conv_silu(dim, dim, 1)
        self.conv_before = conv_silu(dim, dim, 1)
        self.conv_after = conv_silu(dim, dim, 1)
        self.dw_conv_3 = depthwise_conv(dim, 3)
        self.dw_conv_5 = depthwise_conv(dim, 5)

    def forward(self, lf: torch.Tensor) -> torch.Tensor:
        lf = self.conv_before(lf)
        pooled = torch.cat([F.avg_pool2d(lf, 3, 1, 1), F.max_pool2d(lf, 3, 1, 1)], dim=1)
        attn = torch.sigmoid(self.conv1(pooled))
        multi_scale = self.conv2(F.silu(self.dw_conv_3(lf))) + self.conv3(F.silu(self.dw_conv_5(lf)))
        return self.conv_after(lf + multi_scale * attn)


class GuidedFilterHFBlock(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.conv_before = conv_silu(3 * dim, 3 * dim, 1)
        self.conv_after = conv_silu(3 * dim, 3 * dim, 1)
        self.conv2 = conv_silu(3 * dim, 3 * dim, 1)
        self.conv3 = conv_silu(3 * dim, 3 * dim, 1)

    def forward(self, hf: torch.Tensor) -> torch.Tensor:
        hf = self.conv_before(hf)
        hf3 = self.conv2(hf - F.avg_pool2d(hf, 3, 1, 1))
        hf5 = self.conv3(hf - F.avg_pool2d(hf, 5, 1, 2))
        return self.conv_after(hf + hf3 + hf5)


class MFF(nn.Module):
    """Frequency fusion (public ``FrequencyFusinoMoudle``), channels-first (Bt, C, H, W) maps.
    Averages both modalities' sub-bands of the deep and of the shallow features, fuses LL and the
    detail bands, inverts the DWT. Returns (fused map (Bt, C, H, W), fused LL, mean of the three
    fused detail bands), the last two at (H//2, W//2) for the ISF gate."""

    def __init__(self, dim: int):
        super().__init__()
        self.dwt = HaarDWT()
        self.conv2 = conv_silu(dim, dim)
        self.LFB = LowFrequencyFusionBlock(dim)
        self.GFHB = GuidedFilterHFBlock(dim)

    def band_mean(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (self.dwt(a) + self.dwt(b)) / 2

    def forward(self, vi, ir, vi_shallow, ir_shallow):
        C, (H, W) = vi.shape[1], vi.shape[-2:]
        bands = (self.band_mean(vi, ir) + self.band_mean(vi_shallow, ir_shallow)) / 2
        fused_lf, fused_hf = self.LFB(bands[:, :C]), self.GFHB(bands[:, C:])
        fused = self.dwt.inverse(torch.cat([fused_lf, fused_hf], dim=1))
        if fused.shape[-2:] != (H, W):
            fused = F.interpolate(fused, size=(H, W), mode="bilinear")
        return self.conv2(fused), fused_lf, fused_hf.view(fused_hf.shape[0], 3, C, *fused_hf.shape[-2:]).mean(1)


class FGSS2D(VSSMixer):
    """Frequency-guided SS2D (public ``FG_SS2D``), channels-last (Bt, H, W, d_model) x2 plus the MFF's
    (LF, HF) (Bt, C, h, w). Per-modality in_proj and depthwise conv, ONE set of SSM parameters
    scanning each modality separately, per-modality out_norm; the two gates come from
    ``in_proj_z([z1; z2])`` modulated by a global frequency vector. ``in_proj``/``conv2d`` of the base
    class are the first modality's (public ``in_proj_x``/``conv2d_x``)."""

    def __init__(self, d_model: int, d_state: int = 16, expand: float = 2.0):
        super().__init__(d_model, d_state, expand)
        d_inner = self.d_inner
        self.in_proj_x2 = nn.Linear(d_model, 2 * d_inner, bias=False)
        self.conv2d_x2 = depthwise_conv(d_inner)
        self.in_proj_z = nn.Linear(2 * d_inner, 2 * d_inner, bias=False)
        self.in_proj_g1 = nn.Linear(2 * d_inner, d_inner, bias=False)
        self.in_proj_g2 = nn.Linear(2 * d_inner, d_inner, bias=False)
        self.out_norm2 = nn.LayerNorm(d_inner)
        self.ln1 = nn.LayerNorm(d_inner)
        self.ln2 = nn.LayerNorm(d_inner)
        self.ln3 = nn.LayerNorm(2 * d_inner)
        self.proj = nn.Sequential(nn.Linear(2 * d_model, d_model // 4), nn.LayerNorm(d_model // 4),
                                  nn.Linear(d_model // 4, 2 * d_inner), nn.LayerNorm(2 * d_inner))

    def gates(self, z1, z2, lf, hf):
        guide = self.proj(torch.cat([lf, hf], dim=1).flatten(2).transpose(1, 2)).mean(1)  # (Bt, 2*d_inner)
        z = self.ln3(self.in_proj_z(torch.cat([z1, z2], dim=-1)))
        z = z + guide[:, None, None, :] * z
        return self.ln1(self.in_proj_g1(z)), self.ln2(self.in_proj_g2(z))

    def scan(self, u: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
        return SS2D.forward(self, F.silu(conv(u.permute(0, 3, 1, 2)))).permute(0, 2, 3, 1)

    def forward(self, x1, x2, lf, hf):
        u1, z1 = self.in_proj(x1).chunk(2, dim=-1)
        u2, z2 = self.in_proj_x2(x2).chunk(2, dim=-1)
        g1, g2 = self.gates(z1, z2, lf, hf)
        y1 = self.out_norm(self.scan(u1, self.conv2d))
        y2 = self.out_norm2(self.scan(u2, self.conv2d_x2))
        return self.out_proj(y1 * F.silu(g1) + y2 * F.silu(g2))



class FGM(nn.Module):
    """ISF block: ``x1 * s1 + LN2(x2) * s2 + DropPath(FG_SS2D(LN1(x1), LN2(x2), LF, HF))``."""

    def __init__(self, dim: int, d_state: int = 16, mlp_ratio: float = 2.0, drop_path: float = 0.0):
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim)
        self.FGS = FGSS2D(dim, d_state, mlp_ratio)
        self.drop_path = DropPath(drop_path)
        self.ln_2 = nn.LayerNorm(dim)
        self.skip_scale = nn.Parameter(torch.ones(dim))
        self.skip_scale_2 = nn.Parameter(torch.ones(dim))

    def forward(self, x1, x2, lf, hf):
        x2 = self.ln_2(x2)
        return x1 * self.skip_scale + x2 * self.skip_scale_2 + self.drop_path(self.FGS(self.ln_1(x1), x2, lf, hf))


class ISFMVSSBlock(nn.Module):
    """ISFM's VSS block: ``x * skip_scale + DropPath(SS2D(LN(x)))``, channels-last."""

    def __init__(self, dim: int, d_state: int = 16, mlp_ratio: float = 2.0, drop_path: float = 0.0):
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim)
        self.self_attention = VSSMixer(dim, d_state, mlp_ratio)
        self.drop_path = DropPath(drop_path)
        self.skip_scale = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * self.skip_scale + self.drop_path(self.self_attention(self.ln_1(x)))


# Public module names (Namn23/ISFM) -> this package's, applied in order.
PUBLIC_RENAMES = (
    (r"^(conv[12]_before)\.0\.", r"\1.0.0."), (r"^(conv[12]_before)\.2\.", r"\1.1.0."),  # flat Sequentials
    (r"^conv_final_fuse\.0\.", "conv_final_fuse.0.0."), (r"^conv_final_fuse\.2\.", "conv_final_fuse.1."),
    (r"^(BMM_layers[12]\.\d+)\.SPFusion_group\.blocks\.", r"\1."),
    (r"^(ISF_layers\.\d+)\.ISF\.blocks\.", r"\1."),
    (r"\.conv2d_x\.", ".conv2d."), (r"\.FGS\.in_proj_x\.", ".FGS.in_proj."), (r"\.FGS\.out_norm1\.", ".FGS.out_norm."),
)
_HAAR = {f"dwt.w_{band}": HaarDWT().filters[i:i + 1] for i, band in enumerate(("ll", "lh", "hl", "hh"))}
_HAAR["idwt.filters"] = HaarDWT().filters


def _public_haar(key: str):
    """The fixed Haar filters the public code stores (every MFF's, and an unused top-level pair)."""
    for suffix, value in _HAAR.items():
        if key == suffix or key.endswith("." + suffix):
            return value
    return None


class ISFM(FusionNet):
    """ISFM ``build_model`` with the released config (see the module docstring)."""

    @classmethod
    def from_public_state_dict(cls, state_dict: dict) -> ISFM:
        """A model in the released configuration with the weights of a ``Namn23/ISFM`` checkpoint
        (``model.pth``, as its ``train.py`` saves it): its module names mapped to this package's, its
        stored Haar filters checked against the fixed ones and dropped."""
        return load_public_state_dict(cls(), state_dict, "Namn23/ISFM", renames=PUBLIC_RENAMES, fixed=_public_haar)

    def __init__(self, dim=128, depths=(1, 1, 1, 1), mlp_ratio=2.0, d_state=16, num_feat=64, base_layers=2):
        super().__init__()
        self.conv1_before = nn.Sequential(conv_silu(1, dim), conv_silu(dim, dim))  # visible
        self.conv2_before = nn.Sequential(conv_silu(1, dim), conv_silu(dim, dim))  # infrared

        def base_group():
            return nn.Sequential(*[ISFMVSSBlock(dim, d_state, mlp_ratio) for _ in range(depths[0])])
        self.BMM_layers1 = nn.ModuleList(base_group() for _ in range(base_layers))
        self.BMM_layers2 = nn.ModuleList(base_group() for _ in range(base_layers))
        self.ISF_layers = nn.ModuleList(
            nn.ModuleList(FGM(dim, d_state, mlp_ratio) for _ in range(d)) for d in depths)
        self.MFF_layers = nn.ModuleList(MFF(dim) for _ in depths)
        self.norm = nn.LayerNorm(dim)  # unused, as in the public code
        self.conv_final_fuse = nn.Sequential(conv_silu(2 * len(depths) * dim, num_feat),
                                             nn.Conv2d(num_feat, 1, 3, padding=1))
        vmamba_init(self)

    def fuse(self, ir: torch.Tensor, vis: torch.Tensor) -> torch.Tensor:
        if min(ir.shape[-2:]) < 2:
            raise ValueError(f"ISFM: images must be at least 2 x 2 (its Haar DWT halves them), got "
                             f"{tuple(ir.shape[-2:])}")
        vi_shallow, ir_shallow = self.conv1_before(vis), self.conv2_before(ir)
        vi, ir_f = vi_shallow.permute(0, 2, 3, 1), ir_shallow.permute(0, 2, 3, 1)
        for group1, group2 in zip(self.BMM_layers1, self.BMM_layers2):
            vi, ir_f = group1(vi), group2(ir_f)
        vi_map, ir_map = vi.permute(0, 3, 1, 2), ir_f.permute(0, 3, 1, 2)
        spatial, frequency = [], []
        for isf_blocks, mff in zip(self.ISF_layers, self.MFF_layers):
            fre, lf, hf = mff(vi_map, ir_map, vi_shallow, ir_shallow)
            x = vi
            for block in isf_blocks:
                x = block(x, ir_f, lf, hf)
            spatial.append(x.permute(0, 3, 1, 2))
            frequency.append(fre)
        return self.conv_final_fuse(torch.cat(spatial + frequency, dim=1))
