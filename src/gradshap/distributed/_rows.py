"""One record per explained row, and the Explanation those records make again.

A record holds the row's id, its values, standard errors, base value, output and
completeness residual, the samples it used, its target where targets differ per row,
and ``explained``: a short JSON text of how it was explained (seed, sampler, target),
so records written to files by many workers still say whether they belong together.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from gradshap.explanation import Explanation

__all__ = ["explain_rows", "from_records"]

#: The columns of a record, in this order (``target`` only for per-row targets).
COLUMNS = ("row_id", "values", "stderr", "base_value", "output", "delta", "n_samples", "target", "explained")


def explain_rows(explainer: Callable, x: Any, row_ids: Any, **options) -> dict[str, np.ndarray]:
    """Explain rows ``x`` with ids ``row_ids``: one record per row, as NumPy columns.

    Parameters
    ----------
    explainer : GradientExplainer or IntegratedGradients (anything taking ``row_ids=``)
    x : array
        The rows, in the explainer's framework.
    row_ids : array of ints
        One distinct non-negative id per row.
    **options
        For the explainer call (``n_samples``, ``seed``, ``target``, ...). Every piece of
        one dataset must get the same options, and an integer ``seed``.
    """
    exp = explainer(x, row_ids=row_ids, **options).to_numpy()
    if isinstance(exp.values, tuple):
        msg = "records hold one input array per row; a model with several inputs is not supported here"
        raise TypeError(msg)
    k = len(exp)
    per_row = exp._per_row_target()
    adaptive = isinstance(exp.n_samples, np.ndarray)
    target = "per row" if per_row else list(exp.target) if isinstance(exp.target, tuple) else exp.target
    explained = json.dumps({"seed": exp.seed, "sampler": exp.sampler, "target": target, "adaptive": adaptive,
                            "feature_names": exp.feature_names})
    n_samples = exp.n_samples if adaptive else np.full(np.shape(exp.base_values), exp.n_samples, dtype=np.int64)
    records = {"row_id": np.asarray(exp.row_ids, dtype=np.int64), "values": exp.values, "stderr": exp.stderr,
               "base_value": exp.base_values, "output": exp.output, "delta": exp.delta,
               "n_samples": np.asarray(n_samples, dtype=np.int64)}
    if per_row:
        records["target"] = np.asarray(exp.target, dtype=np.int64)
    records["explained"] = np.array([explained] * k, dtype=object)
    return records


def from_records(records: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> Explanation:
    """The Explanation of records from :func:`explain_rows`, rows in increasing row id.

    ``records`` is a mapping of columns (NumPy arrays or lists), a pandas DataFrame, a
    ``ray.data.Dataset`` of records, or a sequence of one mapping per row (what
    ``Dataset.take_all()`` returns). The
    records must all have been explained alike, and their row ids must be distinct.
    """
    columns = _columns(records)
    missing = [c for c in COLUMNS if c != "target" and c not in columns]
    if missing:
        msg = f"`records` lacks the column(s) {', '.join(missing)}; expected the records of gradshap's explain_rows"
        raise ValueError(msg)
    kinds = sorted({str(s) for s in columns["explained"]})
    if len(kinds) != 1:
        msg = f"`records` were explained in {len(kinds)} different ways; only rows explained alike join: {kinds[:2]}"
        raise ValueError(msg)
    how = json.loads(kinds[0])
    ids = np.asarray(columns["row_id"], dtype=np.int64)
    order = np.argsort(ids, kind="stable")
    repeated = ids[order][1:][np.diff(ids[order]) == 0]
    if repeated.size:
        msg = f"`records` hold row id(s) {', '.join(map(str, repeated[:5]))} more than once"
        raise ValueError(msg)

    def column(name: str) -> np.ndarray:
        return np.asarray(columns[name])[order]

    target = how["target"]
    if target == "per row":
        target = column("target")
    elif isinstance(target, list):
        target = tuple(target)
    n_samples = column("n_samples") if how["adaptive"] else int(np.asarray(columns["n_samples"]).flat[0])
    return Explanation(values=column("values"), base_values=column("base_value"), output=column("output"),
                       delta=column("delta"), stderr=column("stderr"), data=None, feature_names=how["feature_names"],
                       target=target, sampler=how["sampler"], n_samples=n_samples, seed=how["seed"],
                       row_ids=ids[order])


def _columns(records: Any) -> dict[str, Any]:
    if hasattr(records, "iter_batches") and hasattr(records, "map_batches"):  # a ray.data.Dataset
        batches = list(records.iter_batches(batch_format="numpy", batch_size=None))
        if not batches:
            msg = "`records` is an empty Dataset"
            raise ValueError(msg)
        return {name: np.concatenate([np.asarray(b[name]) for b in batches]) for name in batches[0]}
    if isinstance(records, Mapping):
        return dict(records)
    if hasattr(records, "columns") and hasattr(records, "to_numpy"):  # a pandas DataFrame
        return {c: np.stack(records[c].to_numpy()) if records[c].dtype == object and c != "explained"
                else records[c].to_numpy() for c in records.columns}
    rows = list(records)
    if not rows or not all(isinstance(r, Mapping) for r in rows):
        msg = "`records` must be a mapping of columns or a non-empty sequence of one mapping per row"
        raise TypeError(msg)
    return {name: np.stack([np.asarray(r[name]) for r in rows]) if name != "explained"
            else [r[name] for r in rows] for name in rows[0]}
