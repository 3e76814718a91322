"""Infidelity (Yeh, Hsieh, Suggala, Inouye and Ravikumar, 2019, "On the (In)fidelity and
Sensitivity of Explanations").

For a perturbation ``I`` of row ``x`` the attributions predict the output change
``a = sum_i phi_i I_i``; the model gives ``d = f(x) - f(x - I)``. Infidelity is
``mean over perturbations of (beta a - d)^2``. In the normalised form (the default, and
captum's ``normalize=True``) ``beta = sum(a d) / sum(a^2)`` per row, the least-squares scale,
so the score does not change when the attributions are multiplied by a constant; without it
``beta = 1`` (the paper's original definition, which punishes a mere change of scale).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gradshap import _sampling, _validation
from gradshap.metrics._common import (Score, Scorer, background_of, feature_sizes, flat_attributions, host,
                                      inputs_of, players, score_of, take_rows)

__all__ = ["background_perturbations", "infidelity"]

_STREAM_ROW = 2601
_STREAM_SUBSET = 2602


class _Draws:
    """Perturbations ``I = s * (x - b)``: ``b`` a background row and ``s`` a random subset of the
    players (each kept with probability ``fraction``), drawn per (row, perturbation) from the
    seed by row number, so that any chunking gives the same draws."""

    def __init__(self, xp, xs: tuple, bgs: tuple, *, n_perturb: int, fraction: float, groups: Any, seed: Any):
        if not 0.0 < float(fraction) <= 1.0:
            msg = f"`fraction` must lie in (0, 1]; got {fraction!r}"
            raise ValueError(msg)
        self.xp, self.xs, self.bgs = xp, xs, bgs
        self.n_perturb, self.fraction = n_perturb, float(fraction)
        self.key = _sampling.seed_key(seed)
        n, n_features = xs[0].shape[0], sum(feature_sizes(xs))
        self.ids = players(groups, n, n_features)
        self.device = _validation.device_of(xp, xs[0])
        nb = bgs[0].shape[0]
        u = _sampling.uniforms(self.key, np.arange(n), n_perturb, _STREAM_ROW)
        self.rows = np.minimum((u * nb).astype(np.int64), nb - 1)  # (n, P)
        self.flat_x = tuple(xp.reshape(a, (n, -1)) for a in xs)
        self.flat_bg = tuple(xp.reshape(b, (nb, -1)) for b in bgs)

    def __call__(self, rows: np.ndarray, perturbation: np.ndarray) -> tuple:
        """Per input the perturbations ``(m, f_k)`` of the pairs (``rows[j]``, ``perturbation[j]``)."""
        xp, n_features = self.xp, self.ids.shape[1]
        masks = np.empty((rows.size, n_features))
        for r in np.unique(rows):
            at = np.flatnonzero(rows == r)
            # One uniform per (perturbation, player): player g of perturbation p is number p * F + g.
            u = _sampling.uniforms(self.key, np.array([r]), self.n_perturb * n_features, _STREAM_SUBSET)[0]
            u = u.reshape(self.n_perturb, n_features)[perturbation[at]]
            masks[at] = u[:, self.ids[r]] < self.fraction
        dev_rows = xp.asarray(rows, device=self.device)
        dev_bg = xp.asarray(self.rows[rows, perturbation], device=self.device)
        out, start = [], 0
        for fx, fb in zip(self.flat_x, self.flat_bg):
            size = fx.shape[1]
            s = xp.asarray(masks[:, start : start + size], dtype=fx.dtype, device=self.device)
            out.append(s * (xp.take(fx, dev_rows, axis=0) - xp.take(fb, dev_bg, axis=0)))
            start += size
        return tuple(out)


def background_perturbations(x: Any, background: Any, *, n_perturb: int = 10, fraction: float = 0.5,
                             groups: Any = None, seed: Any = None):
    """The perturbations :func:`infidelity` draws by default, ``(n, n_perturb, *features)`` per input.

    Perturbation ``p`` of row ``r`` is ``s * (x_r - b)``: ``b`` a background row and ``s`` a
    random subset of the features (or of the ``groups``), each kept with probability
    ``fraction``; so ``x - I`` is ``x`` with that subset taken from ``b`` (``fraction=1``: ``b``
    itself). Drawn from ``seed`` by row number.

    Examples
    --------
    >>> import numpy as np
    >>> from gradshap import metrics
    >>> I = metrics.background_perturbations(np.ones((2, 3)), np.zeros((4, 3)), n_perturb=5, seed=0)
    >>> I.shape, bool(np.all((I == 0) | (I == 1)))
    ((2, 5, 3), True)
    """
    xs, xp = inputs_of(x)
    bgs = background_of(background, xs, xp)
    n_perturb = _validation.check_positive_int(n_perturb, "n_perturb")
    draws = _Draws(xp, xs, bgs, n_perturb=n_perturb, fraction=fraction, groups=groups, seed=seed)
    n = xs[0].shape[0]
    flat = draws(np.repeat(np.arange(n), n_perturb), np.tile(np.arange(n_perturb), n))
    out = tuple(xp.reshape(v, (n, n_perturb, *a.shape[1:])) for v, a in zip(flat, xs))
    return out if isinstance(x, (tuple, list)) else out[0]


def _given(xp, xs: tuple, perturbations: Any) -> tuple[tuple, int]:
    """Caller's perturbations as ``(n * P, f_k)`` per input, and ``P``."""
    ps = _validation.as_inputs(perturbations, "perturbations")
    _validation.namespace_of(xs + ps, "perturbations")
    if len(ps) != len(xs):
        msg = f"`perturbations` has {len(ps)} input(s) but `x` has {len(xs)}; pass one array per model input"
        raise ValueError(msg)
    n = xs[0].shape[0]
    n_perturb = ps[0].shape[1] if ps[0].ndim > 1 else 0
    out = []
    for k, (p, a) in enumerate(zip(ps, xs)):
        want = (n, n_perturb, *a.shape[1:])
        if p.ndim != a.ndim + 1 or tuple(p.shape) != want or n_perturb < 1:
            where = "`perturbations`" if len(xs) == 1 else f"`perturbations[{k}]`"
            msg = (f"{where} has shape {_validation.shape_str(tuple(p.shape))}; expected (n, n_perturb, *features) = "
                   f"{_validation.shape_str(('n', 'n_perturb', *a.shape[1:]))} with n = {n}")
            raise ValueError(msg)
        if p.dtype != a.dtype:
            msg = f"`perturbations` has dtype {p.dtype} but `x` has {a.dtype}; convert one of them (gradshap never casts silently)"
            raise TypeError(msg)
        out.append(xp.reshape(p, (n * n_perturb, -1)))
    return tuple(out), n_perturb


