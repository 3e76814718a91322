"""Dask: ``map_blocks`` over a dask array of rows; each block's row ids are its global rows."""

from __future__ import annotations

import json
import math
import threading
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from gradshap import _sampling
from gradshap.backends import require
from gradshap.distributed._rows import explain_rows, from_records
from gradshap.explanation import Explanation

__all__ = ["LazyExplanation", "explain_dask_array"]

#: The numeric record columns packed side by side into one float64 block.
_PACKED = ("values", "stderr", "base_value", "output", "delta", "n_samples", "target")
_FIELDS = {"values": "values", "stderr": "stderr", "base_values": "base_value", "output": "output", "delta": "delta"}


class _Block:
    """Explains one block: its rows' ids are ``row_offset`` plus their global positions.

    Blocks of one process run one at a time on the explainer (not every model is safe to
    call from several threads at once, and the framework already uses the cores within a
    call); Dask's processes and workers run in parallel, each with its own copy."""

    def __init__(self, explainer, options: dict, convert: Callable | None, layout: list, row_offset: int,
                 target_rows: np.ndarray | None):
        self.explainer, self.options, self.convert = explainer, options, convert
        self.layout, self.row_offset, self.target_rows = layout, row_offset, target_rows
        self._lock = threading.Lock()

    def __getstate__(self):
        state = dict(self.__dict__)
        del state["_lock"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __call__(self, block: np.ndarray, block_info=None) -> np.ndarray:
        start, stop = block_info[0]["array-location"][0]
        options = dict(self.options)
        if self.target_rows is not None:
            options["target"] = self.target_rows[start:stop]
        rows = block if self.convert is None else self.convert(block)
        with self._lock:
            records = explain_rows(self.explainer, rows, self.row_offset + np.arange(start, stop), **options)
        return _pack(records, self.layout)


def _layout(records: dict) -> list:
    """Where each packed column sits: ``(name, shape of a row, dtype, start, stop)``."""
    layout, at = [], 0
    for name in _PACKED:
        if name in records:
            a = np.asarray(records[name])
            width = math.prod(a.shape[1:])
            layout.append((name, tuple(a.shape[1:]), a.dtype.str, at, at + width))
            at += width
    return layout


def _pack(records: dict, layout: list) -> np.ndarray:
    k = len(records["row_id"])
    out = np.empty((k, layout[-1][4]), dtype=np.float64)
    for name, _, _, start, stop in layout:
        out[:, start:stop] = np.reshape(records[name], (k, stop - start))
    return out


@dataclass
class LazyExplanation:
    """The explanation of a dask array's rows, not yet computed.

    ``values``, ``stderr``, ``base_values``, ``output`` and ``delta`` are lazy dask arrays
    (their dtypes and shapes those of an Explanation); :meth:`compute` runs the graph and
    returns the Explanation, with ``row_ids`` the rows' global positions plus ``row_offset``.
    """

    packed: Any  # dask array (n, width), float64: every record column side by side
    layout: list
    explained: str  # the records' JSON text of how they were explained
    row_offset: int

    def _field(self, name: str):
        for column, shape, dtype, start, stop in self.layout:
            if column == name:
                part = self.packed[:, start:stop]
                return part.reshape((part.shape[0], *shape)).astype(np.dtype(dtype))
        raise AttributeError(name)

    def __getattr__(self, name: str):
        if name in _FIELDS:
            return self._field(_FIELDS[name])
        raise AttributeError(name)

    @property
    def seed(self) -> int:
        return json.loads(self.explained)["seed"]

    def compute(self, **kwargs) -> Explanation:
        """Run the graph (``kwargs`` go to ``dask.array.Array.compute``, e.g. ``scheduler=``)."""
        packed = np.asarray(self.packed.compute(**kwargs))
        n = packed.shape[0]
        records: dict[str, Any] = {"row_id": self.row_offset + np.arange(n, dtype=np.int64),
                                   "explained": [self.explained] * n}
        for name, shape, dtype, start, stop in self.layout:
            records[name] = packed[:, start:stop].reshape((n, *shape)).astype(np.dtype(dtype))
        return from_records(records)


def explain_dask_array(explainer, x, *, convert: Callable | None = None, row_offset: int = 0,
                       **options) -> LazyExplanation:
    """Explain the rows of a dask array with ``map_blocks``: one explainer call per block.

    Each block's rows get their global positions (from ``block_info``) plus ``row_offset``
    as row ids, and every block the same seed, so the result equals one call over all rows
    however ``x`` is chunked, and a recomputed block gives the same numbers.

    Parameters
    ----------
    explainer : GradientExplainer or IntegratedGradients
        Sent to the workers with the graph (with a distributed scheduler it must pickle; a
        model that does not pickle runs with the threaded scheduler, or on Ray with
        :func:`explain_ray_dataset`, which builds the model on each worker).
    x : dask.array.Array
        ``(n, *features)``, chunked along rows only.
    convert : callable, optional
        Turns a NumPy block into the model's array (e.g. ``torch.from_numpy``); results
        come back as NumPy.
    row_offset : int
        Added to every row id (for a dataset explained as several dask arrays).
    **options
        For the explainer call: ``n_samples``, ``sampler``, ``target`` (a per-row target
        as a NumPy array of ``n`` ints), ``stdevs``, ``seed`` (``None`` resolves here to one
        integer for every block), ``rtol``, ...

    Returns
    -------
    LazyExplanation
        Lazy fields, and ``compute()`` for the Explanation.

    Examples
    --------
    >>> import numpy as np, dask.array as da, gradshap
    >>> from gradshap.distributed import explain_dask_array
    >>> w = np.array([1.0, -2.0, 0.5])
    >>> vg = (lambda p: p @ w, lambda p: np.broadcast_to(w, p.shape))
    >>> explainer = gradshap.GradientExplainer(vg, np.zeros((4, 3)), framework="numpy")
    >>> x = np.arange(30.0).reshape(10, 3)
    >>> lazy = explain_dask_array(explainer, da.from_array(x, chunks=(4, 3)), n_samples=8, seed=0)
    >>> exp = lazy.compute(scheduler="threads")
    >>> np.allclose(exp.values, explainer(x, n_samples=8, seed=0).values, rtol=1e-12)
    True
    """
    da = require("dask.array", "dask")
    if not isinstance(x, da.Array):
        msg = f"`x` must be a dask.array.Array; got {type(x).__module__}.{type(x).__name__}"
        raise TypeError(msg)
    if x.ndim < 2 or any(len(c) > 1 for c in x.chunks[1:]):
        msg = (f"`x` must be (n, *features) chunked along rows only; got shape {x.shape} with chunks "
               f"{tuple(len(c) for c in x.chunks)} per axis: use x.rechunk({{{', '.join(f'{a}: -1' for a in range(1, x.ndim))}}})")
        raise ValueError(msg)
    if isinstance(row_offset, bool) or not isinstance(row_offset, int) or row_offset < 0:
        msg = f"`row_offset` must be a non-negative int; got {row_offset!r}"
        raise ValueError(msg)
    options = dict(options, seed=_sampling.resolve_seed(options.get("seed")))
    target = options.get("target")
    target_rows = None
    if isinstance(target, np.ndarray):
        if target.shape != (x.shape[0],):
            msg = f"`target` as an array must hold one int per row of `x`: expected shape ({x.shape[0]},), got {target.shape}"
            raise ValueError(msg)
        target_rows = target
    # One row explained here gives the columns' shapes and dtypes (and checks the options
    # before the graph runs).
    probe = dict(options, target=target_rows[:1]) if target_rows is not None else options
    first = np.asarray(x[:1].compute(scheduler="sync"))
    records = explain_rows(explainer, first if convert is None else convert(first), np.array([row_offset]), **probe)
    layout = _layout(records)
    block = _Block(explainer, options, convert, layout, row_offset, target_rows)
    packed = x.map_blocks(block, dtype=np.float64, chunks=(x.chunks[0], (layout[-1][4],)),
                          drop_axis=list(range(2, x.ndim)) or None, meta=np.empty((0, 0), dtype=np.float64))
    return LazyExplanation(packed, layout, str(records["explained"][0]), row_offset)
