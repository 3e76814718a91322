"""JAX adapter: any JAX-traceable callable, a Flax NNX module or an Equinox module.

The forward pass, the VJP and the engine's chunk step are compiled with ``jax.jit``, once
per shape; model parameters are passed as arguments (not baked in as constants), and the
engine keeps every chunk of a call at one shape. Flax NNX modules run in eval mode on a copy made
inside the trace; Equinox modules (which take one example) run vmapped in inference mode.
"""

from __future__ import annotations

import functools
import sys
from typing import Any, Callable

import numpy as np

from gradshap.backends import Adapter, _jax_sharding, require


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


def compile_jitted(fn: Callable, value_and_grad: Callable, params: Callable[[], Any]) -> Callable:
    """``fn(xp, value_and_grad, *arrays, **static)`` under one ``jax.jit``, compiled once per
    argument shapes and static values, with ``value_and_grad(params, points, cotangent)``.
    The parameters, read by ``params()`` at every call, are arguments, not constants."""
    jax = require("jax")

    def with_params(values, arrays, static):
        return fn(jax.numpy, lambda points, cot: value_and_grad(values, points, cot), *arrays, **dict(static))

    jitted = jax.jit(with_params, static_argnums=2)

    def run(xp, *arrays, **static):
        values = params()
        if len(jax.devices()) > 1:  # every device takes part: its arguments on all of them
            values, arrays = _jax_sharding.everywhere((values, arrays))
        return jitted(values, arrays, tuple(sorted(static.items())))

    return run


def vjp_of(call: Callable) -> Callable:
    """``value_and_grad(params, points, cotangent)`` of a model ``call(params, points)``.

    Where the default backend has several devices, the points are spread over all of them
    along their first axis (one sharding, padded to a multiple of the devices with copies
    of the first points): one call uses every device, and each point's numbers are those
    of one device."""
    jax = require("jax")

    def value_and_grad(params, points, cotangent):
        n = points[0].shape[0]
        points, cotangent = _jax_sharding.spread(tuple(points), cotangent)
        out, pullback = jax.vjp(lambda *p: call(params, p), *points)
        grads = pullback(cotangent.reshape(out.shape).astype(out.dtype))
        if points[0].shape[0] != n:
            out, grads = out[:n], tuple(g[:n] for g in grads)
        return out, grads

    return value_and_grad


class JaxAdapter(Adapter):
    name = "jax"
    arrays = "jax arrays"
    compiles = True

    def __init__(self, model: Any, output_fn: Callable | None = None, functional: tuple | None = None):
        """``functional``: ``(apply(params, *points), params())`` (default: from the model's kind)."""
        jax = require("jax")
        self.xp = jax.numpy
        self.model, self.output_fn = model, output_fn
        self._functional = functional if functional is not None else _functional(model)
        apply, self._params = self._functional

        def call(params, points):
            out = apply(params, *points)
            return out if output_fn is None else output_fn(out)

        self._raw_value_and_grad = vjp_of(call)
        self._forward = jax.jit(call)
        self._value_and_grad = jax.jit(self._raw_value_and_grad)
        self._compiled: dict = {}  # the engine's few step functions -> their jitted form

    def forward(self, points: tuple):
        return self._forward(self._params(), tuple(points))

    def value_and_grad(self, points: tuple, cotangent):
        out, grads = self._value_and_grad(self._params(), tuple(points), cotangent)
        return out, tuple(grads)

    def compile(self, fn: Callable) -> Callable:
        if fn not in self._compiled:
            self._compiled[fn] = compile_jitted(fn, self._raw_value_and_grad, self._params)
        return self._compiled[fn]

    def is_out_of_memory(self, err: BaseException) -> bool:
        return "RESOURCE_EXHAUSTED" in str(err) and "emory" in str(err)

    def compose(self, fn: Callable) -> "JaxAdapter":
        adapter = JaxAdapter(self.model, fn, self._functional)
        adapter.name = self.name
        return adapter


def make(model: Any) -> JaxAdapter:
    return JaxAdapter(model)
