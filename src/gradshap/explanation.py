"""The Explanation result: attributions for a batch of rows, and what to do with them."""

from __future__ import annotations

import json
import numbers
import zipfile
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import array_api_compat as aac
import numpy as np

from gradshap._arrays import to_numpy
from gradshap._groups import GroupedExplanation
from gradshap.backends import require

__all__ = ["Explanation", "to_numpy"]

#: Fields that hold one entry per row (arrays, or tuples of arrays for several inputs).
_ROW_FIELDS = ("values", "base_values", "output", "delta", "stderr", "data")
_FORMAT = "gradshap.Explanation"
_FORMAT_VERSION = 1


def _describe_samples(n_samples: Any) -> str:
    if isinstance(n_samples, np.ndarray) and n_samples.size:  # adaptive mode
        return f"{int(n_samples.min())}..{int(n_samples.max())} per row"
    return str(n_samples)


def _row_index(key: Any, n: int) -> slice | np.ndarray:
    """``key`` as a slice or an array of row numbers (never a bare int: rows stay an axis)."""
    if isinstance(key, slice):
        return key
    if isinstance(key, numbers.Integral) and not isinstance(key, bool):
        k = int(key)
        if not -n <= k < n:
            msg = f"row index {k} is out of range for an Explanation of {n} rows"
            raise IndexError(msg)
        k %= n
        return slice(k, k + 1)
    if isinstance(key, tuple):
        msg = (
            "an Explanation is indexed by rows only (an int, a slice, a boolean mask or an "
            f"array of row numbers); got a tuple {key!r}. Index the arrays (exp.values[...]) for more"
        )
        raise TypeError(msg)
    idx = to_numpy(key) if (aac.is_array_api_obj(key) or hasattr(key, "numpy")) else np.asarray(key)
    if idx.dtype == bool:
        if idx.shape != (n,):
            msg = f"a boolean mask over rows must have shape ({n},); got {tuple(idx.shape)}"
            raise IndexError(msg)
        return np.flatnonzero(idx)
    if idx.ndim == 1 and (idx.size == 0 or np.issubdtype(idx.dtype, np.integer)):
        idx = idx.astype(np.int64)
        if idx.size and (idx.min() < -n or idx.max() >= n):
            msg = f"row numbers must lie in [-{n}, {n}) for an Explanation of {n} rows; got {idx.min()}..{idx.max()}"
            raise IndexError(msg)
        return idx % n
    msg = (
        "an Explanation is indexed by an int, a slice, a boolean mask of shape "
        f"({n},) or a 1-D array of row numbers; got {type(key).__name__} with dtype {idx.dtype}"
    )
    raise TypeError(msg)


def _take(a: Any, index: slice | np.ndarray) -> Any:
    """Rows ``index`` of ``a`` (any framework; tuples map elementwise), in ``a``'s namespace."""
    if a is None:
        return None
    if isinstance(a, (tuple, list)):
        return tuple(_take(v, index) for v in a)
    if isinstance(index, slice) or isinstance(a, np.ndarray):
        return a[index]
    if hasattr(a, "numpy") and not aac.is_array_api_obj(a):  # tf.Tensor
        import tensorflow as tf  # already imported: a tf.Tensor exists

        return tf.gather(a, index, axis=0)
    xp = aac.array_namespace(a)
    return xp.take(a, xp.asarray(index, device=aac.device(a)), axis=0)


