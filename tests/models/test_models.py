"""The four fusion networks: parameter counts against the public code's (tests/models/data/, read off the public code), shapes at odd
sizes and colour inputs, forward/backward equality between the reference backend and every fused
backend, and the readings that must not change the result (unused-fusion skip, realigned projection).

The reference backend loops over time in Python: the parity cases use small images (and, for the
two networks whose defaults are large, reduced widths) so the module runs in well under a minute."""
from __future__ import annotations

import re

import pytest
import torch

import xscan
from xscan import _registry
from xscan.models import DIFFMF, ISFM, FusionMamba, S4Fusion
from xscan.models.common import rgb_to_ycbcr, ycbcr_to_rgb
from xscan.models.diffmf import RealignedVSS


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: threading only adds overhead (and the machine is shared)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def n_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---- parameter counts: numbers counted on the public code (tests/models/data/, read off the public code), not on this code ----

def test_s4fusion_parameter_count_matches_public_code():
    net = S4Fusion()
    assert n_params(net) == 3_562_981
    assert n_params(net.layers_x) == n_params(net.layers_y) == 502_848
    assert n_params(net.fusion_layers) == 2_044_224
    assert n_params(net.layers_up) == 501_984
    assert n_params(net.patch_embed_x) == n_params(net.patch_embed_y) == 912
    assert n_params(net.final_up) == 9_240
    assert n_params(net.final_conv) == 13


def test_isfm_parameter_count_matches_public_code_and_paper():
    net = ISFM()
    assert n_params(net) == 9_147_905
    assert abs(n_params(net) - 9.148e6) / 9.148e6 < 0.02
    mse = [net.conv1_before, net.conv2_before, net.BMM_layers1, net.BMM_layers2]
    assert sum(n_params(m) for m in mse) == 975_104
    assert n_params(net.MFF_layers) == 4_418_560
    assert n_params(net.ISF_layers) == 3_163_520
    assert n_params(net.conv_final_fuse) == 590_465
    assert n_params(net.norm) == 256


def test_fusionmamba_encoder_is_shared_and_scans_are_atrous():
    net = FusionMamba(dims=(8, 16), depths=(1, 1), depths_decoder=(1, 1))
    assert not hasattr(net, "layers_x") and len(net.layers) == 2  # one encoder for both modalities
    routes = {m.route for m in net.modules() if isinstance(m, xscan.SS2D)}
    assert routes == {"atrous"}
    # public CMFM: d_inner = 2 * dim, d_state 16, dt_rank = ceil(dim / 16)
    mixer = net.Cross_block[1].self_attention_cross
    assert (mixer.d_inner, mixer.d_state, mixer.dt_rank) == (32, 16, 1)


def test_default_hyperparameters():
    s4 = S4Fusion()
    vss = s4.layers_x[0].blocks[0].self_attention
    fusion = s4.fusion_layers[0].layers[0]
    assert (vss.d_inner, vss.d_state) == (72, 12) and (fusion.d_inner, fusion.d_state, fusion.dt_rank) == (72, 18, 3)
    isfm = ISFM()
    core = isfm.ISF_layers[0][0].FGS
    assert (core.d_inner, core.d_state, core.dt_rank) == (256, 16, 8)


# ---- shapes ----

@pytest.mark.parametrize("make", [S4Fusion, DIFFMF, ISFM, FusionMamba], ids=lambda m: m.__name__)
def test_default_models_keep_odd_input_size(make):
    torch.manual_seed(0)
    net = make().eval()
    ir, vis = torch.rand(1, 1, 37, 45), torch.rand(1, 3, 37, 45)
    with torch.no_grad():
        grey = net(ir, vis[:, :1])
        colour = net(ir, vis)
    assert grey.shape == (1, 1, 37, 45) and torch.isfinite(grey).all()
    assert colour.shape == (1, 3, 37, 45) and 0 <= colour.min() and colour.max() <= 1


def test_colour_path_fuses_luminance_and_keeps_chrominance():
    torch.manual_seed(0)
    net = S4Fusion(dims=(8, 16, 32)).eval()
    ir, vis = torch.rand(2, 1, 20, 23), torch.rand(2, 3, 20, 23) * 0.5 + 0.25
    with torch.no_grad():
        rgb = net(ir, vis)
        Y, Cb, Cr = rgb_to_ycbcr(vis)
        expected = ycbcr_to_rgb(net(ir, Y).clamp(0, 1), Cb, Cr)
    torch.testing.assert_close(rgb, expected)
    back = ycbcr_to_rgb(*rgb_to_ycbcr(vis))
    torch.testing.assert_close(back, vis, atol=2e-3, rtol=0)  # the papers' 3-decimal inverse


