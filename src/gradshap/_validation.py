"""Input checks. Every message names the argument and shows what was expected and received."""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Any

import numpy as np

from gradshap._arrays import as_inputs, device_of, is_lazy, is_tf_tensor, namespace_of, shape_str, to_numpy, type_name
from gradshap._sampling import EXTENSIBLE

__all__ = [
    "as_inputs",
    "all_finite",
    "check_adaptive",
    "check_arrays",
    "check_deterministic",
    "check_finite",
    "check_positive_int",
    "check_row_ids",
    "check_nonnegative_float",
    "device_of",
    "is_lazy",
    "is_tf_tensor",
    "namespace_of",
    "nonfinite_rows",
    "own_arrays",
    "shape_str",
    "to_numpy",
    "type_name",
    "warn_unconverged",
]


def _floating(xp, dtype) -> bool:
    try:
        return xp.isdtype(dtype, "real floating")
    except (TypeError, ValueError, AttributeError):
        return False


def check_arrays(xp, x: tuple, background: tuple, *, finite: bool = True) -> None:
    """Shapes, dtypes, devices and (with ``finite``) finiteness of ``x`` and ``background``."""
    if len(x) != len(background):
        msg = (
            f"`x` has {len(x)} input(s) but `background` has {len(background)}; "
            "pass one array per model input to both"
        )
        raise ValueError(msg)
    many = len(x) > 1
    for k, (xi, bi) in enumerate(zip(x, background)):
        xn = f"`x[{k}]`" if many else "`x`"
        bn = f"`background[{k}]`" if many else "`background`"
        if bi.ndim < 1:
            msg = f"{bn} must have a leading batch axis; got shape {shape_str(bi.shape)}"
            raise ValueError(msg)
        if bi.shape[0] == 0:
            msg = f"{bn} has zero rows (shape {shape_str(bi.shape)}); expected at least one background row"
            raise ValueError(msg)
        feat = tuple(bi.shape[1:])
        if tuple(xi.shape) == feat:
            msg = (
                f"{xn} has shape {shape_str(tuple(xi.shape))}, which is one row without a batch axis; "
                f"expected {shape_str(('n', *feat))}. Pass x[None] to explain one row"
            )
            raise ValueError(msg)
        if tuple(xi.shape[1:]) != feat or xi.ndim < 1:
            msg = (
                f"{xn} and {bn} disagree on the feature shape: expected {xn} of shape "
                f"{shape_str(('n', *feat))}, got {shape_str(tuple(xi.shape))} "
                f"(background is {shape_str(tuple(bi.shape))})"
            )
            raise ValueError(msg)
        for arr, nm in ((xi, xn), (bi, bn)):
            if not _floating(xp, arr.dtype):
                msg = (
                    f"{nm} has dtype {arr.dtype}; expected a real floating dtype. Gradients need "
                    "continuous inputs: for token ids or categories, explain the embedding output "
                    "instead (layer=<the embedding layer>, see docs/layers.md)"
                )
                raise TypeError(msg)
        if xi.dtype != bi.dtype:
            msg = (
                f"{xn} has dtype {xi.dtype} but {bn} has dtype {bi.dtype}; gradshap never casts "
                "silently: convert one of them to the model's dtype"
            )
            raise TypeError(msg)
        if device_of(xp, xi) != device_of(xp, bi):
            msg = (
                f"{xn} is on device {device_of(xp, xi)} but {bn} is on {device_of(xp, bi)}; gradshap never "
                "copies silently: move both to the model's device"
            )
            raise ValueError(msg)
    for name, arrays in (("x", x), ("background", background)):
        for k, a in enumerate(arrays[1:], start=1):
            if a.shape[0] != arrays[0].shape[0]:
                msg = (
                    f"`{name}[{k}]` has {a.shape[0]} rows but `{name}[0]` has {arrays[0].shape[0]}; "
                    "every input of a model needs one row per example"
                )
                raise ValueError(msg)
    if not finite:
        return
    for k, (xi, bi) in enumerate(zip(x, background)):
        for arr, nm in ((xi, f"`x[{k}]`" if many else "`x`"), (bi, f"`background[{k}]`" if many else "`background`")):
            shown = "" if all_finite(xp, arr) else nonfinite_rows(xp, (arr,))
            if shown:
                msg = f"{nm} contains NaN or inf in row(s) {shown}; expected finite values"
                raise ValueError(msg)


def own_arrays(adapter, xp, arrays: tuple) -> bool:
    """Whether ``arrays`` (namespace ``xp``) are the model's own arrays; NumPy ones where the
    adapter takes them (Keras), else a TypeError that names both frameworks."""
    if adapter.xp is None or xp is adapter.xp:
        return True
    if adapter.takes_numpy and all(isinstance(a, np.ndarray) for a in arrays):
        return False
    kinds = ", ".join(sorted({type_name(a) for a in arrays}))
    msg = (f"`x` and `background` for a {adapter.name} model must be {adapter.arrays}; got {kinds}. gradshap "
           "never converts silently: convert them first (torch.from_numpy, jax.numpy.asarray, "
           "tf.convert_to_tensor), on the model's device")
    raise TypeError(msg)