def _n_rows(a: Any) -> int:
    return int((a[0] if isinstance(a, tuple) else a).shape[0])


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

    Indexing selects rows and keeps the row axis: ``exp[3]`` is a one-row Explanation,
    ``exp[:10]``, ``exp[mask]`` (a boolean mask) and ``exp[[0, 5]]`` select several.
    Arrays stay in their framework and on their device.

    Examples
    --------
    >>> import numpy as np, gradshap
    >>> w = np.array([1.0, -2.0])
    >>> vg = lambda p: (p @ w, np.broadcast_to(w, p.shape))
    >>> exp = gradshap.expected_gradients(vg, np.ones((4, 2)), np.zeros((2, 2)), n_samples=4, seed=0)
    >>> exp[1:3].values.shape, exp[np.array([True, False, False, True])].output.tolist()
    ((2, 2), [-1.0, -1.0])
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
            data=tuple(data) if many_inputs else data,
            feature_names=feature_names,
            target=result.target,
            sampler=result.sampler,
            n_samples=result.n_samples,
        )

    # ------------------------------------------------------------------ basics
    def __repr__(self) -> str:
        def describe(a):
            if a is None:
                return "None"
            if isinstance(a, tuple):
                return "(" + ", ".join(describe(v) for v in a) + ")"
            return f"{type(a).__module__.split('.')[0]} {tuple(a.shape)} {str(a.dtype).replace('torch.', '')}"

        try:
            worst = float(np.max(np.abs(to_numpy(self.delta)))) if len(self) else float("nan")
            worst_text = f"{worst:.3g}"
        except (TypeError, ValueError):  # traced values (inside jax.jit)
            worst_text = "?"
        return (
            f"Explanation(n={len(self)}, values={describe(self.values)}, sampler={self.sampler!r}, "
            f"n_samples={_describe_samples(self.n_samples)}, target={self.target if isinstance(self.target, (int, tuple, str)) or self.target is None else 'per row'}, "
            f"max|delta|={worst_text})"
        )

    def __len__(self) -> int:
        return _n_rows(self.values)

    @property
    def shape(self) -> tuple:
        """Shape of ``values`` (a tuple of shapes for several inputs)."""
        if isinstance(self.values, tuple):
            return tuple(tuple(v.shape) for v in self.values)
        return tuple(self.values.shape)

    @property
    def several_targets(self) -> bool:
        """True when a list of targets was explained (``values`` has a trailing target axis)."""
        return isinstance(self.target, tuple)

    def to_numpy(self) -> "Explanation":
        """The same explanation with every array as a NumPy array (on the host)."""
        changes = {name: to_numpy(getattr(self, name)) for name in _ROW_FIELDS}
        if self.target is not None and not isinstance(self.target, (int, tuple, str)):
            changes["target"] = to_numpy(self.target)
        return replace(self, **changes)

    def _per_row_target(self) -> bool:
        t = self.target
        return t is not None and not isinstance(t, (int, tuple, str)) and hasattr(t, "shape") \
            and len(t.shape) == 1 and int(t.shape[0]) == len(self)

    def __getitem__(self, key: Any) -> "Explanation":
        """Rows of the explanation (the row axis is kept, see the class docstring)."""
        index = _row_index(key, len(self))
        changes = {name: _take(getattr(self, name), index) for name in _ROW_FIELDS}
        if self._per_row_target():
            changes["target"] = _take(self.target, index)
        if isinstance(self.n_samples, np.ndarray):  # adaptive mode: samples per row
            changes["n_samples"] = self.n_samples[index]
        return replace(self, **changes, extras=dict(self.extras))

    def select_target(self, k: int) -> "Explanation":
        """The explanation of the ``k``-th of several targets (drops the trailing target axis)."""
        if not self.several_targets:
            msg = f"`select_target` needs an Explanation of several targets (a list `target`); this one has target={self.target!r}"
            raise ValueError(msg)
        if not 0 <= k < len(self.target):
            msg = f"`k` must lie in [0, {len(self.target)}) for targets {self.target}; got {k}"
            raise IndexError(msg)

        def last(a):
            if a is None:
                return None
            if isinstance(a, tuple):
                return tuple(last(v) for v in a)
            return a[..., k]

        return replace(
            self, values=last(self.values), stderr=last(self.stderr), base_values=last(self.base_values),
            output=last(self.output), delta=last(self.delta), target=self.target[k], extras=dict(self.extras),
        )

    # --------------------------------------------------------------- grouping
    def groupby(self, labels: Any, *, order: Sequence | None = None, level: float = 0.95):
        """Split the rows by ``labels`` (one label per row) and summarise each group.

        Parameters
        ----------
        labels : array-like of shape (n,)
            Any hashable labels, e.g. from :func:`gradshap.confusion_labels`.
        order : sequence, optional
            The groups to make, in this order (labels not listed are dropped; listed
            labels with no row give empty groups). By default the distinct labels
            sorted, except that confusion labels come as TP, TN, FP, FN, all four.
        level : float
            Coverage of the normal-approximation intervals (0.95: mean +- 1.96 stderr).

        Returns
        -------
        gradshap.GroupedExplanation
            A mapping label -> :class:`gradshap.Group` with, per group, the rows'
            Explanation, ``mean``, ``stderr`` (standard error of the mean across the
            group's rows), ``low``/``high`` (the interval) and ``mc_stderr``.
        """
        return GroupedExplanation(self, labels, order=order, level=level)

    # -------------------------------------------------------------- shap interop
    def to_shap(self):
        """This explanation as a ``shap.Explanation`` (needs shap), so shap's plots work.

        ``values``, ``base_values``, ``data`` and ``feature_names`` map one to one;
        ``stderr`` becomes shap's ``error_std``. shap has no field for ``delta``: in its
        plots ``base_values + sum(values)`` is ``output + delta``, not ``output``. For a
        model with several inputs, a tuple of shap Explanations (one per input) sharing
        the base values.
        """
        shap = require("shap", "shap")
        exp = self.to_numpy()
        if isinstance(exp.values, tuple):
            names = exp.feature_names if isinstance(exp.feature_names, (tuple, list)) and len(exp.feature_names) == len(exp.values) \
                and all(isinstance(f, (list, tuple)) or f is None for f in exp.feature_names) else [None] * len(exp.values)
            data = exp.data if isinstance(exp.data, tuple) else (None,) * len(exp.values)
            return tuple(
                _shap_one(shap, v, e, exp.base_values, d, n, exp.target)
                for v, e, d, n in zip(exp.values, exp.stderr, data, names)
            )
        return _shap_one(shap, exp.values, exp.stderr, exp.base_values, exp.data, exp.feature_names, exp.target)

    # --------------------------------------------------------------- save/load
    def save(self, path: str | Path) -> Path:
        """Write every field to a compressed ``.npz`` (no pickle); returns the path written.

        Arrays are saved as NumPy arrays (moved to the host); :meth:`load` gives them back
        as NumPy arrays with the same shapes and dtypes; bfloat16 and float8, which NumPy
        lacks, are saved as float32, which holds their values exactly (:meth:`to_numpy`).
        ``extras`` is not saved.
        """
        exp = self.to_numpy()
        arrays: dict[str, np.ndarray] = {}
        layout: dict[str, Any] = {}
        for name in _ROW_FIELDS:
            value = getattr(exp, name)
            if value is None:
                layout[name] = None
            elif isinstance(value, tuple):
                layout[name] = len(value)
                for k, v in enumerate(value):
                    arrays[f"{name}.{k}"] = _savable(v, f"{name}[{k}]")
            else:
                layout[name] = "array"
                arrays[name] = _savable(value, name)
        target = exp.target
        if target is None or isinstance(target, (str, int)) and not isinstance(target, bool):
            target_meta = {"kind": "scalar", "value": target}
        elif isinstance(target, tuple):
            target_meta = {"kind": "tuple", "value": [int(t) for t in target]}
        else:
            target_meta = {"kind": "array"}
            arrays["target"] = _savable(np.asarray(target), "target")
        meta = {
            "format": _FORMAT,
            "version": _FORMAT_VERSION,
            "layout": layout,
            "target": target_meta,
            "feature_names": _json_names(exp.feature_names),
            "sampler": exp.sampler,
            "n_samples": None if exp.n_samples is None else
            "array" if isinstance(exp.n_samples, np.ndarray) else int(exp.n_samples),
        }
        if isinstance(exp.n_samples, np.ndarray):
            arrays["n_samples"] = np.asarray(exp.n_samples, dtype=np.int64)
        arrays["__meta__"] = np.asarray(json.dumps(meta))
        path = Path(path)
        if path.suffix != ".npz":
            path = path.with_name(path.name + ".npz")
        np.savez_compressed(path, **arrays)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Explanation":
        """Read an Explanation written by :meth:`save` (NumPy arrays, never pickle).

        A file that is not one (truncated, foreign, missing entries) raises ``ValueError``
        naming the file and what is wrong; a missing file raises ``FileNotFoundError``.
        """
        try:
            return cls._load(path)
        except (zipfile.BadZipFile, EOFError, KeyError, TypeError, json.JSONDecodeError, zlib.error) as err:
            what = f"an entry is missing ({err.args[0]})" if isinstance(err, KeyError) else str(err) or type(err).__name__
            msg = f"`path` {str(path)!r} is not a readable gradshap Explanation: {what}"
            raise ValueError(msg) from err
        except ValueError as err:
            if str(err).startswith("`path`"):
                raise
            what = "it is not an .npz archive (gradshap never loads pickles)" if "pickle" in str(err) else str(err)
            msg = f"`path` {str(path)!r} is not a readable gradshap Explanation: {what}"
            raise ValueError(msg) from err

    @classmethod
    def _load(cls, path: str | Path) -> "Explanation":
        # The file is opened here so that it is closed on every error (np.load leaves it open
        # when the archive is damaged).
        with open(path, "rb") as file, np.load(file, allow_pickle=False) as archive:
            if "__meta__" not in archive.files:
                msg = f"`path` {str(path)!r} is not a saved gradshap Explanation (no __meta__ entry)"
                raise ValueError(msg)
            meta = json.loads(str(archive["__meta__"]))
            if meta.get("format") != _FORMAT or meta.get("version", 0) > _FORMAT_VERSION:
                msg = f"`path` {str(path)!r} holds format {meta.get('format')!r} version {meta.get('version')}; expected {_FORMAT!r} <= {_FORMAT_VERSION}"
                raise ValueError(msg)
            kwargs: dict[str, Any] = {}
            for name, kind in meta["layout"].items():
                if kind is None:
                    kwargs[name] = None
                elif kind == "array":
                    kwargs[name] = archive[name]
                else:
                    kwargs[name] = tuple(archive[f"{name}.{k}"] for k in range(int(kind)))
            t = meta["target"]
            kwargs["target"] = (archive["target"] if t["kind"] == "array"
                                else tuple(t["value"]) if t["kind"] == "tuple" else t["value"])
            n_samples = archive["n_samples"] if meta["n_samples"] == "array" else meta["n_samples"]
        names = meta["feature_names"]
        if names is not None and names and isinstance(names[0], list):
            names = tuple(names)
        return cls(feature_names=names, sampler=meta["sampler"], n_samples=n_samples, **kwargs)


def _savable(a: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype == object:
        msg = f"`{name}` has dtype object, which .npz cannot hold without pickle; convert it to a numeric or string array first"
        raise TypeError(msg)
    return a


def _json_names(names: Any) -> Any:
    if names is None:
        return None
    if isinstance(names, tuple) and all(isinstance(n, (list, tuple)) or n is None for n in names):
        return [None if n is None else [str(s) for s in n] for n in names]
    return [str(s) for s in names]


def _shap_one(shap, values, stderr, base_values, data, feature_names, target):
    n = values.shape[0]
    output_names = None
    if isinstance(target, tuple):
        output_names = [f"output {t}" for t in target]
    names = None if feature_names is None else list(feature_names)
    if names is not None and (values.ndim < 2 or len(names) != values.shape[1]):
        names = None  # names of the flattened features of an image do not fit shap's layout
    return shap.Explanation(
        values=values,
        base_values=np.asarray(base_values).reshape((n,) + np.shape(base_values)[1:]),
        data=data,
        feature_names=names,
        output_names=output_names,
        error_std=stderr,
    )