def infidelity(model: Any, x: Any, attributions: Any, *, background: Any = None, perturbations: Any = None,
               n_perturb: int = 10, fraction: float = 0.5, groups: Any = None, normalize: bool = True,
               target: Any = None, seed: Any = None, framework: str | None = None,
               batch_size: int | None = None) -> Score:
    """Infidelity of attributions (Yeh et al., 2019): the mean squared error of
    ``beta * sum(phi * I)`` as a prediction of ``f(x) - f(x - I)``. Lower is better.

    Parameters
    ----------
    model, x, attributions, target, framework, batch_size
        As for :func:`gradshap.metrics.deletion`.
    background : array or tuple of arrays, optional
        Where the default perturbations come from (:func:`background_perturbations`).
    perturbations : array ``(n, n_perturb, *features)`` or tuple per input, optional
        The caller's perturbations ``I``, in ``x``'s framework and dtype; ``x - I`` is scored.
    n_perturb, fraction, groups, seed
        Of the default perturbations: how many per row, the probability that a feature (or
        group) takes the background row's value, the groups, and the seed.
    normalize : bool
        ``True`` (default): ``beta`` is each row's least-squares scale ``sum(a d) / sum(a^2)``
        (0 where the attributions predict no change at all), as captum's ``normalize=True``;
        ``False``: ``beta = 1``.

    Returns
    -------
    Score
        ``per_row`` the infidelity of each row, its mean and standard error over rows;
        ``details["beta"]`` the scale of each row.
    """
    xs, xp = inputs_of(x)
    scores = flat_attributions(attributions, xs)
    if target is None:
        target = getattr(attributions, "target", None)
    n = xs[0].shape[0]
    if perturbations is not None:
        given, n_perturb = _given(xp, xs, perturbations)
        bgs = ()
    else:
        bgs = background_of(background, xs, xp)
        n_perturb = _validation.check_positive_int(n_perturb, "n_perturb")
        draws = _Draws(xp, xs, bgs, n_perturb=n_perturb, fraction=fraction, groups=groups, seed=seed)
    scorer = Scorer(model, xs, xp, target=target, framework=framework, batch_size=batch_size, arrays=bgs)
    device = scorer.device
    phi = tuple(xp.asarray(np.ascontiguousarray(part), dtype=a.dtype, device=device)
                for part, a in zip(np.split(scores, np.cumsum(feature_sizes(xs))[:-1], axis=1), xs))
    flat_x = tuple(xp.reshape(a, (n, -1)) for a in xs)
    pair_row = np.repeat(np.arange(n), n_perturb)
    pair_p = np.tile(np.arange(n_perturb), n)
    predicted, change = [], []
    with scorer.session():
        for start, stop in scorer.chunks(pair_row.size):
            rows = scorer.index(pair_row[start:stop])
            if perturbations is not None:
                pairs = scorer.index(np.arange(start, stop))
                pert = tuple(xp.take(p, pairs, axis=0) for p in given)
            else:
                pert = draws(pair_row[start:stop], pair_p[start:stop])
            xr = take_rows(xp, flat_x, rows)
            points = tuple(xp.reshape(a - p, (stop - start, *s.shape[1:])) for a, p, s in zip(xr, pert, xs))
            out = scorer(points, rows)
            change.append(host(xp.take(scorer.output, rows, axis=0) - out))
            a = sum(xp.sum(xp.take(f, rows, axis=0) * p, axis=1) for f, p in zip(phi, pert))
            predicted.append(host(a))
    a = np.concatenate(predicted).reshape(n, n_perturb)
    d = np.concatenate(change).reshape(n, n_perturb)
    if normalize:
        den = (a * a).sum(axis=1)
        beta = (a * d).sum(axis=1) / np.where(den == 0, 1.0, den)
    else:
        beta = np.ones(n)
    per_row = ((beta[:, None] * a - d) ** 2).mean(axis=1)
    return score_of("infidelity", per_row, "lower", beta=beta)