def all_finite(xp, a) -> bool:
    """Whether ``a`` is NaN- and inf-free, from one reduction (``True`` for a lazy array).

    The sum of finite values can still overflow, so ``False`` means "look closer"
    (:func:`nonfinite_rows`), not "not finite".
    """
    if is_lazy(a):
        return True
    with np.errstate(over="ignore", invalid="ignore"):  # NumPy would warn of the overflow
        # A scalar is read as it is: an eager sum would cost a dispatch (JAX: 0.17 ms).
        return math.isfinite(float(a if a.ndim == 0 else xp.sum(a)))


def nonfinite_rows(xp, arrays) -> str:
    """The rows (first ten) where any of ``arrays`` is NaN or inf, as text; "" if none or lazy."""
    if is_lazy(arrays[0]):
        return ""
    n = arrays[0].shape[0]
    bad = None
    for a in arrays:
        rows = xp.any(~xp.isfinite(xp.reshape(a, (n, -1))), axis=1)
        bad = rows if bad is None else (bad | rows)
    if not bool(xp.any(bad)):
        return ""
    rows = np.flatnonzero(to_numpy(bad))  # one host copy, on the error path only
    return ", ".join(map(str, rows[:10])) + (" ..." if len(rows) > 10 else "")


def check_positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        msg = f"`{name}` must be a positive int; got {value!r} of type {type(value).__name__}"
        raise TypeError(msg)
    if value <= 0:
        msg = f"`{name}` must be a positive int (>= 1); got {value}"
        raise ValueError(msg)
    return int(value)


