"""DIFF-MF (papers/001): difference-driven feature extraction, a channel-exchange module (cross-modal
SSD exchange + gated channel reweighting) and a multi-scale spatial-exchange module (VSS blocks over
channel-realigned pairs of maps), then a small convolutional decoder.

DIFF-MF has no public code (``ZifanYe-SEU/DIFF_MF`` holds a README and a figure). The paper fixes the
embedding width (32, its Table VII) and d_state (16); everything else below is the simplest reading
of its text, stated where it is chosen:

- Embedding: one 3x3 conv per modality (1 -> dim). Both branches of Algorithm 1 start from it.
- Feature extraction (Algorithm 1), ``extract_layers`` (default 2) layers: per-modality VSS blocks
  (weight-dependent branch); one shared 3x3 conv + SiLU and one shared VSS block applied to each
  modality (weight-shared branch); ``Diff = tanh|share_vi - share_ir|``; the infrared features are
  reweighted first, the visible ones with the new infrared ones (lines 5-6; the paper's Table III
  says this order matters).
- Channel exchange (eqs. 4-8): a VSS-style mixer per modality (LN, in_proj, depthwise conv + SiLU)
  whose tokens, read along the four SS2D routes, are projected per route to (dt, B, C); the two
  modalities are scanned by ``xscan.ssd_exchange`` (Mamba-2 SSD, heads of ``headdim`` channels, one
  head group per route, A/D/dt_bias shared by the modalities), so ``y_ir = SSM(x_ir, B_vi, C_vi)``
  and ``y_vi = SSM(x_vi, B_ir, C_ir)`` (eq. 6); the routes are merged back (CrossMerge), then a
  shared out_norm, ``* SiLU(z_m)``, shared out_proj. Eq. 7: ``F'' = (F' + F^e * alpha) * Linear(F')``
  with alpha, beta learnable per-channel vectors; eq. 8: ``omega = sigmoid(Linear(GAP([F_ir^e;
  F_ir'])))`` (B x C x 1 in the paper, so a global pooling and a sigmoid to keep it a mixing weight).
- Spatial exchange (eqs. 9-10), at three scales (full, 1/2, 1/4 by average pooling): three VSS
  blocks, one per realignment (column, row, concat, channel axis as the text indexes channels).
  docs/ops.md (interleave_ss2d) reading: the realignment is applied at the scan input — per-modality LN, in_proj
  and depthwise conv, then ``xscan.interleave_ss2d`` scans the realigned pair without building it,
  then out_norm, the gate (``z`` realigned the same way) and out_proj (2*d_inner -> dim) on the
  realigned layout. The three outputs are concatenated (3C) and projected to C (eq. 10's text);
  the scales are upsampled (bilinear) to full resolution and summed.
- Decoder: 3x3 conv + SiLU, 3x3 conv to one channel. ``fuse`` zero-pads H, W to multiples of 4.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from xscan import interleave_ss2d, realign, ssd_exchange
from xscan.layers import SSMCore
from xscan.routes import cross_route
from xscan.shapes import REALIGN_MODES

from .common import FusionNet, VSSBlock, depthwise_conv, pad_to, round_up, vmamba_init

K = 4  # SS2D routes


class DiffGuidedLayer(nn.Module):
    """One step of Algorithm 1, channels-last maps."""

    def __init__(self, dim: int, d_state: int, expand: float):
        super().__init__()
        self.vss_ir = VSSBlock(dim, d_state, expand)
        self.vss_vi = VSSBlock(dim, d_state, expand)
        self.conv_shared = nn.Conv2d(dim, dim, 3, padding=1)
        self.vss_shared = VSSBlock(dim, d_state, expand)

    def shared(self, x: torch.Tensor) -> torch.Tensor:
        return self.vss_shared(F.silu(self.conv_shared(x.permute(0, 3, 1, 2))).permute(0, 2, 3, 1))

    def forward(self, self_ir, self_vi, share_ir, share_vi):
        self_ir, self_vi = self.vss_ir(self_ir), self.vss_vi(self_vi)
        share_ir, share_vi = self.shared(share_ir), self.shared(share_vi)
        diff = torch.tanh((share_vi - share_ir).abs())
        self_ir = (1 - diff) * self_ir + diff * self_vi
        self_vi = (1 - diff) * self_vi + diff * self_ir
        return self_ir, self_vi, share_ir, share_vi


class SSDExchangeMixer(nn.Module):
    """Cross-modal SSD exchange over the four SS2D routes (see the module docstring), channels-last
    (Bt, H, W, dim) x2 -> (F'_ir, F'_vi)."""

    def __init__(self, dim: int, d_state: int = 16, expand: float = 2.0, headdim: int = 16,
                 dt_min: float = 0.001, dt_max: float = 0.1):
        super().__init__()
        d_inner = int(expand * dim)
        if d_inner % headdim:
            raise ValueError(f"SSDExchangeMixer: d_inner={d_inner} must be a multiple of headdim={headdim}")
        self.d_inner, self.d_state, self.headdim, self.nheads = d_inner, d_state, headdim, d_inner // headdim
        self.in_proj_ir = nn.Linear(dim, 2 * d_inner, bias=False)
        self.in_proj_vi = nn.Linear(dim, 2 * d_inner, bias=False)
        self.conv_ir = depthwise_conv(d_inner)
        self.conv_vi = depthwise_conv(d_inner)
        bound = d_inner ** -0.5
        # per route: dt for each head, then B and C
        self.x_proj_weight = nn.Parameter(torch.empty(K, self.nheads + 2 * d_state, d_inner).uniform_(-bound, bound))
        heads = K * self.nheads  # Mamba-2 init: A in [-16, -1], softplus(dt_bias) in [dt_min, dt_max]
        self.A_log = nn.Parameter(torch.empty(heads).uniform_(1, 16).log())
        dt = torch.exp(torch.rand(heads) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
        self.D = nn.Parameter(torch.ones(heads))
        self.out_norm = nn.LayerNorm(d_inner)
        self.out_proj = nn.Linear(d_inner, dim, bias=False)

    def route_tokens(self, u: torch.Tensor, routes: torch.Tensor):
        """u (Bt, d_inner, H, W) -> ssd_exchange's x (Bt, L, K*nh, P), dt (Bt, L, K*nh), B, C (Bt, L, K, N),
        route k's tokens in route-k order in head group k."""
        Bt, L = u.shape[0], routes.shape[1]
        flat = u.flatten(2)
        proj = torch.einsum("bdl,kcd->bkcl", flat, self.x_proj_weight)
        proj = torch.gather(proj, 3, routes[None, :, None, :].expand(Bt, K, proj.shape[2], L))
        dt, B, C = torch.split(proj, [self.nheads, self.d_state, self.d_state], dim=2)
        x = flat[:, :, routes].view(Bt, self.nheads, self.headdim, K, L).permute(0, 4, 3, 1, 2)
        return (x.reshape(Bt, L, K * self.nheads, self.headdim), dt.permute(0, 3, 1, 2).reshape(Bt, L, -1),
                B.permute(0, 3, 1, 2), C.permute(0, 3, 1, 2))

    def merge(self, y: torch.Tensor, routes: torch.Tensor, shape) -> torch.Tensor:
        """(Bt, L, K*nh, P) in route order -> (Bt, H, W, d_inner), the routes summed per token."""
        Bt, L = y.shape[:2]
        y = y.view(Bt, L, K, self.d_inner).permute(0, 2, 1, 3)  # (Bt, K, L, d_inner)
        out = y.new_zeros(Bt, L, self.d_inner)
        for k in range(K):
            out = out.index_add(1, routes[k], y[:, k])
        return out.view(Bt, *shape, self.d_inner)

    def forward(self, x_ir: torch.Tensor, x_vi: torch.Tensor):
        H, W = x_ir.shape[1:3]
        routes = torch.stack([cross_route(k, H, W, x_ir.device) for k in range(K)])
        u_ir, z_ir = self.in_proj_ir(x_ir).chunk(2, dim=-1)
        u_vi, z_vi = self.in_proj_vi(x_vi).chunk(2, dim=-1)
        t_ir = self.route_tokens(F.silu(self.conv_ir(u_ir.permute(0, 3, 1, 2))), routes)
        t_vi = self.route_tokens(F.silu(self.conv_vi(u_vi.permute(0, 3, 1, 2))), routes)
        y_ir, y_vi = ssd_exchange(t_ir[0], t_vi[0], t_ir[1], t_vi[1], -torch.exp(self.A_log.float()),
                                  t_ir[2], t_vi[2], t_ir[3], t_vi[3], self.D.float(), self.dt_bias.float(), True)
        return (self.out_proj(self.out_norm(self.merge(y_ir, routes, (H, W))) * F.silu(z_ir)),
                self.out_proj(self.out_norm(self.merge(y_vi, routes, (H, W))) * F.silu(z_vi)))


