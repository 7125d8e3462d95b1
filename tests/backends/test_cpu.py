"""What is particular to the C++/OpenMP CPU backend, against the reference: its channel blocks and
forward tiles, determinism without torch's deterministic mode, random shapes (the cases every
backend shares: tests/test_parity.py)."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import xscan
from xscan.testing import MAP_CASES, OPS, assert_matches_reference, make_inputs, run_both

pytestmark = pytest.mark.skipif(xscan.backends()["cpu"] is not True, reason=f"cpu backend: {xscan.backends()['cpu']}")



def test_cpu_is_the_default_for_cpu_tensors():
    for op in OPS:
        assert xscan.selected_backend(op, "cpu") == "cpu"


# ---------------------------------------------------------------------------------------------
# channel blocks and forward tiles: the engine's forward runs 16 or 8 channels side by side in
# unrolled loops (other widths in a generic loop) and loads 256 positions at a time (consecutive ones
# as vector runs); its backward takes blocks of up to 32 channels: every width over several tiles
# with a partial last one, on every route family.

@pytest.mark.parametrize("Dm", [8, 12, 16, 24])
@pytest.mark.parametrize("op", ["selective_scan", "ss2d", "es2d", "cross_ss2d", "interleave_ss2d"])
def test_channel_blocks_and_forward_tiles(op, Dm):
    assert_matches_reference(op, "cpu", tol=5e-5, Bt=1, Dm=Dm, N=3, L=300, H=13, W=23)


@pytest.mark.parametrize("G,Dm", [(2, 32), (4, 32), (1, 64)])
def test_channel_blocks_within_groups(G, Dm):
    assert_matches_reference("selective_scan", "cpu", tol=5e-5, Bt=2, Dm=Dm, N=3, L=270, G=G)


def test_channel_blocks_of_heads():
    assert_matches_reference("ssd_exchange", "cpu", tol=5e-5, Bt=1, L=300, nh=16, P=2, N=3, G=1)


@pytest.mark.parametrize("op", OPS)
def test_backward_is_deterministic(op):
    args, kwargs = make_inputs(op, Bt=2, Dm=4, N=3, L=90, H=5, W=5, G=2, nh=4, P=2)
    first = run_both(op, args, kwargs, "cpu", lambda t: t)[1][1]
    second = run_both(op, args, kwargs, "cpu", lambda t: t)[1][1]
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@given(case=st.sampled_from(MAP_CASES + [("selective_scan", None)]), Bt=st.integers(1, 2), Dm=st.integers(1, 4),
       N=st.integers(1, 9), H=st.integers(1, 6), W=st.integers(1, 6), L=st.integers(1, 80),
       G=st.sampled_from([None, 1]), softplus=st.booleans(), seed=st.integers(0, 2**16))
def test_random_shapes(case, Bt, Dm, N, H, W, L, G, softplus, seed):
    op, route = case
    assert_matches_reference(op, "cpu", tol=5e-5, Bt=Bt, Dm=Dm, N=N, H=H, W=W, L=L, G=G, softplus=softplus, seed=seed,
                             route=route)
