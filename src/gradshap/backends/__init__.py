"""Framework adapters. Each module here has the same small shape:

- ``recognizes(model, arrays) -> bool``: looks only at ``sys.modules``; never imports.
- ``make(model) -> Adapter``: imports its framework and wraps the model.

An adapter supplies what the engine cannot write in the array API: the model's forward
pass and one vector-Jacobian product per chunk, on the model's own device and dtype.
Everything else (sampling, interpolation, accumulation, statistics, batching) is the
engine's.
"""

from __future__ import annotations

import contextlib
import importlib
from typing import Any, Callable

import numpy as np

__all__ = ["Adapter", "FRAMEWORKS", "detect", "is_light", "light", "make", "require"]

#: Frameworks in the order they are tried. Keras comes first because a Keras model on
#: the torch backend is also a torch.nn.Module, and on TensorFlow a tf.Module.
FRAMEWORKS = ("keras", "torch", "tensorflow", "jax", "numpy")

_EXTRAS = {"torch": "torch", "jax": "jax", "tensorflow": "tensorflow", "keras": "keras",
           "flax": "jax", "equinox": "jax", "tqdm": "plots", "matplotlib": "plots"}


def require(module: str, extra: str | None = None):
    """Import ``module`` or raise an ImportError that says what to install."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        extra = extra or _EXTRAS.get(module.split(".")[0], module)
        msg = f"this needs `{module}`, which is not installed: pip install gradshap[{extra}]"
        raise ImportError(msg) from err


def light(step: Callable) -> Callable:
    """Marks an engine step for :meth:`Adapter.fuse` as light: a few array ops and at most
    the model's forward pass, no VJP. An adapter may build such a step more cheaply
    (TensorFlow: a plain graph, not XLA)."""
    step.light = True
    return step


def is_light(step: Callable) -> bool:
    """Whether ``step`` (or the function of a ``functools.partial``) is marked :func:`light`."""
    return getattr(getattr(step, "func", step), "light", False)


class Adapter:
    """What every adapter provides. Points are always a tuple, one array per model input."""

    name: str = "?"
    #: Array namespace of the model's arrays.
    xp: Any = None
    #: True where each new chunk shape costs a compile or trace (JAX, tf.function): the
    #: engine then pads every chunk to one shape.
    pads: bool = False
    #: True where each eager op compiles anew at each new shape (JAX): the engine then runs
    #: a call's results as one program through :meth:`fuse`, not as a dozen eager ops
    #: (JAX's small CNN of benchmarks/ compiled them in 0.6-1.0 s per new row count).
    eager_compiles: bool = False

    def forward(self, points: tuple):
        """Model outputs at ``points``, without gradients."""
        raise NotImplementedError

    def value_and_grad(self, points: tuple, cotangent) -> tuple[Any, tuple]:
        """Outputs at ``points`` and the VJP of the outputs with ``cotangent`` (m, K)."""
        raise NotImplementedError

    def fuse(self, step: Callable) -> Callable:
        """``step(xp, value_and_grad, *arrays)`` as a callable ``(xp, *arrays)``.

        The engine hands its per-chunk work (interpolation, VJP, multiply, reductions) to
        ``step``, a pure function of arrays and tuples of arrays with static shapes. An
        adapter for a compiling framework may compile it whole, once per shape; by default
        it runs eagerly with :meth:`value_and_grad`.
        """
        return lambda xp, *arrays: step(xp, self.value_and_grad, *arrays)

    def row_loop(self, points: tuple) -> Callable | None:
        """``None``, or where :meth:`fuse` compiles whole programs and a loop inside one runs
        this model at full speed (JAX, but for convolutions on CPU; TensorFlow where XLA
        compiles the step): ``map_rows(fn, arrays)``, ``fn`` applied inside the program to
        each slice along the leading axis of ``arrays`` (a tuple of arrays and tuples of
        arrays), the results stacked. The engine keeps its programs by the object returned:
        return the same one for the same model.

        With it the engine runs a call as a few programs that loop over their chunks
        inside, and hands :meth:`fuse` steps that call ``value_and_grad(points, None)`` for
        the outputs alone; without it, one compiled step per chunk. ``points``: the rows
        to explain. Called inside :meth:`session`.
        """
        return None

    def wait(self, arrays) -> None:
        """Block until ``arrays`` (a tuple of arrays and tuples of arrays) are computed.

        The engine's programs (:meth:`row_loop`) wait for one piece of rows before queuing
        the next: XLA's CPU runtime runs queued programs at once, each with its own
        buffers, and peak memory then grew with the rows. Eager adapters have nothing to
        wait for.
        """

    def step_array(self, xp, a, *, dtype=None, device=None):
        """A small host (NumPy) array (indices, weights) as an argument of a fused step or
        an operand of the engine's eager ops on ``xp`` arrays: in ``xp`` on ``device``.

        An adapter may return it as it is where its framework moves NumPy operands itself
        (JAX, into a compiled step and into its own ops, beside their other operand: much
        cheaper than an eager ``jnp.asarray(..., device=...)``), or in another cheap form
        (TensorFlow: an eager constant).
        """
        return xp.asarray(a, dtype=dtype, device=device)

    def split_rows(self, xp, a, sizes: list) -> list:
        """``a`` cut along its first axis into pieces of ``sizes`` rows (summing to all of them).

        The engine's row groups; an adapter whose eager ops cost a dispatch each (JAX,
        TensorFlow) cuts them with one op.
        """
        if len(sizes) == 1:
            return [a]
        starts = np.cumsum([0, *sizes])
        return [a[i:j, ...] for i, j in zip(starts[:-1], starts[1:])]

    def compose(self, fn: Callable) -> "Adapter":
        """The same model followed by ``fn`` (a callable target)."""
        raise NotImplementedError

    def is_out_of_memory(self, err: BaseException) -> bool:
        """True when ``err`` says the device ran out of memory (the engine then halves the batch)."""
        return False

    def session(self) -> contextlib.AbstractContextManager:
        """Context for one explanation: inference mode, with all model state restored after."""
        return contextlib.nullcontext()


def _module(name: str):
    return importlib.import_module(f"gradshap.backends.{name}")


def detect(model: Any, arrays: tuple) -> str:
    """The framework of ``model`` and ``arrays``, without importing any framework."""
    for name in FRAMEWORKS:
        if _module(name).recognizes(model, arrays):
            return name
    kinds = ", ".join(type(a).__name__ for a in arrays)
    msg = (
        f"could not tell the framework of `model` ({type(model).__name__}) with arrays of type "
        f"{kinds}; pass framework= one of {', '.join(map(repr, FRAMEWORKS))}"
    )
    raise TypeError(msg)


def make(model: Any, framework: str | None, arrays: tuple) -> Adapter:
    """An adapter for ``model``; ``framework=None`` detects it."""
    if framework is None:
        framework = detect(model, arrays)
    if framework not in FRAMEWORKS:
        msg = f"`framework` must be one of {', '.join(map(repr, FRAMEWORKS))} or None; got {framework!r}"
        raise ValueError(msg)
    return _module(framework).make(model)
