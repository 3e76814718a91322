"""Analytic-gradient adapter: ``framework="numpy"`` with a pair ``(f, grad_f)``.

``f(*inputs)`` returns ``(m,)`` or ``(m, K)`` outputs. ``grad_f(*inputs)`` returns the
gradient of a single-output ``f`` (each array shaped like its input), or the Jacobian
``(m, K, *feature_shape)`` of a K-output ``f``; one array, or a tuple for several inputs.
Any array-API namespace works (NumPy, array-api-strict, CuPy): nothing is converted.
"""

from __future__ import annotations

from typing import Any, Callable

import array_api_compat as aac

from gradshap.backends import Adapter


def recognizes(model: Any, arrays: tuple) -> bool:
    import numpy as np

    return _is_pair(model) and all(isinstance(a, np.ndarray) for a in arrays)


def _is_pair(model: Any) -> bool:
    return isinstance(model, tuple) and len(model) == 2 and all(callable(m) for m in model)


class NumpyAdapter(Adapter):
    name = "numpy"

    def __init__(self, f: Callable, grad_f: Callable):
        self.f, self.grad_f = f, grad_f
        self.xp = None  # the namespace of whatever arrays come in

    def forward(self, points: tuple):
        return self.f(*points)

    def value_and_grad(self, points: tuple, cotangent):
        xp = aac.array_namespace(*points)
        out = self.f(*points)
        jac = self.grad_f(*points)
        jac = jac if isinstance(jac, tuple) else (jac,)
        m = points[0].shape[0]
        cot = xp.reshape(cotangent, (m, -1))
        grads = []
        for p, j in zip(points, jac):
            if j.ndim == p.ndim:  # gradient of a single-output f
                grads.append(j * xp.reshape(cot[:, 0], (m,) + (1,) * (p.ndim - 1)))
            else:  # Jacobian (m, K, *features): contract K with the cotangent
                c = xp.reshape(cot, (m, cot.shape[1]) + (1,) * (p.ndim - 1))
                grads.append(xp.sum(j * c, axis=1))
        return out, tuple(grads)

    def compose(self, fn: Callable):
        msg = (
            "a callable `target` needs the gradient of the output it selects, which framework='numpy' "
            "cannot derive from (f, grad_f); pass the pair (f, grad_f) of the scalar you explain, "
            "or an int or list of ints as `target`"
        )
        raise TypeError(msg)


def make(model: Any) -> NumpyAdapter:
    if not _is_pair(model):
        msg = (
            "with framework='numpy', `model` must be a pair (f, grad_f) of callables; "
            f"got {type(model).__name__}"
        )
        raise TypeError(msg)
    return NumpyAdapter(*model)
