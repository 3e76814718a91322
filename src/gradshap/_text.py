"""Per-token attributions for text models: explain at the embedding layer, sum over its width.

:func:`token_attributions` explains a torch text model ``model(input_ids[, attention_mask])``
at the output of its embedding layer (``layer=``, as for the explainers), then sums each
token's attributions over the embedding dimension: ``values`` is ``(rows, tokens)`` and
completeness holds per row, ``sum(values) = output - base_values + delta``.

Padding: rows are explained in groups that share their attention mask (and their ids at
the padded positions); within a group the model runs with that mask for every point, and
at the padded positions the baselines take the row's own embeddings, so a padded position
has ``x - b = 0`` there and its attribution is exactly zero.
"""

from __future__ import annotations

import numbers
import sys
from typing import Any

import numpy as np

from gradshap import _engine, _layers, _sampling, _validation
from gradshap.explanation import Explanation

__all__ = ["token_attributions"]


def token_attributions(
    model: Any,
    input_ids: Any,
    *,
    layer: Any,
    attention_mask: Any = None,
    background: Any = None,
    background_mask: Any = None,
    same_length: bool = False,
    baseline: Any = None,
    target: Any = None,
    n_samples: int = 200,
    sampler: str = "auto",
    n_steps: int = 50,
    method: str = "gausslegendre",
    seed: Any = None,
    batch_size: int | None = None,
    row_ids: Any = None,
) -> Explanation:
    """Per-token attributions ``(rows, tokens)`` of a torch text model.

    The model is explained at the output of its embedding layer ``layer`` (a submodule or
    its name; see :class:`gradshap.GradientExplainer`), and each token's attribution is
    the sum of its embedding's attributions. Give exactly one of:

    - ``background``: token ids ``(B, tokens)`` of background sentences of the same
      length: Expected Gradients (``n_samples``, ``sampler``, ``seed``);
    - ``baseline``: a token id (a pad or mask token, used at every position), or ids
      ``(tokens,)`` or ``(rows, tokens)`` (to keep, say, [CLS] and [SEP]): Integrated
      Gradients (``n_steps``, ``method``).

    Parameters
    ----------
    model : torch.nn.Module
        Called as ``model(input_ids)``, or ``model(input_ids, attention_mask)`` when a
        mask is given; returns ``(m,)`` or ``(m, n_outputs)``, or anything a callable
        ``target`` selects from (a Hugging Face output: ``target=lambda o: o.logits[:, 1]``).
    input_ids : torch.Tensor (rows, tokens), integer
    layer : torch.nn.Module or str
        The embedding layer; its output is ``(m, tokens, width)``.
    attention_mask : torch.Tensor (rows, tokens), optional
        1 for real tokens, 0 for padding. Padded positions get exactly zero attribution.
    background, background_mask : torch.Tensor (B, tokens), optional
        Background sentences and their mask (all ones by default; the mask is only used
        to run the model on them: each row's points run with that row's mask).
    same_length : bool
        With ``background`` and ``background_mask``: explain each row against only the
        background sentences whose mask equals its own (the same length and padding), so
        that no real token is compared with padding. A row with none is an error.
    baseline : int or torch.Tensor, optional
        Integrated Gradients' baseline ids, see above.
    target, n_samples, sampler, seed, batch_size, row_ids
        As for :class:`gradshap.GradientExplainer`: draws are keyed by (seed, row id), so
        rows explained in pieces give one call's numbers.
    n_steps, method
        As for :class:`gradshap.IntegratedGradients`.

    Returns
    -------
    Explanation
        ``values`` and ``stderr`` ``(rows, tokens)`` (plus a trailing axis for several
        targets), ``data`` the ``input_ids``. ``base_values`` is the mean output over the
        baselines run with each row's mask; ``delta`` the completeness residual. A token's
        ``stderr`` is the sum of its embedding entries' standard errors, an upper bound
        (their covariances are not estimated). ``seed`` and ``row_ids`` record the draws'
        keys.
    """
    torch = sys.modules.get("torch")
    if torch is None or not isinstance(model, torch.nn.Module):
        msg = f"`model` must be a torch.nn.Module for token_attributions; got {_validation.type_name(model)}"
        raise TypeError(msg)
    ids = _ids(torch, input_ids, "input_ids")
    n, length = ids.shape
    mask = None if attention_mask is None else _ids(torch, attention_mask, "attention_mask", (n, length))
    if (background is None) == (baseline is None):
        msg = "pass exactly one of `background` (Expected Gradients) and `baseline` (Integrated Gradients)"
        raise ValueError(msg)
    if same_length and (background is None or background_mask is None or mask is None):
        msg = "`same_length=True` needs `background`, `background_mask` and `attention_mask`"
        raise ValueError(msg)
    if background is not None:
        bg = _ids(torch, background, "background", (None, length))
        bg_mask = torch.ones_like(bg) if background_mask is None else _ids(
            torch, background_mask, "background_mask", tuple(bg.shape))
        if mask is None:
            bg_mask = None
    else:
        bg, bg_mask = _baseline_ids(torch, baseline, ids), None
    xp = _validation.namespace_of((ids,), "input_ids")
    if baseline is None:  # one seed for every group, also when none is given
        seed = _sampling.resolve_seed(seed)
    row_ids = _validation.check_row_ids(row_ids, n)
    parts = []
    for rows in _groups(ids, mask):
        parts.append((rows, _explain_group(
            xp, model, layer, ids, mask, rows, *_matching(xp, bg, bg_mask, mask, rows, same_length),
            integrated=baseline is not None, target=target,
            n_samples=n_samples, sampler=sampler, n_steps=n_steps, method=method, seed=seed, batch_size=batch_size,
            row_ids=row_ids[rows])))
    return _joined(xp, parts, n, input_ids, row_ids)


