"""mamba-ssm's own code on xscan: ``xscan.install_mamba_shim()`` stands in for its compiled
``selective_scan_cuda``, so that mamba-ssm installed without its CUDA build
(MAMBA_SKIP_CUDA_BUILD=TRUE, as .ci/run does) runs its ``selective_scan_fn`` and its ``Mamba``
block. Each check runs in a fresh interpreter (the shim is process-wide). Also
``xscan.mamba_inner_fn`` against the same maths written with torch ops and mamba-ssm's
``selective_scan_ref``."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("mamba_ssm") is None,
                                reason="mamba-ssm is not installed (.ci/run installs it without its CUDA build)")


def run(code: str) -> str:
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout


def test_selective_scan_fn_equals_selective_scan_ref():
    out = run("""
        import itertools, torch, xscan
        xscan.install_mamba_shim()
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn, selective_scan_ref
        g = torch.Generator().manual_seed(0)
        r = lambda *s: torch.randn(*s, generator=g)  # mamba-ssm's reference computes in fp32
        Bt, Dm, N, L = 2, 4, 3, 23
        cases = 0
        for layout, complex_A, z_on, opt_on, last in itertools.product(
                ("3d", "4d", "constant"), (False, True), (False, True), (False, True), (False, True)):
            u = r(Bt, Dm, L)
            # a step size in (0.05, 0.55) directly, or through softplus from around -1
            delta = r(Bt, Dm, L) * 0.5 - 1 if opt_on else torch.rand(Bt, Dm, L, generator=g) * 0.5 + 0.05
            if complex_A:
                A = torch.complex(-torch.rand(Dm, N, generator=g) - 0.5, r(Dm, N))
                shape = {"3d": (Bt, N, 2 * L), "4d": (Bt, 2, N, 2 * L)}.get(layout)
                B, C = ((torch.complex(r(Dm, N), r(Dm, N)) if shape is None else r(*shape)) for _ in range(2))
            else:
                A = -torch.rand(Dm, N, generator=g) - 0.5
                shape = {"3d": (Bt, N, L), "4d": (Bt, 2, N, L), "constant": (Dm, N)}[layout]
                B, C = r(*shape), r(*shape)
            kw = dict(D=r(Dm) if opt_on else None, z=r(Bt, Dm, L) if z_on else None,
                      delta_bias=r(Dm) if opt_on else None, delta_softplus=opt_on, return_last_state=last)
            results = []
            for fn in (selective_scan_fn, selective_scan_ref):
                leaves = [t.clone().requires_grad_() for t in (u, delta, A, B, C)]
                extra = {k: v.clone().requires_grad_() if isinstance(v, torch.Tensor) else v for k, v in kw.items()}
                out = fn(*leaves, **extra)
                y = out[0] if last else out
                y.sin().sum().backward()  # mamba-ssm takes no gradient through the last state
                grads = [t.grad for t in leaves] + [v.grad for v in extra.values() if isinstance(v, torch.Tensor)]
                results.append(([y] + ([out[1]] if last else []), grads))
            (o1, g1), (o2, g2) = results
            for a, b in zip(o1 + g1, o2 + g2):
                torch.testing.assert_close(a, b, rtol=1e-4, atol=2e-5)
            cases += 1
        print(cases)
        """)
    assert out.strip() == "48"


def test_mamba_block_runs_and_trains_on_the_shim():
    """mamba-ssm's Mamba block (its slow path: no causal-conv1d here) with the shim, against the same
    block with its selective_scan_fn replaced by selective_scan_ref: outputs and gradients, then one
    optimiser step."""
    run("""
        import torch, xscan
        xscan.install_mamba_shim()
        from mamba_ssm import Mamba
        import mamba_ssm.modules.mamba_simple as simple
        from mamba_ssm.ops.selective_scan_interface import selective_scan_ref
        torch.manual_seed(0)
        block = Mamba(d_model=16, d_state=8, d_conv=4, expand=2)
        x = torch.randn(2, 30, 16)

        def step():
            block.zero_grad()
            y = block(x)
            y.square().mean().backward()
            return y.detach(), {n: p.grad.clone() for n, p in block.named_parameters()}

        y, grads = step()
        fast = simple.selective_scan_fn
        simple.selective_scan_fn = selective_scan_ref
        y_ref, grads_ref = step()
        simple.selective_scan_fn = fast
        torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-5)
        for n in grads:
            torch.testing.assert_close(grads[n], grads_ref[n], rtol=1e-3, atol=1e-5)
        opt = torch.optim.SGD(block.parameters(), lr=0.5)
        losses = []
        for _ in range(3):
            y, _ = step()
            losses.append(y.square().mean().item())
            opt.step()
        assert losses[-1] < losses[0], losses
        """)


def test_the_real_extension_is_not_replaced_silently():
    out = run("""
        import sys, types, warnings, xscan
        real = types.ModuleType("selective_scan_cuda")  # stands for mamba-ssm's own build
        sys.modules["selective_scan_cuda"] = real
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert xscan.install_mamba_shim() is real
        assert "keeping it" in str(caught[0].message)
        shim = xscan.install_mamba_shim(force=True)
        assert shim is not real and sys.modules["selective_scan_cuda"] is shim
        assert xscan.install_mamba_shim() is shim  # installing twice is a no-op
        print("ok")
        """)
    assert out.strip() == "ok"


def test_mamba_inner_fn_equals_its_maths():
    run("""
        import torch, torch.nn.functional as F, xscan
        xscan.install_mamba_shim()
        from mamba_ssm.ops.selective_scan_interface import selective_scan_ref
        torch.manual_seed(0)
        Bt, L, d_model, Dm, N, R, width = 2, 17, 8, 16, 4, 2, 4
        xz = torch.randn(Bt, 2 * Dm, L)
        conv_w, conv_b = torch.randn(Dm, 1, width), torch.randn(Dm)
        x_proj = torch.randn(R + 2 * N, Dm) * 0.3
        dt_proj = torch.randn(Dm, R) * 0.3
        out_w, out_b = torch.randn(d_model, Dm), torch.randn(d_model)
        A = -torch.rand(Dm, N) - 0.5
        D, dt_bias = torch.randn(Dm), torch.randn(Dm)
        params = [xz, conv_w, conv_b, x_proj, dt_proj, out_w, out_b, A, D, dt_bias]

        def by_hand(xz, conv_w, conv_b, x_proj, dt_proj, out_w, out_b, A, D, dt_bias):
            x, z = xz.chunk(2, dim=1)
            x = F.silu(F.conv1d(x, conv_w, conv_b, padding=width - 1, groups=Dm)[..., :L])
            x_dbl = torch.einsum("bdl,cd->blc", x, x_proj)
            delta = torch.einsum("blr,dr->bdl", x_dbl[..., :R], dt_proj)
            B, C = x_dbl[..., R:R + N].transpose(1, 2), x_dbl[..., R + N:].transpose(1, 2)
            y = selective_scan_ref(x, delta, A, B, C, D, z, dt_bias, True)
            return F.linear(y.transpose(1, 2), out_w, out_b)

        results = []
        for fn in (xscan.mamba_inner_fn, by_hand):
            leaves = [p.clone().requires_grad_() for p in params]
            a = leaves
            out = fn(a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], D=a[8], delta_bias=a[9]) if fn is not by_hand \\
                else fn(*a)
            out.square().sum().backward()
            results.append([out] + [p.grad for p in leaves])
        # normwise: the gradients reach 1e5 while single elements cancel to ~1, where two fp32
        # evaluations may differ by 3e-4 relative (both within 1e-6 of an fp64 evaluation, normwise)
        for u, v in zip(*results):
            err = ((u - v).abs().max() / v.abs().max()).item()
            assert err < 1e-5, err
        """)


def test_half_inputs_with_weight_dtype_constants():
    """mamba-ssm's dtypes at fp16/bf16: a constant B or C in fp32 (the weight dtype, complex64 with a
    complex A) next to half u and delta. selective_scan_fn on the shim against selective_scan_ref
    (fp32 maths on the half inputs) at mamba's test tolerances, without z: selective_scan_ref gates in
    the input dtype, ~1e-3 off in bf16 (benchmarks/RESULTS.md); test_parity checks the gate against
    fp64. Then xscan.mamba_inner_fn with a constant B and C: gradients reach every argument in its dtype."""
    out = run("""
        import itertools, torch, xscan
        xscan.install_mamba_shim()
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn, selective_scan_ref
        tol = {torch.float16: (3e-3, 5e-3), torch.bfloat16: (3e-2, 5e-2)}
        cases = 0
        for itype, wtype, var_B, var_C in itertools.product(tol, (torch.float32, torch.complex64), (False, True),
                                                            (False, True)):
            if var_B and var_C:
                continue
            g = torch.Generator().manual_seed(0)
            Bt, Dm, N, L = 2, 4, 8, 64
            L2 = 2 * L if wtype.is_complex else L
            A = -0.5 * torch.rand(Dm, N, generator=g, dtype=wtype)
            B, C = (torch.randn(Bt, N, L2, generator=g).to(itype) if var else torch.randn(Dm, N, generator=g,
                    dtype=wtype) for var in (var_B, var_C))
            u = torch.randn(Bt, Dm, L, generator=g).to(itype)
            delta = (0.5 * torch.rand(Bt, Dm, L, generator=g)).to(itype)
            D, bias = torch.randn(Dm, generator=g), 0.5 * torch.rand(Dm, generator=g)
            results = []
            for fn in (selective_scan_fn, selective_scan_ref):
                leaves = [t.clone().requires_grad_() for t in (u, delta, A, B, C, D, bias)]
                y, last = fn(*leaves[:6], delta_bias=leaves[6], delta_softplus=True, return_last_state=True)
                y.backward(torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(itype))
                results.append([y, last] + [t.grad for t in leaves])
            rtol, atol = tol[itype]
            rtolw = atolw = 1e-3
            names = ["y", "last", "u", "delta", "A", "B", "C", "D", "delta_bias"]
            tols = [(rtol, atol)] * 2 + [(2 * rtol, 2 * atol), (5 * rtol, 10 * atol), (rtolw, 5 * atolw),
                    (rtol, atol) if var_B else (rtolw, atolw), (rtol, atol) if var_C else (rtolw, atolw)] + \\
                [(rtolw, atolw)] * 2
            for name, a, b, (rt, at) in zip(names, *results, tols):
                assert a.dtype == b.dtype, (name, a.dtype, b.dtype)
                torch.testing.assert_close(a, b, rtol=rt, atol=at, msg=lambda m: f"{name} {itype} {wtype}: {m}")
            cases += 1

        # mamba_inner_fn with a constant B and C in fp32, half activations and projections
        torch.manual_seed(0)
        Bt, L, Dm, N, R = 2, 16, 8, 4, 2
        itype = torch.bfloat16
        xz = torch.randn(Bt, 2 * Dm, L).to(itype)
        weights = [torch.randn(Dm, 1, 4).to(itype), torch.randn(Dm).to(itype), (torch.randn(R, Dm) * 0.3).to(itype),
                   (torch.randn(Dm, R) * 0.3).to(itype), torch.randn(Dm, Dm).to(itype)]
        A, B, C = -torch.rand(Dm, N) - 0.5, torch.randn(Dm, N), torch.randn(Dm, N)
        leaves = [t.requires_grad_() for t in [xz] + weights + [A, B, C]]
        out = xscan.mamba_inner_fn(*leaves[:6], None, A, B, C, D=torch.ones(Dm), delta_bias=torch.zeros(Dm))
        out.float().square().sum().backward()
        assert out.dtype == itype and all(t.grad.dtype == t.dtype and torch.isfinite(t.grad).all() for t in leaves)
        print(cases)
        """)
    assert out.strip() == "12"


def test_half_inputs_with_z_against_fp64():
    """mamba-ssm's gated scan at fp16/bf16 on the shim: selective_scan_fn with z (B and C each variable
    in the input dtype or constant in the weight dtype, A real and complex) against xscan's reference
    in fp64 on the same half values. As mamba-ssm's kernel, the shim gates the fp32 scan output and
    takes the gate's derivatives in fp32: outputs and per-token gradients within two roundings to the
    half dtype, weight gradients (fp32) within fp32 accumulation of the exact ones."""
    out = run("""
        import itertools, torch, xscan
        xscan.install_mamba_shim()
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
        eps = {torch.float16: 2.0 ** -10, torch.bfloat16: 2.0 ** -7}
        wide = lambda t: t.to(torch.complex128 if t.is_complex() else torch.float64)
        cases = 0
        for itype, wtype, var_B, var_C, softplus in itertools.product(eps, (torch.float32, torch.complex64),
                                                                      (False, True), (False, True), (False, True)):
            g = torch.Generator().manual_seed(cases)
            Bt, Dm, N, L = 2, 4, 8, 96
            L2 = 2 * L if wtype.is_complex else L
            A = -0.5 * torch.rand(Dm, N, generator=g, dtype=wtype)
            B, C = (torch.randn(Bt, N, L2, generator=g).to(itype) if var else torch.randn(Dm, N, generator=g,
                    dtype=wtype) for var in (var_B, var_C))
            u, z = (torch.randn(Bt, Dm, L, generator=g).to(itype) for _ in range(2))
            delta = (0.5 * torch.rand(Bt, Dm, L, generator=g)).to(itype)
            D, bias = torch.randn(Dm, generator=g), 0.5 * torch.rand(Dm, generator=g)
            dy = torch.randn(Bt, Dm, L, generator=g).to(itype)
            results = []
            for exact in (False, True):
                leaves = [(wide(t) if exact else t.clone()).requires_grad_() for t in (u, delta, A, B, C, D, z, bias)]
                with xscan.use_backend("reference" if exact else xscan.selected_backend("selective_scan", u.device)):
                    fn = xscan.selective_scan if exact else selective_scan_fn
                    y, last = fn(*leaves[:6], z=leaves[6], delta_bias=leaves[7], delta_softplus=softplus, return_last_state=True)
                y.backward(dy.to(y.dtype))
                results.append([y, last] + [t.grad for t in leaves])
            names = ["y", "last", "u", "delta", "A", "B", "C", "D", "z", "delta_bias"]
            half = {"y", "u", "delta", "z"} | ({"B"} if var_B else set()) | ({"C"} if var_C else set())
            for name, got, want in zip(names, *results):
                want = want.to(got.dtype).to(want.dtype)  # the exact value rounded as the result is
                scale = want.abs().max().item()
                rtol = 2 * eps[itype] if name in half else 1e-5
                torch.testing.assert_close(wide(got), want, rtol=rtol, atol=rtol * scale,
                                           msg=lambda m: f"{name} {itype} {wtype} B var {var_B} C var {var_C}: {m}")
            cases += 1
        print(cases)
        """)
    assert out.strip() == "32"
