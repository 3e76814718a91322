"""JAX adapter: any JAX-traceable callable, a Flax NNX module or an Equinox module.

The forward pass and the VJP are compiled with ``jax.jit`` once; model parameters are
passed as arguments (not baked in as constants), and the engine pads every chunk to one
shape, so a long call compiles once. Flax NNX modules run in eval mode on a copy made
inside the trace; Equinox modules (which take one example) run vmapped in inference mode.
"""

from __future__ import annotations

import functools
import sys
from typing import Any, Callable

import numpy as np

from gradshap.backends import Adapter, require


def recognizes(model: Any, arrays: tuple) -> bool:
    jax = sys.modules.get("jax")
    return jax is not None and any(isinstance(a, jax.Array) for a in arrays)


def _split_arrays(obj: Any):
    """``obj`` as (its array leaves, a function that rebuilds it from new leaves)."""
    import jax

    leaves, treedef = jax.tree_util.tree_flatten(obj)
    is_array = [isinstance(leaf, (jax.Array, np.ndarray)) for leaf in leaves]
    arrays = [leaf for leaf, a in zip(leaves, is_array) if a]

    def rebuild(new):
        it = iter(new)
        return treedef.unflatten([next(it) if a else leaf for leaf, a in zip(leaves, is_array)])

    return arrays, rebuild


def _functional(model: Any) -> tuple[Callable, Callable[[], Any]]:
    """``apply(params, *points)`` and a function giving the model's current params."""
    nnx = sys.modules.get("flax.nnx")
    eqx = sys.modules.get("equinox")
    if nnx is not None and isinstance(model, nnx.Module):
        graphdef, _ = nnx.split(model)

        def apply(state, *points):
            copy = nnx.merge(graphdef, state)
            copy.eval()
            return copy(*points)

        # Read afresh at every call: the module's variables may change between calls.
        return apply, lambda: nnx.split(model)[1]
    if eqx is not None and isinstance(model, eqx.Module):
        params, static = eqx.partition(eqx.nn.inference_mode(model), eqx.is_array)
        jax = require("jax")

        def apply(params, *points):
            return jax.vmap(eqx.combine(params, static))(*points)

        return apply, lambda: params
    if isinstance(model, functools.partial):
        arrays, rebuild = _split_arrays((model.args, model.keywords))

        def apply(arrays, *points):
            args, keywords = rebuild(arrays)
            return model.func(*args, *points, **keywords)

        return apply, lambda: arrays
    return (lambda _, *points: model(*points)), lambda: ()


# Programs kept per adapter: the engine's chunk steps, and its whole-call programs, some of
# which are made per row count (each holds its compiled code).
_FUSED_KEPT = 64


def fuse_jitted(cache: dict, step: Callable, value_and_grad: Callable, params: Callable[[], Any]) -> Callable:
    """``step`` under one ``jax.jit``, with ``value_and_grad(params, points, cotangent)``.

    One jitted program per step function, kept in ``cache`` (the last ``_FUSED_KEPT``
    used) so that later calls reuse the compiled code: the engine's array code around the
    VJP fuses with the model's. The parameters, read by ``params()`` at every call, are
    arguments, not constants.
    """
    fused = cache.pop(step, None)
    if fused is None:
        jax = require("jax")

        def with_params(values, xp, *arrays):
            return step(xp, lambda points, cot: value_and_grad(values, points, cot), *arrays)

        jitted = jax.jit(with_params, static_argnums=1)
        fused = lambda xp, *arrays: jitted(params(), xp, *arrays)  # noqa: E731
    cache[step] = fused  # the most recently used last
    while len(cache) > _FUSED_KEPT:  # programs made for row counts not seen for long
        cache.pop(next(iter(cache)))
    return fused


def vjp_of(call: Callable) -> Callable:
    """``value_and_grad(params, points, cotangent)`` of a model ``call(params, points)``:
    its outputs and the VJP with ``cotangent``; the outputs alone for ``None`` (the
    engine's programs)."""
    jax = require("jax")

    def value_and_grad(params, points, cotangent):
        if cotangent is None:
            return call(params, points), None
        out, pullback = jax.vjp(lambda *p: call(params, p), *points)
        return out, pullback(cotangent.reshape(out.shape).astype(out.dtype))

    return value_and_grad


def map_rows(fn: Callable, arrays: tuple):
    """``fn`` over the leading axis of ``arrays`` inside a program: one loop body, compiled once."""
    return require("jax").lax.map(fn, arrays)


