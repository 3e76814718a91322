"""Error of an Explanation against a reference, and whether its reported ``stderr`` covers it.

The reference is exact (:func:`gradshap.reference.exact_shapley`), a permutation estimate
with its own standard error (:func:`gradshap.reference.sampling_shapley`), a converged
Explanation (many samples), or plain attributions. For each row:

- relative L2 error ``||phi - ref|| / ||ref||`` and max error ``max |phi - ref|``;
- the calibration ratio ``sqrt(mean_i z_i^2)`` with ``z_i = (phi_i - ref_i) / sqrt(se_i^2 +
  se_ref,i^2)``: about 1 when the reported standard errors are right, above 1 when they
  understate the error, below 1 when they overstate it (``inf`` when a stated error of 0 is
  missed by more than rounding);
- coverage: the share of features with ``|z_i| <= z`` at ``level`` (0.95 when calibrated and
  the errors are normal).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from gradshap import _validation
from gradshap._arrays import to_numpy
from gradshap._groups import z_value
from gradshap.metrics._common import Score, score_of

__all__ = ["ErrorReport", "error"]


@dataclass(frozen=True)
class ErrorReport:
    """Per-row errors of an Explanation against a reference, each a :class:`Score`."""

    relative_l2: Score
    max_error: Score
    calibration: Score
    coverage: Score
    level: float

    def scores(self) -> list[Score]:
        return [self.relative_l2, self.max_error, self.calibration, self.coverage]

    def to_dict(self) -> dict:
        return {s.name: s.to_dict(self.level) for s in self.scores()}

    def __repr__(self) -> str:
        parts = ", ".join(f"{s.name}={s.mean:.4g} +- {s.stderr:.2g}" for s in self.scores())
        return f"ErrorReport(n={self.relative_l2.n}, {parts})"


def _flat(values: Any, name: str) -> np.ndarray:
    parts = [np.asarray(to_numpy(v), dtype=np.float64) for v in _validation.as_inputs(values, name)]
    return np.concatenate([p.reshape(p.shape[0], -1) for p in parts], axis=1)


def _epsilon(values: Any) -> float:
    """Machine epsilon of the values' own dtype (float32 values round at float32's)."""
    dtype = np.asarray(to_numpy(_validation.as_inputs(values, "values")[0])).dtype
    return float(np.finfo(dtype).eps) if np.issubdtype(dtype, np.floating) else float(np.finfo(np.float64).eps)


def _stderr(obj: Any, shape: tuple, name: str) -> np.ndarray:
    se = getattr(obj, "stderr", None)
    if se is None:
        return np.zeros(shape)
    se = _flat(se, f"{name}.stderr")
    if se.shape != shape:
        msg = f"`{name}.stderr` has {se.shape[1]} values per row; expected {shape[1]}, like its values"
        raise ValueError(msg)
    return se


def error(explanation: Any, reference: Any, *, level: float = 0.95) -> ErrorReport:
    """How far ``explanation`` is from ``reference``, and whether its ``stderr`` says so.

    Parameters
    ----------
    explanation : Explanation
        The estimate; its ``stderr`` is what the calibration checks.
    reference : Explanation or array (or tuple of arrays)
        The same rows' reference attributions, same shape. An Explanation's ``stderr``
        (a permutation estimate's, a converged run's) is added in quadrature: the
        calibration then checks the difference of two estimates.
    level : float
        Of the coverage (and of the intervals the Scores report).

    Returns
    -------
    ErrorReport
        ``relative_l2``, ``max_error``, ``calibration`` and ``coverage``, each per row with
        the mean and its standard error over rows.

    Examples
    --------
    >>> import numpy as np, gradshap
    >>> from gradshap import metrics
    >>> exp = gradshap.Explanation(values=np.array([[1.0, 2.0]]), base_values=np.zeros(1), output=np.zeros(1),
    ...                            delta=np.zeros(1), stderr=np.array([[0.5, 0.5]]))
    >>> report = metrics.error(exp, np.array([[1.5, 2.0]]))
    >>> report.max_error.mean, report.calibration.mean
    (0.5, 0.7071067811865476)
    """
    z = z_value(level)
    values = _flat(getattr(explanation, "values", explanation), "explanation")
    ref = _flat(getattr(reference, "values", reference), "reference")
    if ref.shape != values.shape:
        msg = (f"`reference` has {ref.shape[0]} rows of {ref.shape[1]} values; expected the explanation's "
               f"{values.shape[0]} rows of {values.shape[1]}")
        raise ValueError(msg)
    err = values - ref
    se = np.sqrt(_stderr(explanation, values.shape, "explanation") ** 2 + _stderr(reference, values.shape, "reference") ** 2)
    ref_norm = np.linalg.norm(ref, axis=1)
    # A stated error of 0 (a deterministic rule) is met by rounding-level differences only.
    eps = max(_epsilon(getattr(explanation, "values", explanation)), _epsilon(getattr(reference, "values", reference)))
    rounding = np.abs(err) <= 16 * eps * (np.abs(values) + np.abs(ref))
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.linalg.norm(err, axis=1) / ref_norm
        zs = np.where(se > 0, err / se, np.where(rounding, 0.0, np.inf))
    return ErrorReport(
        relative_l2=score_of("relative_l2", rel, "lower"),
        max_error=score_of("max_error", np.max(np.abs(err), axis=1), "lower"),
        calibration=score_of("calibration", np.sqrt(np.mean(zs**2, axis=1)), "closer to 1"),
        coverage=score_of("coverage", np.mean(np.abs(zs) <= z, axis=1), f"closer to {level:g}"),
        level=level,
    )