@pytest.mark.parametrize("bad, match", [
    ((torch.rand(1, 2, 8, 8), torch.rand(1, 1, 8, 8)), "ir must have 1 channel"),
    ((torch.rand(1, 1, 8, 8), torch.rand(1, 2, 8, 8)), "vis must have 1 or 3 channels"),
    ((torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 9)), "same batch size, height and width"),
    ((torch.rand(1, 8, 8), torch.rand(1, 1, 8, 8)), "ir must be a floating"),
])
def test_bad_inputs_raise_clear_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        DIFFMF(dim=8, extract_layers=1, headdim=4)(*bad)


# ---- readings that must not change the numbers ----

def test_skipping_unused_fusion_gives_the_same_output():
    torch.manual_seed(0)
    s4 = S4Fusion(dims=(8, 16, 32)).eval()
    fm = FusionMamba(dims=(8, 16), depths=(1, 1), depths_decoder=(1, 1)).eval()
    ir, vis = torch.rand(1, 1, 19, 17), torch.rand(1, 1, 19, 17)
    with torch.no_grad():
        for net in (s4, fm):
            full = net(ir, vis)
            net.compute_unused_fusion = False
            torch.testing.assert_close(net(ir, vis), full, rtol=0, atol=0)


@pytest.mark.parametrize("mode", ["column", "row", "concat"])
def test_realigned_block_equals_the_block_on_the_materialised_realignment(mode):
    """The split x_proj and xscan.interleave_ss2d equal an SS2D block on the realigned map."""
    torch.manual_seed(0)
    block = RealignedVSS(4, mode, d_state=4).double()
    m_ir, m_vi = torch.randn(1, 5, 6, 4, dtype=torch.float64), torch.randn(1, 5, 6, 4, dtype=torch.float64)
    out = block(m_ir, m_vi)

    def part(ln, proj, conv, m):
        u, z = proj(ln(m)).chunk(2, dim=-1)
        return torch.nn.functional.silu(conv(u.permute(0, 3, 1, 2))), z.permute(0, 3, 1, 2)
    u_ir, z_ir = part(block.ln_ir, block.in_proj_ir, block.conv_ir, m_ir)
    u_vi, z_vi = part(block.ln_vi, block.in_proj_vi, block.conv_vi, m_vi)
    u, z = xscan.realign(u_ir, u_vi, mode), xscan.realign(z_ir, z_vi, mode)
    A, D, delta_bias = block.scan_params()
    y = xscan.ss2d(u, *block.project(u.flatten(2), block.x_proj_weight), A.double(), D.double(),
                   delta_bias.double())
    expected = block.out_proj(block.out_norm(y.permute(0, 2, 3, 1)) * torch.nn.functional.silu(z.permute(0, 2, 3, 1)))
    torch.testing.assert_close(out, expected)


# ---- reference vs fused backends ----

SMALL = {  # (constructor, image size): every scan kind each network uses, small enough for the reference
    "S4Fusion": (lambda: S4Fusion(), (24, 24)),
    "DIFFMF": (lambda: DIFFMF(), (16, 16)),
    "ISFM": (lambda: ISFM(dim=32, depths=(1, 1)), (12, 12)),
    "FusionMamba": (lambda: FusionMamba(dims=(16, 32), depths=(1, 2), depths_decoder=(2, 1)), (32, 32)),
}
FUSED = ("cpu", "triton", "cuda")


def device_for(backend: str):
    """The device this backend runs the models' ops on here, or the reason it cannot."""
    status = xscan.backends()[backend]
    if status is not True:
        return None, f"backend {backend!r} unavailable: {status}"
    devices = _registry.backend(backend).devices
    if backend == "triton" and not torch.cuda.is_available():
        # Triton's interpreter takes minutes per network step even at 8x8 (measured: FusionMamba
        # 160 s): the kernels are checked op by op under it in tests/backends/test_triton.py.
        return None, "whole networks on triton need a CUDA device (the interpreter is too slow)"
    if "cpu" in devices or "*" in devices:
        return torch.device("cpu"), None
    if "cuda" in devices and torch.cuda.is_available():
        return torch.device("cuda"), None
    return None, f"backend {backend!r} runs on {devices}, not available here"


def run_step(net, ir, vis, backend):
    """One training step's forward and parameter gradients on ``backend`` (same DropPath masks)."""
    net.zero_grad(set_to_none=True)
    torch.manual_seed(1)
    with xscan.use_backend(backend):
        out = net(ir, vis)
        (out.square().mean() + out.mean()).backward()
    return out.detach(), {n: p.grad.detach().clone() for n, p in net.named_parameters() if p.grad is not None}


