"""What every metric shares: scores with their standard error over rows, the model's selected
output at many points batched through the adapter's forward pass, players (features or groups)
and their order, and flattening a model's inputs into one feature axis.

Points are built on the inputs' device, in their namespace, from small host-side index arrays;
only the per-point scalars come back to the host.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gradshap import _engine, _targets, _tiling, _validation, backends
from gradshap._arrays import to_numpy
from gradshap.backends import _state
from gradshap._groups import z_value
from gradshap.backends import Adapter

__all__ = ["Score", "Scorer", "flat_attributions", "players", "rank_of"]


@dataclass(frozen=True)
class Score:
    """One number per row and its mean, with the standard error of the mean over rows.

    Attributes
    ----------
    name : what was measured (``"deletion_auc"``, ``"infidelity"``, ...).
    per_row : ``(n,)`` float64, the score of each row.
    better : which way a better explanation moves the score: ``"lower"``, ``"higher"``, or
        ``"closer to 1"`` (a calibration ratio) and the like.
    details : further per-row arrays of the metric (``beta`` of infidelity, ...).
    """

    name: str
    per_row: np.ndarray
    better: str = "lower"
    details: dict = field(default_factory=dict, repr=False)

    @property
    def n(self) -> int:
        return int(self.per_row.shape[0])

    @property
    def mean(self) -> float:
        return float(np.mean(self.per_row)) if self.n else float("nan")

    @property
    def stderr(self) -> float:
        """``std(per_row, ddof=1) / sqrt(n)`` (``nan`` with fewer than two rows)."""
        if self.n < 2 or not np.all(np.isfinite(self.per_row)):
            return float("nan")
        return float(np.std(self.per_row, ddof=1) / math.sqrt(self.n))

    def interval(self, level: float = 0.95) -> tuple[float, float]:
        """``mean -+ z * stderr``, the normal interval at ``level`` for the mean over the rows'
        population."""
        half = z_value(level) * self.stderr
        return self.mean - half, self.mean + half

    def to_dict(self, level: float = 0.95) -> dict:
        low, high = self.interval(level)
        return {"name": self.name, "mean": self.mean, "stderr": self.stderr, "n": self.n, "level": level,
                "low": low, "high": high, "better": self.better}

    def __repr__(self) -> str:
        return f"Score({self.name}={self.mean:.6g} +- {self.stderr:.2g} (stderr over n={self.n} rows), {self.better} is better)"


def score_of(name: str, per_row: Any, better: str, **details) -> Score:
    return Score(name, np.asarray(per_row, dtype=np.float64).reshape(-1), better, details)


# --------------------------------------------------------------------------- inputs


def inputs_of(x: Any, name: str = "x") -> tuple[tuple, Any]:
    """``x`` as a tuple of arrays and their namespace (checked)."""
    xs = _validation.as_inputs(x, name)
    return xs, _validation.namespace_of(xs, name)


def feature_sizes(xs: tuple) -> list[int]:
    return [math.prod(a.shape[1:]) for a in xs]


def flat_attributions(attributions: Any, xs: tuple, name: str = "attributions") -> np.ndarray:
    """Attributions (an Explanation, an array, or a tuple per input) as one host float64 array
    ``(n, F)``: every input's features flattened and joined, in the order of ``xs``."""
    values = getattr(attributions, "values", attributions)
    if getattr(attributions, "several_targets", False):
        msg = (f"`{name}` explains several targets {attributions.target}; score one at a time "
               "with exp.select_target(k)")
        raise ValueError(msg)
    vs = _validation.as_inputs(values, name)
    if len(vs) != len(xs):
        msg = f"`{name}` has {len(vs)} input(s) but `x` has {len(xs)}; pass one attribution array per model input"
        raise ValueError(msg)
    out = []
    for k, (v, a) in enumerate(zip(vs, xs)):
        v = np.array(to_numpy(v), dtype=np.float64)  # a writable copy
        if tuple(v.shape) != tuple(a.shape):
            where = f"`{name}`" if len(xs) == 1 else f"`{name}[{k}]`"
            msg = (f"{where} has shape {_validation.shape_str(tuple(v.shape))}; expected the shape of "
                   f"`x`, {_validation.shape_str(tuple(a.shape))}")
            raise ValueError(msg)
        out.append(v.reshape(v.shape[0], -1))
    return out[0] if len(out) == 1 else np.concatenate(out, axis=1)


def split(xp, flat, xs: tuple) -> tuple:
    """A ``(m, F)`` array over the joined features as one ``(m, *features)`` array per input."""
    m, parts, start = flat.shape[0], [], 0
    for a, size in zip(xs, feature_sizes(xs)):
        parts.append(xp.reshape(flat[:, start : start + size], (m, *a.shape[1:])))
        start += size
    return tuple(parts)


def take_rows(xp, arrays: tuple, rows) -> tuple:
    return tuple(xp.take(a, rows, axis=0) for a in arrays)


# --------------------------------------------------------------------------- players


