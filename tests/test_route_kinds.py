"""The route kinds' table (xscan.spec.ROUTE_KINDS) against the extensions' route policies
(csrc/include/xscan/routes.h, exported as route_traits), and what the table lets callers name."""
import dataclasses

import pytest

from xscan import spec
from xscan.ops.ss2d import ROUTES as SS2D_ROUTES
from xscan.routes import MAP_ROUTES
from xscan.spec import ROUTE_KINDS, Route, Source
from xscan.testing import make_inputs, route_cases, spec_of

C = pytest.importorskip("xscan._C")
# every size 1, sizes off by one around small even and odd ones
GEOMETRIES = {1: [(1,), (2,), (7,), (8,)], 2: [(1, 1), (1, 2), (2, 1), (3, 4), (4, 3), (5, 5)]}


@pytest.fixture(params=["cpu", "cuda-emulated"])
def extension(request):
    """The CPU extension and the CUDA one (its host emulation here; the real one where built)."""
    if request.param == "cpu":
        return C
    return request.getfixturevalue("emulator")


def test_every_route_kind_has_a_row():
    assert set(ROUTE_KINDS) == set(Route)
    assert all(kind.route == route for route, kind in ROUTE_KINDS.items())


def test_extensions_say_what_the_table_says(extension):
    spec.check_codes(extension, "extension")  # raises ImportError on any disagreement


@pytest.mark.parametrize("route", list(Route), ids=lambda r: r.name)
def test_policy_sizes_match_the_table_at_every_edge(extension, route):
    kind = ROUTE_KINDS[route]
    for g in GEOMETRIES[len(kind.sizes)]:
        got = extension.route_traits(int(route), int(Source.TOKEN), list(g))
        assert (got["length"], got["tokens"], got["routes"]) == (kind.length(*g), kind.tokens(*g), kind.routes(*g)), g


@pytest.mark.parametrize("key,value", [("token_runs", True), ("positions_per_token", 2), ("policy", "CrossRoutes"),
                                       ("length", lambda H, W: H * W + 1), ("routes", lambda H, W: 2)])
def test_a_table_that_disagrees_with_the_policy_is_refused(monkeypatch, key, value):
    kinds = dict(ROUTE_KINDS)
    kinds[Route.SNAKE] = dataclasses.replace(kinds[Route.SNAKE], **{key: value})
    monkeypatch.setattr(spec, "ROUTE_KINDS", kinds)
    with pytest.raises(ImportError, match=f"route kind SNAKE .*{key} is"):
        spec.check_codes(C, "xscan._C")


@pytest.mark.parametrize("route", list(Route), ids=lambda r: r.name)
def test_only_a_kind_with_a_realigned_policy_takes_a_realigning_source(route):
    kind = ROUTE_KINDS[route]
    realigned = [3, 4, 2, 2]  # a realignment's geometry: the realigned map, the input maps' channels and width
    if kind.realigned_policy:
        assert C.route_traits(int(route), int(Source.WIDTH_HALVES), realigned)["policy"] == kind.realigned_policy
        return
    with pytest.raises(ValueError, match="takes no realigning source"):
        kind.policy_for(Source.WIDTH_HALVES)
    with pytest.raises(ValueError, match="takes no realigning source"):
        C.route_traits(int(route), int(Source.WIDTH_HALVES), realigned)


def test_every_route_kind_is_reached_by_an_op():
    # the tests' route-kind axis (xscan.testing.route_cases) covers the whole table
    reached = {spec_of(op, *make_inputs(op, route=route)).route for op, route in route_cases()}
    assert reached == set(ROUTE_KINDS)


def test_an_extension_without_route_traits_is_refused():
    class OldBuild:  # the numbers right, no route_traits
        pass

    for enum_type, prefix in ((Route, "ROUTE_"), (Source, "SOURCE_")):
        for member in enum_type:
            setattr(OldBuild, prefix + member.name, member.value)
    with pytest.raises(ImportError, match="old build"):
        spec.check_codes(OldBuild, "xscan._C")


def test_an_unknown_route_kind_or_source_is_refused():
    with pytest.raises(ValueError, match="no route kind"):
        C.route_traits(len(Route), 0, [3, 4])
    with pytest.raises(ValueError, match="no route kind"):
        C.route_traits(0, len(Source), [3])
    with pytest.raises(ValueError, match="takes 2 sizes"):
        C.route_traits(int(Route.CROSS), 0, [3])


def test_ss2d_takes_every_named_kind_and_has_index_maths_for_those_in_its_layout():
    named = {kind.ss2d_name: route for route, kind in ROUTE_KINDS.items() if kind.ss2d_name}
    assert set(SS2D_ROUTES) == set(named)
    # every one but es2d's own layout is gathered by the reference with its positions
    assert {name: route for name, (route, _) in MAP_ROUTES.items()} == {
        name: route for name, route in named.items() if route != Route.ATROUS}
