"""Several explainers on the same rows, scored with the same metrics: a table with intervals,
the time each took per row, JSON, and a figure (:func:`gradshap.plots.comparison`)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from gradshap._groups import z_value
from gradshap.metrics._common import Score
from gradshap.metrics._curves import deletion, insertion
from gradshap.metrics._error import error
from gradshap.metrics._infidelity import infidelity
from gradshap.metrics._sensitivity import max_sensitivity

__all__ = ["METRICS", "Comparison", "compare"]

#: Metrics :func:`compare` knows; ``"error"`` needs a ``reference``.
METRICS = ("deletion", "insertion", "infidelity", "max_sensitivity", "error")


@dataclass(frozen=True)
class Comparison:
    """Scores of several explainers on the same rows.

    Attributes
    ----------
    scores : mapping method -> list of :class:`Score`.
    seconds_per_row : mapping method -> seconds of its explain call divided by the rows.
    n : rows scored; level : coverage of the intervals.
    """

    scores: dict
    seconds_per_row: dict
    n: int
    level: float = 0.95

    @property
    def methods(self) -> list[str]:
        return list(self.scores)

    def records(self) -> list[dict]:
        """One dict per (method, metric): mean, stderr, interval, better, seconds per row."""
        return [{"method": m, **s.to_dict(self.level), "seconds_per_row": self.seconds_per_row[m]}
                for m, scores in self.scores.items() for s in scores]

    def paired(self, metric: str, method: str, baseline: str) -> Score:
        """The per-row difference ``method - baseline`` of one metric, with its standard error.

        The methods were scored on the same rows (and perturbations), so the spread between
        rows cancels: this interval is far narrower than the two separate ones.
        """
        def find(m):
            if m not in self.scores:
                msg = f"no method {m!r}; the methods are {self.methods}"
                raise KeyError(msg)
            for s in self.scores[m]:
                if s.name == metric:
                    return s
            msg = f"no metric {metric!r}; the metrics are {[s.name for s in self.scores[m]]}"
            raise KeyError(msg)

        a, b = find(method), find(baseline)
        return Score(f"{metric}[{method}] - {metric}[{baseline}]", a.per_row - b.per_row, a.better)

    def table(self) -> str:
        """A plain-text table: one row per method, one column per metric, ``mean ± z * stderr``."""
        names = [s.name for s in next(iter(self.scores.values()))] if self.scores else []
        z = z_value(self.level)
        header = ["method", *names, "s / row"]
        rows = [[m, *(f"{s.mean:.4g} ± {z * s.stderr:.2g}" for s in scores), f"{self.seconds_per_row[m]:.3g}"]
                for m, scores in self.scores.items()]
        widths = [max(len(r[k]) for r in [header, *rows]) for k in range(len(header))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows]]
        lines.insert(1, "  ".join("-" * w for w in widths))
        better = ", ".join(f"{s.name}: {s.better}" for s in next(iter(self.scores.values()), []))
        return "\n".join([*lines, f"({100 * self.level:g}% intervals over {self.n} rows; better: {better})"])

    def __str__(self) -> str:
        return self.table()

    def to_json(self, path: str | Path | None = None) -> str:
        """The records as JSON; written to ``path`` when given."""
        text = json.dumps({"n": self.n, "level": self.level, "records": self.records()}, indent=2)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text


def compare(methods: Mapping[str, Callable], model: Any, x: Any, background: Any, *, metrics: tuple = (
        "deletion", "insertion", "infidelity"), reference: Any = None, target: Any = None, groups: Any = None,
        steps: int = 20, n_perturb: int = 10, radius: float = 0.02, seed: int = 0, framework: str | None = None,
        batch_size: int | None = None, level: float = 0.95, clock: Callable[[], float] = time.perf_counter
        ) -> Comparison:
    """Run each explainer on the rows of ``x`` and score it with the same metrics.

    Parameters
    ----------
    methods : mapping name -> callable
        ``explain(x) -> Explanation`` for each method or sampler, e.g.
        ``{"lattice": lambda x: explainer(x, seed=0), "IG": lambda x: ig(x, n_steps=50)}``.
    model, x, background, target, groups, framework, batch_size
        As for :func:`gradshap.metrics.deletion`.
    metrics : tuple of str
        From :data:`METRICS`. The perturbations and fills are drawn from ``seed`` by row, so
        every method is scored on the same ones (common random numbers).
    reference : Explanation or array, optional
        For ``"error"``: relative L2 error and calibration against it.
    steps, n_perturb, radius
        Of the curves, of infidelity and max-sensitivity, of max-sensitivity.
    clock : callable
        Seconds now (inject a fake one in tests); each method's single explain call is timed.

    Returns
    -------
    Comparison
        ``print(result)`` shows the table; :meth:`Comparison.to_json`;
        :func:`gradshap.plots.comparison` draws it.
    """
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        msg = f"`metrics` must be a non-empty tuple from {METRICS}; got {metrics!r}"
        raise ValueError(msg)
    if "error" in metrics and reference is None:
        msg = "the 'error' metric needs `reference` (exact or converged attributions of the same rows)"
        raise ValueError(msg)
    if not methods:
        msg = "`methods` must map at least one name to an explain callable"
        raise ValueError(msg)
    common = {"target": target, "framework": framework, "batch_size": batch_size}
    scores, seconds, n = {}, {}, 0
    for name, explain in methods.items():
        start = clock()
        exp = explain(x)
        seconds_used = clock() - start
        n = len(exp) if hasattr(exp, "__len__") else int(np.shape(exp)[0])
        seconds[name] = seconds_used / max(1, n)
        found: list[Score] = []
        for metric in metrics:
            if metric == "deletion":
                found.append(deletion(model, x, exp, background, groups=groups, steps=steps, **common).auc)
            elif metric == "insertion":
                found.append(insertion(model, x, exp, background, groups=groups, steps=steps, **common).auc)
            elif metric == "infidelity":
                found.append(infidelity(model, x, exp, background=background, n_perturb=n_perturb, groups=groups,
                                        seed=seed, **common))
            elif metric == "max_sensitivity":
                found.append(max_sensitivity(explain, x, radius=radius, n_perturb=n_perturb, seed=seed))
            else:
                report = error(exp, reference, level=level)
                found.extend([report.relative_l2, report.calibration])
        scores[name] = found
    return Comparison(scores, seconds, n, level)
