"""benchmarks/per_element.py's reading of SASS control flow (the loops and their trip counts behind
benchmarks/gpu/'s work per element), on a hand-written kernel."""
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

import per_element  # noqa: E402

# A chunk loop (0x20-0x90) around a state loop (0x30-0x70) whose out-of-line block (0xd0-0xe0)
# returns into it; a shuffle's slow path for a diverged warp (BRA.DIV, 0xf0-0x100) that never runs;
# the trap loop after EXIT that is never reached.
KERNEL = """
/*0000*/ MOV R1, c[0x0][0x28] ;
/*0010*/ @P0 BRA 0xb0 ;
/*0020*/ LDG.E R2, desc[UR4][R4.64] ;
/*0030*/ MUFU.EX2 R3, R2 ;
/*0040*/ @P1 BRA 0xd0 ;
/*0050*/ BRA.DIV UR4, 0xf0 ;
/*0060*/ SHFL.UP PT, R5, R3, 0x1, RZ ;
/*0070*/ @P2 BRA 0x30 ;
/*0080*/ STG.E desc[UR4][R4.64], R3 ;
/*0090*/ @P3 BRA 0x20 ;
/*00a0*/ NOP ;
/*00b0*/ EXIT ;
/*00c0*/ BRA 0xc0 ;
/*00d0*/ STS [R6], R3 ;
/*00e0*/ BRA 0x50 ;
/*00f0*/ WARPSYNC.COLLECTIVE R7, 0x60 ;
/*0100*/ BRA 0x60 ;
"""


def code():
    lines = [line.split("*/", 1) for line in KERNEL.strip().splitlines()]
    return [(int(a.strip("/*"), 16), t.strip().rstrip(" ;")) for a, t in lines if not t.strip().startswith("NOP")]


def test_loops_and_trips():
    classes = per_element.loop_classes(code())
    # state loop: 0x30-0x70 and the out-of-line 0xd0, 0xe0; chunk loop besides: 0x20, 0x80, 0x90;
    # the rest once: 0x00, 0x10, 0xb0, 0xc0 and the slow path 0xf0, 0x100
    assert {k: n for k, n in classes.items() if n} == {(True, True, False): 7, (False, True, False): 3,
                                                       (False, False, False): 6}
    assert per_element.per_thread(classes, 16, 3) == 6 + 3 * (3 + 16 * 7)


# A chunk loop (0x10-0x90) around a state loop (0x20-0x80) holding two loops: a row loop that
# writes global memory (0x30-0x50, each thread's share of a row of positions) and one that does
# not (0x60-0x70, counted once per state).
ROW_KERNEL = """
/*0000*/ MOV R1, c[0x0][0x28] ;
/*0010*/ LDG.E R2, desc[UR4][R4.64] ;
/*0020*/ MUFU.EX2 R3, R2 ;
/*0030*/ LDS R5, [R6] ;
/*0040*/ STG.E desc[UR4][R4.64], R5 ;
/*0050*/ @P0 BRA 0x30 ;
/*0060*/ LDS R7, [R8] ;
/*0070*/ @P1 BRA 0x60 ;
/*0080*/ @P2 BRA 0x20 ;
/*0090*/ @P3 BRA 0x10 ;
/*00a0*/ EXIT ;
"""


def test_row_loops_in_the_state_loop():
    lines = [line.split("*/", 1) for line in ROW_KERNEL.strip().splitlines()]
    classes = per_element.loop_classes([(int(a.strip("/*"), 16), t.strip().rstrip(" ;")) for a, t in lines])
    assert {k: n for k, n in classes.items() if n} == {(False, False, False): 2, (False, True, False): 2,
                                                       (True, True, False): 4, (True, True, True): 3}
    # 16 states a chunk, 3 chunks, each state's row loop twice
    assert per_element.per_thread(classes, 16, 3, 2) == 2 + 3 * (2 + 16 * (4 + 2 * 3))


def test_mamba_kernel_choice():
    # selective_scan_fwd_cuda's choice of threads and items by seqlen, and the even-length flag
    assert per_element.mamba_kernel(3136, False, True, True) == (
        "Selective_Scan_fwd_kernel_traits<128, 16, 1, false, true, true, true, float, float>", 128, 16)
    assert per_element.mamba_kernel(256, True, False, True)[0] == (
        "Selective_Scan_bwd_kernel_traits<32, 8, true, true, true, true, false, float, float>")
    assert per_element.mangled_traits("T<128, 16, 1, false, true>") == "Li128ELi16ELi1ELb0ELb1E"