# Primitives that XLA's CPU runtime runs markedly slower inside a loop's body than in a
# program called once per chunk: the small CNN of benchmarks/ took 189 ms per 324-point
# chunk of its VJP under lax.map, against 137 ms called per chunk. (The MLP's dense
# layers run faster in the loop: 3.7 against 6.4 ms for four 8,000-point chunks.)
_SLOW_IN_CPU_LOOPS = ("conv_general_dilated",)


def _primitives(jaxpr) -> set:
    """Names of the primitives of ``jaxpr``, nested jaxprs (jit, custom rules, loops) included."""
    names = set()
    for eqn in jaxpr.eqns:
        names.add(eqn.primitive.name)
        for value in eqn.params.values():
            for sub in value if isinstance(value, (list, tuple)) else (value,):
                inner = sub if hasattr(sub, "eqns") else getattr(sub, "jaxpr", None)
                if hasattr(inner, "eqns"):
                    names |= _primitives(inner)
    return names


def row_loop(cache: dict, call: Callable, params: Any, points: tuple) -> Callable | None:
    """:func:`map_rows`, or ``None`` on CPU for a model ``call(params, points)`` with a
    primitive of :data:`_SLOW_IN_CPU_LOOPS`; decided once per feature shape, kept in ``cache``."""
    jax = require("jax")
    key = tuple((tuple(p.shape[1:]), str(p.dtype)) for p in points)
    if key not in cache:
        try:
            platforms = {d.platform for p in points for d in p.devices()}
        except Exception:  # tracers (inside the caller's jit) have no devices
            platforms = {jax.default_backend()}
        slow = False
        if platforms == {"cpu"}:
            spec = tuple(jax.ShapeDtypeStruct(p.shape, p.dtype) for p in points)
            try:
                names = _primitives(jax.make_jaxpr(call)(params, spec).jaxpr)
            except Exception:  # the model's own error: the per-chunk path raises it where it says more
                names = set(_SLOW_IN_CPU_LOOPS)
            slow = any(name in names for name in _SLOW_IN_CPU_LOOPS)
        cache[key] = None if slow else map_rows
    return cache[key]


def wait(arrays) -> None:
    """Block until ``arrays`` (a pytree) are computed; tracers (inside the caller's jit) pass."""
    jax = require("jax")
    if not any(isinstance(a, jax.core.Tracer) for a in jax.tree_util.tree_leaves(arrays)):
        jax.block_until_ready(arrays)


class JaxAdapter(Adapter):
    name = "jax"
    pads = True
    eager_compiles = True

    def __init__(self, model: Any, output_fn: Callable | None = None):
        jax = require("jax")
        self.xp = jax.numpy
        self.model = model
        self.output_fn = output_fn
        apply, self._params = _functional(model)

        def call(params, points):
            out = apply(params, *points)
            return out if output_fn is None else output_fn(out)

        value_and_grad = vjp_of(call)
        self._raw_value_and_grad = value_and_grad
        self._call = call
        self._loops: dict = {}
        self._forward = jax.jit(call)
        self._value_and_grad = jax.jit(value_and_grad)
        self._fused: dict = {}

    def forward(self, points: tuple):
        return self._forward(self._params(), tuple(points))

    def value_and_grad(self, points: tuple, cotangent):
        out, grads = self._value_and_grad(self._params(), tuple(points), cotangent)
        return out, tuple(grads)

    def is_out_of_memory(self, err: BaseException) -> bool:
        return "RESOURCE_EXHAUSTED" in str(err) and "emory" in str(err)

    def step_array(self, xp, a, *, dtype=None, device=None):
        # The jitted step, and jax.numpy ops in eager mode, move NumPy operands themselves
        # (to the device of their other, committed operands): much cheaper than an eager
        # jnp.asarray(..., device=...) per array.
        return np.asarray(a, dtype=None if dtype is None else np.dtype(dtype))

    def split_rows(self, xp, a, sizes: list) -> list:
        # One dispatch, where a slice per piece costs one each (about 40 us on CPU).
        return xp.split(a, np.cumsum(sizes)[:-1].tolist()) if len(sizes) > 1 else [a]

    def fuse(self, step: Callable) -> Callable:
        return fuse_jitted(self._fused, step, self._raw_value_and_grad, self._params)

    def row_loop(self, points: tuple) -> Callable | None:
        return row_loop(self._loops, self._call, self._params(), points)

    def wait(self, arrays) -> None:
        wait(arrays)

    def compose(self, fn: Callable) -> "JaxAdapter":
        return JaxAdapter(self.model, fn)


def make(model: Any) -> JaxAdapter:
    return JaxAdapter(model)
