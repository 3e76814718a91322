"""TensorFlow's array namespace: the few array-API operations gradshap's engine uses.

array-api-compat does not cover TensorFlow, so :func:`namespace` gives the engine these
operations as TensorFlow ops on the tensors' own device: no host round trip. Importing
this module imports no framework.
"""

from __future__ import annotations

import contextlib
import functools
import numbers

from gradshap.backends import require

__all__ = ["namespace"]


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

    def where(self, condition, x1, x2):
        return self._tf.where(condition, x1, x2)

    def concat(self, arrays, axis=0):
        return self._tf.concat(list(arrays), axis)

    def stack(self, arrays, axis=0):
        return self._tf.stack(list(arrays), axis)

    def mean(self, x, axis=None, keepdims=False):
        return self._tf.reduce_mean(x, axis, keepdims=keepdims)

    def sum(self, x, axis=None, keepdims=False):
        return self._tf.reduce_sum(x, axis, keepdims=keepdims)

    def any(self, x, axis=None, keepdims=False):
        return self._tf.reduce_any(x, axis, keepdims=keepdims)

    def max(self, x, axis=None, keepdims=False):
        return self._tf.reduce_max(x, axis, keepdims=keepdims)

    def abs(self, x):
        return self._tf.abs(x)

    def zeros_like(self, x):
        return self._tf.zeros_like(x)

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


@functools.lru_cache(maxsize=None)
def namespace() -> _Namespace:
    """The array namespace gradshap's engine uses for ``tf.Tensor`` inputs."""
    return _Namespace(require("tensorflow"))
