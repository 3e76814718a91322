"""Small array helpers every layer needs: the bottom of gradshap's imports.

They look at arrays without importing any framework (``sys.modules`` only).
"""

from __future__ import annotations

import math
import sys
from typing import Any

import array_api_compat as aac
import numpy as np

from gradshap.backends import _tf_namespace

__all__ = ["aligned_empty", "as_inputs", "device_of", "from_host", "is_lazy", "is_tf_tensor", "namespace_of",
           "shape_str", "to_numpy", "type_name"]


def shape_str(shape: tuple) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def type_name(obj: Any) -> str:
    t = type(obj)
    return f"{t.__module__}.{t.__qualname__}" if t.__module__ != "builtins" else t.__qualname__


def as_inputs(value: Any, name: str) -> tuple:
    """A model's input(s) as a tuple: one array, or a tuple/list of arrays for several inputs."""
    if isinstance(value, (tuple, list)):
        if len(value) == 0:
            msg = f"`{name}` is an empty {type(value).__name__}; expected an array or a tuple of arrays"
            raise ValueError(msg)
        return tuple(value)
    return (value,)


def is_lazy(a: Any) -> bool:
    """True for arrays whose values are not known yet (JAX tracers, inside ``jax.jit``):
    skip value checks.

    Not ``array_api_compat.is_lazy_array``, which says True for every JAX array, concrete
    ones included: it would let NaN inputs and out-of-range targets through unchecked.
    """
    jax_core = sys.modules.get("jax.core")
    return jax_core is not None and isinstance(a, jax_core.Tracer)


def device_of(xp, a: Any):
    """The device of ``a``; namespaces array-api-compat does not cover (TensorFlow) say it."""
    return aac.device(a) if aac.is_array_api_obj(a) else xp.device(a)


def namespace_of(arrays: tuple, name: str):
    """The array namespace of ``arrays``, with a clear error for non-arrays."""
    for k, a in enumerate(arrays):
        if not aac.is_array_api_obj(a) and not is_tf_tensor(a):
            where = f"`{name}`" if len(arrays) == 1 else f"`{name}[{k}]`"
            msg = (
                f"{where} must be an array of the model's framework (numpy.ndarray, "
                f"torch.Tensor, jax.Array, tf.Tensor); got {type_name(a)}"
            )
            raise TypeError(msg)
    kinds = sorted({type_name(a) for a in arrays})
    msg = (
        f"`x` and `background` must be arrays of one framework (the model's); got "
        f"{', '.join(kinds)}. gradshap never converts silently: convert them to one type"
    )
    tf_flags = [is_tf_tensor(a) for a in arrays]
    if any(tf_flags):
        if not all(tf_flags):
            raise TypeError(msg)
        return _tf_namespace.namespace()
    try:
        return aac.array_namespace(*arrays)
    except TypeError as err:
        raise TypeError(msg) from err


def is_tf_tensor(a: Any) -> bool:
    """True for a ``tf.Tensor`` or ``tf.Variable`` (array-api-compat does not cover TensorFlow)."""
    tf = sys.modules.get("tensorflow")
    return tf is not None and isinstance(a, (tf.Tensor, tf.Variable))


def to_numpy(a: Any) -> Any:
    """A NumPy copy of an array of any framework (tuples map elementwise).

    Floating dtypes NumPy lacks (bfloat16, float8) come back as float32, which holds
    each of their values exactly; every framework's bfloat16 gives the same array.
    """
    if a is None:
        return None
    if isinstance(a, (tuple, list)):
        return tuple(to_numpy(v) for v in a)
    if aac.is_torch_array(a):
        a = a.detach().cpu()
        narrow = a.dtype.is_floating_point and a.itemsize < 4 and str(a.dtype) != "torch.float16"
        return (a.float() if narrow else a).numpy()
    if not isinstance(a, np.ndarray):
        a = a.numpy() if hasattr(a, "numpy") and not aac.is_array_api_obj(a) else np.asarray(a)  # tf.Tensor
    # ml_dtypes' floats (what JAX and TensorFlow give NumPy for bfloat16) have kind "V".
    return a.astype(np.float32) if a.dtype.kind == "V" and a.dtype.names is None else a


def aligned_empty(shape: tuple, dtype) -> np.ndarray:
    """``np.empty(shape, dtype)`` at a 64-byte aligned address: JAX shares such memory
    (:func:`from_host`), and copies memory aligned less."""
    size = math.prod(shape) * np.dtype(dtype).itemsize
    raw = np.empty(size + 64, dtype=np.uint8)
    skip = -raw.ctypes.data % 64
    return raw[skip : skip + size].view(dtype).reshape(shape)


def from_host(xp, a: np.ndarray, device):
    """``a``, host memory no longer written, as an ``xp`` array on ``device``: shared, not
    copied, where the namespace can (NumPy, torch, JAX on the CPU)."""
    if hasattr(xp, "from_dlpack"):
        shared = xp.from_dlpack(a)
        if device_of(xp, shared) == device:
            return shared
    return xp.asarray(a, device=device)
