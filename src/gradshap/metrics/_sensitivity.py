"""Max-sensitivity (Yeh et al., 2019): the largest change of an explanation when its input moves
within a small radius, relative to the explanation's norm.

``explain`` is called once on ``x`` and once per perturbation on all rows of ``x + eps``, so
row ``r`` keeps its row number: an explainer called with a fixed ``seed`` draws the same
baselines and alphas for the perturbed row as for the row itself (common random numbers).
The score then measures how much the explanation itself moves with its input; with fresh
seeds it would also count the Monte Carlo noise of the two estimates.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from gradshap import _sampling, _validation
from gradshap.metrics._common import Score, feature_sizes, flat_attributions, inputs_of, score_of

__all__ = ["max_sensitivity"]

_STREAM_NOISE = 2701


def _norm(a: np.ndarray, norm: Any) -> np.ndarray:
    return np.linalg.norm(a, ord=2 if norm == "fro" else norm, axis=1)


def _check_norm(norm: Any) -> Any:
    if norm == "fro" or norm in (1, 2, math.inf, np.inf):
        return norm
    msg = f"`norm` must be 'fro' (L2 over all features), 1, 2 or inf; got {norm!r}"
    raise ValueError(msg)


def _given(xs: tuple, xp, perturbations: Any) -> tuple[list, int]:
    ps = _validation.as_inputs(perturbations, "perturbations")
    _validation.namespace_of(xs + ps, "perturbations")
    n = xs[0].shape[0]
    n_perturb = ps[0].shape[1] if ps[0].ndim > 1 else 0
    if len(ps) != len(xs) or n_perturb < 1 or any(
            tuple(p.shape) != (n, n_perturb, *a.shape[1:]) or p.dtype != a.dtype for p, a in zip(ps, xs)):
        shapes = ", ".join(_validation.shape_str(tuple(p.shape)) + f" {p.dtype}" for p in ps)
        want = ", ".join(_validation.shape_str(("n", "n_perturb", *a.shape[1:])) + f" {a.dtype}" for a in xs)
        msg = f"`perturbations` must be one array per input shaped {want} with n = {n}; got {shapes}"
        raise ValueError(msg)
    return [tuple(p[:, k, ...] for p in ps) for k in range(n_perturb)], n_perturb


def max_sensitivity(explain: Callable, x: Any, *, radius: float = 0.02, n_perturb: int = 10, seed: Any = None,
                    perturbations: Any = None, norm: Any = "fro") -> Score:
    """Max-sensitivity of an explanation (Yeh et al., 2019). Lower is better.

    ``max over eps of ||explain(x + eps) - explain(x)|| / ||explain(x)||`` per row, ``eps``
    uniform in the ``radius`` ball of the max norm (as captum's ``sensitivity_max``).

    Parameters
    ----------
    explain : callable
        ``explain(x) -> Explanation`` (or attributions shaped like ``x``). Fix its seed to
        measure the explanation's own instability, e.g.
        ``lambda x: explainer(x, n_samples=200, seed=0)``: every call explains all rows of
        ``x`` in one call, so each perturbed row keeps its row number and the same draws.
    x : array or tuple of arrays
        Rows, ``(n, *features)``.
    radius : float
        Half-width of the uniform noise added to every feature.
    n_perturb : int
        Perturbations per row (calls of ``explain`` after the first).
    seed : int, Generator or None
        Of the perturbations (drawn per row number).
    perturbations : array ``(n, n_perturb, *features)`` or tuple per input, optional
        The caller's ``eps`` instead (``x + eps`` is explained); ``radius``, ``n_perturb`` and
        ``seed`` are then unused.
    norm : "fro", 1, 2 or inf
        Norm over all features (of every input) of a row; ``"fro"`` is the L2 norm. A row
        whose explanation has norm 0 is divided by 1 (captum's convention).

    Returns
    -------
    Score
        ``details["per_perturbation"]``: ``(n, n_perturb)`` relative changes.
    """
    xs, xp = inputs_of(x)
    norm = _check_norm(norm)
    n = xs[0].shape[0]
    if perturbations is not None:
        shifts, n_perturb = _given(xs, xp, perturbations)
    else:
        radius = _validation.check_nonnegative_float(radius, "radius")
        n_perturb = _validation.check_positive_int(n_perturb, "n_perturb")
        key, sizes = _sampling.seed_key(seed), feature_sizes(xs)
        device = _validation.device_of(xp, xs[0])
        total = sum(sizes)
        shifts = []
        for k in range(n_perturb):
            u = _sampling.uniforms(key, np.arange(n), total, _STREAM_NOISE, k * total)
            eps = (2.0 * u - 1.0) * radius
            parts = np.split(eps, np.cumsum(sizes)[:-1], axis=1)
            shifts.append(tuple(xp.asarray(np.reshape(p, a.shape), dtype=a.dtype, device=device)
                                for p, a in zip(parts, xs)))
    base = flat_attributions(explain(x), xs, "explain(x)")
    scale = _norm(base, norm)
    scale = np.where(scale == 0, 1.0, scale)
    changes = np.empty((n, n_perturb))
    for k, eps in enumerate(shifts):
        moved = tuple(a + e for a, e in zip(xs, eps))
        again = flat_attributions(explain(moved if isinstance(x, (tuple, list)) else moved[0]), xs, "explain(x + eps)")
        changes[:, k] = _norm(again - base, norm) / scale
    return score_of("max_sensitivity", changes.max(axis=1), "lower", per_perturbation=changes)
