"""Public checkpoints: ``from_public_state_dict`` on S4Fusion, FusionMamba and ISFM.

The public code is not in this repository: tests/models/data/ holds, per network, the key names and
shapes of the state dict its public training code saves (read off the public code by instantiating
it, commit recorded in each file) and the values of the constants it stores (ISFM's Haar filters).
A state dict of random values built from it must load, fill every parameter and buffer of the model
(each public tensor lands in exactly one place, nothing keeps its initial value), and anything else
must be refused with an error that names the problem. Also the structure fixes that loading needs:
FusionMamba's decoder stages and its public CMFM gate."""
from __future__ import annotations

import json
import os

import pytest
import torch
import torch.nn.functional as F

import xscan
from xscan.models import ISFM, FusionMamba, S4Fusion
from xscan.models.fusionmamba import CMFMMixer
from xscan.models.s4fusion import drop_path_rates

DATA = os.path.join(os.path.dirname(__file__), "data")
NETS = {"s4fusion": S4Fusion, "fusionmamba": FusionMamba, "isfm": ISFM}


def manifest(name):
    with open(os.path.join(DATA, f"{name}_public_state_dict.json")) as f:
        return json.load(f)


def random_public_state_dict(name, seed=0):
    """Random values in the public layout; the stored constants with their true values."""
    m = manifest(name)
    g = torch.Generator().manual_seed(seed)
    fixed = m.get("fixed", {})
    return {k: torch.tensor(fixed[k]) if k in fixed else torch.randn(shape, generator=g) for k, shape in m["state_dict"]}


@pytest.fixture(scope="module", params=list(NETS))
def loaded(request):
    name = request.param
    sd = random_public_state_dict(name)
    return name, sd, NETS[name].from_public_state_dict(sd)


def test_every_tensor_of_the_model_comes_from_the_checkpoint(loaded):
    name, sd, model = loaded
    fixed = set(manifest(name).get("fixed", {}))
    # random values: a tensor is identified by its contents
    sources = {}
    for k, v in sd.items():
        if k not in fixed:
            sources.setdefault((tuple(v.shape), tuple(v.flatten()[:8].tolist())), []).append(k)
    used = []
    for key, value in model.state_dict().items():
        found = sources.get((tuple(value.shape), tuple(value.flatten()[:8].tolist())))
        assert found, f"{name}: {key} did not come from the checkpoint (left at its initial value?)"
        source = found[0]
        assert torch.equal(value, sd[source]), key
        used.append(source)
    assert sorted(used) == sorted(k for k in sd if k not in fixed), f"{name}: public tensors not used exactly once"


def test_parameter_counts_match_the_public_code(loaded):
    name, _, model = loaded
    m = manifest(name)
    assert sum(p.numel() for p in model.parameters()) == m["trainable_parameters"]
    if name == "fusionmamba":
        # the public frozen LDC masks: buffers here, in the state dict but not among the parameters
        masks = [b for n, b in model.named_buffers() if n.endswith("base_mask")]
        assert sum(b.numel() for b in masks) == m["frozen_parameters"] == 60_880_896
        assert not any(n.endswith("base_mask") for n, _ in model.named_parameters())
    else:
        assert m["frozen_parameters"] == 0


def test_missing_unexpected_and_misshapen_keys_are_refused():
    sd = random_public_state_dict("fusionmamba")
    key = "layers.0.blocks.0.op.in_proj.weight"
    with pytest.raises(ValueError, match=rf"1 missing keys \['{key}'\], 0 unexpected keys \[\]; expected the state_dict "
                                         r"of millieXie/FusionMamba as its training code saves it"):
        FusionMamba.from_public_state_dict({k: v for k, v in sd.items() if k != key})
    with pytest.raises(ValueError, match=r"0 missing keys \[\], 1 unexpected keys \['extra.weight'\]"):
        FusionMamba.from_public_state_dict(dict(sd, **{"extra.weight": torch.zeros(1)}))
    bad = dict(sd, **{key: torch.zeros(3, 3)})
    with pytest.raises(ValueError, match=rf"{key} has shape \(3, 3\), this model's is \(384, 96\)"):
        FusionMamba.from_public_state_dict(bad)