def rel_err(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("model", list(SMALL))
def test_fused_backend_matches_reference(model, backend):
    device, reason = device_for(backend)
    if device is None:
        pytest.skip(reason)
    make, (H, W) = SMALL[model]
    torch.manual_seed(0)
    net = make().to(device).train()
    ir, vis = torch.rand(1, 1, H, W, device=device), torch.rand(1, 1, H, W, device=device)
    out_ref, grads_ref = run_step(net, ir, vis, "reference")
    out, grads = run_step(net, ir, vis, backend)
    assert rel_err(out, out_ref) < 1e-4
    assert grads.keys() == grads_ref.keys() and len(grads) > 0
    worst = max(grads, key=lambda n: rel_err(grads[n], grads_ref[n]))
    assert rel_err(grads[worst], grads_ref[worst]) < 1e-3, worst


@pytest.mark.parametrize("model", list(SMALL))
def test_reference_training_step_reaches_every_used_parameter(model):
    make, (H, W) = SMALL[model]
    torch.manual_seed(0)
    net = make().train()
    ir, vis = torch.rand(1, 1, H, W), torch.rand(1, 1, H, W)
    _, grads = run_step(net, ir, vis, "reference")
    # built but unused by the public forward passes (finest-scale fusion, final_up.norm, lastconv, norm)
    unused = {"S4Fusion": r"fusion_layers\.0\.|final_up\.norm\.", "FusionMamba": r"Cross_block\.0\.|.*\.lastconv\.",
              "ISFM": r"norm\.", "DIFFMF": r"(?!)"}[model]
    for name, _ in net.named_parameters():
        expect = re.match(unused, name) is None
        assert (name in grads) == expect, name
        if expect:
            assert torch.isfinite(grads[name]).all(), name


# ---- throughput helper (timing values are not asserted, only that it runs and reports) ----

def test_throughput_runs_inference_and_training_steps():
    from xscan.models.throughput import build, model_rows, throughput
    net = S4Fusion(dims=(8, 16, 32))
    for train in (False, True):
        assert throughput("s4fusion", "reference", "cpu", 16, train=train, iters=1, warmup=0, model=net) > 0
    with pytest.raises(ValueError, match="model_name must be one of"):
        build("NoSuchNet")
    rows = model_rows("cpu", ["cuda"], models=["S4Fusion"], size=16, warmup=0, modes=("infer",))
    assert rows[0]["images_per_s"] is None and "cuda" in rows[0]["note"]


# ---- every image size the networks take, and the ones they refuse ----

SMALL_NETS = {
    "S4Fusion": lambda: S4Fusion(dims=(8, 16, 32)),
    "DIFFMF": lambda: DIFFMF(dim=8, extract_layers=1, headdim=4),
    "FusionMamba": lambda: FusionMamba(dims=(8, 16), depths=(1, 1), depths_decoder=(1, 1)),
    "ISFM": lambda: ISFM(dim=16, depths=(1, 1)),
}


@pytest.mark.parametrize("H,W", [(1, 1), (1, 5), (5, 1), (2, 2), (2, 3), (3, 3)])
@pytest.mark.parametrize("model", list(SMALL_NETS))
def test_tiny_images(model, H, W):
    torch.manual_seed(0)
    net = SMALL_NETS[model]().eval()
    ir, vis = torch.rand(1, 1, H, W), torch.rand(1, 1, H, W)
    if model == "ISFM" and min(H, W) < 2:
        with pytest.raises(ValueError, match=r"ISFM: images must be at least 2 x 2"):
            net(ir, vis)
        return
    with torch.no_grad():
        out = net(ir, vis)
    assert out.shape == (1, 1, H, W) and torch.isfinite(out).all()


def test_layers_name_the_input_with_the_wrong_channel_count():
    with pytest.raises(ValueError, match=r"SS2D: x must have shape \(Bt, d_inner=6, H, W\), got \(1, 5, 3, 3\)"):
        xscan.SS2D(6, d_state=3)(torch.randn(1, 5, 3, 3))
    core = xscan.cross_ss2d.CrossSS2D(d_inner=6, d_state=3)
    with pytest.raises(ValueError, match=r"CrossSS2D: x1 must have shape \(Bt, d_inner=6, H, W\), got \(1, 5, 3, 3\)"):
        core(torch.randn(1, 6, 3, 3), torch.randn(1, 5, 3, 3))
    with pytest.raises(ValueError, match=r"CrossSS2D: x0 \(1, 6, 3, 3\) and x1 \(1, 6, 3, 4\) must have the same shape"):
        core(torch.randn(1, 6, 3, 3), torch.randn(1, 6, 3, 4))
    with pytest.raises(ValueError, match=r"SS2D: x must have shape"):
        xscan.SS2D(6, d_state=3)(torch.randn(6, 3, 3))