class ChannelExchange(nn.Module):
    """SSD exchange (eqs. 4-6) then the gated channel reweighting (eqs. 7-8), channels-last."""

    def __init__(self, dim: int, d_state: int = 16, expand: float = 2.0, headdim: int = 16):
        super().__init__()
        self.ln_ir = nn.LayerNorm(dim)
        self.ln_vi = nn.LayerNorm(dim)
        self.exchange = SSDExchangeMixer(dim, d_state, expand, headdim)
        self.alpha = nn.Parameter(torch.ones(dim))
        self.beta = nn.Parameter(torch.ones(dim))
        self.proj_ir = nn.Linear(dim, dim)
        self.proj_vi = nn.Linear(dim, dim)
        self.gate = nn.Linear(2 * dim, dim)

    def forward(self, f_ir: torch.Tensor, f_vi: torch.Tensor):
        e_ir, e_vi = self.exchange(self.ln_ir(f_ir), self.ln_vi(f_vi))
        r_ir = (e_ir + f_ir * self.alpha) * self.proj_ir(e_ir)
        r_vi = (e_vi + f_vi * self.beta) * self.proj_vi(e_vi)
        w = torch.sigmoid(self.gate(torch.cat([f_ir, e_ir], dim=-1).mean((1, 2), keepdim=True)))
        return (1 - w) * r_ir + w * r_vi, (1 - w) * r_vi + w * r_ir


