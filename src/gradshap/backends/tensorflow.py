"""TensorFlow adapter: ``tf.Module`` and plain callables of ``tf.Tensor``.

The VJP is a ``tf.GradientTape`` inside a ``tf.function``. The engine's whole chunk step
(interpolation, VJP, multiply, reductions) runs as one ``tf.function`` too
(:meth:`TensorFlowAdapter.fuse`), traced once per chunk shape; the engine pads every
chunk to one shape, so a long call traces once. Keras
models on the TensorFlow backend go through the Keras adapter, which reuses this one.

On a machine without a GPU, the step of a model with no convolution or pooling op is
compiled with XLA (``jit_compile=True``, what Keras' own ``jit_compile="auto"`` picks on
this backend): XLA fuses the engine's elementwise work into the VJP's loops, and on the
benchmark MLP (``benchmarks/``) the step ran 1.7x faster per chunk. XLA's CPU
convolutions are slower than TensorFlow's oneDNN kernels (the small CNN's step ran 3.4x
slower), so a model with such an op keeps the plain graph. The choice is made from the
ops of the model's forward graph (traced once); a step XLA cannot compile falls back to
the plain graph for good. Where XLA compiles the step, a call runs as a few programs, as on
JAX (:meth:`TensorFlowAdapter.row_loop`): the outputs, each piece of rows looping over its
chunks inside (``tf.map_fn``), and the results; the benchmark MLP's call ran 13.8 -> 10.1
ms, its floor 8.4 ms.

The engine's steps are traced without AutoGraph (they have no Python control flow on
tensors); the model inside them is a ``tf.function`` of its own, traced with AutoGraph once
per shape of points, whichever step or program calls it.

TensorFlow's global generator (``tf.random.get_global_generator()``) is left as found,
also when the model draws from it or the call fails. Nothing here runs an eager random
op, so the op-level seeds that ``tf.random.set_seed`` governs are untouched too (the
model itself runs inside a ``tf.function``, whose random ops take graph-level seeds).

array-api-compat does not cover TensorFlow, so :func:`namespace` gives the engine the
few array operations it uses (those of ``_engine``, ``_targets`` and ``_validation``),
all as TensorFlow ops on the tensors' own device: no host round trip.
"""

from __future__ import annotations

import contextlib
import functools
import numbers
import sys
from typing import Any, Callable

import numpy as np

from gradshap.backends import Adapter, is_light, require


def recognizes(model: Any, arrays: tuple) -> bool:
    tf = sys.modules.get("tensorflow")
    if tf is None:
        return False
    return isinstance(model, tf.Module) or any(isinstance(a, (tf.Tensor, tf.Variable)) for a in arrays)


def single_output(out):
    """``out`` if it is one array; a clear error for a list, tuple or dict of outputs."""
    if isinstance(out, dict):
        key = next(iter(out), "name")
        msg = (
            f"the model returns a dict of {len(out)} outputs (keys {', '.join(map(repr, out))}); "
            "gradshap explains one array of outputs: select one with a callable `target`, e.g. "
            f"target=lambda outputs: outputs[{key!r}][:, 0]"
        )
        raise TypeError(msg)
    if isinstance(out, (list, tuple)):
        msg = (
            f"the model returns a {type(out).__name__} of {len(out)} outputs; gradshap explains one "
            "array of outputs: select one with a callable `target`, e.g. "
            "target=lambda outputs: outputs[0][:, 0]"
        )
        raise TypeError(msg)
    return out