def players(groups: Any, n: int, n_features: int) -> np.ndarray:
    """Player id of every joined feature, per row: ``(n, F)`` int64, ids ``0..G_r - 1``.

    ``groups``: ``None`` (every feature a player), one id per feature shared by all rows
    (``(F,)`` or the feature shape of a single-input model), or one id per feature per row
    (``(n, F)`` or ``(n, *features)``: superpixels differ between images).
    """
    if groups is None:
        return np.broadcast_to(np.arange(n_features, dtype=np.int64), (n, n_features))
    ids = np.asarray(to_numpy(groups))
    if not np.issubdtype(ids.dtype, np.integer):
        msg = f"`groups` must hold integer group ids; got dtype {ids.dtype}"
        raise TypeError(msg)
    if ids.size == n_features:
        ids = np.broadcast_to(ids.reshape(1, n_features), (n, n_features))
    elif ids.size == n * n_features and ids.shape[0] == n:
        ids = ids.reshape(n, n_features)
    else:
        msg = (f"`groups` must give one group id per feature, shape ({n_features},) (shared by all rows) or "
               f"({n}, {n_features}) (one map per row), or those as the features' shape; got "
               f"{_validation.shape_str(tuple(ids.shape))}")
        raise ValueError(msg)
    # Ids renumbered 0..G-1 per row, whatever values the caller used.
    out = np.empty((n, n_features), dtype=np.int64)
    for r in range(n):
        out[r] = np.unique(ids[r], return_inverse=True)[1].reshape(-1)
    return out


def patches(shape: tuple, size: int | tuple, *, channel_axis: int | None = 0) -> np.ndarray:
    """Square patches as groups for an image of ``shape`` (one image, no row axis): the id of
    each pixel's ``size x size`` patch, shared by every channel.

    Examples
    --------
    >>> patches((1, 4, 4), 2)[0]
    array([[0, 0, 1, 1],
           [0, 0, 1, 1],
           [2, 2, 3, 3],
           [2, 2, 3, 3]])
    """
    ph, pw = (size, size) if isinstance(size, numbers.Integral) else tuple(size)
    spatial = [d for k, d in enumerate(shape) if channel_axis is None or k != channel_axis % len(shape)]
    if len(spatial) != 2:
        msg = f"`shape` must be an image's (channels, height, width) with `channel_axis`; got {shape!r}"
        raise ValueError(msg)
    h, w = spatial
    rows, cols = np.arange(h)[:, None] // ph, np.arange(w)[None, :] // pw
    ids = rows * (-(-w // pw)) + cols
    if channel_axis is None:
        return ids
    return np.broadcast_to(np.expand_dims(ids, channel_axis % len(shape)), shape).copy()


def rank_of(scores: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each row, the rank (0 = removed first) of every feature's player, players ordered by
    their summed attribution, largest first (ties: lower id first); and each row's player count."""
    n, _ = ids.shape
    rank = np.empty_like(ids)
    counts = np.empty(n, dtype=np.int64)
    for r in range(n):
        g = int(ids[r].max()) + 1 if ids.shape[1] else 0
        total = np.bincount(ids[r], weights=scores[r], minlength=g)
        order = np.argsort(-total, kind="stable")
        player_rank = np.empty(g, dtype=np.int64)
        player_rank[order] = np.arange(g)
        rank[r] = player_rank[ids[r]]
        counts[r] = g
    return rank, counts


# --------------------------------------------------------------------------- the model


class Scorer:
    """The model's selected output (one scalar per point) at many points, through the adapter's
    forward pass in chunks of at most ``batch_size`` points, the model's state kept as found.

    The target is resolved once, at ``x``, as the explainers resolve it; a point made from row
    ``r`` of ``x`` is scored with row ``r``'s target.
    """

    def __init__(self, model: Any, xs: tuple, xp, *, target: Any, framework: str | None,
                 batch_size: int | None, arrays: tuple = ()):
        adapter = model if isinstance(model, Adapter) else backends.make(model, framework, xs + arrays)
        if callable(target) and not isinstance(target, (str, type)):
            adapter, target = adapter.compose(target), None
        self.adapter, self.xp = adapter, xp
        self.compiled = adapter.compiles and _validation.own_arrays(adapter, xp, xs + arrays)
        self.device = _validation.device_of(xp, xs[0])
        if batch_size is None:
            batch_size = _tiling.default_batch_size(sum(feature_sizes(xs)), device=self.device, compiled=self.compiled)
        self.batch_size = _validation.check_positive_int(batch_size, "batch_size")
        n = xs[0].shape[0]
        with self.session():
            out = self._matrix(xs)
        selection = _targets.select(xp, target, out, dtype=out.dtype)
        if selection.many:
            msg = f"`target` {target!r} selects several outputs; metrics score one target at a time"
            raise ValueError(msg)
        self.target = selection.label
        self.cot = selection.cotangents[0]
        self.output = _engine._selected(xp, out, self.cot)  # (n,) at x
        self.n = n

    def session(self):
        return _state.explaining(self.adapter)

    def _matrix(self, points: tuple):
        m = points[0].shape[0]
        out = _engine._outputs(self.adapter, self.xp, points, self.batch_size, self.compiled)
        return _targets.as_matrix(self.xp, out, m)

    def __call__(self, points: tuple, rows) -> Any:
        """Selected outputs ``(m,)`` at ``points``, each made from row ``rows[j]`` of ``x``
        (``rows`` an index array on the device). Call inside :meth:`session`."""
        out = self._matrix(points)
        cot = self.xp.take(self.cot, rows, axis=0)
        return _engine._selected(self.xp, out, self.xp.astype(cot, out.dtype))

    def index(self, rows: np.ndarray):
        return self.xp.asarray(np.asarray(rows, dtype=np.int64), device=self.device)

    def chunks(self, n_points: int):
        """Starts and stops of chunks of at most ``batch_size`` points."""
        for start in range(0, n_points, self.batch_size):
            yield start, min(n_points, start + self.batch_size)


def host(a: Any) -> np.ndarray:
    return np.asarray(to_numpy(a), dtype=np.float64)


def background_of(background: Any, xs: tuple, xp) -> tuple:
    if background is None:
        msg = "`background` is required: its rows (or their mean) are the values of removed features"
        raise ValueError(msg)
    bgs = _validation.as_inputs(background, "background")
    _validation.namespace_of(xs + bgs, "background")
    _validation.check_arrays(xp, xs, bgs)
    return bgs