def test_s4fusion_checkpoint_layouts():
    sd = random_public_state_dict("s4fusion")
    a = S4Fusion.from_public_state_dict(sd)
    b = S4Fusion.from_public_state_dict({"model": sd, "epoch": 3})  # the checkpoint dict test.py reads
    c = S4Fusion.from_public_state_dict({"module." + k: v for k, v in sd.items()})  # saved from DDP
    for x, y, z in zip(a.state_dict().values(), b.state_dict().values(), c.state_dict().values()):
        assert torch.equal(x, y) and torch.equal(x, z)
    with pytest.raises(ValueError, match=r"keys lack the prefix 'vmunet.'"):
        S4Fusion.from_public_state_dict({k[len("vmunet."):]: v for k, v in sd.items()})


def test_isfm_stored_haar_filters_must_be_haar():
    sd = random_public_state_dict("isfm")
    sd["MFF_layers.2.dwt.w_lh"] = -sd["MFF_layers.2.dwt.w_lh"]
    with pytest.raises(ValueError, match=r"MFF_layers.2.dwt.w_lh holds .* not the constant"):
        ISFM.from_public_state_dict(sd)


# ---- the structure the public checkpoints need ----

@pytest.mark.parametrize("depths,depths_decoder", [((1, 2, 3), (3, 1, 2)), ((2, 1, 1), (1, 1, 4))])
def test_decoder_stages_have_the_depths_they_name(depths, depths_decoder):
    fm = FusionMamba(dims=(8, 16, 32), depths=depths, depths_decoder=depths_decoder, drop_path_rate=0.3)
    s4 = S4Fusion(dims=(8, 16, 32), depths=depths, depths_decoder=depths_decoder, drop_path_rate=0.3)
    # the public rule: linspace(0, rate, sum(depths_decoder)) reversed as a whole, sliced by the depths
    flat = torch.linspace(0, 0.3, sum(depths_decoder)).tolist()[::-1]
    for net in (fm, s4):
        stages = [[b.drop_path.p for b in layer.blocks] for layer in net.layers_up]
        assert [len(s) for s in stages] == list(depths_decoder)
        assert [p for s in stages for p in s] == pytest.approx(flat)
    encoder = [[b.drop_path.p for b in layer.blocks] for layer in fm.layers]
    assert [len(s) for s in encoder] == list(depths)
    assert drop_path_rates(0.3, depths) == [list(s) for s in encoder]


def test_fusionmamba_public_decoder_is_2_9_2_2():
    net = FusionMamba()
    assert [len(layer.blocks) for layer in net.layers] == [2, 2, 9, 2]
    assert [len(layer.blocks) for layer in net.layers_up] == [2, 9, 2, 2]


def test_cmfm_gates():
    """public: y SiLU(z1) + y SiLU(SiLU(z1)), in_proj2's z half unused; paper: y SiLU(z1) + y SiLU(z2)."""
    torch.manual_seed(0)
    x1, x2 = torch.randn(1, 4, 4, 8), torch.randn(1, 4, 4, 8)
    public, paper = CMFMMixer(8, 4, gate="public"), CMFMMixer(8, 4, gate="paper")
    paper.load_state_dict(public.state_dict())
    with torch.no_grad():
        base_public, base_paper = public(x1, x2), paper(x1, x2)
        d_inner = public.d_inner
        for net in (public, paper):
            net.in_proj2.weight[d_inner:] += 1.0  # the z half of in_proj2
        assert torch.equal(public(x1, x2), base_public)
        assert not torch.allclose(paper(x1, x2), base_paper)
        # the public form written out from its parts
        for net in (public, paper):
            net.in_proj2.weight[d_inner:] -= 1.0
        u1, z1 = public.in_proj1(x1).chunk(2, dim=-1)
        u2, _ = public.in_proj2(x2).chunk(2, dim=-1)
        u1 = F.silu(public.conv2d(u1.permute(0, 3, 1, 2)))
        u2 = F.silu(public.conv2d(u2.permute(0, 3, 1, 2)))
        y = public.out_norm(xscan.SS2D.forward(public, u1 * u2 + u1 + u2).permute(0, 2, 3, 1))  # the ES2D core
        expected = public.out_proj(y * F.silu(z1) + y * F.silu(F.silu(z1)))
        torch.testing.assert_close(public(x1, x2), expected)
    with pytest.raises(ValueError, match="gate must be one of"):
        CMFMMixer(8, 4, gate="eq7")