def test_token_runs_of_a_launch():
    # gpu_static's reading (benchmarks/gpu/elements.py) of csrc/cuda/scan_kernel.cuh's with_token_runs
    # for the probes: a policy with runs, a route length of whole runs of 8, B and C rows unit-stride on 16-byte boundaries
    import torch

    from gpu.elements import token_runs
    from xscan.ops.cross_ss2d import plan as pair_plan
    from xscan.ops.ss2d import plan
    from xscan.testing import make_inputs

    def spec(H, W, relaid=lambda t: t):
        (x, dt, B, C), p = make_inputs("ss2d", Bt=1, Dm=2, N=4, H=H, W=W)
        return plan(x, dt, relaid(B), relaid(C), p["A"], p["D"], p["delta_bias"], True, "cross", torch.float32)

    assert token_runs(spec(4, 6), "CrossRoutes")
    assert not token_runs(spec(4, 6), "SnakeRoutes")  # no route of it reads runs

    def pair_spec(H, W):  # cross_ss2d: two positions a token
        args, p = make_inputs("cross_ss2d", Bt=1, Dm=2, N=4, H=H, W=W)
        return pair_plan(*args, p["A"], p["D"], p["delta_bias"], True, torch.float32)

    assert token_runs(pair_spec(4, 6), "CrossPairRoutes")
    assert not token_runs(pair_spec(3, 5), "CrossPairRoutes")  # 30 positions
    assert not token_runs(spec(4, 6), "CrossPairRoutes")  # 24 tokens, 24 positions
    assert not token_runs(spec(5, 5), "CrossRoutes")  # 25 positions: not whole runs
    off_boundary = lambda t: torch.empty(t.numel() + 1)[1:].view(t.shape).copy_(t)  # noqa: E731
    assert not token_runs(spec(4, 6, off_boundary), "CrossRoutes")
    strided = lambda t: torch.empty(*t.shape, 2)[..., 0].copy_(t)  # noqa: E731
    assert not token_runs(spec(4, 6, strided), "CrossRoutes")


@pytest.mark.parametrize("op, H, W, routes, maps, positions", [  # maps: interleave_ss2d scans both maps' channels
    ("ss2d", 3, 5, 4, 1, 15), ("es2d", 4, 6, 4, 1, 6), ("cross_ss2d", 3, 5, 4, 1, 30), ("interleave_ss2d", 3, 5, 4, 2, 15)])
@pytest.mark.parametrize("options", [dict(), dict(D=False, delta_bias=False, softplus=False)])
def test_selective_scan_twin(op, H, W, routes, maps, positions, options):
    # the selective_scan an op's work per element is set beside: the same elements (Bt, routes x
    # channels, the route length, N), B and C one group per route, the op's D, delta_bias, softplus
    import torch

    import xscan
    from gpu.network import Planner, selective_scan_twin
    from xscan.testing import make_inputs

    Bt, Dm, N = 2, 3, 4
    args, kwargs = make_inputs(op, Bt=Bt, Dm=Dm, N=N, H=H, W=W, device="meta", **options)
    planner = Planner("test")
    with torch.no_grad(), planner:
        getattr(xscan, op)(*args, **kwargs)
    (call,) = planner.calls.values()
    twin = selective_scan_twin(call).spec
    assert twin.route.name == "LINE"
    assert (twin.batch, twin.routes, twin.channels, twin.length(), twin.dstate) == (Bt, 1, routes * maps * Dm, positions, N)
    assert twin.view("B").shape[2] == twin.view("C").shape[2] == routes
    assert twin.view("z") is None
    assert (twin.view("D") is None, twin.view("delta_bias") is None) == (not options.get("D", True),
                                                                         not options.get("delta_bias", True))
    assert twin.softplus == options.get("softplus", True)


def test_beside_selective_scan():
    from gpu.elements import beside_selective_scan

    class Call:  # what element_name reads
        def __init__(self, label):
            self.text = label
            self.spec = type("Spec", (), dict(batch=1))

        def label(self):
            return self.text

    figures = {"ss2d fwd@8x8 Dm=2 N=4 Bt=1": dict(xscan=30.0), "ss2d bwd@8x8 Dm=2 N=4 Bt=1": dict(xscan=60.0),
               "selective_scan fwd@L=64 Dm=8 N=4 Bt=1": dict(xscan=20.0),
               "selective_scan bwd@L=64 Dm=8 N=4 Bt=1": dict(xscan=80.0)}
    beside_selective_scan(figures, [Call("ss2d 8x8 Dm=2 N=4")], [Call("selective_scan L=64 Dm=8 N=4")])
    assert figures["ss2d fwd@8x8 Dm=2 N=4 Bt=1"] == dict(xscan=30.0, selective_scan=20.0, vs_selective_scan=1.5)
    assert figures["ss2d bwd@8x8 Dm=2 N=4 Bt=1"] == dict(xscan=60.0, selective_scan=80.0, vs_selective_scan=0.75)
