"""Triton's compiler driven by hand, for tools on machines without a GPU (``compile_check``,
benchmarks/gpu_static.py): the one place xscan uses Triton's private compile API (a JITFunction's
argument binding and packing, ``ASTSource``, ``triton.compiler.compile``, the launch entry points),
so that a Triton release that changes it is mended here."""
from __future__ import annotations

import contextlib


@contextlib.contextmanager
def intercepted_launches(on_launch):
    """Inside the block Triton launches nothing: each launch calls ``on_launch(jit_function, args,
    kwargs, grid)``, an autotuned one once per config (its num_warps among the kwargs)."""
    from triton.runtime import autotuner, jit

    saved = jit.JITFunction.run, autotuner.Autotuner.run

    def run(self, *args, grid, warmup, **kwargs):
        on_launch(self, args, kwargs, grid)

    def autotuned(self, *args, **kwargs):
        for config in self.configs:
            self.fn.run(*args, **kwargs, **config.all_kwargs())

    jit.JITFunction.run, autotuner.Autotuner.run = run, autotuned
    try:
        yield
    finally:
        jit.JITFunction.run, autotuner.Autotuner.run = saved


class BoundLaunch:
    """One launch of a JITFunction bound as Triton binds it for ``target`` (a GPUTarget): ``key``
    tells its compiled variants apart (kernel, arch, warps, signature, constexprs, attributes),
    ``constexprs`` names its constexpr arguments' values, ``compile()`` builds it (PTX and cubin)."""

    def __init__(self, fn, args, kwargs, target):
        from triton.compiler import make_backend
        from triton.runtime import jit

        backend = make_backend(target)
        binder = jit.create_function_from_signature(fn.signature, fn.params, backend)
        bound, specialization, options = binder(*args, **kwargs)
        self.options, self.signature, constexprs, self.attrs = fn._pack_args(backend, kwargs, bound,
                                                                             specialization, options)
        self.fn, self.target, self._constexprs = fn, target, constexprs
        self.key = (fn.fn.__name__, target.arch, self.options.num_warps, str(sorted(self.signature.items())),
                    str(sorted(constexprs.items())), str(sorted(self.attrs.items())))
        self.constexprs = {fn.params[path[0]].name: v for path, v in constexprs.items()
                           if len(path) == 1 and fn.params[path[0]].is_constexpr}

    def compile(self):
        from triton.compiler import ASTSource, compile

        return compile(ASTSource(self.fn, self.signature, self._constexprs, self.attrs), target=self.target,
                       options=self.options.__dict__)