class _Namespace:
    """An array-API-shaped namespace over tf.Tensor, limited to what gradshap's engine uses."""

    def __init__(self, tf):
        self._tf = tf
        for name in ("bool", "int32", "int64", "float16", "bfloat16", "float32", "float64"):
            setattr(self, name, getattr(tf, name))

    def _placed(self, device):
        return contextlib.nullcontext() if device is None else self._tf.device(device)

    def asarray(self, obj, dtype=None, device=None):
        tf = self._tf
        if dtype is None and isinstance(obj, numbers.Number) and not isinstance(obj, bool):
            # The array API's default dtypes, not TF's int32 for Python ints.
            dtype = tf.int64 if isinstance(obj, numbers.Integral) else tf.float32
        with self._placed(device):
            t = tf.convert_to_tensor(obj)
            t = t if dtype is None or t.dtype == dtype else tf.cast(t, dtype)
            return t if device is None else tf.identity(t)

    def astype(self, x, dtype, copy=True):
        return x if x.dtype == dtype and not copy else self._tf.cast(x, dtype)

    def device(self, x):
        return x.device

    def take(self, x, indices, axis=None):
        return self._tf.gather(x, indices, axis=axis)

    def reshape(self, x, shape):
        return self._tf.reshape(x, shape)

    def expand_dims(self, x, axis=0):
        return self._tf.expand_dims(x, axis)

    def broadcast_to(self, x, shape):
        return self._tf.broadcast_to(x, shape)

    def concat(self, arrays, axis=0):
        return self._tf.concat(list(arrays), axis)

    def stack(self, arrays, axis=0):
        return self._tf.stack(list(arrays), axis)

    def mean(self, x, axis=None):
        return self._tf.reduce_mean(x, axis)

    def sum(self, x, axis=None):
        return self._tf.reduce_sum(x, axis)

    def any(self, x, axis=None):
        return self._tf.reduce_any(x, axis)

    def all(self, x, axis=None):
        return self._tf.reduce_all(x, axis)

    def sqrt(self, x):
        return self._tf.sqrt(x)

    def isfinite(self, x):
        return self._tf.math.is_finite(x)

    def argmax(self, x, axis=None):
        return self._tf.argmax(x, axis=axis, output_type=self._tf.int64)

    def full(self, shape, fill_value, dtype=None, device=None):
        with self._placed(device):
            return self._tf.fill(shape, self._tf.constant(fill_value, dtype=dtype or self._tf.float32))

    def ones(self, shape, dtype=None, device=None):
        with self._placed(device):
            return self._tf.ones(shape, dtype=dtype or self._tf.float32)

    def arange(self, start, stop=None, step=1, dtype=None, device=None):
        with self._placed(device):
            return self._tf.range(start, stop, step, dtype=dtype or self._tf.int64)

    def finfo(self, dtype):
        import ml_dtypes  # a TensorFlow dependency; knows bfloat16 too

        return ml_dtypes.finfo(self._tf.as_dtype(dtype).as_numpy_dtype)

    def isdtype(self, dtype, kind):
        if isinstance(kind, tuple):
            return any(self.isdtype(dtype, k) for k in kind)
        dtype = self._tf.as_dtype(dtype)
        kinds = {
            "bool": dtype.is_bool,
            "real floating": dtype.is_floating,
            "complex floating": dtype.is_complex,
            "integral": dtype.is_integer,
            "signed integer": dtype.is_integer and not dtype.is_unsigned,
            "unsigned integer": dtype.is_integer and dtype.is_unsigned,
        }
        if isinstance(kind, str):
            if kind == "numeric":
                return dtype.is_integer or dtype.is_floating or dtype.is_complex
            return kinds[kind]
        return dtype == kind


@contextlib.contextmanager
def global_generator_guard():
    """TensorFlow's global ``tf.random.Generator`` as found: the same object, in the same state.

    Read from its module without ``tf.random.get_global_generator()``, which would create
    one (and raises under op determinism when none is set). A generator the call created
    is dropped again. Does nothing unless TensorFlow is already imported.
    """
    ops = sys.modules.get("tensorflow.python.ops.stateful_random_ops")
    found = getattr(ops, "global_generator", None)
    state = None if found is None else found.state.numpy()
    try:
        yield
    finally:
        if ops is not None:
            ops.global_generator = found
            if found is not None:
                found.state.assign(state)


@functools.lru_cache(maxsize=None)
def namespace() -> _Namespace:
    """The array namespace gradshap's engine uses for ``tf.Tensor`` inputs."""
    return _Namespace(require("tensorflow"))


