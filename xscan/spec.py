"""What the kernels execute: one op call as a ``ScanSpec``, a set of routed selective scans.

Every op is independent scans over route positions: sequence (batch b, route k, channel d) visits
positions j of route k, and the route kind turns j into the token it reads (which modality, its
index in the per-token tensors, its pixel in u) and the pixel its output goes to. A ``ScanSpec``
names the route kind, where u is read from (``Source``), the sizes the routes need, and every
argument of the op in the engines' common layouts (``Role`` and ``View``: torch views, nothing is
copied). Each op builds its spec (``xscan/ops/<op>.py``, ``plan``); each kernel backend executes
specs; gradients go back to the op's arguments by name.

Engine layouts (per modality where the role is per modality):
    u, z: (Bt, Cu, Hu, Wu) pixel maps        dt: (Bt, K, Dm, T)       B, C: (Bt, K, G, N, T)
    A: (K, Dm, N)    D, delta_bias: (K, Dm)   y: (Bt, Dy, Hy, Wy)      last_state: (Bt, K, Dm, N)

``Route`` and ``Source`` are defined here once, and each route kind's properties in one table
(``ROUTE_KINDS``); the C++ engine and CUDA kernels (csrc/include/xscan/routes.h, the same numbers and
properties, checked when their extension loads) and the Triton kernels (which take these values)
evaluate the routes as index maths. ``xscan.routes`` holds the
same maths as torch index tensors for the reference. docs/ops.md walks through adding a route.
"""
from __future__ import annotations

import enum
import functools
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch


class Route(enum.IntEnum):
    """How position j of route k maps to a token. ``geometry`` holds the sizes each kind needs."""
    LINE = 0        # (L,): one route along time (selective_scan); position j is token j of a 1 x L map
    CROSS = 1       # (H, W): SS2D's routes over the map, k = 0 hf, 1 vf, 2 hb, 3 vb
    ATROUS = 2      # (H, W): ES2D, route k walks stride-2 sub-lattice k of the map padded to even size
    CROSS_PAIR = 3  # (H, W): cross_ss2d, 2L positions: modality p % 2 at the CROSS route's (p // 2)-th token
    HEADS = 4       # (P, L): ssd_exchange, route k = channel k % P of every head, modality k // P, along time,
    #                 with one decay exp(dt A) per (head, step) shared by the head's channels
    SNAKE = 5       # (H, W): ss2d(route="snake"), k = 0 rows alternately left-right and right-left, 1 columns
    #                 alternately down and up, 2 and 3 the same walked backwards


class Source(enum.IntEnum):
    """Where u of scanned channel d at a pixel is read from (DIFF-MF's realignment of two maps of
    C channels and width Ws, ``geometry`` (..., C, Ws)); the output stays on the scanned map."""
    TOKEN = 0           # the token's own modality, channel d, the same pixel
    CHANNEL_COLUMN = 1  # channel d is channel d // 2 of map d % 2
    CHANNEL_HALVES = 2  # channel d is channel d % C of map d // C (row and concat on the channel axis)
    WIDTH_COLUMN = 3    # column w is column w // 2 of map w % 2
    WIDTH_HALVES = 4    # column w is column w % Ws of map w // Ws


# DIFF-MF realignment (mode, axis) -> Source; "concat" is on the channel axis whatever the axis says.
REALIGN_SOURCE = {("column", "channel"): Source.CHANNEL_COLUMN, ("row", "channel"): Source.CHANNEL_HALVES,
                  ("concat", "channel"): Source.CHANNEL_HALVES, ("concat", "width"): Source.CHANNEL_HALVES,
                  ("column", "width"): Source.WIDTH_COLUMN, ("row", "width"): Source.WIDTH_HALVES}