def _ids(torch, a: Any, name: str, shape: tuple | None = None):
    if not isinstance(a, torch.Tensor) or a.ndim != 2 or a.dtype.is_floating_point or a.dtype.is_complex:
        got = f"{_validation.type_name(a)}" + (f" of shape {tuple(a.shape)} and dtype {a.dtype}"
                                               if hasattr(a, "shape") else "")
        msg = f"`{name}` must be a 2-D integer torch.Tensor (rows, tokens); got {got}"
        raise TypeError(msg)
    if shape is not None and any(s is not None and s != t for s, t in zip(shape, a.shape)):
        want = _validation.shape_str(tuple("B" if s is None else s for s in shape))
        msg = f"`{name}` has shape {_validation.shape_str(tuple(a.shape))}; expected {want}"
        raise ValueError(msg)
    return a


def _baseline_ids(torch, baseline: Any, ids):
    """Integrated Gradients' baseline ids: ``(1, tokens)`` shared, or ``(rows, tokens)``."""
    n, length = ids.shape
    if isinstance(baseline, numbers.Integral) and not isinstance(baseline, bool):
        return torch.full((1, length), int(baseline), dtype=ids.dtype, device=ids.device)
    if isinstance(baseline, torch.Tensor) and baseline.ndim == 1:
        baseline = baseline[None]
    baseline = _ids(torch, baseline, "baseline", (None, length))
    if baseline.shape[0] not in (1, n):
        msg = (f"`baseline` has shape {_validation.shape_str(tuple(baseline.shape))}; expected a token id, "
               f"({length},), (1, {length}) or ({n}, {length}) (one baseline per row)")
        raise ValueError(msg)
    return baseline


def _groups(ids, mask) -> list:
    """Row numbers grouped by their mask and their ids at the padded positions, in order of first row."""
    if mask is None:
        return [np.arange(ids.shape[0])]
    m = _validation.to_numpy(mask) != 0
    pads = np.where(m, -1, _validation.to_numpy(ids))
    keys: dict = {}
    for row, key in enumerate(zip(map(bytes, np.packbits(m, axis=1)), map(bytes, pads))):
        keys.setdefault(key, []).append(row)
    return [np.asarray(rows) for rows in keys.values()]


