"""Target selection: which scalar of the model's output each row explains.

A target becomes, for every input row, a cotangent over the model's outputs (a one-hot
row, or ones for a single-output model). The scalar explained is ``sum(out * cot)``, and
its gradient is the vector-Jacobian product with ``cot``, which every framework computes
in one backward pass.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any, Callable

import array_api_compat as aac
import numpy as np

from gradshap._validation import device_of, is_lazy, is_tf_tensor, shape_str, type_name

__all__ = ["TARGET_CHOICES", "Selection", "as_matrix", "select"]

TARGET_CHOICES = (
    "None (single-output model), an int, an array of one int per row, 'predicted', "
    "a list of ints (several targets, trailing axis), or a callable outputs -> one scalar per row"
)


@dataclass
class Selection:
    """The cotangents to explain: one ``(n, K)`` array per target (several for a list)."""

    cotangents: list
    label: Any  # what Explanation.target reports
    many: bool  # a list of targets: results get a trailing axis


def as_matrix(xp, out, n_rows: int, what: str = "the model's output"):
    """Model outputs as ``(n, K)``: ``(n,)`` and ``(n, K)`` are accepted."""
    if isinstance(out, (dict, list, tuple)):
        kind, first = type(out).__name__, (repr(next(iter(out), "name")) if isinstance(out, dict) else "0")
        names = f" (keys {', '.join(map(repr, out))})" if isinstance(out, dict) else ""
        msg = (
            f"{what} is a {kind} of {len(out)} outputs{names}; gradshap explains one array of outputs: "
            f"select one with a callable `target`, e.g. target=lambda outputs: outputs[{first}][:, 0]"
        )
        raise TypeError(msg)
    if not hasattr(out, "ndim"):
        msg = f"{what} is a {type_name(out)}; expected an array of shape ({n_rows},) or ({n_rows}, n_outputs)"
        raise TypeError(msg)
    if out.ndim == 1 and out.shape[0] == n_rows:
        return xp.reshape(out, (n_rows, 1))
    if out.ndim == 2 and out.shape[0] == n_rows:
        return out
    msg = (
        f"{what} has shape {shape_str(tuple(out.shape))} for {n_rows} input rows; expected "
        f"({n_rows},) or ({n_rows}, n_outputs). For other output shapes, pass a callable "
        "`target` that maps the outputs to one scalar per row"
    )
    raise ValueError(msg)


def _one_hot(xp, index, n_outputs: int, dtype, device):
    classes = xp.reshape(xp.arange(n_outputs, device=device), (1, n_outputs))
    return xp.astype(classes == xp.reshape(index, (-1, 1)), dtype)


def _check_int(t: Any, n_outputs: int) -> int:
    if not 0 <= t < n_outputs:
        msg = f"`target` {t} is out of range for a model with {n_outputs} outputs; expected 0 <= target < {n_outputs}"
        raise ValueError(msg)
    return int(t)


def _host_one_hot(index: np.ndarray, n: int, k: int) -> np.ndarray:
    """One-hot rows ``(n, k)`` on the host; ``index`` is one class or one per row."""
    rows = np.zeros((n, k))
    rows[np.arange(n), np.broadcast_to(index, (n,))] = 1.0
    return rows


def select(xp, target: Any, outputs, *, dtype) -> Selection:
    """Resolve ``target`` against the outputs at ``x`` (``(n, K)``, see :func:`as_matrix`).

    Cotangents that do not depend on the outputs (``None``, ints, host arrays) are made on
    the host and placed beside the outputs in one conversion.
    """
    n, k = outputs.shape
    device = device_of(xp, outputs)

    def place(a, dtype):
        return xp.asarray(a, dtype=dtype, device=device)

    if target is None:
        if k != 1:
            msg = f"`target` is None but the model has {k} outputs per row; choose one with `target`: {TARGET_CHOICES}"
            raise ValueError(msg)
        return Selection([place(np.ones((n, 1)), dtype)], None, False)
    if isinstance(target, bool):
        msg = f"`target` must be {TARGET_CHOICES}; got a bool"
        raise TypeError(msg)
    if isinstance(target, numbers.Integral):
        t = _check_int(target, k)
        return Selection([place(_host_one_hot(np.asarray(t), n, k), dtype)], t, False)
    if isinstance(target, str):
        if target != "predicted":
            msg = f"`target` string must be 'predicted'; got {target!r}. Valid targets: {TARGET_CHOICES}"
            raise ValueError(msg)
        index = xp.argmax(outputs, axis=1)
        return Selection([_one_hot(xp, index, k, dtype, device)], index, False)
    if isinstance(target, (list, tuple)):
        if len(target) == 0 or not all(
            isinstance(t, numbers.Integral) and not isinstance(t, bool) for t in target
        ):
            msg = f"`target` as a list must hold at least one int (several targets); got {target!r}"
            raise ValueError(msg)
        ts = [_check_int(t, k) for t in target]
        return Selection([place(_host_one_hot(np.asarray(t), n, k), dtype) for t in ts], tuple(ts), True)
    if is_tf_tensor(target):
        # array-api-compat does not know tf.Tensor: its few class indices are read on the host.
        target = np.asarray(target)
    if isinstance(target, np.ndarray) or aac.is_array_api_obj(target):
        return _per_row(xp, target, n, k, dtype, device, place)
    msg = f"`target` must be {TARGET_CHOICES}; got {type_name(target)}"
    raise TypeError(msg)


def _per_row(xp, target, n: int, k: int, dtype, device, place: Callable) -> Selection:
    """One class per row."""
    shape = tuple(target.shape)
    if shape != (n,):
        msg = f"`target` as an array must hold one int per row: expected shape ({n},), got {shape_str(shape)}"
        raise ValueError(msg)
    if isinstance(target, np.ndarray):
        if not np.issubdtype(target.dtype, np.integer):
            msg = f"`target` as an array must have an integer dtype; got {target.dtype}"
            raise TypeError(msg)
        host = target
        index = None  # the one-hot rows are made on the host
    else:
        tx = aac.array_namespace(target)
        if not tx.isdtype(target.dtype, "integral"):
            msg = f"`target` as an array must have an integer dtype; got {target.dtype}"
            raise TypeError(msg)
        index = target
        host = None if is_lazy(target) else np.asarray(aac.to_device(target, "cpu") if aac.is_torch_array(target) else target)
    if host is not None and host.size and (host.min() < 0 or host.max() >= k):
        bad = np.flatnonzero((host < 0) | (host >= k))
        msg = (
            f"`target` has values out of range for a model with {k} outputs at row(s) "
            f"{', '.join(map(str, bad[:10]))}; expected 0 <= target < {k}"
        )
        raise ValueError(msg)
    if index is None:
        # A handful of class indices, not data: their one-hot rows placed beside the outputs.
        return Selection([place(_host_one_hot(host, n, k), dtype)], target, False)
    return Selection([_one_hot(xp, index, k, dtype, device)], target, False)
