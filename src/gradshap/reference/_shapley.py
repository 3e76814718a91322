"""Interventional Shapley values from forward passes: exact (all coalitions) and by permutations.

The game: players are features (or groups of features), and the value of a coalition
``S`` is ``v(S) = mean_b f(x_S, b_rest)``, the model's average output when the players in
``S`` take their values from ``x`` and the others from each background row ``b``
(the interventional, or baseline-Shapley, value function). Then

    phi_i = sum over S not containing i of |S|! (d - |S| - 1)! / d! * (v(S + i) - v(S)),

which sums to ``f(x) - mean_b f(b)`` (efficiency).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import array_api_compat as aac
import numpy as np

from gradshap import _sampling, _validation
from gradshap.explanation import Explanation

__all__ = ["MAX_PLAYERS", "exact_shapley", "sampling_shapley"]

#: Most players :func:`exact_shapley` accepts (it evaluates ``2**d * |B|`` points per row).
MAX_PLAYERS = 20

_STREAM_ORDER = 1001
_STREAM_BASELINE = 1002
_POINTS_PER_CALL = 2**16


def _prepare(x, background, groups) -> tuple[Any, np.ndarray]:
    """The namespace, and player membership ``(d, n_features)`` of the flattened features."""
    xp = _validation.namespace_of((x, background), "x")
    _validation.check_arrays(xp, (x,), (background,))
    n_features = math.prod(x.shape[1:])
    if groups is None:
        return xp, np.eye(n_features, dtype=bool)
    if isinstance(groups, np.ndarray) and groups.ndim == 1 and np.issubdtype(groups.dtype, np.integer):
        if groups.shape != (n_features,) or groups.min() < 0:
            msg = (f"`groups` as an array must give a non-negative group id per feature: expected shape "
                   f"({n_features},), got {groups.shape}")
            raise ValueError(msg)
        ids = np.unique(groups)
        return xp, groups[None, :] == ids[:, None]
    members = np.zeros((len(groups), n_features), dtype=bool)
    for g, features in enumerate(groups):
        for i in features:
            if not isinstance(i, (int, np.integer)) or not 0 <= int(i) < n_features or members[:, int(i)].any():
                msg = (f"`groups` must partition the {n_features} flattened features (each index in "
                       f"0..{n_features - 1} exactly once); problem with index {i!r} in group {g}")
                raise ValueError(msg)
            members[g, int(i)] = True
    if not members.any(axis=0).all():
        missing = np.flatnonzero(~members.any(axis=0))
        msg = f"`groups` must cover every feature; features {missing[:10].tolist()} are in no group"
        raise ValueError(msg)
    return xp, members


def _outputs(f: Callable, xp, points, batch: int):
    """``f`` over ``points`` in chunks, as one scalar per point."""
    m = points.shape[0]
    outs = []
    for r0 in range(0, m, batch):
        out = f(points[r0 : min(m, r0 + batch), ...])
        size = min(batch, m - r0)
        if tuple(out.shape) not in ((size,), (size, 1)):
            msg = (f"`f` must return one scalar per row, shape ({size},) or ({size}, 1); got "
                   f"{_validation.shape_str(tuple(out.shape))}. Select the output inside `f`")
            raise ValueError(msg)
        outs.append(xp.reshape(out, (size,)))
    return outs[0] if len(outs) == 1 else xp.concat(outs, axis=0)


def _explanation(xp, values: list, stderr, base, output, x, label: str, n_evals: int) -> Explanation:
    values = xp.stack(values, axis=0)
    base = xp.stack(base) if isinstance(base, list) else base
    output = xp.stack(output) if isinstance(output, list) else output
    delta = xp.sum(values, axis=1) - (output - base)
    return Explanation(values=values, base_values=base, output=output, delta=delta, stderr=stderr,
                       data=x, sampler=label, n_samples=n_evals)


def _shaped(xp, values, x, members):
    """Per-feature results back in ``x``'s feature shape (groups stay ``(n, d)``)."""
    if members.shape[0] == members.shape[1] and np.array_equal(members, np.eye(members.shape[0], dtype=bool)):
        return xp.reshape(values, tuple(x.shape))
    return values