class RealignedVSS(SSMCore):
    """A VSS block over ``realign(M_ir, M_vi, mode)`` (channel axis), reading the two maps where they
    lie: per-modality LN, in_proj and depthwise conv; the token projection of a realigned token is
    the sum of each modality's part of ``x_proj`` (its columns at that modality's realigned
    channels); ``xscan.interleave_ss2d``; out_norm, gate and out_proj on the realigned layout.
    Channels-last (Bt, H, W, dim) x2 -> (Bt, H, W, dim)."""

    def __init__(self, dim: int, mode: str, d_state: int = 16, expand: float = 2.0):
        if mode not in REALIGN_MODES:
            raise ValueError(f"RealignedVSS: mode must be one of {REALIGN_MODES}, got {mode!r}")
        d_inner = int(expand * dim)
        super().__init__(2 * d_inner, d_state, "auto", d_model=2 * dim)
        self.mode = mode
        self.ln_ir = nn.LayerNorm(dim)
        self.ln_vi = nn.LayerNorm(dim)
        self.in_proj_ir = nn.Linear(dim, 2 * d_inner, bias=False)
        self.in_proj_vi = nn.Linear(dim, 2 * d_inner, bias=False)
        self.conv_ir = depthwise_conv(d_inner)
        self.conv_vi = depthwise_conv(d_inner)
        self.out_norm = nn.LayerNorm(2 * d_inner)
        self.out_proj = nn.Linear(2 * d_inner, dim, bias=False)

    def split_weight(self, weight: torch.Tensor):
        """x_proj columns acting on the first and on the second modality's channels of the realigned map."""
        if self.mode == "column":
            return weight[..., 0::2], weight[..., 1::2]
        return weight.chunk(2, dim=-1)

    def forward(self, m_ir: torch.Tensor, m_vi: torch.Tensor) -> torch.Tensor:
        u_ir, z_ir = self.in_proj_ir(self.ln_ir(m_ir)).chunk(2, dim=-1)
        u_vi, z_vi = self.in_proj_vi(self.ln_vi(m_vi)).chunk(2, dim=-1)
        u_ir = F.silu(self.conv_ir(u_ir.permute(0, 3, 1, 2)))
        u_vi = F.silu(self.conv_vi(u_vi.permute(0, 3, 1, 2)))
        w_ir, w_vi = self.split_weight(self.x_proj_weight)
        x_dbl = torch.einsum("bdl,kcd->bkcl", u_ir.flatten(2), w_ir) + \
            torch.einsum("bdl,kcd->bkcl", u_vi.flatten(2), w_vi)
        dt, B, C = self.tokens(x_dbl)
        A, D, delta_bias = self.scan_params()
        y = interleave_ss2d(u_ir, u_vi, dt, B, C, A, D, delta_bias, True, mode=self.mode, axis="channel")
        z = realign(z_ir.permute(0, 3, 1, 2), z_vi.permute(0, 3, 1, 2), self.mode)
        return self.out_proj(self.out_norm(y.permute(0, 2, 3, 1)) * F.silu(z.permute(0, 2, 3, 1)))


