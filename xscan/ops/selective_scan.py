"""``xscan.selective_scan``: drop-in for ``mamba_ssm``'s ``selective_scan_fn`` (docs/ops.md, "selective_scan")."""
from __future__ import annotations

import torch

from .._checks import FLOATING, Checker
from ..shapes import state_dtype
from ..spec import Output, Role, Route, ScanSpec, View
from ._define import define, device_of

ARGS = (("u", "Tensor"), ("delta", "Tensor"), ("A", "Tensor"), ("B", "Tensor"), ("C", "Tensor"),
        ("D", "Tensor?"), ("z", "Tensor?"), ("delta_bias", "Tensor?"), ("delta_softplus", "bool"))
COMPLEX = (torch.complex64, torch.complex128)


def _fake(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    return u.new_empty(u.shape), u.new_empty((u.shape[0], u.shape[1], A.shape[1]), dtype=state_dtype(u.dtype, A))


def weight(X, A) -> bool:
    """Whether a real B or C is a weight, as mamba's: constant over batch and time ((Dm, N), or its
    (Bt, Dm, N, L) broadcast) and in A's dtype, which may differ from u's."""
    if not (isinstance(X, torch.Tensor) and isinstance(A, torch.Tensor)) or X.dtype != A.dtype or A.is_complex():
        return False
    if X.dim() == 2:
        return True
    return X.dim() == 4 and all(X.shape[a] == 1 or X.stride(a) == 0 for a in (0, 3))


def check(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """The registered op's arguments: B and C grouped, (Bt, G, N, L), complex when A is; a real B or
    C in A's dtype is taken as a weight (the public function lets only a constant one be)."""
    c = Checker("selective_scan")
    c.tensor("u", u, "Bt Dm L", token=True)
    c.tensor("delta", delta, "Bt Dm L", token=True)
    is_complex = isinstance(A, torch.Tensor) and A.is_complex()
    c.tensor("A", A, "Dm N", dtypes=COMPLEX if is_complex else FLOATING)
    for name, X in (("B", B), ("C", C)):
        token = not is_complex and not (isinstance(X, torch.Tensor) and X.dtype == A.dtype)
        c.tensor(name, X, f"Bt G_{name} N L", token=token, dtypes=COMPLEX if is_complex else FLOATING)
        c.divides(f"G_{name}", "Dm", f"{name} groups must split the channels evenly")
    c.tensor("D", D, "Dm", optional=True)
    c.tensor("z", z, "Bt Dm L", optional=True, token=True)
    c.tensor("delta_bias", delta_bias, "Dm", optional=True)


def plan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, out_dtype: torch.dtype) -> ScanSpec:
    """One LINE route over time: u and z a 1 x L map per channel, B and C grouped."""
    Bt, Dm, L = u.shape
    line = View(unsqueeze=(2,))      # (Bt, Dm, 1, L)
    one_route = View(unsqueeze=(1,))  # dt (Bt, 1, Dm, L); B, C (Bt, 1, G, N, L); last_state (Bt, 1, Dm, N)
    params = View(unsqueeze=(0,))     # A (1, Dm, N); D, delta_bias (1, Dm)
    arguments = dict(u=(Role("u", view=line), u), delta=(Role("dt", view=one_route), delta),
                     A=(Role("A", view=params), A), B=(Role("B", view=one_route), B), C=(Role("C", view=one_route), C),
                     D=(Role("D", view=params), D), z=(Role("z", view=line), z),
                     delta_bias=(Role("delta_bias", view=params), delta_bias))
    outputs = [Output(tuple(u.shape), out_dtype, view=line),
               Output((Bt, Dm, A.shape[1]), state_dtype(u.dtype, A), role="last_state", slots=(), view=one_route)]
    return ScanSpec(Route.LINE, (L,), arguments, outputs, delta_softplus)


_op = define("selective_scan", ARGS, 2, _fake, check, plan, ("u", "delta", "B", "C", "z"),
             keep=lambda a: {name for name, X in (("B", a[3]), ("C", a[4])) if weight(X, a[2])})


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False):
    """Same arguments, layouts and results as ``mamba_ssm.ops.selective_scan_interface.selective_scan_fn``.

    u, delta, z: (Bt, Dm, L); A: (Dm, N); B, C: (Bt, N, L), grouped (Bt, G, N, L), or constant
    (Dm, N); D, delta_bias: (Dm,). A constant B or C may be in u's dtype or in A's (mamba's weight
    dtype: fp32 next to fp16/bf16 inputs), and its gradient comes in its dtype. Returns y (Bt, Dm, L)
    in u's dtype, and with ``return_last_state`` also the last state (Bt, Dm, N) in fp32 (fp64 for fp64 inputs).

    A complex A (mamba's ``wtype=complex64``) gives a complex state and ``y = 2 Re(C . h) + D u``;
    B and C are then constant (Dm, N) complex tensors, or real per-token tensors (Bt, [G,] N, 2L)
    holding real and imaginary parts interleaved (mamba-ssm's layout). Complex A runs on the
    reference and cpu backends."""
    device = device_of(u)
    u, delta, A, B, C, D, z, delta_bias, _ = _op.autocast((u, delta, A, B, C, D, z, delta_bias, delta_softplus), device)
    c = Checker("selective_scan")
    c.tensor("u", u, "Bt Dm L", token=True)
    c.tensor("delta", delta, "Bt Dm L", token=True)
    is_complex = isinstance(A, torch.Tensor) and A.is_complex()
    c.tensor("A", A, "Dm N", dtypes=COMPLEX if is_complex else FLOATING)
    if is_complex:
        c.bind("L2", 2 * c.dims["L"], "u")
    B, C = (_grouped(c, name, X, A, state_dtype(u.dtype, A) if is_complex else None)
            for name, X in (("B", B), ("C", C)))
    c.tensor("D", D, "Dm", optional=True)
    c.tensor("z", z, "Bt Dm L", optional=True, token=True)
    c.tensor("delta_bias", delta_bias, "Dm", optional=True)
    args = (u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus))
    y, last_state = _op(args, device)
    return (y, last_state) if return_last_state else y