class TensorFlowAdapter(Adapter):
    name = "tensorflow"
    pads = True

    def __init__(self, model: Callable, output_fn: Callable | None = None, call: Callable | None = None):
        tf = self._tf = require("tensorflow")
        self.xp = namespace()
        self.model, self.output_fn = model, output_fn
        self._call_model = call if call is not None else (lambda points: model(*points))

        def forward(points):
            out = self._call_model(points)
            return out if output_fn is None else output_fn(out)

        def value_and_grad_of(forward: Callable) -> Callable:
            def value_and_grad(points, cotangent):
                if cotangent is None:  # the outputs alone (the engine's programs)
                    return single_output(forward(points)), None
                with tf.GradientTape() as tape:
                    tape.watch(points)
                    out = single_output(forward(points))
                grads = tape.gradient(
                    out, points, output_gradients=tf.reshape(tf.cast(cotangent, out.dtype), tf.shape(out)),
                    # An input the model ignores has no path to the output: its gradient is zero.
                    unconnected_gradients=tf.UnconnectedGradients.ZERO,
                )
                return out, tuple(grads)

            return value_and_grad

        # reduce_retracing: a later call with another chunk shape traces a shape-generic
        # function instead of one more per shape.
        self._forward = tf.function(forward, reduce_retracing=True)
        self._value_and_grad = tf.function(value_and_grad_of(forward), reduce_retracing=True)
        # The fused steps are traced without AutoGraph (see fuse); the model inside them is
        # a function of its own, traced with it, so that its Python control flow on tensors
        # still becomes graph ops.
        self._raw_value_and_grad = value_and_grad_of(tf.function(forward))
        self._fused: dict = {}  # (step, jit_compile, signature) -> its concrete function
        self._xla: bool | None = None  # decided at the first forward pass or row_loop (see the module doc)
        # One object for the adapter's life: the engine keeps its programs by it.
        self._map_rows = functools.partial(map_rows, tf)

    def forward(self, points: tuple):
        points = tuple(points)
        # Checked out here, not in the trace, where TensorFlow would rewrite the message.
        out = single_output(self._forward(points))
        self._decide_xla(points)
        return out

    def _decide_xla(self, points: tuple) -> bool:
        """Whether the steps compile with XLA, decided once from the model's forward graph
        at ``points`` (see the module doc); a model that fails to trace raises here."""
        if self._xla is None:
            self._xla = _xla_pays(self._tf, points, self._forward.get_concrete_function(points).graph)
        return self._xla

    def value_and_grad(self, points: tuple, cotangent):
        return self._value_and_grad(tuple(points), cotangent)

    def step_array(self, xp, a, *, dtype=None, device=None):
        if xp is not self.xp:
            return super().step_array(xp, a, dtype=dtype, device=device)
        # An eager constant, made in the device scope (no op to move it): a tf.function
        # called with NumPy arguments spends about 25 us more per array converting them
        # itself than tf.constant takes.
        host = np.asarray(a, dtype=None if dtype is None else self._tf.as_dtype(dtype).as_numpy_dtype)
        with self.xp._placed(device):
            return self._tf.constant(host)

    def split_rows(self, xp, a, sizes: list) -> list:
        if xp is not self.xp or len(sizes) == 1:
            return super().split_rows(xp, a, sizes)
        return self._tf.split(a, list(sizes))  # one op, where a slice per piece costs one each

    def fuse(self, step: Callable) -> Callable:
        # One concrete function per step, compilation (XLA or not) and argument signature,
        # traced once and kept (the engine keeps one chunk shape per call, so there are
        # few): calling it skips the tf.function's dispatch (about 120 us a call with the
        # engine's nested arguments), and a tf.function traced at each new row count would
        # warn of "retracing" after five in its last ten calls. Shapes are static (the
        # step reads them). The model runs inside, as in value_and_grad: its random ops
        # take graph-level seeds, and nothing leaves the device. Traced without AutoGraph:
        # the engine's steps are array code with no control flow on tensors, and
        # converting them took most of a first call (the MLP of benchmarks/: 703 -> 493 ms,
        # one step per chunk).
        eager = super().fuse(step)

        def traced(xla: bool, arrays: tuple):
            key = (step, xla, _signature(arrays))
            fn = self._fused.pop(key, None)
            if fn is None:
                xp, raw = self.xp, self._raw_value_and_grad
                fn = self._tf.function(lambda *arrays: step(xp, raw, *arrays), jit_compile=xla,
                                       autograph=False).get_concrete_function(*arrays)
            self._fused[key] = fn  # the most recently used last
            while len(self._fused) > _FUSED_KEPT:  # shapes not seen for long
                self._fused.pop(next(iter(self._fused)))
            return fn

        def run(xp, *arrays):
            if xp is not self.xp:
                return eager(xp, *arrays)
            # A light step (no VJP) runs as fast as a plain graph, which is cheaper to build.
            if not self._xla or is_light(step):
                return traced(False, arrays)(*arrays)
            try:
                return traced(True, arrays)(*arrays)
            except (self._tf.errors.InvalidArgumentError, self._tf.errors.UnimplementedError):
                # An op XLA cannot compile (raised at a shape's first call). An error of the
                # model's own is raised again by the plain graph.
                self._xla = False
                return traced(False, arrays)(*arrays)

        return run

    def row_loop(self, points: tuple) -> Callable | None:
        # Where the step compiles with XLA (see the module doc), a loop over chunks inside
        # one compiled program; elsewhere (a GPU, convolutions) one step per chunk.
        try:
            xla = self._decide_xla(tuple(points))
        except Exception:  # the model's own error: the per-chunk path raises it where it says more
            return None
        return self._map_rows if xla else None

    def compose(self, fn: Callable) -> "TensorFlowAdapter":
        adapter = TensorFlowAdapter(self.model, fn, self._call_model)
        adapter.name = self.name
        return adapter

    def session(self):
        return global_generator_guard()