def check_nonnegative_float(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        msg = f"`{name}` must be a non-negative number; got {value!r} of type {type(value).__name__}"
        raise TypeError(msg)
    if not value >= 0 or value != value or value == float("inf"):
        msg = f"`{name}` must be a finite number >= 0; got {value}"
        raise ValueError(msg)
    return float(value)


def check_adaptive(rtol, max_samples, n_samples: int, design) -> tuple[float | None, int]:
    """Validated ``rtol`` and the most blocks of ``n_samples`` the adaptive mode may use."""
    if rtol is None:
        if max_samples is not None:
            msg = f"`max_samples` applies only with `rtol` (adaptive mode); got max_samples={max_samples!r} and rtol=None"
            raise ValueError(msg)
        return None, 1
    rtol = check_nonnegative_float(rtol, "rtol")
    if rtol == 0:
        msg = "`rtol` must be > 0 (a relative tolerance on the standard error); got 0"
        raise ValueError(msg)
    if not design.extensible:
        msg = (
            f"`rtol` (adaptive mode) needs a sampler that can add samples; {design.name!r} is a fixed rule. "
            f"Use sampler='auto' or one of {', '.join(map(repr, EXTENSIBLE))}"
        )
        raise ValueError(msg)
    if max_samples is None:
        max_samples = 32 * n_samples
    max_samples = check_positive_int(max_samples, "max_samples")
    if max_samples < n_samples:
        msg = f"`max_samples` must be >= `n_samples` ({n_samples}), the first round; got {max_samples}"
        raise ValueError(msg)
    return rtol, max_samples // n_samples


def check_feature_names(names: Any, background: tuple) -> list | tuple | None:
    """``feature_names`` as a list, one name per feature of the (single) input, or a tuple of
    such lists, one per input; ``None`` stays ``None``."""
    if names is None:
        return None
    if isinstance(names, (str, bytes)):
        msg = f"`feature_names` must be a sequence of names, one per feature; got the string {names!r}"
        raise TypeError(msg)
    names = list(names)
    if not background:  # inputs not known yet: checked at the call
        return names
    nested = len(background) > 1 and len(names) == len(background) and all(
        n is None or (not isinstance(n, (str, bytes)) and hasattr(n, "__len__")) for n in names)
    for k, (part, b) in enumerate(zip(names, background) if nested else [(names, background[0])]):
        if part is None:
            continue
        allowed = {b.shape[1] if b.ndim > 1 else 1, math.prod(b.shape[1:])}
        if len(part) not in allowed:
            where = f"`feature_names[{k}]`" if nested else "`feature_names`"
            what = f"`background[{k}]`" if nested else "`background`"
            msg = (f"{where} has {len(part)} names but {what} has shape {shape_str(tuple(b.shape))}; expected "
                   f"{' or '.join(map(str, sorted(allowed)))} names")
            raise ValueError(msg)
    return tuple(None if n is None else list(n) for n in names) if nested else names


def check_bool(value: Any, name: str) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    msg = f"`{name}` must be True or False; got {value!r}"
    raise TypeError(msg)


def check_row_ids(row_ids: Any, n: int) -> np.ndarray:
    """``row_ids`` as an int64 NumPy array of ``n`` distinct non-negative ids (``arange(n)``
    for ``None``). Arrays of any framework are read on the host; nothing is cast from floats."""
    if row_ids is None:
        return np.arange(n, dtype=np.int64)
    ids = to_numpy(row_ids) if (is_tf_tensor(row_ids) or hasattr(row_ids, "__dlpack__")) else np.asarray(row_ids)
    if ids.dtype == bool or not np.issubdtype(ids.dtype, np.integer):
        msg = f"`row_ids` must hold integers (one id per row of `x`); got dtype {ids.dtype}"
        raise TypeError(msg)
    if ids.shape != (n,):
        msg = f"`row_ids` must have shape {shape_str((n,))}, one id per row of `x`; got shape {shape_str(ids.shape)}"
        raise ValueError(msg)
    if n and (ids.min() < 0 or (ids.dtype == np.uint64 and ids.max() > np.iinfo(np.int64).max)):
        msg = f"`row_ids` must be non-negative and below 2**63; got values {ids.min()}..{ids.max()}"
        raise ValueError(msg)
    ids = ids.astype(np.int64)
    if np.unique(ids).size != n:
        seen, counts = np.unique(ids, return_counts=True)
        repeated = ", ".join(map(str, seen[counts > 1][:5]))
        msg = f"`row_ids` must be distinct (each row's draws are keyed by its id); repeated: {repeated}"
        raise ValueError(msg)
    return ids


def check_finite(xp, values: list, output, base, delta, out_b, cot, *, paired: bool) -> None:
    """One reduction when all is well (``delta`` is finite only if the values, outputs and base
    values are); else an error that names the rows: gradients, outputs at ``x``, or outputs
    at background rows, for the outputs that ``cot`` selects."""
    if all_finite(xp, delta):
        return
    shown = nonfinite_rows(xp, values)
    if shown:
        msg = (
            f"the model produced NaN or inf gradients for the selected target at input row(s) {shown}; "
            "check the model for operations that are not differentiable there (log of 0, sqrt at 0, ...)"
        )
        raise FloatingPointError(msg)
    shown = nonfinite_rows(xp, [output])
    if shown:
        msg = (
            f"the model's output for the selected target is NaN or inf at input row(s) {shown} of `x`; "
            "attributions would not add up to it: check the model or the inputs at those rows"
        )
        raise FloatingPointError(msg)
    selected = cot != 0 if paired else xp.any(cot != 0, axis=0, keepdims=True)
    shown = nonfinite_rows(xp, [xp.where(selected, out_b, xp.zeros_like(out_b))])
    if shown:
        what = "the per-row baseline(s)" if paired else "`background` row(s)"
        msg = (
            f"the model's output for the selected target is NaN or inf at {what} {shown}; "
            "base_values would be NaN: drop those rows or check the model there"
        )
        raise FloatingPointError(msg)


def warn_unconverged(met: list, rtol: float, limit: int) -> None:
    bad = np.flatnonzero(~np.all(np.stack(met, axis=-1), axis=-1))
    if bad.size:
        shown = ", ".join(map(str, bad[:10])) + (" ..." if bad.size > 10 else "")
        msg = (
            f"{bad.size} row(s) did not reach rtol={rtol} within max_samples={limit} (rows {shown}); "
            "their standard error is larger than asked. Raise `max_samples` or `rtol`"
        )
        warnings.warn(msg, RuntimeWarning, stacklevel=4)


def check_deterministic(xp, first, again) -> None:
    """Two forward passes over the same rows must agree (to 1e-3 of the outputs' scale); a model
    that differs is random (Dropout in training mode, say) and its attributions would be noise."""
    again = xp.astype(again, first.dtype, copy=False)
    if is_lazy(first):
        return
    # One read on the host: the largest difference beyond 1e-3 of the outputs' scale (NaN: no).
    excess = float(xp.max(xp.abs(again - first)) - 1e-3 * xp.max(xp.abs(first)))
    if excess > 1e-30:
        diff, scale = float(xp.max(xp.abs(again - first))), float(xp.max(xp.abs(first)))
        msg = (
            f"the model is not deterministic: two forward passes over the same `background` rows differ by up to "
            f"{diff:.3g} (outputs up to {scale:.3g}). Expected Gradients needs one function at every point: is "
            "Dropout or another random layer in training mode? gradshap sets eval mode for a torch.nn.Module or "
            "Keras model passed as the model, but cannot see inside a plain function: call model.eval() before "
            "wrapping it, or pass the module itself"
        )
        raise ValueError(msg)
