"""Grouped explanations: per-group means of the attributions with standard errors and intervals.

A group's interval is for the mean attribution of the population its rows come from:
``mean +- z * stderr`` with ``stderr = std(values, ddof=1) / sqrt(n)`` across the group's
rows and ``z`` the normal quantile of the level (1.96 for 95%). The spread across rows
already contains the Monte Carlo noise of each row's estimate; ``mc_stderr`` reports the
Monte Carlo part alone (the error of the mean over these very rows).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any, Iterator, Sequence

import numpy as np

from gradshap._arrays import to_numpy

__all__ = ["CONFUSION", "Group", "GroupedExplanation", "confusion_labels", "z_value"]

#: Confusion-matrix groups, in the order reports show them.
CONFUSION = ("TP", "TN", "FP", "FN")


def z_value(level: float) -> float:
    """The two-sided normal quantile for coverage ``level`` (1.959964 for 0.95)."""
    if not 0.0 < float(level) < 1.0:
        msg = f"`level` must lie strictly between 0 and 1; got {level!r}"
        raise ValueError(msg)
    return NormalDist().inv_cdf(0.5 + float(level) / 2.0)


def confusion_labels(y_true: Any, y_pred: Any, *, positive: Any = 1) -> np.ndarray:
    """One of ``"TP"``, ``"TN"``, ``"FP"``, ``"FN"`` per row, for binary labels.

    Parameters
    ----------
    y_true, y_pred : array-like of shape (n,)
        True and predicted classes (any framework's arrays, or lists).
    positive : label
        The class counted as positive; every other value is negative.

    Examples
    --------
    >>> confusion_labels([1, 0, 1, 0], [1, 1, 0, 0]).tolist()
    ['TP', 'FP', 'FN', 'TN']
    """
    t, p = _host(y_true), _host(y_pred)
    if t.shape != p.shape:
        msg = f"`y_true` and `y_pred` must have the same shape; got {t.shape} and {p.shape}"
        raise ValueError(msg)
    tp, pp = t == positive, p == positive
    out = np.empty(t.shape, dtype="<U2")
    out[tp & pp], out[~tp & ~pp], out[~tp & pp], out[tp & ~pp] = CONFUSION
    return out


def _host(a: Any) -> np.ndarray:
    """Labels of any framework (or a list) as a NumPy array."""
    return np.asarray(a) if isinstance(a, (list, tuple)) else np.asarray(to_numpy(a))


def _as_float(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def _mean_se(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean over rows and its standard error (``nan`` with fewer than two rows)."""
    n = values.shape[0]
    if n == 0:
        nan = np.full(values.shape[1:], np.nan)
        return nan, nan.copy()
    mean = values.mean(axis=0)
    if n == 1:
        return mean, np.full(values.shape[1:], np.nan)
    return mean, values.std(axis=0, ddof=1) / np.sqrt(n)


def _per_input(fn, value):
    return tuple(fn(v) for v in value) if isinstance(value, tuple) else fn(value)


@dataclass
class Group:
    """One group of rows and the summary of its attributions.

    Attributes
    ----------
    name : the group's label.
    rows : int array, the rows of the parent Explanation in this group.
    explanation : Explanation of those rows (NumPy arrays).
    mean, stderr : per feature (tuples for several inputs): mean attribution over the
        rows and its standard error across rows (``nan`` with fewer than two rows).
    low, high : the interval ``mean -+ z * stderr`` at ``level``.
    mc_stderr : Monte Carlo standard error of ``mean`` alone,
        ``sqrt(sum(row stderr**2)) / n``.
    abs_mean, abs_stderr : the same for ``|values|`` (global importance).
    base_value, output_mean : mean base value and mean model output over the rows.
    max_abs_delta : worst completeness residual ``|delta|`` in the group.
    """

    name: Any
    rows: np.ndarray
    explanation: Any  # the Explanation of those rows
    level: float
    mean: Any
    stderr: Any
    low: Any
    high: Any
    mc_stderr: Any
    abs_mean: Any
    abs_stderr: Any
    base_value: float
    output_mean: float
    max_abs_delta: float

    @property
    def n(self) -> int:
        return int(self.rows.size)

    @property
    def halfwidth(self) -> Any:
        """``z * stderr``: half the width of each interval."""
        z = z_value(self.level)
        return _per_input(lambda s: z * s, self.stderr)

    @classmethod
    def of(cls, name: Any, rows: np.ndarray, explanation: Any, level: float) -> "Group":
        exp = explanation.to_numpy()
        z = z_value(level)
        values = _per_input(_as_float, exp.values)
        stats = _per_input(_mean_se, values)
        mean = _per_input(lambda s: s[0], stats) if isinstance(values, tuple) else stats[0]
        stderr = _per_input(lambda s: s[1], stats) if isinstance(values, tuple) else stats[1]
        if isinstance(values, tuple):
            abs_stats = tuple(_mean_se(np.abs(v)) for v in values)
            abs_mean, abs_stderr = tuple(s[0] for s in abs_stats), tuple(s[1] for s in abs_stats)
            low = tuple(m - z * s for m, s in zip(mean, stderr))
            high = tuple(m + z * s for m, s in zip(mean, stderr))
        else:
            abs_mean, abs_stderr = _mean_se(np.abs(values))
            low, high = mean - z * stderr, mean + z * stderr
        n = rows.size

        def mc(err):
            err = _as_float(err)
            return np.sqrt((err**2).sum(axis=0)) / n if n else np.full(err.shape[1:], np.nan)

        def scalar(a, how):
            a = _as_float(a)
            return float(how(a)) if a.size else float("nan")

        return cls(
            name=name, rows=rows, explanation=exp, level=level, mean=mean, stderr=stderr, low=low,
            high=high, mc_stderr=_per_input(mc, exp.stderr), abs_mean=abs_mean, abs_stderr=abs_stderr,
            base_value=scalar(exp.base_values, np.mean), output_mean=scalar(exp.output, np.mean),
            max_abs_delta=scalar(exp.delta, lambda d: np.max(np.abs(d))),
        )

    def __repr__(self) -> str:
        return f"Group({self.name!r}, n={self.n}, level={self.level})"


class GroupedExplanation(Mapping):
    """An Explanation split by one label per row: a mapping label -> :class:`Group`.

    Made by :meth:`gradshap.Explanation.groupby`. Iterates over the group labels in
    order; ``grouped.mean`` etc. stack the groups' statistics on a new first axis.
    """

    def __init__(self, explanation: Any, labels: Any, *, order: Sequence | None = None, level: float = 0.95):
        z_value(level)  # checks `level`
        n = len(explanation)
        labels = _host(labels)
        if labels.shape != (n,):
            msg = f"`labels` must hold one label per row: expected shape ({n},), got {labels.shape}"
            raise ValueError(msg)
        if order is None:
            present = list(dict.fromkeys(labels.tolist()))
            if present and set(present) <= set(CONFUSION):
                order = CONFUSION
            else:
                order = sorted(present, key=lambda v: (str(type(v)), v))
        self.explanation = explanation
        self.labels = labels
        self.level = float(level)
        self._groups: dict[Any, Group] = {}
        for name in order:
            rows = np.flatnonzero(labels == name)
            key = name.item() if isinstance(name, np.generic) else name
            self._groups[key] = Group.of(key, rows, explanation[rows], self.level)

    def __getitem__(self, key: Any) -> Group:
        try:
            return self._groups[key]
        except KeyError:
            msg = f"no group {key!r}; the groups are {list(self._groups)}"
            raise KeyError(msg) from None

    def __iter__(self) -> Iterator:
        return iter(self._groups)

    def __len__(self) -> int:
        return len(self._groups)

    @property
    def feature_names(self):
        return self.explanation.feature_names

    @property
    def counts(self) -> np.ndarray:
        return np.array([g.n for g in self._groups.values()], dtype=np.int64)

    def _stack(self, attr: str):
        items = [getattr(g, attr) for g in self._groups.values()]
        if items and isinstance(items[0], tuple):
            return tuple(np.stack([it[k] for it in items]) for k in range(len(items[0])))
        return np.stack(items)

    @property
    def mean(self):
        """``(G, *features)`` mean attribution per group."""
        return self._stack("mean")

    @property
    def stderr(self):
        """``(G, *features)`` standard error of each group mean across its rows."""
        return self._stack("stderr")

    @property
    def low(self):
        return self._stack("low")

    @property
    def high(self):
        return self._stack("high")

    def __repr__(self) -> str:
        inner = ", ".join(f"{k!r}: n={g.n}" for k, g in self._groups.items())
        return f"GroupedExplanation({{{inner}}}, level={self.level})"
