"""The Explanation result."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

import array_api_compat as aac
import numpy as np

__all__ = ["Explanation"]


def to_numpy(a: Any) -> Any:
    """A NumPy copy of an array of any framework (tuples map elementwise)."""
    if a is None:
        return None
    if isinstance(a, tuple):
        return tuple(to_numpy(v) for v in a)
    if isinstance(a, np.ndarray):
        return a
    if aac.is_torch_array(a):
        return a.detach().cpu().numpy()
    if hasattr(a, "numpy") and not aac.is_array_api_obj(a):  # tf.Tensor
        return a.numpy()
    return np.asarray(a)


@dataclass
class Explanation:
    """Attributions for a batch of rows.

    Attributes
    ----------
    values : array, or tuple of arrays for a model with several inputs
        Expected Gradients estimate, shaped like ``data`` (plus a trailing axis when
        several targets were explained), in ``data``'s namespace, dtype and device.
    base_values : array (n,) or (n, T)
        ``mean_b f(b)`` over the whole background, for each row's target.
    output : array (n,) or (n, T)
        ``f(x)`` for each row's target.
    delta : array (n,) or (n, T)
        Completeness residual ``sum(values) - (output - base_values)``. Its expectation
        is zero (for ``stdevs=0``); its size shows the Monte Carlo error of the sum.
    stderr : like values
        Standard error of each value (for the deterministic rules of ``exhaustive`` and
        Integrated Gradients, an indicator of the quadrature error); what it means for each
        sampler is in ``docs/accuracy.md``.
    data : the rows explained, as given.
    feature_names : list of str or None
    target : the target as resolved (an int, a tuple, the per-row indices, or None).
    sampler : the concrete sampling design used.
    n_samples : samples (gradient evaluations) per row and target; in adaptive mode
        (``rtol``) a NumPy array of the samples each row used, ``(n,)`` or ``(n, T)``.
    """

    values: Any
    base_values: Any
    output: Any
    delta: Any
    stderr: Any
    data: Any = None
    feature_names: list | None = None
    target: Any = None
    sampler: str | None = None
    n_samples: Any = None
    extras: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_result(cls, result, *, data: Any, many_inputs: bool, feature_names=None) -> "Explanation":
        unwrap = (lambda t: t) if many_inputs else (lambda t: t[0])
        return cls(
            values=unwrap(result.values),
            base_values=result.base_values,
            output=result.output,
            delta=result.delta,
            stderr=unwrap(result.stderr),
            data=data if many_inputs else data,
            feature_names=feature_names,
            target=result.target,
            sampler=result.sampler,
            n_samples=result.n_samples,
        )

    def to_numpy(self) -> "Explanation":
        """The same explanation with every array as a NumPy array (on the host)."""
        changes = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name in ("values", "base_values", "output", "delta", "stderr", "data"):
                changes[f.name] = to_numpy(tuple(v) if isinstance(v, list) else v)
            elif f.name == "target" and v is not None and not isinstance(v, (int, tuple)):
                changes[f.name] = to_numpy(v)
        return replace(self, **changes)

    def __len__(self) -> int:
        v = self.values[0] if isinstance(self.values, tuple) else self.values
        return int(v.shape[0])