@dataclass(frozen=True)
class RouteKind:
    """What a route kind is, in one place: the ops, the executors, the tools and the tests read it
    here, and the extensions' policies (``policy`` in csrc/include/xscan/routes.h) must say the same
    (``check_codes``). Its index maths is apart: xscan/routes.py (the reference), routes.h and
    xscan/triton_kernels/routes.py (the kernels).

    sizes: what its ``geometry`` holds; length(*geometry): positions per route; routes(*geometry):
    the routes K its tensors carry; ss2d_name: the name ``xscan.ss2d`` and ``xscan.SS2D`` take it by
    (None: not an ss2d route); token_modalities: how many modalities' dt, B, C its positions read;
    positions_per_token: 2 where a route's positions alternate the modalities' tokens (then a route
    has positions_per_token x its tokens per modality); token_runs: whether a route may read
    consecutive tokens (the CUDA kernels then read B and C as vectors); scalar_decay: one decay
    exp(dt A) per (head, step) (Mamba-2: the Triton backend runs its SSD kernels); distinct_routes:
    its routes take different paths through the kernels (directions, rows or columns);
    realigned_policy: the policy that reads u through a realigning ``Source`` (None: the kind takes
    none)."""
    route: Route
    policy: str
    sizes: tuple
    length: Callable[..., int]
    routes: Callable[..., int] = lambda *geometry: 4
    ss2d_name: Optional[str] = None
    token_modalities: int = 1
    positions_per_token: int = 1
    token_runs: bool = True
    scalar_decay: bool = False
    distinct_routes: bool = True
    realigned_policy: Optional[str] = None

    def tokens(self, *geometry) -> int:
        """Tokens per modality along the per-token tensors."""
        return self.length(*geometry) // self.positions_per_token

    def routes_read_one_modality(self) -> bool:
        """Whether each route reads one modality's dt, B, C of the two the kind reads (HEADS: route k
        is modality k // P's), rather than both in turn."""
        return self.token_modalities > self.positions_per_token

    def policy_for(self, source: Source) -> str:
        """The routes.h policy that runs this kind with u read from ``source``."""
        if source == Source.TOKEN:
            return self.policy
        if self.realigned_policy is None:
            raise ValueError(f"route kind {self.route.name} takes no realigning source, got {source.name}")
        return self.realigned_policy


def _every_pixel(H: int, W: int) -> int:
    """Positions per route of a route that visits every pixel of an H x W map once."""
    return H * W