# Fused steps kept per adapter, by step, compilation and argument signature.
_FUSED_KEPT = 64


def _signature(arrays):
    """The nesting, shapes and dtypes of the arguments of a fused step (a hashable key)."""
    if isinstance(arrays, (tuple, list)):
        return tuple(_signature(a) for a in arrays)
    shape = getattr(arrays, "shape", None)
    return arrays if shape is None else (tuple(shape), arrays.dtype)  # (None, or a constant)


def map_rows(tf, fn: Callable, arrays):
    """``fn`` over the leading axis of ``arrays`` inside a ``tf.function``, one chunk after
    the other (``parallel_iterations=1``: memory stays one chunk's), the results stacked.

    ``tf.map_fn`` needs the results' structure, shapes and dtypes up front: they are read
    from ``fn`` traced apart, on specs of one chunk. (Called on the first chunk inside this
    graph instead, a plain graph would run that call's stateful ops: the model's random
    draws and host callbacks.)
    """
    specs = tf.nest.map_structure(lambda a: tf.TensorSpec(a.shape[1:], a.dtype), arrays)
    out = tf.function(fn, autograph=False).get_concrete_function(specs).structured_outputs
    signature = tf.nest.map_structure(lambda t: tf.TensorSpec(t.shape, t.dtype), out)
    return tf.map_fn(fn, arrays, fn_output_signature=signature, parallel_iterations=1)


# Op types whose XLA CPU kernels are slower than TensorFlow's own (oneDNN) ones.
_SLOW_UNDER_XLA = ("Conv", "Pool")


def _xla_pays(tf, points: tuple, graph) -> bool:
    """Whether the chunk step should be compiled with XLA: no GPU, inputs on the CPU, and no
    op in the model's forward ``graph`` (nested functions included) of :data:`_SLOW_UNDER_XLA`."""
    if tf.config.list_logical_devices("GPU") or not all("CPU" in p.device.upper() for p in points):
        return False
    graph_def = graph.as_graph_def()
    ops = {node.op for node in graph_def.node}
    ops.update(node.op for fn in graph_def.library.function for node in fn.node_def)
    return not any(slow in op for op in ops for slow in _SLOW_UNDER_XLA)


def make(model: Any) -> Adapter:
    keras = sys.modules.get("keras")
    if keras is not None and isinstance(model, keras.Layer):
        from gradshap.backends import keras as keras_backend

        return keras_backend.make(model)
    if not callable(model):
        msg = f"`model` must be a tf.Module or a callable of tf.Tensor; got {type(model).__name__}"
        raise TypeError(msg)
    return TensorFlowAdapter(model)
