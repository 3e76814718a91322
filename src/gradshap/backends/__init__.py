"""Framework adapters. Each module here has the same small shape:

- ``recognizes(model, arrays) -> bool``: looks only at ``sys.modules``; never imports.
- ``make(model) -> Adapter``: imports its framework and wraps the model.

An adapter supplies what the engine cannot write in the array API: the model's forward
pass and one vector-Jacobian product per chunk, on the model's own device and dtype, a
way to compile the engine's chunk step where its framework compiles, and the model's
state kept for the call.
"""

from __future__ import annotations

import contextlib
import importlib
from typing import Any, Callable

__all__ = ["Adapter", "FRAMEWORKS", "composer", "detect", "make", "require"]

#: Frameworks in the order they are tried. Keras comes first because a Keras model on
#: the torch backend is also a torch.nn.Module, and on TensorFlow a tf.Module.
FRAMEWORKS = ("keras", "torch", "tensorflow", "jax", "numpy")

#: The extra of pyproject.toml that installs each module (tests/test_packaging.py checks
#: that the extra named in every install hint lists the package).
_EXTRAS = {"torch": "torch", "jax": "jax", "tensorflow": "tensorflow", "keras": "keras",
           "flax": "jax", "optax": "jax", "tqdm": "plots", "matplotlib": "plots",
           "sklearn": "demo", "shap": "shap", "captum": "bench"}


def require(module: str, extra: str | None = None):
    """Import ``module`` or raise an ImportError that says what to install."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        extra = extra or _EXTRAS.get(module.split(".")[0], module)
        msg = f"this needs `{module}`, which is not installed: pip install gradshap[{extra}]"
        raise ImportError(msg) from err


class Adapter:
    """What every adapter provides: the seven members below, the same in every backend module.

    Points are always a tuple, one array per model input. Everything else (sampling,
    tiling, interpolation, accumulation, statistics) is the engine's.
    """

    name: str = "?"
    #: Array namespace of the model's arrays (``None``: whatever the inputs' namespace is).
    xp: Any = None
    #: True where :meth:`compile` compiles, once per shape of its arguments (JAX,
    #: tf.function): the engine then keeps every chunk of a call at one shape.
    compiles: bool = False
    #: The arrays the model takes, in words (for errors), and whether NumPy arrays are among them.
    arrays: str = "arrays of its framework"
    takes_numpy: bool = False

    def forward(self, points: tuple):
        """Model outputs at ``points``, without gradients."""
        raise NotImplementedError

    def value_and_grad(self, points: tuple, cotangent) -> tuple[Any, tuple]:
        """Outputs at ``points`` and the VJP of the outputs with ``cotangent`` ``(m, K)``."""
        raise NotImplementedError

    def compile(self, fn: Callable) -> Callable:
        """``fn(xp, value_and_grad, *arrays, **static)`` as a callable ``(xp, *arrays, **static)``.

        ``fn`` is pure array code with shapes fixed by its arguments (``arrays``: arrays,
        tuples and lists of arrays, or ``None``; ``static``: hashable Python values). A
        compiling framework compiles it once per argument shapes and static values, the
        model's VJP inside; by default it runs eagerly with :meth:`value_and_grad`.
        """
        return lambda xp, *arrays, **static: fn(xp, self.value_and_grad, *arrays, **static)

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
    if framework == "tensorflow" and _module("keras").recognizes(model, arrays):
        framework = "keras"  # a Keras model on TensorFlow: called with training=False
    return _module(framework).make(model)


def composer(adapter: Adapter, kept: int = 8) -> Callable:
    """``compose(fn)``: ``adapter.compose(fn)``, the same object for the same ``fn`` (the last
    ``kept``), so that a compiling adapter compiles once for a target passed again. The
    explainer that owns ``adapter`` keeps it."""
    made: dict = {}

    def compose(fn: Callable) -> Adapter:
        try:
            found = made.pop(fn, None)
        except TypeError:  # an unhashable callable
            return adapter.compose(fn)
        made[fn] = found if found is not None else adapter.compose(fn)
        while len(made) > kept:
            made.pop(next(iter(made)))
        return made[fn]

    return compose
