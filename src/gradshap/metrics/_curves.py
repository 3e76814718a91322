"""Deletion and insertion curves (Petsiuk, Das and Saenko, 2018, "RISE").

Players (features, or groups such as superpixels and patches) are ranked by their summed
attribution, largest first. The deletion curve is the model's selected output as the top
players are removed, a fraction ``k / steps`` of them at step ``k``; a removed feature takes
its value from the background (the mean of its rows, or one row of it per input row). The
insertion curve starts from that background value and puts the top players back. A faithful
explanation makes the deletion curve fall fast (small area) and the insertion curve rise
fast (large area).

All ``n * (steps + 1)`` points are built on the device and sent through the adapter's
forward pass in chunks of ``batch_size`` points.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any

import numpy as np

from gradshap import _sampling, _validation
from gradshap._groups import z_value
from gradshap.metrics._common import (Score, Scorer, background_of, flat_attributions, host, inputs_of, players,
                                      rank_of, score_of, split, take_rows)

__all__ = ["Curve", "deletion", "insertion"]

_STREAM_FILL = 2501
FILLS = ("mean", "row")


@dataclass(frozen=True)
class Curve:
    """Deletion or insertion curves of ``n`` rows.

    Attributes
    ----------
    kind : ``"deletion"`` or ``"insertion"``.
    fractions : ``(steps + 1,)``, the fraction of players removed (inserted) at each step.
    outputs : ``(n, steps + 1)`` float64, the selected model output of each row at each step.
    auc : :class:`Score`, the area under each row's curve over ``fractions`` (trapezoid rule).
    fill : ``"mean"`` or ``"row"``; with ``"row"``, ``fill_rows`` holds the background row
        each input row took its removed values from.
    """

    kind: str
    fractions: np.ndarray
    outputs: np.ndarray
    auc: Score
    fill: str
    fill_rows: np.ndarray | None = None

    @property
    def mean(self) -> np.ndarray:
        return self.outputs.mean(axis=0)

    @property
    def stderr(self) -> np.ndarray:
        n = self.outputs.shape[0]
        if n < 2:
            return np.full(self.outputs.shape[1], np.nan)
        return self.outputs.std(axis=0, ddof=1) / np.sqrt(n)

    def band(self, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
        """The pointwise normal interval ``mean -+ z * stderr`` of the mean curve."""
        half = z_value(level) * self.stderr
        return self.mean - half, self.mean + half

    def __repr__(self) -> str:
        return (f"Curve({self.kind}, n={self.outputs.shape[0]}, steps={self.fractions.size - 1}, "
                f"fill={self.fill!r}, auc={self.auc.mean:.6g} +- {self.auc.stderr:.2g})")


def area(fractions: np.ndarray, outputs: np.ndarray) -> np.ndarray:
    """Trapezoid-rule area under each row of ``outputs`` over ``fractions``."""
    widths = np.diff(fractions)
    return ((outputs[:, 1:] + outputs[:, :-1]) * 0.5 * widths).sum(axis=1)


def _fill_values(xp, bgs: tuple, fill: Any, n: int, seed: Any):
    """Per input the values of removed features, ``(1, *f)`` or ``(n, *f)``, and the background
    row of each input row (``None`` for the mean)."""
    if isinstance(fill, str) and fill == "mean":
        return tuple(xp.mean(b, axis=0, keepdims=True) for b in bgs), None
    nb = bgs[0].shape[0]
    if isinstance(fill, str) and fill == "row":
        # One background row per input row, drawn from the seed by row id.
        u = _sampling.uniforms(_sampling.seed_key(seed), np.arange(n), 1, _STREAM_FILL)[:, 0]
        rows = np.minimum((u * nb).astype(np.int64), nb - 1)
    elif isinstance(fill, numbers.Integral) and not isinstance(fill, bool):
        if not -nb <= fill < nb:
            msg = f"`fill` as a background row number must lie in [-{nb}, {nb}); got {fill}"
            raise ValueError(msg)
        rows = np.full(n, int(fill) % nb, dtype=np.int64)
    else:
        msg = f"`fill` must be 'mean', 'row' (one background row per input row, drawn from `seed`) or a background row number; got {fill!r}"
        raise ValueError(msg)
    device = _validation.device_of(xp, bgs[0])
    return take_rows(xp, bgs, xp.asarray(rows, device=device)), rows


def curve(kind: str, model: Any, x: Any, attributions: Any, background: Any, *, target: Any = None,
          groups: Any = None, steps: int = 20, fill: Any = "mean", seed: Any = None, framework: str | None = None,
          batch_size: int | None = None) -> Curve:
    xs, xp = inputs_of(x)
    bgs = background_of(background, xs, xp)
    steps = _validation.check_positive_int(steps, "steps")
    if len({str(a.dtype) for a in xs}) > 1:
        msg = (f"the curves join the features of all inputs, which must then share one dtype; `x` has "
               f"{', '.join(str(a.dtype) for a in xs)}")
        raise TypeError(msg)
    if target is None:
        target = getattr(attributions, "target", None)  # an Explanation's own
    scores = flat_attributions(attributions, xs)
    n, n_features = scores.shape
    rank, n_players = rank_of(scores, players(groups, n, n_features))
    scorer = Scorer(model, xs, xp, target=target, framework=framework, batch_size=batch_size, arrays=bgs)
    fills, fill_rows = _fill_values(xp, bgs, fill, n, seed)
    per_row_fill = fill_rows is not None
    device = scorer.device
    rank_dev = xp.asarray(rank.astype(np.int32), device=device)  # half the bytes of int64 to gather
    flat_x = tuple(xp.reshape(a, (n, -1)) for a in xs)
    flat_fill = tuple(xp.reshape(f, (f.shape[0], -1)) for f in fills)
    x_full = xp.concat(flat_x, axis=1) if len(xs) > 1 else flat_x[0]
    fill_full = xp.concat(flat_fill, axis=1) if len(xs) > 1 else flat_fill[0]
    # Point j is row j // (steps + 1) at step j % (steps + 1); at step k the first
    # floor(k * G / steps) players of the row (of G) are removed (inserted).
    pair_row = np.repeat(np.arange(n), steps + 1)
    pair_step = np.tile(np.arange(steps + 1), n)
    taken = (pair_step * n_players[pair_row]) // steps
    outputs = []
    with scorer.session():
        for start, stop in scorer.chunks(pair_row.size):
            rows = scorer.index(pair_row[start:stop])
            limit = xp.asarray(np.reshape(taken[start:stop], (-1, 1)).astype(np.int32), device=device)
            chosen = xp.take(rank_dev, rows, axis=0) < limit
            xr = xp.take(x_full, rows, axis=0)
            fr = xp.take(fill_full, rows, axis=0) if per_row_fill else fill_full
            points = xp.where(chosen, fr, xr) if kind == "deletion" else xp.where(chosen, xr, fr)
            outputs.append(host(scorer(split(xp, points, xs), rows)))
    values = np.concatenate(outputs).reshape(n, steps + 1)
    fractions = np.arange(steps + 1) / steps
    auc = score_of(f"{kind}_auc", area(fractions, values), "lower" if kind == "deletion" else "higher")
    return Curve(kind, fractions, values, auc, fill if isinstance(fill, str) else "row", fill_rows)


_PARAMETERS = """
    Parameters
    ----------
    model
        Any model gradshap explains (as for :class:`gradshap.GradientExplainer`).
    x : array or tuple of arrays
        The rows explained, ``(n, *features)``.
    attributions : Explanation, array, or tuple of arrays
        Shaped like ``x``; read on the host to rank the players. An Explanation also gives
        the default ``target``.
    background : array or tuple of arrays
        Where removed features take their values from (see ``fill``). Zeros are not assumed:
        pass zero rows to remove towards zero.
    target
        As for the explainers; by default the Explanation's own.
    groups : int array, optional
        A group id per feature, ``(F,)`` or the features' shape for all rows, or ``(n, F)`` /
        ``(n, *features)`` per row (superpixels); see :func:`gradshap.metrics.patches`.
        Features of a group are removed together, ranked by their summed attribution.
        By default every feature is its own player.
    steps : int
        Points of the curve after the start; step ``k`` removes ``floor(k * G / steps)`` of
        the row's ``G`` players.
    fill : {"mean", "row"} or int
        ``"mean"``: the mean of the background rows; ``"row"``: one background row per input
        row, drawn from ``seed`` by row number; an int: that background row for all rows.
    seed : int, Generator or None
        For ``fill="row"``.
    framework, batch_size
        As for the explainers; ``batch_size`` is the most points per forward pass.

    Returns
    -------
    Curve
        ``outputs`` ``(n, steps + 1)``, and ``auc``, a :class:`Score` with its standard error
        over rows.
"""


def deletion(model: Any, x: Any, attributions: Any, background: Any, **kwargs) -> Curve:
    return curve("deletion", model, x, attributions, background, **kwargs)


def insertion(model: Any, x: Any, attributions: Any, background: Any, **kwargs) -> Curve:
    return curve("insertion", model, x, attributions, background, **kwargs)


deletion.__doc__ = ("""Deletion curves: the target output as the most important players are removed
    (Petsiuk et al., 2018). Lower area is better.
""" + _PARAMETERS + """
    Examples
    --------
    >>> import numpy as np
    >>> from gradshap import metrics
    >>> w = np.array([3.0, -1.0, 2.0])
    >>> model = (lambda p: p @ w, lambda p: np.broadcast_to(w, p.shape))
    >>> x, bg = np.ones((1, 3)), np.array([[1.0, 1, 1], [-1, -1, -1]])
    >>> c = metrics.deletion(model, x, w * x, bg, steps=3, framework="numpy")
    >>> c.outputs.tolist()
    [[4.0, 1.0, -1.0, 0.0]]
""")
insertion.__doc__ = ("""Insertion curves: the target output as the most important players are put
    back into the background value (Petsiuk et al., 2018). Higher area is better.
""" + _PARAMETERS)
