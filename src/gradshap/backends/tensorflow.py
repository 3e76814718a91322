"""TensorFlow adapter: ``tf.Module`` and plain callables of ``tf.Tensor``.

The VJP is a ``tf.GradientTape``. The engine's chunk step (interpolation, VJP, multiply,
reductions) and its small steps run as concrete functions of a ``tf.function``, one per
argument signature, traced once each (the engine keeps a call's chunks at one shape).
The steps are traced without AutoGraph (they have no Python control flow on tensors);
the model inside them is a ``tf.function`` of its own, traced with AutoGraph. Keras
models on the TensorFlow backend go through the Keras adapter, which reuses this one.

On a machine without a GPU, the steps of a model with no convolution or pooling op are
compiled with XLA (``jit_compile=True``, what Keras' ``jit_compile="auto"`` picks on this
backend): XLA fuses the engine's elementwise work into the VJP (the benchmark MLP's step
ran 1.7x faster per chunk). XLA's CPU convolutions are slower than TensorFlow's oneDNN
kernels (the small CNN's step ran 3.4x slower), so a model with such an op keeps the
plain graph. The choice is made once, from the ops of the model's forward graph; a step
XLA cannot compile falls back to the plain graph for good.

TensorFlow's global generator (``tf.random.get_global_generator()``) is left as found,
also when the model draws from it or the call fails. Nothing here runs an eager random
op, so the op-level seeds that ``tf.random.set_seed`` governs are untouched too.
"""

from __future__ import annotations

import sys
from typing import Any, Callable

from gradshap.backends import Adapter, _state, require
from gradshap.backends._tf_namespace import namespace


def recognizes(model: Any, arrays: tuple) -> bool:
    tf = sys.modules.get("tensorflow")
    if tf is None:
        return False
    return isinstance(model, tf.Module) or any(isinstance(a, (tf.Tensor, tf.Variable)) for a in arrays)


class TensorFlowAdapter(Adapter):
    name = "tensorflow"
    arrays = "tf.Tensor"
    compiles = True

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
                with tf.GradientTape() as tape:
                    tape.watch(points)
                    out = forward(points)
                grads = tape.gradient(
                    out, points, output_gradients=tf.reshape(tf.cast(cotangent, out.dtype), tf.shape(out)),
                    # An input the model ignores has no path to the output: its gradient is zero.
                    unconnected_gradients=tf.UnconnectedGradients.ZERO,
                )
                return out, tuple(grads)

            return value_and_grad

        # reduce_retracing: a later call with another chunk shape traces a shape-generic function.
        self._forward = tf.function(forward, reduce_retracing=True)
        self._value_and_grad = tf.function(value_and_grad_of(forward), reduce_retracing=True)
        self._raw_value_and_grad = value_and_grad_of(tf.function(forward))
        self._compiled: dict = {}  # (fn, static, xla, signature) -> its concrete function
        self._xla: bool | None = None  # decided at the first forward pass

    def forward(self, points: tuple):
        points = tuple(points)
        out = self._forward(points)
        if self._xla is None:
            self._xla = _xla_pays(self._tf, points, self._forward.get_concrete_function(points).graph)
        return out

    def value_and_grad(self, points: tuple, cotangent):
        return self._value_and_grad(tuple(points), cotangent)

    def compile(self, fn: Callable) -> Callable:
        tf = self._tf

        def traced(xla: bool, arrays: tuple, static: dict):
            key = (fn, tuple(sorted(static.items())), xla, _signature(arrays))
            found = self._compiled.pop(key, None)
            if found is None:
                xp, raw = self.xp, self._raw_value_and_grad
                found = tf.function(lambda *a: fn(xp, raw, *a, **static), jit_compile=xla,
                                    autograph=False).get_concrete_function(*arrays)
            self._compiled[key] = found  # the most recently used last
            while len(self._compiled) > 64:  # shapes not seen for long
                self._compiled.pop(next(iter(self._compiled)))
            return found

        def run(xp, *arrays, **static):
            if not self._xla:
                return traced(False, arrays, static)(*arrays)
            try:
                return traced(True, arrays, static)(*arrays)
            except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError):
                # An op XLA cannot compile; an error of the model's own is raised again by the plain graph.
                self._xla = False
                return traced(False, arrays, static)(*arrays)

        return run

    def is_out_of_memory(self, err: BaseException) -> bool:
        return isinstance(err, self._tf.errors.ResourceExhaustedError)

    def compose(self, fn: Callable) -> "TensorFlowAdapter":
        adapter = TensorFlowAdapter(self.model, fn, self._call_model)
        adapter.name = self.name
        return adapter

    def session(self):
        return _state.tensorflow_generator()


def _signature(arrays):
    """The nesting, shapes and dtypes of a step's arguments (a hashable key)."""
    if isinstance(arrays, (tuple, list)):
        return tuple(_signature(a) for a in arrays)
    shape = getattr(arrays, "shape", None)
    return arrays if shape is None else (tuple(shape), arrays.dtype)


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
    if not callable(model):
        msg = f"`model` must be a tf.Module or a callable of tf.Tensor; got {type(model).__name__}"
        raise TypeError(msg)
    return TensorFlowAdapter(model)