def _matching(xp, bg, bg_mask, mask, rows, same_length: bool) -> tuple:
    """``(bg, bg_mask)``, with ``same_length`` cut to the rows whose mask is that of ``rows``."""
    if not same_length:
        return bg, bg_mask
    found = np.flatnonzero(np.all(_validation.to_numpy(bg_mask) == _validation.to_numpy(mask[rows[0]]), axis=1))
    if found.size == 0:
        msg = (f"`same_length=True`: no background sentence has the mask of row(s) {', '.join(map(str, rows[:10]))} "
               f"({int(_validation.to_numpy(mask[rows[0]]).sum())} tokens); add some to `background`")
        raise ValueError(msg)
    at = xp.asarray(found, device=_validation.device_of(xp, bg))
    return xp.take(bg, at, axis=0), xp.take(bg_mask, at, axis=0)


def _explain_group(xp, model, layer, ids, mask, rows, bg, bg_mask, *, integrated: bool, target, n_samples,
                   sampler, n_steps, method, seed, batch_size, row_ids):
    """One engine call for the rows ``rows`` (which share their mask): ``Result`` at the layer."""
    device = ids.device
    at = xp.asarray(rows, device=device)
    x = tuple(xp.take(a, at, axis=0) for a in ((ids,) if mask is None else (ids, mask)))
    if integrated and bg.shape[0] > 1:  # one baseline per row
        bg = xp.take(bg, at, axis=0)
    if mask is None:
        base = (bg,)
    elif integrated or bg_mask is None:
        base = (bg, xp.take(x[1], xp.zeros(bg.shape[0], dtype=xp.int64, device=device), axis=0))
    else:
        base = (bg, bg_mask)
    split = _layers.split(model, layer, "torch", x)
    (hx,), (hb,) = _layers.explain_inputs(split, xp, x, base, batch_size)
    if hx.ndim != 3:
        msg = f"the output of `layer` ({split.name}) has shape {tuple(hx.shape)}; expected (rows, tokens, width)"
        raise ValueError(msg)
    if mask is not None:  # padded positions: the baselines take the row's own embeddings
        hb = xp.where(xp.reshape(x[1][0, :] == 0, (1, -1, 1)), hx[:1, ...], hb)
    if hasattr(target, "shape") and len(target.shape) == 1:  # one target per row
        target = target[rows] if isinstance(target, np.ndarray) else xp.take(
            target, xp.asarray(rows, device=_validation.device_of(xp, target)), axis=0)
    if integrated:
        design = _sampling.rule_design(method, n_steps, paired=hb.shape[0] > 1)
        return _engine.run(split.head, (hx,), (hb,), target=target, n_samples=n_steps, sampler=design, seed=0,
                           batch_size=batch_size, xp=xp, row_ids=row_ids)
    return _engine.run(split.head, (hx,), (hb,), target=target, n_samples=n_samples, sampler=sampler, seed=seed,
                       batch_size=batch_size, xp=xp, row_ids=row_ids)


def _joined(xp, parts: list, n: int, input_ids, row_ids: np.ndarray) -> Explanation:
    order = np.concatenate([rows for rows, _ in parts])
    back = np.empty(n, dtype=np.int64)
    back[order] = np.arange(n)
    device = _validation.device_of(xp, parts[0][1].output)
    at = xp.asarray(back, device=device)

    def joined(arrays):
        whole = xp.concat(arrays, axis=0) if len(arrays) > 1 else arrays[0]
        return whole if np.array_equal(back, np.arange(n)) else xp.take(whole, at, axis=0)

    results = [r for _, r in parts]
    values = joined([xp.sum(r.values[0], axis=2) for r in results])
    stderr = joined([xp.sum(r.stderr[0], axis=2) for r in results])
    labels = [r.target for r in results]
    target = labels[0]
    if hasattr(target, "shape") and len(getattr(target, "shape", ())) == 1:
        target = np.concatenate([np.asarray(_validation.to_numpy(t)) for t in labels])[back]
    used = results[0].n_samples
    return Explanation(
        values=values, base_values=joined([r.base_values for r in results]), output=joined([r.output for r in results]),
        delta=joined([r.delta for r in results]), stderr=stderr, data=input_ids, target=target,
        sampler=results[0].sampler, n_samples=used, seed=results[0].seed, row_ids=row_ids,
    )