class ScaleExchange(nn.Module):
    """The three realigned VSS blocks of one scale, concatenated (3C) and projected to C."""

    def __init__(self, dim: int, d_state: int = 16, expand: float = 2.0):
        super().__init__()
        self.blocks = nn.ModuleList(RealignedVSS(dim, mode, d_state, expand) for mode in REALIGN_MODES)
        self.proj = nn.Linear(3 * dim, dim)

    def forward(self, m_ir: torch.Tensor, m_vi: torch.Tensor) -> torch.Tensor:
        return self.proj(torch.cat([block(m_ir, m_vi) for block in self.blocks], dim=-1))


class DIFFMF(FusionNet):
    """DIFF-MF (see the module docstring for every reading): width 32, d_state 16, expand 2."""

    def __init__(self, dim=32, d_state=16, expand=2.0, extract_layers=2, scales=3, headdim=16):
        super().__init__()
        self.scales = scales
        self.embed_ir = nn.Conv2d(1, dim, 3, padding=1)
        self.embed_vi = nn.Conv2d(1, dim, 3, padding=1)
        self.extract = nn.ModuleList(DiffGuidedLayer(dim, d_state, expand) for _ in range(extract_layers))
        self.channel_exchange = ChannelExchange(dim, d_state, expand, headdim)
        self.spatial_exchange = nn.ModuleList(ScaleExchange(dim, d_state, expand) for _ in range(scales))
        self.decoder = nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1), nn.SiLU(), nn.Conv2d(dim, 1, 3, padding=1))
        vmamba_init(self)

    def fuse(self, ir: torch.Tensor, vis: torch.Tensor) -> torch.Tensor:
        H, W = ir.shape[-2:]
        step = 2 ** (self.scales - 1)
        Hp, Wp = round_up(H, step), round_up(W, step)
        f_ir = self.embed_ir(pad_to(ir, Hp, Wp)).permute(0, 2, 3, 1)
        f_vi = self.embed_vi(pad_to(vis, Hp, Wp)).permute(0, 2, 3, 1)
        self_ir, self_vi, share_ir, share_vi = f_ir, f_vi, f_ir, f_vi
        for layer in self.extract:
            self_ir, self_vi, share_ir, share_vi = layer(self_ir, self_vi, share_ir, share_vi)
        c_ir, c_vi = self.channel_exchange(self_ir, self_vi)
        c_ir, c_vi = c_ir.permute(0, 3, 1, 2), c_vi.permute(0, 3, 1, 2)
        fused = 0
        for s, scale in enumerate(self.spatial_exchange):
            m_ir, m_vi = (c_ir, c_vi) if s == 0 else (F.avg_pool2d(c_ir, 2 ** s), F.avg_pool2d(c_vi, 2 ** s))
            f = scale(m_ir.permute(0, 2, 3, 1), m_vi.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
            if s:
                f = F.interpolate(f, size=(Hp, Wp), mode="bilinear", align_corners=False)
            fused = fused + f
        return self.decoder(fused)[..., :H, :W]