def exact_shapley(f: Callable, x: Any, background: Any, *, groups: Any = None, batch_size: int | None = None
                  ) -> Explanation:
    """Exact interventional Shapley values of ``f`` at the rows of ``x``.

    Parameters
    ----------
    f : callable
        ``f(points) -> (m,)`` (or ``(m, 1)``) for points shaped like ``background``
        rows, in their array namespace. Only forward passes are made.
    x : array ``(n, *features)``
    background : array ``(|B|, *features)``
        Its rows supply the values of absent players.
    groups : sequence of sequences of int, or int array, optional
        Players as groups of flattened feature indices (a partition), or one group id per
        feature. By default every feature is a player.
    batch_size : int, optional
        Most points per call of ``f``.

    Returns
    -------
    Explanation
        ``values`` shaped like ``x`` (or ``(n, n_groups)``), ``stderr`` zero,
        ``base_values = mean_b f(b)``, ``output = f(x)``, ``delta`` the efficiency
        residual (rounding only).

    Examples
    --------
    >>> import numpy as np
    >>> from gradshap.reference import exact_shapley
    >>> f = lambda p: p[:, 0] * p[:, 1]
    >>> exact_shapley(f, np.array([[2.0, 3.0]]), np.zeros((1, 2))).values
    array([[3., 3.]])
    """
    xp, members = _prepare(x, background, groups)
    d = members.shape[0]
    if d > MAX_PLAYERS:
        msg = (f"exact_shapley evaluates 2**d coalitions; d={d} players is more than {MAX_PLAYERS}. "
               "Pass `groups` to merge features into fewer players, or use sampling_shapley")
        raise ValueError(msg)
    batch = _validation.check_positive_int(batch_size, "batch_size") if batch_size is not None else _POINTS_PER_CALL
    n, nb = x.shape[0], background.shape[0]
    device = aac.device(x)
    coalitions = (np.arange(2**d)[:, None] >> np.arange(d)[None, :]) & 1  # (2^d, d)
    feature_masks = (coalitions.astype(np.int64) @ members.astype(np.int64)) > 0  # (2^d, F)
    # phi_i = sum_S w(|S|) (v(S + i) - v(S)) over the coalitions S without i.
    without = np.stack([np.flatnonzero(coalitions[:, i] == 0) for i in range(d)])
    size = coalitions.sum(axis=1)[without]
    weight = np.array([math.factorial(s) * math.factorial(d - s - 1) / math.factorial(d) for s in range(d)])[size]
    with_i = without | (1 << np.arange(d))[:, None]
    bg = xp.reshape(background, (1, nb, -1))
    per_call = max(1, batch // nb)
    values, base, output = [], [], []
    for r in range(n):
        xr = xp.reshape(x[r : r + 1, ...], (1, 1, -1))
        v = []
        for s0 in range(0, 2**d, per_call):
            mask = xp.asarray(feature_masks[s0 : s0 + per_call, None, :], device=device)
            points = xp.where(mask, xr, bg)
            m = points.shape[0]
            out = _outputs(f, xp, xp.reshape(points, (m * nb, *x.shape[1:])), batch)
            v.append(xp.mean(xp.reshape(out, (m, nb)), axis=1))
        v = v[0] if len(v) == 1 else xp.concat(v, axis=0)
        w = xp.asarray(weight, dtype=v.dtype, device=device)
        gain = xp.take(v, xp.asarray(with_i.reshape(-1), device=device)) - xp.take(
            v, xp.asarray(without.reshape(-1), device=device))
        values.append(xp.sum(w * xp.reshape(gain, without.shape), axis=1))
        base.append(v[0])
        output.append(v[-1])
    exp = _explanation(xp, values, None, base, output, x, "exact", 2**d * nb)
    exp.values = _shaped(xp, exp.values, x, members)
    exp.stderr = xp.full(tuple(exp.values.shape), 0.0, dtype=exp.values.dtype, device=device)
    return exp


def sampling_shapley(f: Callable, x: Any, background: Any, *, n_permutations: int, seed: Any = None,
                     groups: Any = None, batch_size: int | None = None) -> Explanation:
    """Permutation Monte Carlo estimate of the interventional Shapley values.

    Each of ``n_permutations`` samples draws an order of the players and a background
    row ``b``, then switches the players from ``b`` to ``x`` in that order; the change of
    ``f`` at each switch is that player's marginal contribution. Its average over samples
    is unbiased for :func:`exact_shapley`, with ``d + 1`` forward passes per sample.
    Draws are counter-based per row, as in the samplers of the engine.

    Returns
    -------
    Explanation
        ``stderr`` is the Monte Carlo standard error (samples are independent).
    """
    n_permutations = _validation.check_positive_int(n_permutations, "n_permutations")
    xp, members = _prepare(x, background, groups)
    batch = _validation.check_positive_int(batch_size, "batch_size") if batch_size is not None else _POINTS_PER_CALL
    key = _sampling.seed_key(seed)
    d = members.shape[0]
    n, nb = x.shape[0], background.shape[0]
    device = aac.device(x)
    group_of = np.argmax(members, axis=0)  # player of each flattened feature
    flat_bg = xp.reshape(background, (nb, -1))
    base = xp.mean(_outputs(f, xp, background, batch), axis=0)
    per_call = max(1, batch // (d + 1))
    steps = np.arange(d + 1)
    values, errors, output = [], [], []
    for r in range(n):
        rows = np.array([r])
        xr = xp.reshape(x[r : r + 1, ...], (1, 1, -1))
        mean = m2 = None
        for t0 in range(0, n_permutations, per_call):
            t = min(per_call, n_permutations - t0)
            order = np.argsort(_sampling.uniforms(key, rows, t * d, _STREAM_ORDER, t0 * d).reshape(t, d), axis=1)
            rank = np.argsort(order, axis=1)  # position of each player in its permutation
            pick = np.minimum((_sampling.uniforms(key, rows, t, _STREAM_BASELINE, t0)[0] * nb).astype(np.int64), nb - 1)
            from_x = rank[:, group_of][:, None, :] < steps[None, :, None]  # (t, d + 1, F)
            b = xp.expand_dims(xp.take(flat_bg, xp.asarray(pick, device=device), axis=0), axis=1)
            points = xp.where(xp.asarray(from_x, device=device), xr, b)
            out = _outputs(f, xp, xp.reshape(points, (t * (d + 1), *x.shape[1:])), batch)
            after = (np.arange(t)[:, None] * (d + 1) + rank + 1).reshape(-1)
            gain = xp.reshape(xp.take(out, xp.asarray(after, device=device))
                              - xp.take(out, xp.asarray(after - 1, device=device)), (t, d))
            # Mean and squared deviations of the block, merged with Chan's formula.
            part = xp.mean(gain, axis=0)
            part_m2 = xp.sum((gain - xp.expand_dims(part, axis=0)) ** 2, axis=0)
            if mean is None:
                mean, m2 = part, part_m2
            else:
                delta = part - mean
                mean = mean + delta * (t / (t0 + t))
                m2 = m2 + part_m2 + delta * delta * (t0 * t / (t0 + t))
            last = out[d]
        if n_permutations > 1:
            errors.append(xp.sqrt(m2 / (n_permutations * (n_permutations - 1))))
        else:
            errors.append(xp.full(tuple(mean.shape), math.inf, dtype=mean.dtype, device=device))
        values.append(mean)
        output.append(last)
    exp = _explanation(xp, values, None, xp.full((n,), 0.0, dtype=base.dtype, device=device) + base, output, x,
                       "permutation", n_permutations)
    exp.values = _shaped(xp, exp.values, x, members)
    exp.stderr = _shaped(xp, xp.stack(errors, axis=0), x, members)
    return exp