ROUTE_KINDS = {kind.route: kind for kind in (
    RouteKind(Route.LINE, "LineRoutes", ("L",), lambda L: L, routes=lambda L: 1, distinct_routes=False),
    RouteKind(Route.CROSS, "CrossRoutes", ("H", "W"), _every_pixel, ss2d_name="cross",
              realigned_policy="RealignRoutes"),
    RouteKind(Route.ATROUS, "AtrousRoutes", ("H", "W"), lambda H, W: ((H + 1) // 2) * ((W + 1) // 2),
              ss2d_name="atrous"),
    RouteKind(Route.CROSS_PAIR, "CrossPairRoutes", ("H", "W"), lambda H, W: 2 * H * W, token_modalities=2,
              positions_per_token=2),
    RouteKind(Route.HEADS, "HeadRoutes", ("P", "L"), lambda P, L: L, routes=lambda P, L: 2 * P, token_modalities=2,
              scalar_decay=True, distinct_routes=False),
    RouteKind(Route.SNAKE, "SnakeRoutes", ("H", "W"), _every_pixel, ss2d_name="snake", token_runs=False),
)}
# every route's policy by name, the realigning ones too
POLICIES = {**{k.policy: k for k in ROUTE_KINDS.values()},
            **{k.realigned_policy: k for k in ROUTE_KINDS.values() if k.realigned_policy}}
# sizes for check_codes' probe of each kind's policy: a route length, a map, heads
_PROBE_SIZES = dict(L=7, H=3, W=5, P=3)


def check_codes(module, what: str) -> None:
    """Raise ImportError unless an extension's route and source numbers (attributes ROUTE_<NAME>,
    SOURCE_<NAME>) are the ones defined here and its policies (``route_traits``) are what
    ``ROUTE_KINDS`` says, each probed at one geometry (and the realigning ones at one realignment)."""
    for enum_type, prefix in ((Route, "ROUTE_"), (Source, "SOURCE_")):
        for member in enum_type:
            got = getattr(module, prefix + member.name, None)
            if got != member.value:
                raise ImportError(f"{what}: {prefix}{member.name} is {got}, xscan.spec says {member.value}; "
                                  "rebuild the extension (pip install -e .)")
    if not hasattr(module, "route_traits"):
        raise ImportError(f"{what} is an old build (no route_traits); rebuild the extension (pip install -e .)")
    for kind in ROUTE_KINDS.values():
        geometry = tuple(_PROBE_SIZES[s] for s in kind.sizes)
        probes = [(Source.TOKEN, geometry)]
        if kind.realigned_policy:  # two (C=2, W) maps realigned on the channel axis
            probes.append((Source.CHANNEL_COLUMN, (*geometry, 2, geometry[1])))
        for source, g in probes:
            expected = dict(policy=kind.policy_for(source), geometry_sizes=len(g), length=kind.length(*geometry),
                            tokens=kind.tokens(*geometry), routes=kind.routes(*geometry),
                            token_modalities=kind.token_modalities, positions_per_token=kind.positions_per_token,
                            token_runs=kind.token_runs, scalar_decay=kind.scalar_decay)
            got = module.route_traits(int(kind.route), int(source), list(g))
            wrong = {key: (got.get(key), value) for key, value in expected.items() if got.get(key) != value}
            if wrong:
                raise ImportError(f"{what}: route kind {kind.route.name} (source {source.name}) disagrees with "
                                  "xscan.spec.ROUTE_KINDS: " + ", ".join(f"{key} is {g!r} there, {e!r} here"
                                                                          for key, (g, e) in wrong.items())
                                  + "; rebuild the extension (pip install -e .) or mend the table")


@dataclass(frozen=True)
class View:
    """An argument in an engine layout, as torch views: ``permute`` (if given), then a new axis at
    each position of ``unsqueeze`` in turn, then ``expand`` to ``shape`` (if given)."""
    permute: tuple = ()
    unsqueeze: tuple = ()
    shape: tuple = ()

    def unexpanded(self, t: torch.Tensor) -> torch.Tensor:
        if self.permute:
            t = t.permute(*self.permute)
        for axis in self.unsqueeze:
            t = t.unsqueeze(axis)
        return t

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        t = self.unexpanded(t)
        return t.expand(*self.shape) if self.shape else t

    def transpose(self, g: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """The gradient of the argument ``like`` from ``g``, a full tensor of the view's shape: sum
        over the broadcast axes, drop the new ones, undo the permutation."""
        before = self.unexpanded(like).shape
        broadcast = [a for a, size in enumerate(before) if size == 1 and g.shape[a] != 1]
        if broadcast:
            g = g.sum(broadcast, keepdim=True)
        for axis in reversed(self.unsqueeze):
            g = g.squeeze(axis)
        if self.permute:
            inverse = [0] * len(self.permute)
            for i, p in enumerate(self.permute):
                inverse[p] = i
            g = g.permute(*inverse)
        return g


SAME = View()


def cast_broadcast(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``t.to(dtype)`` without materialising its broadcast (stride 0) axes."""
    if t.dtype == dtype:
        return t
    base = t
    for axis, (size, stride) in enumerate(zip(t.shape, t.stride())):
        if stride == 0 and size > 1:
            base = base.narrow(axis, 0, 1)
    return base.to(dtype).expand(t.shape)


@dataclass(frozen=True)
class Role:
    """What an op argument is to the engines: its role (u, dt, B, C, z, A, D, delta_bias), the
    modality slots it fills (the realigned map's dt, B, C serve both) and its view."""
    name: str
    slots: tuple = (0,)
    view: View = SAME


PER_TOKEN = ("u", "dt", "B", "C", "z")


@dataclass(frozen=True)
class Output:
    """One op output: its shape and dtype, and the engine buffer it is a view of (``role`` "y" in
    the given modality slots, or "last_state")."""
    shape: tuple
    dtype: torch.dtype
    role: str = "y"
    slots: tuple = (0,)
    view: View = SAME


@dataclass
class ScanSpec:
    """One op call as routed selective scans (see the module docstring).

    arguments: op argument name -> (Role, tensor or None); outputs: one per op output;
    geometry: the route kind's sizes (see ``Route``), then for a realigning ``Source`` the input
    maps' channels and width; route_sum: the K routes' outputs at a pixel add up (SS2D's recover)."""
    route: Route
    geometry: tuple
    arguments: dict
    outputs: list
    softplus: bool
    source: Source = Source.TOKEN
    route_sum: bool = True
    tensors: dict = field(default_factory=dict, init=False)  # role -> [view per modality slot]

    def __post_init__(self):
        self.kind = ROUTE_KINDS[self.route]
        self.modalities = 1 + max(s for role, _ in self.arguments.values() if role is not None for s in role.slots)
        for role, value in self.arguments.values():
            if role is None or value is None:
                continue
            views = self.tensors.setdefault(role.name, [None] * self.modalities)
            for s in role.slots:
                views[s] = role.view(value)
        self._one_token_dtype()
        dt = self.tensors["dt"][0]
        self.batch, self.routes, self.channels, self.tokens = dt.shape
        self.dstate = self.tensors["A"][0].shape[2]

    def _one_token_dtype(self) -> None:
        """The engines read the per-token tensors in one dtype. A weight among them (selective_scan's
        constant B or C in A's dtype, e.g. fp32 next to fp16 inputs, as mamba keeps it) makes them
        all go to the promoted dtype (a copy of u, dt, z; the weight's broadcast axes stay unexpanded),
        so the weight is not rounded. The arguments keep their dtypes, and so do their gradients."""
        views = [v for role in PER_TOKEN for v in self.tensors.get(role, ()) if v is not None and not v.is_complex()]
        dtypes = {v.dtype for v in views}
        if len(dtypes) < 2:
            return
        dtype = functools.reduce(torch.promote_types, dtypes)
        for role in PER_TOKEN:
            if role in self.tensors:
                self.tensors[role] = [v if v is None or v.is_complex() else cast_broadcast(v, dtype)
                                      for v in self.tensors[role]]

    def scanned_map(self) -> tuple:
        """(H, W) of the map the routes walk (a line: 1 x L; heads: P x L per head)."""
        return tuple(self.geometry[:2]) if len(self.kind.sizes) == 2 else (1, self.geometry[0])

    def length(self) -> int:
        """Positions per route."""
        return self.kind.length(*self.geometry[:len(self.kind.sizes)])

    def largest_index(self) -> int:
        """The largest route length, token count, map or output size: the CUDA and Triton kernels
        locate positions in 32-bit arithmetic (offsets stay 64-bit), so it must stay below 2^31."""
        return max(self.length(), self.tokens, *self.view("u").shape, *self.outputs[0].shape)

    def token_modalities(self) -> int:
        """How many modalities' per-token tensors the routes read (2 where positions alternate)."""
        return self.kind.token_modalities

    def view(self, role: str, slot: int = 0) -> Optional[torch.Tensor]:
        views = self.tensors.get(role)
        return None if views is None else views[slot]

    def argument_gradients(self, grad_of) -> dict:
        """{argument name: gradient} from the engine's gradients: ``grad_of(role, slot)`` is a
        role's gradient in its engine layout for one modality slot (u: the slots it fills; dt, B, C:
        the token modalities the routes read). Each goes back through the transpose of the argument's
        view, in the argument's dtype."""
        out = {}
        for name, (role, value) in self.arguments.items():
            if value is None:
                continue
            if role.name in ("dt", "B", "C"):
                g = sum(grad_of(role.name, s) for s in role.slots if s < self.token_modalities())
            elif role.name == "u":
                g = sum(grad_of("u", s) for s in role.slots)
            else:
                g = grad_of(role.name, 0)
            out[name] = role.view.transpose(g, value).to(value.dtype)
        return out

    def dtype(self) -> torch.dtype:
        """The dtype the engines read the per-token inputs in (one: see ``_one_token_dtype``)."""
        return self.tensors["u"][0].dtype