def _grouped(c: Checker, name: str, X, A, complex_dtype) -> torch.Tensor:
    """B or C as (Bt, G, N, L), a view for every layout mamba accepts; complex (from the
    (real, imaginary) pairs of a per-token tensor) when A is complex."""
    Bt, Dm, L = c.dims["Bt"], c.dims["Dm"], c.dims["L"]
    dim = X.dim() if isinstance(X, torch.Tensor) else 0
    if dim == 2:  # constant over batch and time, one row per channel: a weight
        c.tensor(name, X, "Dm N", dtypes=FLOATING + COMPLEX if complex_dtype else FLOATING)
        token_dtype = c.token_dtype[0]
        if not complex_dtype and X.dtype not in (token_dtype, A.dtype):
            c.fail(f"{name} is a constant (Dm, N) weight of dtype {X.dtype}; it must be in u's dtype ({token_dtype}) "
                   f"or in A's ({A.dtype}, mamba's weight dtype)", TypeError)
        if complex_dtype:
            X = X.to(complex_dtype)
        return X[None, :, :, None].expand(Bt, Dm, X.shape[1], L)
    length = "L2" if complex_dtype else "L"
    if dim == 3:
        c.tensor(name, X, f"Bt N {length}", token=True)
        X = X.unsqueeze(1)
    else:
        G = f"G_{name}"
        c.tensor(name, X, f"Bt {G} N {length}", token=True)
        c.divides(G, "Dm", f"{name} groups must split the channels evenly")
    if complex_dtype:
        real = torch.float64 if complex_dtype == torch.complex128 else torch.float32
        X = torch.view_as_complex(X.to(real).unflatten(-1, (L, 2)).contiguous())
    return X
