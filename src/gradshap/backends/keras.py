"""Keras 3 adapter: a ``keras.Model`` (or layer) on the TensorFlow, JAX or torch backend.

Always called with ``training=False``; variables (BatchNorm statistics included) are never
written. Per backend:

- jax: the JAX adapter on ``model.stateless_call(trainable, non_trainable, x,
  training=False)``, the variables as arguments (read afresh at every call);
- tensorflow, torch: the TensorFlow or torch adapter on ``model(x, training=False)``.

Inputs may be the backend's tensors or NumPy arrays (as Keras itself accepts); NumPy in
gives NumPy out. A model with several inputs receives them as one list, the Keras way.

Keras' global ``SeedGenerator`` (what ``keras.random`` functions draw from when given no
seed, reset by ``keras.utils.set_random_seed``) is left as found, also when the model
draws from it or the call fails; the backend's adapter restores the backend's own global
generator (torch's, TensorFlow's).
"""

from __future__ import annotations

import contextlib
import inspect
import sys
from typing import Any, Callable

import numpy as np

from gradshap.backends import Adapter, _state, require
from gradshap.backends.jax import JaxAdapter
from gradshap.backends.tensorflow import TensorFlowAdapter
from gradshap.backends.torch import TorchAdapter


def recognizes(model: Any, arrays: tuple) -> bool:
    keras = sys.modules.get("keras")
    return keras is not None and isinstance(model, keras.Layer)


def _pack(points):
    return points[0] if len(points) == 1 else list(points)


def _stateless(model: Any) -> tuple:
    """``(apply(variables, *points), variables())``: ``stateless_call`` with ``training=False``,
    the variables read afresh at every call (the JAX adapter passes them as arguments)."""
    # stateless_call runs `call` directly, which may not take `training`.
    params = inspect.signature(model.call).parameters
    kwargs = {"training": False} if "training" in params or any(
        p.kind is p.VAR_KEYWORD for p in params.values()) else {}

    def apply(variables, *points):
        return model.stateless_call(*variables, _pack(points), **kwargs)[0]

    def variables():
        return [v.value for v in model.trainable_variables], [v.value for v in model.non_trainable_variables]

    return apply, variables


class KerasAdapter(Adapter):
    """The backend's adapter, taking NumPy arrays too: the engine then runs eagerly in NumPy
    (its ``xp`` is not this one's) and each VJP converts in and back out."""

    name = "keras"
    takes_numpy = True

    def __init__(self, inner: Adapter):
        self.inner, self.xp, self.compiles = inner, inner.xp, inner.compiles
        self._keras = require("keras")
        self._ops = self._keras.ops
        backend = self._keras.backend.backend()
        self.arrays = f"NumPy arrays or {backend} tensors (Keras runs on {backend})"

    def _native(self, points: tuple) -> tuple:
        host = isinstance(points[0], np.ndarray)
        return host, tuple(self._ops.convert_to_tensor(p) for p in points) if host else points

    def _out(self, host: bool, a):
        return self._ops.convert_to_numpy(a) if host else a

    def forward(self, points: tuple):
        host, points = self._native(points)
        return self._out(host, self.inner.forward(points))

    def value_and_grad(self, points: tuple, cotangent):
        host, points = self._native(points)
        cotangent = self._ops.convert_to_tensor(cotangent) if host else cotangent
        out, grads = self.inner.value_and_grad(points, cotangent)
        return self._out(host, out), tuple(self._out(host, g) for g in grads)

    def compile(self, fn: Callable) -> Callable:
        return self.inner.compile(fn)

    def compose(self, fn: Callable) -> "KerasAdapter":
        return KerasAdapter(self.inner.compose(fn))

    def is_out_of_memory(self, err: BaseException) -> bool:
        return self.inner.is_out_of_memory(err)

    @contextlib.contextmanager
    def session(self):
        with _state.keras_seed_generator(self._keras), self.inner.session():
            yield


def _check_continuous_inputs(keras, model) -> None:
    """Token-id models: gradients with respect to integer ids do not exist."""
    try:
        inputs = model.inputs  # functional models and Sequential models with an Input
    except AttributeError:
        inputs = None
    dtypes = [keras.backend.standardize_dtype(t.dtype) for t in (inputs or [])]
    integer = [d for d in dtypes if "int" in d or d == "bool"]
    first = model.layers[0] if getattr(model, "layers", None) else None
    if integer or isinstance(first, keras.layers.Embedding):
        what = f"inputs of dtype {', '.join(integer)}" if integer else f"an Embedding first layer ({first.name!r})"
        msg = (
            f"`model` takes integer token ids or categories ({what}); gradients with respect to "
            "them do not exist. Explain the embedding output instead: pass layer=<the Embedding "
            "layer or its name> to the explainer (docs/layers.md)"
        )
        raise TypeError(msg)


def make(model: Any) -> Adapter:
    keras = require("keras")
    if not isinstance(model, keras.Layer):
        msg = f"`model` must be a keras.Model or keras.Layer; got {type(model).__name__}"
        raise TypeError(msg)
    _check_continuous_inputs(keras, model)
    return wrap(model)


def wrap(model: Any) -> Adapter:
    """The adapter of a ``keras.Layer`` on this backend, without :func:`make`'s check of its
    inputs (a layer split's body takes token ids and is only ever run forward)."""
    keras = require("keras")
    backend = keras.backend.backend()
    if backend == "jax":
        return KerasAdapter(JaxAdapter(model, functional=_stateless(model)))
    call = lambda points: model(_pack(points), training=False)  # noqa: E731
    if backend == "torch":
        return KerasAdapter(TorchAdapter(model, call=call))
    if backend == "tensorflow":
        return KerasAdapter(TensorFlowAdapter(model, call=call))
    msg = f"Keras backend {backend!r} is not supported; use tensorflow, jax or torch"
    raise NotImplementedError(msg)
