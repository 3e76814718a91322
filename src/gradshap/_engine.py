"""The one Expected Gradients engine: plan -> points -> chunked VJP -> running sums -> result.

Written against the Python array API. For input row ``r`` and sample ``j`` the design
(:mod:`gradshap._sampling`) gives a background index ``b``, an ``alpha`` and a weight; the
point explained is ``b + alpha * (x - b)`` and the sample's contribution is
``(x - b) * grad f(point)``. Samples are laid out over the design's columns (one per
background row for the stratified designs); the engine keeps a weighted mean and spread
per (row, column, feature), and the estimate is the average of the column means, its
variance the design's error model applied to the spreads.

Designs whose columns each keep one background row (``lattice``, ``balanced``; what
``auto`` runs) take a shorter path, :func:`_chunk_columns`: a chunk holds every pass of a
group of columns, the gradients are reduced per column before the one multiply by
``x - b`` per column, and chunks' shares of the estimate and its variance simply add.

Otherwise chunks are rectangles of (rows x samples) with at most ``batch_size`` points, so every
statistic comes from axis reductions, never from boolean masks or value-dependent
shapes; chunk statistics merge with Chan's formula. The per-row plans (indices, alphas,
weights) are small NumPy arrays made on the host from the seed alone, so the engine
traces under ``jax.jit``. Accumulation is in the input's dtype, or float32 for
half-precision inputs. The per-column statistics of ``k`` rows take
``2 * k * columns * features`` numbers, at most ``2 * max(batch_size, len(background))``
rows' worth of features.

Where the adapter compiles whole programs and runs loops inside them at full speed
(:meth:`Adapter.row_loop`: JAX, but for convolutions on CPU; TensorFlow where XLA
compiles the step), the column path, and the general path where each chunk holds whole
blocks of samples for its rows (large backgrounds, iid), are a few programs per call
instead of a step per chunk: the outputs, each piece of rows with its chunks looped over
inside, and the results (:func:`_attribute_program`); their rows are padded to a few
counts, so that other row counts find them compiled (:func:`_program_rows`).
"""

from __future__ import annotations

import collections
import contextlib
import functools
import math
import random
import threading
import warnings
import weakref
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from gradshap import _sampling, _targets, _validation
from gradshap.backends import Adapter, light

__all__ = ["Result", "default_batch_size", "expected_gradients", "run"]

# Points per chunk aim at this many input elements; clamped to [_MIN_BATCH, _MAX_BATCH].
# Accelerators want large chunks. On CPU a chunk whose activations stay in cache is
# faster (measured in benchmarks/: the small CNN ran 1.7x slower at 2**20 elements than
# at 2**17); a compiled step (JAX) costs a dispatch per chunk, so it takes twice more.
_ELEMENTS_PER_CHUNK = 2**20
_ELEMENTS_PER_CHUNK_CPU = 2**17
_MIN_BATCH, _MAX_BATCH = 64, 8192
# Most (baseline, alpha) pairs the host draws in one call (16 bytes each: 1 MiB), and how
# many chunks' worth it draws at once below that. A call to the sampler has about 0.1 ms
# of fixed NumPy work: torch's 200-row MLP in benchmarks/ draws in one call (0.41 ms)
# at 16 chunks' worth, where 4 took three (0.56 ms).
_DRAWS_PER_CALL = 2**16
_CHUNKS_PER_DRAW = 16
# Chunks' worth of rows in each piece of a whole-call program (see _pieces): a piece's
# host draws and its arrays are its working set. At 16 chunks' worth, JAX's MLP of
# benchmarks/ peaked at 7.3 MiB for 200 rows and 10.9 for 800 (pieces of 160 and 320
# rows); at 4, 800 rows run as pieces of 160 too.
_CHUNKS_PER_PIECE = 4


def default_batch_size(feature_size: int, *, device: Any = None, compiled: bool = False) -> int:
    """Points per chunk for inputs of ``feature_size`` elements per row on ``device``.

    ``compiled``: the adapter compiles the chunk step (its ``pads`` flag).
    """
    on_cpu = device is not None and "cpu" in str(device).lower()
    elements = (_ELEMENTS_PER_CHUNK_CPU * (2 if compiled else 1)) if on_cpu else _ELEMENTS_PER_CHUNK
    return int(min(_MAX_BATCH, max(_MIN_BATCH, elements // max(1, feature_size))))


@dataclass
class Result:
    """Raw engine output; arrays in the input's namespace and on its device."""

    values: tuple  # one array per model input, (n, *features[, T])
    stderr: tuple
    base_values: Any  # (n[, T])
    output: Any  # (n[, T])
    delta: Any  # (n[, T])
    target: Any
    sampler: str
    n_samples: Any  # an int, or in adaptive mode the samples used per row (numpy array)


def _accumulation_dtype(xp, dtype):
    return dtype if xp.finfo(dtype).bits >= 32 else xp.float32


def _pad(adapter: Adapter, xp, arrays: tuple, size: int) -> tuple:
    """Rows repeated up to ``size`` (for frameworks that compile once per shape)."""
    m = arrays[0].shape[0]
    if m == size:
        return arrays
    idx = adapter.step_array(xp, np.arange(size) % m, device=_validation.device_of(xp, arrays[0]))
    return tuple(xp.take(a, idx, axis=0) for a in arrays)


def _forward_size(adapter: Adapter, m: int, batch: int) -> int:
    """Rows a forward chunk of ``m`` rows runs with: a padding adapter pads it to the next
    power of two (at most ``batch``), so few shapes are compiled; others run ``m``."""
    return min(batch, 1 << (m - 1).bit_length()) if adapter.pads else m


def _forward_joined(adapter: Adapter, xp, joined: tuple, n: int, nb: int, batch: int):
    """The outputs at the ``n`` rows of x and the ``nb`` of the background, ``joined`` (they
    fit one chunk), from one forward pass, cut apart in one op; ``None`` if the output is not
    one row per input row (the caller then runs them apart, to say which input a wrong
    shape came from)."""
    size = _forward_size(adapter, n + nb, batch)
    out = adapter.forward(_pad(adapter, xp, joined, size))
    if out.ndim not in (1, 2) or out.shape[0] != size:
        return None
    return tuple(adapter.split_rows(xp, out, [n, nb] + ([size - n - nb] if size > n + nb else []))[:2])


def _forward(adapter: Adapter, xp, inputs: tuple, batch: int):
    """Model outputs over ``inputs`` in chunks of ``batch`` rows.

    A padding adapter compiles once per shape: a short last chunk is padded to the next
    power of two (not to ``batch``), so the forward pass for a few rows stays cheap and
    the number of shapes stays small.
    """
    n = inputs[0].shape[0]
    outs = []
    for r0 in range(0, n, batch):
        part = tuple(a[r0 : min(n, r0 + batch), ...] for a in inputs) if n > batch else inputs
        m = part[0].shape[0]
        size = _forward_size(adapter, m, batch)
        out = adapter.forward(_pad(adapter, xp, part, size))
        outs.append(out[:m, ...] if size != m else out)
    return outs[0] if len(outs) == 1 else xp.concat(outs, axis=0)


def _safe_ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den`` with 0 where ``den`` is 0 (host-side, for the per-column weights)."""
    out = np.zeros(np.broadcast(num, den).shape)
    np.divide(num, den, out=out, where=den != 0)
    return out


class _ColumnStats:
    """Weighted mean and spread of the contributions per (row, column, feature).

    The chunk step hands over per-column block statistics (:meth:`merge`); only a
    deterministic rule hands over raw contributions (:meth:`add`), because it also keeps
    the mean over columns at each node (its chunks cover whole passes, reduced here, or
    part of one pass, one sample per column, placed by concatenation). Block statistics
    merge with Chan's formula (:func:`_chan`, run by the adapter); the weights are the
    same for every row and stay on the host.
    """

    def __init__(self, columns: int, n_inputs: int, dtype, device, *, nodes: bool, chan: Callable,
                 to_step: Callable):
        """``chan``: :func:`_chan` as the adapter runs it; ``to_step``: a host array as its argument."""
        self.columns = columns
        self._chan, self._to_step = chan, to_step
        self.weight = np.zeros(columns)
        self.mean: list = []  # set by the first merge
        self.m2: list = []
        self.dtype, self.device = dtype, device
        self.node_means: list | None = [[] for _ in range(n_inputs)] if nodes else None
        self._node_sum: list = [None] * n_inputs

    def _col(self, xp, values: np.ndarray):
        return self._to_step(np.reshape(values, (1, self.columns, 1)), self.dtype)

    def add(self, xp, contributions: list, weights: np.ndarray, start: int, stop: int) -> None:
        """Merge contributions ``(k, stop - start, F)`` of samples ``start..stop-1`` of a block."""
        g = self.columns
        k = contributions[0].shape[0]
        if start % g == 0 and (stop - start) % g == 0:
            passes = (stop - start) // g
            w = np.reshape(weights, (passes, g))
            means, m2s = [], []
            for pos, c in enumerate(contributions):
                c4 = xp.reshape(c, (k, passes, g, c.shape[-1]))
                mu, m2 = _pass_stats(xp, c4, self._to_step(np.reshape(w, (1, *w.shape, 1)), self.dtype))
                means.append(mu)
                m2s.append(m2)
                if self.node_means is not None:
                    self.node_means[pos].append(xp.mean(c4, axis=2))
            self.merge(xp, means, m2s, np.sum(w, axis=0))
            return
        # part of one pass: one sample per column
        c0, s = start % g, stop - start
        w_block = np.zeros(g)
        w_block[c0 : c0 + s] = weights
        means = []
        for pos, c in enumerate(contributions):
            f = c.shape[-1]
            if self.node_means is not None:
                part = xp.sum(c, axis=1)
                self._node_sum[pos] = part if c0 == 0 else self._node_sum[pos] + part
                if c0 + s == g:  # the pass is complete
                    self.node_means[pos].append(xp.expand_dims(self._node_sum[pos] / g, axis=1))
            pieces = [xp.full((k, c0, f), 0.0, dtype=self.dtype, device=self.device)] if c0 else []
            pieces.append(c)
            if g - c0 - s:
                pieces.append(xp.full((k, g - c0 - s, f), 0.0, dtype=self.dtype, device=self.device))
            means.append(xp.concat(pieces, axis=1) if len(pieces) > 1 else c)
        self.merge(xp, means, None, w_block)

    def merge(self, xp, means: list, m2s: list | None, w_block: np.ndarray) -> None:
        """Chan's formula per column: block means and spreads ``(k, columns, F)`` of weight ``w_block``."""
        if not np.any(self.weight):  # the first block: nothing to merge with
            self.mean = list(means)
            self.m2 = list(m2s) if m2s is not None else [
                xp.full(m.shape, 0.0, dtype=self.dtype, device=self.device) for m in means]
            self.weight = np.asarray(w_block, dtype=np.float64)
            return
        total = self.weight + w_block
        share = self._col(xp, _safe_ratio(w_block, total))
        cross = self._col(xp, _safe_ratio(self.weight * w_block, total))
        mean, m2 = self._chan(xp, tuple(self.mean), tuple(self.m2), tuple(means),
                              None if m2s is None else tuple(m2s), share, cross)
        self.mean, self.m2 = list(mean), list(m2)
        self.weight = total

    def keep(self, xp, positions: np.ndarray) -> None:
        """Keep only the rows at ``positions``."""
        idx = self._to_step(positions)
        self.mean = [xp.take(a, idx, axis=0) for a in self.mean]
        self.m2 = [xp.take(a, idx, axis=0) for a in self.m2]

    def finish(self, xp, design: _sampling.Design, blocks: int) -> tuple[list, list]:
        """Estimates and their variances, one ``(k, F)`` array each per input."""
        g = self.columns
        if design.kind == "replicates":
            values = [xp.mean(m, axis=1) for m in self.mean]
            if g < 2:
                return values, [xp.full(v.shape, math.inf, dtype=self.dtype, device=self.device) for v in values]
            var = [xp.sum((m - xp.expand_dims(v, axis=1)) ** 2, axis=1) / (g * (g - 1))
                   for m, v in zip(self.mean, values)]
            return values, var
        omega = 1.0 / g
        values = [xp.sum(m, axis=1) * omega for m in self.mean]
        a, b, a_single = design.column_constants(blocks)
        multi = design.counts * blocks >= 2
        if self.node_means is not None and np.all(multi):
            return values, self._rule_variance(xp, design, values, float(a[0] / b[0]))
        w = self.weight
        # Variance of a column mean = (A / B) * weighted spread, spread = m2 / W.
        coef = np.where(multi, omega**2 * _safe_ratio(a, b * w), 0.0)
        single = omega**2 * 6.0 * float(np.sum(a_single[~multi]))
        var = []
        for pos, m2 in enumerate(self.m2):
            v = xp.sum(m2 * self._col(xp, coef), axis=1)
            if single:
                v = v + single * self._per_sample_variance(xp, pos, multi, b, design.counts * blocks)
            var.append(v)
        return values, var

    def _rule_variance(self, xp, design: _sampling.Design, values: list, ratio: float) -> list:
        """Error model of a deterministic rule shared by all columns.

        Its error on the part of the integrand common to all background rows (the mean over
        columns at each node) is the same in every column and does not average out; the
        rest is taken as independent between columns.
        """
        g = self.columns
        weights = self._to_step(np.reshape(design.rules[int(design.counts[0])][1], (1, -1, 1)), self.dtype)
        var = []
        for pos, v in enumerate(values):
            parts = self.node_means[pos]
            node_mean = parts[0] if len(parts) == 1 else xp.concat(parts, axis=1)  # (k, m, F)
            common = xp.sum(weights * (node_mean - xp.expand_dims(v, axis=1)) ** 2, axis=1)
            spread = xp.sum(self.m2[pos] * self._col(xp, _safe_ratio(1.0, self.weight)), axis=1)
            var.append(ratio * (common * (1.0 - 1.0 / g) + spread / g**2))
        return var

    def _per_sample_variance(self, xp, pos: int, multi: np.ndarray, b: np.ndarray, counts: np.ndarray):
        """What a column with one sample borrows: the mean per-sample variance of the others.

        Without any column of two or more samples, the spread of all samples about
        their mean (between columns too) stands in: an overestimate.
        """
        w, m2, mean = self.weight, self.m2[pos], self.mean[pos]
        if np.any(multi):
            # Per-sample variance of a column: spread / (6 B) (see _quadrature).
            return xp.sum(m2 * self._col(xp, np.where(multi, _safe_ratio(1.0, 6.0 * b * w), 0.0)),
                          axis=1) / float(np.sum(multi))
        n = float(np.sum(counts))
        if n < 2:
            return xp.full((m2.shape[0], m2.shape[2]), math.inf, dtype=self.dtype, device=self.device)
        w_total = float(np.sum(w))
        grand = xp.sum(mean * self._col(xp, w), axis=1) / w_total
        between = xp.sum(self._col(xp, w) * (mean - xp.expand_dims(grand, axis=1)) ** 2, axis=1)
        return (xp.sum(m2, axis=1) + between) / w_total * (n / (n - 1.0))


def _chunk_ranges(n: int, columns: int, size: int) -> list[tuple[int, int]]:
    """Sample ranges of one block, each whole passes of the layout or part of one pass."""
    q, r = divmod(n, columns)
    ranges = []
    if size >= columns:
        step = size // columns
        ranges += [(p * columns, min(q, p + step) * columns) for p in range(0, q, step)]
        if r:
            ranges.append((q * columns, n))
        return ranges
    for p in range(q + (r > 0)):
        end = min(n, (p + 1) * columns)
        ranges += [(s0, min(end, s0 + size)) for s0 in range(p * columns, end, size)]
    return ranges


def _pass_stats(xp, c4, wx, uniform: bool = False):
    """Weighted mean and spread over the passes (axis 1) of ``c4``: ``(k, passes, columns, F)``.

    ``wx``: the weights, ``(1, passes, columns, 1)``; every column has a positive total.
    ``uniform``: every weight is 1 (two passes over the data fewer).
    """
    if uniform:
        mu = xp.mean(c4, axis=1)
        return mu, xp.sum((c4 - xp.expand_dims(mu, axis=1)) ** 2, axis=1)
    w_col = xp.sum(wx, axis=1)
    mu = xp.sum(wx * c4, axis=1) / w_col
    return mu, xp.sum(wx * (c4 - xp.expand_dims(mu, axis=1)) ** 2, axis=1)


def _chunk(xp, value_and_grad, x_rows, background, cot, index, alpha, noise, wx, coef, place, *,
           uniform=False):
    """One rectangle of k rows x s samples: the contributions, or their per-column statistics.

    Pure array code with shapes fixed by its arguments, so that an adapter can compile it
    whole (:meth:`Adapter.fuse`): interpolation, the model's VJP, the multiply and the
    reductions then run as one program, with no eager op dispatched per chunk.

    ``x_rows``: per input ``(k, *f)``; ``background``: per input ``(B, *f)``; ``cot``:
    ``(k, K)``; ``index``, ``alpha``: ``(k, s)``, ``alpha`` in the accumulation dtype; ``noise``:
    ``None`` or per input ``(k, s, *f)`` (already scaled by ``stdevs``). ``wx``: ``None``, then
    the result is the contributions ``(x - b) * grad f(b + alpha (x - b))``, per input ``(k, s,
    F)``; or the weights ``(1, passes, columns, 1)`` of a chunk of whole passes
    (``s = passes * columns``), then it is ``(means, m2s)``, per input ``(k, columns, F)``.
    ``coef``: ``None``, or, for a chunk that is a whole block of a stratified design, the
    factors ``(1, columns, 1)`` that turn a column's spread into its share of the
    estimate's variance; the result is then the estimate and its variance, ``(k, F)`` each.
    ``place``: ``None``, or, for a chunk that is part of one pass (one sample per column;
    ``wx`` is then ``None``), each column's sample position ``(columns,)``, ``s`` for a
    column the chunk does not reach; the result is then the samples placed in their
    columns, per input ``(k, columns, F)``, and ``None`` (no spreads).
    ``uniform``: every weight in ``wx`` is 1 (:data:`_chunk_uniform`).
    """
    k, s = index.shape
    acc = alpha.dtype
    flat_index = xp.reshape(index, (k * s,))
    points, diffs = [], []
    for pos, (xb, bg) in enumerate(zip(x_rows, background)):
        fshape = tuple(bg.shape[1:])
        xr = xp.expand_dims(xp.astype(xb, acc, copy=False), axis=1)
        base = xp.reshape(xp.astype(xp.take(bg, flat_index, axis=0), acc, copy=False), (k, s, *fshape))
        if noise is not None:
            xr = xr + noise[pos]
        diff = xr - base
        a = xp.reshape(alpha, (k, s) + (1,) * len(fshape))
        points.append(xp.astype(xp.reshape(base + a * diff, (k * s, *fshape)), bg.dtype, copy=False))
        diffs.append(xp.reshape(diff, (k, s, math.prod(fshape))))
    n_out = cot.shape[1]
    cots = xp.reshape(xp.broadcast_to(xp.expand_dims(cot, axis=1), (k, s, n_out)), (k * s, n_out))
    _, grads = value_and_grad(tuple(points), cots)
    contributions = [d * xp.reshape(xp.astype(g, d.dtype, copy=False), d.shape) for d, g in zip(diffs, grads)]
    if wx is None:
        if place is None:
            return contributions
        # A zero slot after the samples stands for the columns this chunk does not reach.
        return [xp.take(xp.concat([c, c[:, :1, :] * 0], axis=1), place, axis=1) for c in contributions], None
    g = wx.shape[2]
    stats = [_pass_stats(xp, xp.reshape(c, (k, s // g, g, c.shape[-1])), wx, uniform) for c in contributions]
    if coef is None:
        return [m for m, _ in stats], [v for _, v in stats]
    return [xp.mean(m, axis=1) for m, _ in stats], [xp.sum(v * coef, axis=1) for _, v in stats]


def _chunk_columns(xp, value_and_grad, x_rows, background, cot, baseline, alpha, est_w, var_w):
    """One rectangle of k rows x ``passes`` x ``gc`` columns of a design whose columns each
    keep one background row: that rectangle's share of the estimate and of its variance.

    Within a column ``c`` every sample uses the same baseline ``b_c``, so its contributions
    are ``(x - b_c) * grad`` with one factor per column: the step reduces the gradients over
    the passes (their mean and spread) and multiplies by ``x - b_c`` once per column,
    ``passes`` times fewer multiplies, and makes the points from one ``x - b_c`` per column
    with no per-sample gather. Columns are independent, so shares of disjoint columns add.

    ``baseline``: ``(k, gc)`` background row of each column; ``alpha``: ``(k, passes, gc)``
    in the accumulation dtype; ``est_w``, ``var_w``: ``(k, gc, 1)``, each column's weight in
    the estimate (``1 / columns``; 0 for a padding column) and the factor that turns its
    spread into its share of the variance. Returns per input the estimate's share and the
    variance's share, ``(k, F)`` each. Pure array code with static shapes
    (:meth:`Adapter.fuse` may compile it).
    """
    k, passes, gc = alpha.shape
    acc = alpha.dtype
    flat = xp.reshape(baseline, (k * gc,))
    a = xp.expand_dims(alpha, axis=3)
    points, diffs = [], []
    for xb, bg in zip(x_rows, background):
        fshape = tuple(bg.shape[1:])
        f = math.prod(fshape)
        base = xp.reshape(xp.astype(xp.take(bg, flat, axis=0), acc, copy=False), (k, 1, gc, f))
        diff = xp.reshape(xp.astype(xb, acc, copy=False), (k, 1, 1, f)) - base
        points.append(xp.astype(xp.reshape(base + a * diff, (k * passes * gc, *fshape)), bg.dtype, copy=False))
        diffs.append(xp.reshape(diff, (k, gc, f)))
    n_out = cot.shape[1]
    cots = xp.reshape(xp.broadcast_to(xp.reshape(cot, (k, 1, n_out)), (k, passes * gc, n_out)),
                      (k * passes * gc, n_out))
    _, grads = value_and_grad(tuple(points), cots)
    est, var = [], []
    for d, g in zip(diffs, grads):
        g4 = xp.reshape(xp.astype(g, acc, copy=False), (k, passes, gc, d.shape[-1]))
        mu = xp.mean(g4, axis=1)
        dev = g4 - xp.expand_dims(mu, axis=1)
        m2 = xp.sum(dev * dev, axis=1)  # not xp.var: torch's is 100x slower over a middle axis
        est.append(xp.sum(d * mu * est_w, axis=1))
        var.append(xp.sum(d * d * m2 * var_w, axis=1))
    return est, var


# The chunk step for designs whose weights are all 1 (every design but the quadrature rules),
# made once so that an adapter's compiled copy of it is reused.
_chunk_uniform = functools.partial(_chunk, uniform=True)


@light
def _chan(xp, value_and_grad, mean, m2, means, m2s, share, cross):
    """Chan's formula per column: running ``(mean, m2)`` merged with a block's
    ``(means, m2s)`` (``m2s`` ``None`` for one sample per column), per input ``(k, columns,
    F)``; ``share`` and ``cross``, ``(1, columns, 1)``, carry the weights. Pure, so that an
    adapter can compile it (:meth:`Adapter.fuse`; ``value_and_grad`` is unused)."""
    new_mean, new_m2 = [], []
    for pos, mu in enumerate(means):
        d = mu - mean[pos]
        new_mean.append(mean[pos] + d * share)
        extra = d * d * cross
        new_m2.append(m2[pos] + (extra if m2s is None else m2s[pos] + extra))
    return new_mean, new_m2


def _sample_chunk(n_samples: int, columns: int, size: int) -> int:
    """Samples per chunk: ``size`` rounded down to whole passes of the layout, or to an equal
    share of one pass, so that every chunk but a last partial pass has the same shape."""
    if columns <= 1:
        return min(size, n_samples)
    if size >= columns:
        return min(size, n_samples) // columns * columns
    return -(-columns // -(-columns // size))


def _sample_rows(design: _sampling.Design, batch_size: int, *, equal: bool) -> tuple[int, int]:
    """Samples and rows per chunk of :func:`_attribute` (``equal``: a padding adapter's plan)."""
    s_size = _sample_chunk(design.n_samples, design.columns, _plan(design.n_samples, batch_size, equal=equal)[1])
    return s_size, max(1, batch_size // s_size)


# A chunk shape is accepted once it holds this fraction of batch_size points.
_MIN_FILL = 0.9


def _plan(n_samples: int, batch_size: int, equal: bool = False) -> tuple[int, int]:
    """(rows, samples) per chunk: samples cut into blocks, rows filling the rest.

    The chunk holds at most ``batch_size`` points and, wherever a split allows, at least
    ``_MIN_FILL`` of it, for any ``n_samples``: peak memory is then set by
    ``batch_size`` alone (200 samples at batch_size 334 run as 8 rows x 40, not 1 x 200,
    and 800 samples as 2 rows x 160). Fewest sample blocks first: each costs a merge.
    With ``equal`` (adapters that compile once per shape) only splits into equal blocks
    are taken when one exists, so that no shorter last block costs a second compile.
    """
    first = -(-n_samples // batch_size)  # fewest blocks that fit
    candidates = range(first, min(n_samples, first + 64) + 1)
    if equal and any(n_samples % b == 0 for b in candidates):
        candidates = [b for b in candidates if n_samples % b == 0]
    best = None
    for blocks in candidates:
        s_size = -(-n_samples // blocks)
        k_rows = max(1, batch_size // s_size)
        fill = k_rows * s_size / batch_size
        if best is None or fill > best[0] + 1e-12:
            best = (fill, k_rows, s_size)
        if fill >= _MIN_FILL:
            break
    return best[1], best[2]


def _column_sets(design: _sampling.Design) -> list[tuple[int, int, int]]:
    """The columns of equal counts, ``(first, stop, passes)``: with ``n = q columns + r``,
    the first ``r`` columns hold ``q + 1`` samples and the others ``q``."""
    q, r = divmod(design.n_samples, design.columns)
    return ([(0, r, q + 1)] if r else []) + [(r, design.columns, q)]


def _set_sizes(design: _sampling.Design) -> tuple:
    """The sets of :func:`_column_sets` as ``(columns, passes)``, the form the plans take."""
    return tuple((c1 - c0, p) for c0, c1, p in _column_sets(design))


def _groups_per_set(sets: tuple, widths: tuple) -> list:
    """Column groups per row of each set ``(columns, passes)`` at the groups' ``widths``."""
    return [-(-width // gc) for (width, _), gc in zip(sets, widths)]


def _column_groups(sets: tuple, batch_size: int, k: int) -> tuple | None:
    """Columns per group of each set ``(width, passes)`` at ``k`` rows per chunk (equal
    groups, the fewest that fit ``batch_size``), and the chunks per row group; ``None`` if a
    column does not fit."""
    widths, chunks = [], 0
    for width, passes in sets:
        fit = batch_size // (k * passes)
        if fit < 1:
            return None
        groups = -(-width // fit)
        widths.append(-(-width // groups))
        chunks += groups
    return tuple(widths), chunks


@functools.lru_cache(maxsize=64)
def _column_plan(sets: tuple, batch_size: int, n_rows: int, pads: bool = False) -> tuple[int, tuple]:
    """Rows per chunk and columns per chunk of each set ``(width, passes)`` of the column step.

    A chunk holds ``rows x passes x columns <= batch_size`` points, with all the passes of
    its columns; each set's columns are cut into equal groups. Taken: the most useful
    points per chunk (so the fewest chunks for many rows), then the fewest column groups,
    then the most rows. That plan depends on neither the data nor the row count, so a
    padding adapter sees few chunk shapes across calls. A call with fewer rows than it holds
    gets its own plan, the fewest chunks for exactly ``n_rows`` rows; a padding adapter
    instead runs those rows as slots of the plan's shapes, compiled already, unless that
    computes more than ``_SLOTS_SPARE`` times the points (a new small row count compiled
    a step anew: 1.2-1.5 s at 24, 17 and 5 rows on JAX's small CNN of benchmarks/).

    A second plan, the fewest column groups among those within 5% of the most useful
    points, is taken instead where it runs ``n_rows`` in no more chunks
    (:func:`_column_chunks`; ``pads``: the adapter compiles once per shape and runs the
    last rows as slots). Each column group beyond the first costs eager ops per row group
    (adding the groups' shares), and on a padding adapter a short last row group costs
    the slot path's. Calls with at least as many rows as the plans hold then see at most
    two chunk shapes, each compiled once. (The 200-row MLP of benchmarks/, A/B in one
    process: JAX 7.21 -> 6.22 ms, TF 12.63 -> 10.65 ms with one column group of 100
    columns instead of two of 50.)
    """
    per_row = sum(width * passes for width, passes in sets)
    options = []
    for k in range(1, batch_size // min(p for _, p in sets) + 1):
        made = _column_groups(sets, batch_size, k)
        if made is not None:
            options.append((k * per_row / (made[1] * batch_size), made[1], k, made[0]))
    top = max(o[0] for o in options)
    best = min((o for o in options if o[0] >= top - 0.02), key=lambda o: (o[1], -o[2]))
    exact = None
    if n_rows < best[2]:
        _, _, k, widths = min((o for o in options if o[2] <= n_rows),
                              key=lambda o: (-(-n_rows // o[2]) * o[1], -o[2]))
        exact = k, widths
        if not pads:
            return exact
    fewer = min((o for o in options if o[0] >= top - 0.05), key=lambda o: (o[1], -o[2]))
    if (n_rows >= fewer[2] or pads) and _column_chunks(sets, fewer[2], fewer[3], n_rows, pads) <= \
            _column_chunks(sets, best[2], best[3], n_rows, pads):
        best = fewer
    if exact is not None and n_rows < best[2] and \
            _column_points(sets, best[2], best[3], n_rows) > _SLOTS_SPARE * _column_points(sets, *exact, n_rows):
        return exact
    return best[2], best[3]


# A padding adapter runs fewer rows than the plan's row group as slots of the plan's
# shapes (no new compile) unless that computes more than this many times the points of
# the plan made for those rows (JAX's small CNN of benchmarks/ at 1 row: 648 points
# against 200, 204 ms a call against 65 ms; at 24 rows, 1.06 times).
_SLOTS_SPARE = 1.25


def _column_chunks(sets: tuple, k: int, widths: tuple, n_rows: int, pads: bool = False) -> int:
    """Chunks the column step runs for ``n_rows`` rows at ``k`` rows per chunk: full row
    groups, then, for a padding adapter, the last rows' (row, column group) slots, ``k``
    per chunk, per set, or else one shorter row group."""
    return sum(_set_chunks(sets, k, widths, n_rows, pads))


def _column_points(sets: tuple, k: int, widths: tuple, n_rows: int) -> int:
    """Points a padding adapter computes for ``n_rows`` rows at ``k`` rows per chunk,
    padding included (:func:`_column_chunks`)."""
    chunks = _set_chunks(sets, k, widths, n_rows, True)
    return sum(c * k * passes * gc for c, (_, passes), gc in zip(chunks, sets, widths))


def _set_chunks(sets: tuple, k: int, widths: tuple, n_rows: int, pads: bool) -> list:
    """Per set, the chunks of :func:`_column_chunks`."""
    groups = _groups_per_set(sets, widths)
    full, tail = divmod(n_rows, k)
    if not pads:
        return [(full + (tail > 0)) * g for g in groups]
    return [full * g + -(-g * tail // k) for g in groups]


def _uses_columns(design: _sampling.Design, stdevs: float, rtol, batch_size: int) -> bool:
    """Whether :func:`_chunk_columns` computes this call: a design whose columns keep one
    background row each with at least two samples in every column, no input noise, no
    adaptive rounds, and a column's samples fitting one chunk."""
    return (design.fixed_baselines and stdevs == 0 and rtol is None
            and 2 <= design.n_samples // design.columns and -(-design.n_samples // design.columns) <= batch_size)


def _whole_block(design: _sampling.Design, rtol, batch_size: int, equal: bool) -> bool:
    """Whether each chunk of :func:`_attribute` holds a whole block of a stratified design
    with two or more samples in every column, for the rows of one row group (200 samples
    on 1,000 background rows, or iid): the chunk step then returns the estimate and its
    variance (:func:`_block_coef`), and no statistic is kept between chunks."""
    n0, g = design.n_samples, design.columns
    return (design.kind not in ("rule", "replicates") and rtol is None and n0 % g == 0
            and bool(np.all(design.counts >= 2))
            and _chunk_ranges(n0, g, _sample_rows(design, batch_size, equal=equal)[0]) == [(0, n0)])


def _block_coef(design: _sampling.Design) -> np.ndarray:
    """For :func:`_whole_block`'s chunks, the factors ``(1, columns, 1)`` that turn a
    column's spread into its share of the estimate's variance."""
    n0, g = design.n_samples, design.columns
    a, b, _ = design.column_constants(1)
    w_col = np.sum(np.reshape(design.weights(0, n0), (n0 // g, g)), axis=0)
    return np.reshape(a / (b * w_col) / g**2, (1, g, 1))


def _uses_blocks(design: _sampling.Design, stdevs: float, rtol, batch_size: int) -> bool:
    """Whether :func:`_blocks_program` computes this call, where programs run: chunks of
    :func:`_whole_block`, no input noise (drawn per point on the host), one background for
    all rows, and a design that :func:`_uses_columns` refuses or whose columns hold at most
    ``_BLOCK_PASSES`` samples each."""
    return (stdevs == 0 and not design.paired and _whole_block(design, rtol, batch_size, True)
            and (design.n_samples // design.columns <= _BLOCK_PASSES
                 or not _uses_columns(design, stdevs, rtol, batch_size)))


# Programs run a design whose columns each keep one background row as whole blocks
# (:func:`_blocks_program`), not by columns (:func:`_rows_program`), where its columns hold
# at most this many samples: the column step saves multiplies in proportion to the samples
# per column, and costs gathers per slot. On the MLP of benchmarks/, 200 rows, 100
# background rows, A/B in one process, blocks against columns: 2 samples per column, JAX
# 5.95 against 6.27 ms, TensorFlow 10.30 against 11.56; 4, equal (12.44 / 12.47, 22.68 /
# 22.37); 8, JAX 22.46 against 20.37, TensorFlow 34.35 against 33.80.
_BLOCK_PASSES = 2


def _programs_run(design: _sampling.Design, stdevs: float, rtol, batch_size: int) -> bool:
    """Whether an adapter with :meth:`Adapter.row_loop` runs this call as programs
    (:func:`_attribute_program`); at a smaller ``batch_size``, after running out of
    memory, a call may not."""
    return _uses_columns(design, stdevs, rtol, batch_size) or _uses_blocks(design, stdevs, rtol, batch_size)


def _attribute_columns(adapter, xp, x, background, cot_rows, _gap, *, design, key, batch_size, bar, rows=None):
    """:func:`_attribute` for a design :func:`_uses_columns` accepts, through :func:`_chunk_columns`.

    Rows go in groups of ``k_rows``, and the columns of each set of equal counts in groups;
    a row group's shares of its column groups add up to its estimate and variance, so no
    statistic is kept between chunks and nothing is merged. (``_gap``, the completeness
    target, serves adaptive rounds only, which this path does not run.) ``rows``: the
    caller's rows, where ``x`` holds padding after them (:func:`_padded_rows`).
    """
    n = x[0].shape[0]
    acc = _accumulation_dtype(xp, x[0].dtype)
    device = _validation.device_of(xp, x[0])
    feat = [tuple(a.shape[1:]) for a in x]
    sets = _column_sets(design)
    k_rows, widths = _column_plan(_set_sizes(design), batch_size, n, adapter.pads)
    k_run = k_rows if adapter.pads else min(k_rows, n)
    counted = n if rows is None else rows  # what the progress bar counts
    step = adapter.fuse(_chunk_columns)
    groups = _column_spans(design, sets, widths, reach_back=adapter.pads)
    # A padding adapter computes every chunk with k_run rows. A last row group with fewer
    # rows (or fewer rows than one group) is run by "slots" instead: a slot is one (row,
    # column group) pair, a chunk is k_run slots of one set (each slot its own row and
    # columns), so only the last chunk of each set holds padding, not every column group
    # of the last rows.
    tail = n % k_rows if adapter.pads else 0
    head = n - tail

    def weights_arg(w: np.ndarray):
        return adapter.step_array(xp, np.repeat(w, k_run, axis=0), dtype=acc, device=device)

    made = [(weights_arg(w[0]), weights_arg(w[1])) for *_, w in groups] if head else []
    # The host draws for several row groups at once (about _CHUNKS_PER_DRAW chunks' worth).
    draw_rows = k_rows * max(1, min(_DRAWS_PER_CALL, _CHUNKS_PER_DRAW * batch_size) // (k_rows * design.n_samples))
    host = _host_buffers(xp, adapter, device, acc, feat, n, k_rows)
    parts: list = []
    pieces = _row_groups(adapter, xp, (*x, cot_rows), k_rows)

    # A compiling adapter's first draw is one row group's: its step is queued at once, and
    # the device runs it while the host draws the rest (JAX MLP 6.86 -> 6.55 ms, TF 10.00
    # -> 9.43 ms, A/B in one process).
    first = k_rows if adapter.pads and head > k_rows else draw_rows
    bounds = [0, *range(first, head, draw_rows), head] if head else []
    for d0, d1 in zip(bounds[:-1], bounds[1:]):
        baseline, alpha = _column_draws(design, key, d0, d1)
        if not adapter.pads:  # one conversion per draw; chunks take views
            baseline, alpha = adapter.step_array(xp, baseline, device=device), \
                adapter.step_array(xp, alpha, dtype=acc, device=device)
        for r0 in range(0, d1 - d0, k_rows):
            r1 = min(d1 - d0, r0 + k_rows)
            k, lo, hi = r1 - r0, d0 + r0, d0 + r1
            *x_rows, cot = (p[lo // k_rows] for p in pieces)
            b_rows, a_rows = baseline[r0:r1, ...], alpha[r0:r1, ...]
            totals = None
            for (c0, c1, passes, owned, _), (est_w, var_w) in zip(groups, made):
                a_part = a_rows[:, :passes, c0:c1]
                if k != k_run:  # the last row group of an eager adapter
                    est_w, var_w = est_w[:k, ...], var_w[:k, ...]
                b_part = b_rows[:, c0:c1]
                if adapter.pads:  # host draws: one cheap conversion per chunk
                    b_part = adapter.step_array(xp, b_part, device=device)
                    a_part = adapter.step_array(xp, a_part, dtype=acc, device=device)
                totals = _add_shares(totals, step(xp, tuple(x_rows), background, cot, b_part, a_part, est_w, var_w))
                if bar is not None:  # the caller's rows only (``rows``: see _padded_rows)
                    bar.update((min(hi, counted) - min(lo, counted)) * passes * owned)
            if host is not None:
                for buffer, arrays in zip(host, totals):
                    for pos, v in enumerate(arrays):
                        buffer[pos][lo:hi] = np.reshape(np.from_dlpack(v), (k, *feat[pos]))
            else:
                parts.append(totals)
    if tail:
        parts.append(_column_slots(adapter, xp, step, x, background, cot_rows, head, n, groups,
                                   design=design, key=key, k_run=k_run, acc=acc, device=device, bar=bar,
                                   counted=counted))
    used, met = np.full(n, design.n_samples, dtype=np.int64), np.ones(n, dtype=bool)
    if host is not None:
        return ([xp.asarray(v, device=device) for v in host[0]], [xp.asarray(v, device=device) for v in host[1]],
                used, met)
    out = []
    for which in (0, 1):
        out.append([xp.reshape(parts[0][which][pos] if len(parts) == 1 else
                               xp.concat([p[which][pos] for p in parts], axis=0), (n, *f))
                    for pos, f in enumerate(feat)])
    return out[0], out[1], used, met


def _column_spans(design: _sampling.Design, sets: list, widths: tuple, *, reach_back: bool) -> list:
    """The column groups of the column step, ``(lo, c1, passes, columns owned, weights)``:
    each set's columns in groups of its width, and the weights ``(2, 1, c1 - lo, 1)`` of
    each column in the estimate and in the variance. With ``reach_back`` (an adapter that
    compiles once per shape) the last group of a set keeps the set's width by reaching back
    over columns that the group before it owns; they weigh 0 there.
    """
    g = design.columns
    a, b, _ = design.column_constants(1)
    coef = a / (b * design.counts) / g**2
    groups = []
    for (first, stop, passes), gc in zip(sets, widths):
        for c0 in range(first, stop, gc):
            c1 = min(stop, c0 + gc)
            lo = max(first, c1 - gc) if reach_back else c0
            weights = np.zeros((2, 1, c1 - lo, 1))
            weights[0, :, c0 - lo :, 0], weights[1, :, c0 - lo :, 0] = 1.0 / g, coef[c0:c1]
            groups.append((lo, c1, passes, c1 - c0, weights))
    return groups


def _by_set(groups: list) -> list:
    """The column groups of :func:`_column_spans` per set of equal counts, most passes first:
    ``(passes, its groups, their weights (2, groups, width, 1))`` (a set's groups are of
    one width where they reach back, as on the slot paths)."""
    out = []
    for passes in sorted({grp[2] for grp in groups}, reverse=True):
        mine = [grp for grp in groups if grp[2] == passes]
        out.append((passes, mine, np.concatenate([w for *_, w in mine], axis=1)))
    return out


def _slots(baseline: np.ndarray, alpha: np.ndarray, spans: list, passes: int, k: int) -> tuple:
    """The slots of one set of equal counts: one per (row, column group), column-group-major
    (slot ``j * m + i`` is row ``i`` with group ``j``), repeated from the first up to a
    multiple of ``k``. Returns each slot's row, column group, background rows ``(S,
    width)`` and alphas ``(S, passes, width)``, and the number of slots before repeating."""
    m = baseline.shape[0]
    n_slots = m * len(spans)
    pick = np.arange(-(-n_slots // k) * k) % n_slots
    return (pick % m, pick // m, np.concatenate([baseline[:, lo:c1] for lo, c1 in spans])[pick],
            np.concatenate([alpha[:, :passes, lo:c1] for lo, c1 in spans])[pick], n_slots)


def _row_groups(adapter, xp, arrays: tuple, k_rows: int) -> list:
    """Each of ``arrays`` cut into its row groups of ``k_rows`` rows (the last may be
    shorter), in one op per array where the adapter can (:meth:`Adapter.split_rows`)."""
    n = arrays[0].shape[0]
    sizes = [min(k_rows, n - r0) for r0 in range(0, n, k_rows)]
    return [adapter.split_rows(xp, a, sizes) for a in arrays]


def _column_slots(adapter, xp, step, x, background, cot_rows, r0, r1, groups, *, design, key, k_run, acc, device,
                  bar, counted):
    """The estimate and variance shares of the rows ``r0..r1-1`` (fewer than ``k_run``)
    through chunks of ``k_run`` slots, each slot one (row, column group) of one set of
    equal counts, padded only in each set's last chunk; per input ``(r1 - r0, F)``.
    ``counted``: where the caller's rows end (padding after it, uncounted by ``bar``)."""
    rows, m = np.arange(r0, r1), r1 - r0
    baseline, alpha = _column_draws(design, key, r0, r1)
    totals = None
    for passes, mine, w_groups in _by_set(groups):
        row_of, group_of, b_slots, a_slots, n_slots = _slots(baseline, alpha, [grp[:2] for grp in mine], passes, k_run)
        shares = []
        for t0 in range(0, row_of.size, k_run):
            chunk = slice(t0, t0 + k_run)
            w = w_groups[:, group_of[chunk]] * (np.arange(t0, t0 + k_run) < n_slots)[None, :, None, None]  # padding weighs 0
            idx = adapter.step_array(xp, rows[row_of[chunk]], device=device)
            share = step(xp, tuple(xp.take(a, idx, axis=0) for a in x), background, xp.take(cot_rows, idx, axis=0),
                         adapter.step_array(xp, b_slots[chunk], device=device),
                         adapter.step_array(xp, a_slots[chunk], dtype=acc, device=device),
                         *(adapter.step_array(xp, v, dtype=acc, device=device) for v in w))
            shares.append(share)
        for grp in mine:
            if bar is not None:  # rows from ``counted`` on are padding (see _padded_rows)
                bar.update(max(0, min(r1, counted) - r0) * passes * grp[3])
        # Every slot's share, in slot order, summed over the column groups of each row (with
        # one column group, a slot is a whole row: nothing to sum).
        def slot_shares(which: int, pos: int):
            every = xp.concat([sh[which][pos] for sh in shares], axis=0) if len(shares) > 1 else shares[0][which][pos]
            every = every[:n_slots, ...] if every.shape[0] != n_slots else every
            return every if len(mine) == 1 else xp.sum(xp.reshape(every, (len(mine), m, -1)), axis=0)

        joined = tuple([slot_shares(which, pos) for pos in range(len(x))] for which in (0, 1))
        totals = _add_shares(totals, joined)
    return totals


# Whole calls as programs. Where the adapter compiles whole programs and runs loops inside
# them at full speed (:meth:`Adapter.row_loop`: JAX), eager ops each cost a dispatch and, at
# every new shape, a compile: the 200-row MLP of benchmarks/ ran about 25 of them per call
# (4 ms of host time, where the floor's whole work takes 5 ms), and a call with a new row
# count compiled each anew (0.6 to 0.9 s). A column-step call there is three programs:
# the model's outputs (:func:`_outputs_program`), each piece of rows
# (:func:`_rows_program`, its chunks looped over inside; :func:`_pieces`) and the results
# (:func:`_finish_program`).


class _NotRows(Exception):
    """Raised while tracing :func:`_outputs_program`: the model's output is not one row per
    input row. The eager path then runs x and the background apart, to say which."""


@functools.lru_cache(maxsize=256)
def _program(fn: Callable, **static) -> Callable:
    """``fn`` with its static arguments bound, the same object for the same arguments (the
    adapter keeps one compiled program per function object)."""
    return functools.partial(fn, **static)


@light
def _outputs_program(xp, value_and_grad, x, background, *, paired: bool, probe: bool, cuts: tuple):
    """The model's outputs at ``x`` and at the background, from one forward pass over both.

    Returns ``out_x`` ``(n, K)`` in the accumulation dtype; the reference the base value is
    taken from (the background's mean output ``(1, K)``, or with ``paired`` baselines each
    row's own, ``(nb, K)``); with ``probe`` the sum of the inputs, whose finiteness is read
    with the results' (see :func:`run`), else ``None``; and ``x`` cut at the rows ``cuts``
    into the pieces of :func:`_pieces` (``None`` for one piece). ``value_and_grad(points,
    None)`` is the forward pass alone.
    """
    n, nb = x[0].shape[0], background[0].shape[0]
    joined = tuple(xp.concat([a, b], axis=0) for a, b in zip(x, background))
    out, _ = value_and_grad(joined, None)
    if out.ndim not in (1, 2) or out.shape[0] != n + nb:
        raise _NotRows
    acc = _accumulation_dtype(xp, out.dtype)
    out = xp.astype(xp.reshape(out, (n + nb, -1)), acc, copy=False)
    out_b = out[n:, ...]
    ref_b = out_b if paired else xp.expand_dims(xp.mean(out_b, axis=0), axis=0)
    return out[:n, ...], ref_b, _input_sum(xp, joined) if probe else None, _cut(xp, x, cuts)


def _input_sum(xp, arrays: tuple):
    """The sum of every number of ``arrays`` in the accumulation dtype: finite if they are
    (or an overflow, which only a closer look tells apart)."""
    acc_in = _accumulation_dtype(xp, arrays[0].dtype)
    sums = [xp.sum(xp.astype(a, acc_in, copy=False)) for a in arrays]
    return sum(sums[1:], sums[0])


def _cut(xp, x: tuple, cuts: tuple):
    """``x`` (a tuple of arrays) as pieces between the rows ``cuts``; ``None`` for one piece."""
    if len(cuts) <= 2:
        return None
    return tuple(tuple(a[r0:r1, ...] for a in x) for r0, r1 in zip(cuts[:-1], cuts[1:]))


def _pieces(design: _sampling.Design, batch_size: int, n: int) -> tuple[int, tuple | None, tuple]:
    """Rows per chunk, column groups' widths (``None`` for :func:`_blocks_program`), and
    where the row pieces of the programs start and stop: the first row group alone, then
    stretches of about ``_CHUNKS_PER_PIECE`` chunks' worth of rows (so memory stays set by
    ``batch_size``). The device runs each piece while the host draws the next (JAX MLP of
    benchmarks/: the draws take 0.4-0.7 ms of a 6 ms call); each piece size compiles once,
    and calls with more rows than a stretch reuse the first piece's and the full
    stretches' programs.
    """
    if not _uses_blocks(design, 0.0, None, batch_size):
        k, widths = _column_plan(_set_sizes(design), batch_size, n, True)
    else:  # one chunk of the whole block per row group
        k, widths = min(n, _sample_rows(design, batch_size, equal=True)[1]), None
    stretch = k * max(1, min(_DRAWS_PER_CALL, _CHUNKS_PER_PIECE * batch_size) // (k * design.n_samples))
    cuts = (0, *range(k, n, stretch), n) if n > k else (0, n)
    return k, widths, cuts


def _program_rows(design: _sampling.Design, batch_size: int, n: int) -> int:
    """The rows the programs of a call of ``n`` rows run: ``n`` padded with copies of its
    rows up to the most rows that its plan runs in the same chunks; or, for a call of a
    few rows with a plan of its own (one piece), up to the next of 1, 2, 3, 4, 6, 8, 10,
    12, 14, 16, 20, ... (:func:`_few_rows`).

    Programs compile per row count. Padded, calls whose rows fill the same chunks share
    their programs (161 to 200 rows of the MLP of benchmarks/: one column group, chunks of
    40 rows), and the padding computes only slots that the last chunks held anyway; a few
    rows compute up to 1.25 times their points. On that MLP a call at a new row count
    compiled 0.5-0.6 s of programs; one padded to a count seen before takes 0.12-0.14 s
    (the padding and cutting back are small ops compiled per count), and 0.1-0.15 ms
    more per call after that. :func:`_blocks_program` runs whole row groups: its rows pad
    to a multiple of a row group's, or, fewer, as few rows.
    """
    if _uses_blocks(design, 0.0, None, batch_size):
        return _whole_groups(design, batch_size, n)
    k, widths, cuts = _pieces(design, batch_size, n)
    last = cuts[-1] - cuts[-2]
    size = cuts[-2] + _filled(last, k, _groups_per_set(_set_sizes(design), widths))
    if size > n and _pieces(design, batch_size, size) == (k, widths, (*cuts[:-1], size)):
        return size
    if size == n and len(cuts) == 2:  # a few rows, run by a plan of their own
        size = _few_rows(n)
        if size > n and _pieces(design, batch_size, size)[2] == (0, size):
            return size
    return n


def _padded_rows(adapter: Adapter, xp, design: _sampling.Design, stdevs: float, rtol, batch_size: int, n: int,
                 program: bool) -> int:
    """The rows a call of ``n`` rows runs: ``n``, or padded with copies of its rows where a
    new row count would compile or trace anew (not in adaptive rounds, which pick rows,
    nor with per-row baselines, whose background has a row per row).

    - The whole-call programs (JAX): :func:`_program_rows`.
    - Other paths of a padding adapter (JAX, TensorFlow), whose chunks have one shape
      whatever the row count: a call of fewer rows than a chunk holds runs chunks of its
      own, so it pads up to :func:`_few_rows` (TensorFlow's MLP of benchmarks/: 0.25-0.35
      s of trace and compile at each new count of 1 to 7 rows).
    - Where eager ops compile (JAX), a call on the per-chunk path of :func:`_attribute`
      also pads up to a multiple of its chunk's rows, to which its last row group was
      padded anyway (its slicing, padding and joining compile per count: the MLP against
      1,000 background rows, 0.51-0.61 s at each new count); one on the column path pads
      its last rows up to the most that their slots hold (the small CNN of benchmarks/ on
      CPU: 31 rows run as 32).
    """
    if design.paired:
        return n
    if program:
        return _program_rows(design, batch_size, n)
    if not adapter.pads or xp is not adapter.xp or rtol is not None:
        return n
    if _uses_columns(design, stdevs, rtol, batch_size):
        sets = _set_sizes(design)
        k, widths = _column_plan(sets, batch_size, n, True)
        tail = n % k
        if adapter.eager_compiles and tail:
            # The last rows run as slots (_column_slots): up to the most rows they hold.
            size = n - tail + min(k, _filled(tail, k, _groups_per_set(sets, widths)))
            if size > n and _column_plan(sets, batch_size, size, True) == (k, widths):
                return size
        # A plan of their own: one row group of exactly those rows.
        few = _few_rows(n)
        return few if few > n and _column_plan(sets, batch_size, few, True)[0] == few else n
    size = _whole_groups(design, batch_size, n)
    # Fewer rows than a group: chunks of their own; else a multiple of the group's rows,
    # where the last group's slicing and padding would compile per count (JAX).
    return size if adapter.eager_compiles or size <= _sample_rows(design, batch_size, equal=True)[1] else n


def _whole_groups(design: _sampling.Design, batch_size: int, n: int) -> int:
    """``n`` rows padded to whole row groups of :func:`_attribute`'s chunks (a padding
    adapter's plan), or, fewer than one group, to :func:`_few_rows` (at most one group)."""
    k_rows = _sample_rows(design, batch_size, equal=True)[1]
    return min(k_rows, _few_rows(n)) if n < k_rows else -(-n // k_rows) * k_rows


def _filled(rows: int, k: int, groups: list) -> int:
    """The most rows whose slots (per set, ``groups`` column groups per row; ``k`` slots a
    chunk) run in as many chunks as the slots of ``rows`` rows."""
    return min(-(-rows * g // k) * k // g for g in groups)


def _few_rows(n: int) -> int:
    """The least count at least ``n`` of 1, 2, 3, 4, 6, 8, then four per doubling (10, 12,
    14, 16, 20, 24, 28, 32, 40, ...): at most 25% more rows, and few counts to compile."""
    if n <= 4:
        return n
    if n <= 8:
        return 6 if n <= 6 else 8
    step = 1 << ((n - 1).bit_length() - 3)
    return -(-n // step) * step


def _rows_program(xp, value_and_grad, x_rows, background, cot, sets, *, map_rows: Callable):
    """The shares of the estimate and of its variance of a piece of ``m`` rows (``x_rows``
    per input, ``cot``), per input ``(m, F)``.

    Slots as in :func:`_column_slots`: per set of equal counts, one slot per (row, column
    group), column-group-major, ``k`` slots per chunk of :func:`_chunk_columns`; the last
    chunk is filled with copies of the first slot, dropped after. ``sets`` holds per set the
    slots' rows and column groups ``(C, k)``, background rows ``(C, k, width)`` and alphas
    ``(C, k, passes, width)``, and per column group the weights of :func:`_chunk_columns`
    ``(groups, width, 1)``. ``map_rows(fn, arrays)`` runs ``fn`` on each chunk (the leading
    axis of every array in ``arrays``) and stacks the results.
    """
    m = cot.shape[0]
    totals = None
    for rows, groups, baselines, alphas, est_w, var_w in sets:
        n_slots = est_w.shape[0] * m

        def chunk(arrays):
            r, c, b, a = arrays
            return _chunk_columns(xp, value_and_grad, tuple(xp.take(v, r, axis=0) for v in x_rows), background,
                                  xp.take(cot, r, axis=0), b, a, xp.take(est_w, c, axis=0), xp.take(var_w, c, axis=0))

        est, var = map_rows(chunk, (rows, groups, baselines, alphas))

        def per_row(v):
            slots = xp.reshape(v, (-1, v.shape[-1]))[:n_slots, ...]
            return slots if n_slots == m else xp.sum(xp.reshape(slots, (n_slots // m, m, v.shape[-1])), axis=0)

        totals = _add_shares(totals, ([per_row(v) for v in est], [per_row(v) for v in var]))
    return totals


def _blocks_program(xp, value_and_grad, x_rows, background, cot, index, alpha, coef, *, map_rows: Callable):
    """The estimate and its variance for a piece of ``m`` rows (``x_rows`` per input,
    ``cot``), per input ``(m, F)``, where one chunk of :func:`_chunk` holds a whole block
    for each of its ``k`` rows (:func:`_uses_blocks`): ``index`` and ``alpha`` ``(m / k, k,
    s)``, per chunk, ``coef`` ``(1, columns, 1)`` (see :func:`_chunk`). ``map_rows`` as
    for :func:`_rows_program`.
    """
    chunks, k, s = index.shape
    m, g = cot.shape[0], coef.shape[1]
    wx = xp.ones((1, s // g, g, 1), dtype=alpha.dtype)  # uniform weights: only the shape is read
    rows = (*x_rows, cot)
    if chunks * k != m:  # (rows not a multiple of k only after an out-of-memory retry)
        idx = xp.arange(chunks * k) % m
        rows = tuple(xp.take(v, idx, axis=0) for v in rows)

    def chunk(arrays):
        *xs, c, i, a = arrays
        return _chunk_uniform(xp, value_and_grad, tuple(xs), background, c, i, a, None, wx, coef, None)

    est, var = map_rows(chunk, (*(xp.reshape(v, (chunks, k, *v.shape[1:])) for v in rows), index, alpha))
    return tuple([xp.reshape(v, (chunks * k, v.shape[-1]))[:m, ...] for v in part] for part in (est, var))


@light
def _finish_program(xp, value_and_grad, x, out_x, ref_b, cot, ests, variances, probe):
    """A target's results from the pieces' shares (each per input ``(m, F)``, in row order):
    values and standard errors per input ``(n, *features)``, base values, outputs
    and completeness residuals ``(n,)``, and a sum whose finiteness says all of them (and,
    with ``probe``, the inputs) are finite. The per-chunk paths run it eagerly, with their
    values and variances as one piece (``value_and_grad`` is unused)."""
    n, acc = out_x.shape[0], out_x.dtype
    cot_acc = xp.astype(cot, acc, copy=False)

    def joined(parts, pos, a):
        whole = parts[0][pos] if len(parts) == 1 else xp.concat([p[pos] for p in parts], axis=0)
        return xp.reshape(whole, (n, *a.shape[1:]))

    values = [joined(ests, pos, a) for pos, a in enumerate(x)]
    errs = [xp.sqrt(joined(variances, pos, a)) for pos, a in enumerate(x)]
    output, base = xp.sum(out_x * cot_acc, axis=1), xp.sum(ref_b * cot_acc, axis=1)
    total = sum(xp.sum(xp.reshape(xp.astype(v, acc, copy=False), (n, -1)), axis=1) for v in values)
    check = xp.sum(total) if probe is None else xp.sum(total) + xp.astype(probe, acc, copy=False)
    return values, errs, base, output, total - (output - base), check


def _attribute_program(adapter, xp, x, background, cot_rows, *, design, key, batch_size, bar, loop, pieces,
                       rows=None):
    """:func:`_attribute_columns` (or, where :func:`_uses_blocks`, :func:`_attribute`) as
    programs: the shares of each piece of rows (:func:`_pieces`), per input ``(m, F)`` (for
    :func:`_finish_program`). ``pieces``: ``x`` cut into them already, as ``(cuts,
    pieces)`` (:func:`_cut`), or ``None`` to cut here. ``rows``: the caller's rows, where
    ``x`` holds padding after them (:func:`_program_rows`; the progress bar counts the
    caller's rows only).
    """
    n = x[0].shape[0]
    acc = _accumulation_dtype(xp, x[0].dtype)
    np_acc = np.float64 if xp.finfo(acc).bits == 64 else np.float32
    device = _validation.device_of(xp, x[0])
    k, widths, cuts = _pieces(design, batch_size, n)
    counted = n if rows is None else rows  # what the progress bar counts
    if pieces is None or pieces[0] != cuts:  # (after a smaller batch_size, cut anew)
        pieces = cuts, _cut(xp, x, cuts)
    pieces = pieces[1] or (x,)
    if widths is None:  # whole blocks
        step = adapter.fuse(_program(_blocks_program, map_rows=loop))
        coef = adapter.step_array(xp, _block_coef(design), dtype=acc, device=device)

        def piece_args(r0: int, r1: int) -> tuple:
            return (*(adapter.step_array(xp, v, device=device) for v in _block_draws(design, key, r0, r1, k, np_acc)),
                    coef)
    else:
        # Per set, its column groups (of equal widths) and their weights (2, groups, width, 1).
        groups = _column_spans(design, _column_sets(design), widths, reach_back=True)
        layout = [(passes, tuple(grp[:2] for grp in mine),
                   tuple(adapter.step_array(xp, w, dtype=acc, device=device) for w in weights))
                  for passes, mine, weights in _by_set(groups)]
        step = adapter.fuse(_program(_rows_program, map_rows=loop))
        layout_key = tuple((passes, spans) for passes, spans, _ in layout)

        def piece_args(r0: int, r1: int) -> tuple:
            draws = _slot_draws(design, key, r0, r1, k, layout_key, np_acc)
            return (tuple(tuple(adapter.step_array(xp, v, device=device) for v in host) + weights
                          for host, (_, _, weights) in zip(draws, layout)),)

    ests, variances = [], []
    for x_rows, r0, r1 in zip(pieces, cuts[:-1], cuts[1:]):
        args = piece_args(r0, r1)
        cot = cot_rows if r1 - r0 == n else cot_rows[r0:r1, ...]
        if ests:  # the piece before runs while the host draws this one; one piece at a time
            adapter.wait((ests[-1], variances[-1]))
        est, var = step(xp, x_rows, background, cot, *args)
        ests.append(est)
        variances.append(var)
        if bar is not None:  # the caller's rows only
            bar.update((min(r1, counted) - min(r0, counted)) * design.n_samples)
    return ests, variances


# The last draws made, by what they depend on: a seeded call draws the same numbers for
# the same rows every time (draws are per row and depend on nothing else), so calls that
# explain batches of data with one seed draw once. The 200-row MLP of benchmarks/, draws
# kept against made anew, A/B in one process: TensorFlow 15.6 -> 12.6 ms, Keras on TF
# 15.6 -> 13.4, torch 28.2 -> 25.8 (JAX's programs: 0.5 ms of a 6 ms call). At most one
# draw group's worth is kept (_DRAWS_PER_CALL pairs, 1 MiB): a call draws its next group
# while it holds the one before, so keeping that much adds nothing to its peak; keeping
# four groups had put up to 4 MiB more on it, growing with the rows up to that.
_KEPT_DRAWS: collections.OrderedDict = collections.OrderedDict()
_DRAWS_KEPT_BYTES = 16 * _DRAWS_PER_CALL
_KEPT_LOCK = threading.Lock()  # for _KEPT_DRAWS and _COMPOSED


def _kept_draws(design: _sampling.Design, key: int, r0: int, r1: int, make: Callable, *layout):
    """``make(rows)``: draws of the rows ``r0..r1-1`` of ``design`` under ``key``, in a layout
    that ``layout`` (hashable) says all else about; kept (the most recent, up to
    ``_DRAWS_KEPT_BYTES``), so that the same arguments find the same arrays again.
    Callers never write into them."""
    found = (design.name, design.n_samples, design.n_background, design.columns, key, r0, r1, *layout)
    with _KEPT_LOCK:  # calls from several threads share it
        if found in _KEPT_DRAWS:
            _KEPT_DRAWS.move_to_end(found)
            return _KEPT_DRAWS[found][0]
    out = make(np.arange(r0, r1))
    size = sum(a.nbytes for a in _arrays_in(out))
    with _KEPT_LOCK:
        _KEPT_DRAWS[found] = out, size
        while _KEPT_DRAWS and sum(v[1] for v in _KEPT_DRAWS.values()) > _DRAWS_KEPT_BYTES:
            _KEPT_DRAWS.popitem(last=False)
    return out


def _read_only(*arrays: np.ndarray) -> tuple:
    """``arrays``, marked read-only: kept draws are shared by the calls that find them."""
    for a in arrays:
        a.flags.writeable = False
    return arrays


def _arrays_in(tree) -> list:
    """The NumPy arrays in nested tuples and lists."""
    if isinstance(tree, np.ndarray):
        return [tree]
    return [a for item in tree for a in _arrays_in(item)]


def _column_draws(design: _sampling.Design, key: int, r0: int, r1: int) -> tuple:
    """:func:`_sampling.columns` of the rows ``r0..r1-1``, kept (:func:`_kept_draws`)."""
    return _kept_draws(design, key, r0, r1, lambda rows: _sampling.columns(design, key, rows), "columns")


def _slot_draws(design: _sampling.Design, key: int, r0: int, r1: int, k: int, layout: tuple, dtype) -> list:
    """The host arrays of :func:`_rows_program`'s slots for rows ``r0..r1-1``, per set of
    ``layout`` ``((passes, spans of its column groups), ...)``: each slot's row and column
    group ``(C, k)``, background row ``(C, k, width)`` and alphas ``(C, k, passes, width)``
    in ``dtype``, the last chunk filled with the first slots again. Kept
    (:func:`_kept_draws`), and read-only."""

    def make(rows: np.ndarray) -> list:
        baseline, alpha = _sampling.columns(design, key, rows)
        out = []
        for passes, spans in layout:
            slot_rows, groups, b, a, _ = _slots(baseline, alpha, list(spans), passes, k)
            chunks = (np.reshape(v, (-1, k, *v.shape[1:])) for v in (slot_rows, groups, b, a.astype(dtype)))
            out.append(_read_only(*chunks))
        return out

    return _kept_draws(design, key, r0, r1, make, "slots", k, layout, np.dtype(dtype).str)


def _block_draws(design: _sampling.Design, key: int, r0: int, r1: int, k: int, dtype) -> tuple:
    """The host arrays of :func:`_blocks_program` for rows ``r0..r1-1``: each sample's
    background row and alpha (in ``dtype``), ``(chunks, k, n_samples)``. Kept
    (:func:`_kept_draws`), and read-only."""

    def make(rows: np.ndarray) -> tuple:
        index, alpha, _ = _sampling.draw(design, key, rows, 0, 0, design.n_samples)
        size = -(-rows.size // k) * k  # (more than the rows only after an out-of-memory retry)
        return _read_only(*(np.reshape(_pad_rows(v, size), (-1, k, design.n_samples))
                            for v in (index, alpha.astype(dtype))))

    return _kept_draws(design, key, r0, r1, make, "blocks", k, np.dtype(dtype).str)


def _add_shares(totals, share):
    """Shares ``(estimates, variances)`` of disjoint columns added (``totals`` ``None`` at first)."""
    return share if totals is None else tuple([t + u for t, u in zip(tp, sp)] for tp, sp in zip(totals, share))


def _host_buffers(xp, adapter, device, acc, feat: list, n: int, k_rows: int):
    """On CPU, for an eager framework with more than one row group: one host array per input
    for the values and one for the variances, ``(n, *features)``, that row groups write into.

    Small result arrays kept alive between chunks fragment the C heap, and peak memory then
    grew with the number of rows (torch MLP: 1.9x at 4x rows; 1.1x with the buffer).
    Compiling adapters keep results on device, where reading them back would stall the
    pipeline. ``None`` where not used.
    """
    if "cpu" not in str(device).lower() or adapter.pads or n <= k_rows:
        return None
    np_dtype = np.float64 if xp.finfo(acc).bits == 64 else np.float32
    return tuple([np.empty((n, *f), dtype=np_dtype) for f in feat] for _ in range(2))


def _pad_rows(a: np.ndarray, size: int) -> np.ndarray:
    return a if a.shape[0] == size else a[np.arange(size) % a.shape[0]]


def _host(a) -> np.ndarray:
    from gradshap.explanation import to_numpy

    return np.asarray(to_numpy(a), dtype=np.float64)


def _attribute(adapter, xp, x, background, cot_rows, gap, *, design, stdevs, key, batch_size, bar,
               rtol=None, max_blocks=1, rows=None):
    """Values and variances per input, samples used per row and whether each met ``rtol``.

    Rows go in groups of ``k_rows`` (a chunk holds up to ``k_rows`` rows times ``s_size``
    samples, at most ``batch_size`` points). Each group takes one block of
    ``design.n_samples`` samples per row; in adaptive mode the rows that have not met
    ``rtol`` take as many blocks again, until ``max_blocks``. ``gap``: each row's
    completeness target ``f(x) - base``, which adaptive mode checks the values' sum against
    (``None`` without ``rtol``). ``rows``: the caller's rows, where ``x`` holds padding
    after them (:func:`_padded_rows`; the progress bar counts the caller's rows only).
    """
    n = x[0].shape[0]
    dtype = x[0].dtype
    acc = _accumulation_dtype(xp, dtype)
    device = _validation.device_of(xp, x[0])
    feat = [tuple(a.shape[1:]) for a in x]
    sizes = [math.prod(f) for f in feat]
    n0, g = design.n_samples, design.columns
    s_size, k_rows = _sample_rows(design, batch_size, equal=adapter.pads)
    ranges = _chunk_ranges(n0, g, s_size)
    # Every design but a deterministic rule has weights all 1, and has its chunks reduced
    # by the step; a rule keeps its per-node means (see _ColumnStats): its chunks come back whole.
    reduce = design.kind != "rule"
    step = adapter.fuse(_chunk_uniform if reduce else _chunk)
    fused_weighted = adapter.fuse(_chunk) if reduce and adapter.pads else step
    chan = adapter.fuse(_chan)
    # One chunk per row group holding a whole block: the chunk step returns the estimate
    # and its variance, with no statistics kept between chunks.
    final = None
    if _whole_block(design, rtol, batch_size, adapter.pads):
        final = adapter.step_array(xp, _block_coef(design), dtype=acc, device=device)
    # Adaptive rounds finish rows out of order: no host buffer there.
    host = _host_buffers(xp, adapter, device, acc, feat, n, k_rows) if rtol is None else None

    def to_step(a: np.ndarray, dtype=None):
        return adapter.step_array(xp, a, dtype=dtype, device=device)

    made: dict = {}  # the step arguments that depend on the layout only, made once per call

    def weight_array(w: np.ndarray):
        """The weights ``(1, passes, columns, 1)`` of a whole-pass chunk."""
        key = ("w", w.tobytes())
        if key not in made:
            made[key] = to_step(np.reshape(w, (1, *w.shape, 1)), acc)
        return made[key]

    def place_array(c0: int, s: int, s_run: int):
        """Sample position per column of a partial-pass chunk; ``s_run`` (the zero slot) elsewhere."""
        key = ("place", c0, s, s_run)
        if key not in made:
            place = np.full(g, s_run, dtype=np.int64)
            place[c0 : c0 + s] = np.arange(s)
            made[key] = to_step(place)
        return made[key]

    # Without adaptive rounds and with one chunk per row group, the host draws for several
    # row groups in one vectorised call (about _CHUNKS_PER_DRAW chunks' worth of pairs, so
    # its memory too is set by batch_size). Draws are per row: the grouping changes no
    # number. They are kept (_kept_draws) like the other paths' (the bench MLP over 1,000
    # background rows drew for 3.8 ms of a 21 ms call on torch).
    draw_rows = k_rows * max(1, min(_DRAWS_PER_CALL, _CHUNKS_PER_DRAW * batch_size) // (k_rows * n0))
    drawn: dict = {}

    def draw_group(rows: np.ndarray, block: int, s0: int, s1: int) -> tuple:
        index, alpha, weights = _sampling.draw(design, key, rows, block, s0, s1)
        return (*_read_only(index, alpha), weights)

    def draw(active, block, s0, s1):
        if rtol is not None or len(ranges) > 1 or draw_rows == k_rows:
            return _sampling.draw(design, key, active, block, s0, s1)
        start = active[0] // draw_rows * draw_rows
        if drawn.get("start") != start:
            stop = min(n, start + draw_rows)
            drawn.update(start=start, value=_kept_draws(design, key, start, stop,
                                                        lambda rows: draw_group(rows, block, s0, s1),
                                                        "draw", block, s0, s1))
        index, alpha, weights = drawn["value"]
        o = active[0] - start
        return index[o : o + active.size], alpha[o : o + active.size], weights

    def run_chunk(x_rows, cot, active, block, s0, s1, stats):
        """Samples ``s0..s1-1`` of ``block`` for the rows ``active`` into ``stats`` (or, for
        a ``final`` chunk, returned as the estimate and its variance, ``k_run`` rows)."""
        k, s = active.size, s1 - s0
        out = None
        # A padding adapter sees every chunk with k_run rows and s_size samples: repeated
        # rows only cost time and are dropped at the end; repeated samples weigh 0.
        k_run = cot.shape[0]
        s_run = max(s, s_size) if adapter.pads else s
        index, alpha, weights = draw(active, block, s0, s1)
        whole = reduce and s0 % g == 0 and s % g == 0 and s_run % g == 0
        cols = np.arange(s_run) % s
        index = to_step(_pad_rows(index, k_run)[:, cols])
        alpha = to_step(_pad_rows(alpha, k_run)[:, cols], acc)
        noise = None
        if stdevs > 0:
            noise = tuple(
                to_step(stdevs * np.reshape(_pad_rows(np.reshape(
                    _sampling.normals(key, active, s * size, _sampling.STREAM_NOISE + pos,
                                      start=(block * n0 + s0) * size), (k, s, size)), k_run)[:, cols],
                    (k_run, s_run, *fshape)), acc)
                for pos, (fshape, size) in enumerate(zip(feat, sizes))
            )
        head = (xp, tuple(x_rows), background, cot, index, alpha, noise)
        if whole:
            w = np.zeros((s_run // g, g))
            w[: s // g] = np.reshape(weights, (s // g, g))
            # Padded passes must weigh 0: the weighted step.
            step_now = fused_weighted if reduce and s_run != s else step
            means, m2s = step_now(*head, weight_array(w), final, None)
            if final is not None:
                out = means, m2s  # the estimate and its variance
            else:
                stats.merge(xp, means, m2s, np.sum(w, axis=0))
        elif reduce:  # part of one pass: each sample placed in its column by the step
            c0 = s0 % g
            means, _ = step(*head, None, None, place_array(c0, s, s_run))
            w_block = np.zeros(g)
            w_block[c0 : c0 + s] = weights
            stats.merge(xp, means, None, w_block)
        else:
            contributions = step(*head, None, None, None)
            if s_run != s:
                contributions = [c[:, :s, ...] for c in contributions]
            stats.add(xp, contributions, weights, s0, s1)
        if bar is not None:
            bar.update((k if rows is None else int(np.count_nonzero(active < rows))) * s)
        return out

    def padded(active: np.ndarray) -> np.ndarray:
        """The rows a chunk computes: ``active``, repeated up to one shape for a padding adapter."""
        return _pad_rows(active, min(k_rows, n)) if adapter.pads else active

    # Results per finished part: (rows of x, values, variances, positions of those rows in
    # the part's arrays); one gather at the end puts every row in place.
    parts, used, met = [], np.zeros(n, dtype=np.int64), np.ones(n, dtype=bool)
    pieces = _row_groups(adapter, xp, (*x, cot_rows), k_rows)
    for r0 in range(0, n, k_rows):
        active = np.arange(r0, min(n, r0 + k_rows))
        stats = None if final is not None else _ColumnStats(g, len(x), acc, device, nodes=not reduce,
                                                            chan=chan, to_step=to_step)
        blocks, new = 0, 1
        while True:
            # The rows' inputs, sliced (or taken) once per round and padded to the one
            # chunk shape of a compiling adapter; whole arrays pass unsliced.
            if blocks == 0:  # the row group as cut
                *x_rows, cot = (p[r0 // k_rows] for p in pieces)
            elif active[-1] - active[0] + 1 == active.size:
                x_rows = [a[active[0] : active[-1] + 1, ...] for a in x]
                cot = cot_rows[active[0] : active[-1] + 1, ...]
            else:
                idx = adapter.step_array(xp, active, device=device)
                x_rows = [xp.take(a, idx, axis=0) for a in x]
                cot = xp.take(cot_rows, idx, axis=0)
            k_run = padded(active).size
            if k_run != active.size:
                *x_rows, cot = _pad(adapter, xp, (*x_rows, cot), k_run)
            for block in range(blocks, blocks + new):
                for s0, s1 in ranges:
                    out = run_chunk(x_rows, cot, active, block, s0, s1, stats)
            blocks += new
            values, var = out if final is not None else stats.finish(xp, design, blocks)
            k = active.size
            ok = np.ones(k, dtype=bool) if rtol is None else _converged(xp, values, var, gap, active, rtol, stdevs)
            done = ok | (rtol is None or 2 * blocks > max_blocks)
            if host is not None:  # rtol is None: every row of the group is done
                for pos in range(len(x)):
                    for buffer, v in ((host[0], values), (host[1], var)):
                        buffer[pos][active[0] : active[-1] + 1] = np.reshape(np.from_dlpack(v[pos])[:k], (k, *feat[pos]))
                used[active] = blocks * n0
                break
            if np.any(done):
                sel = np.flatnonzero(done)
                parts.append((active[sel], values, var, sel))
                used[active[sel]] = blocks * n0
                met[active[sel]] = ok[sel]
            if np.all(done):
                break
            keep = np.flatnonzero(~done)
            active, new = active[keep], blocks  # double the samples of the rows still going
            stats.keep(xp, padded(keep))
    if host is not None:
        values = [xp.asarray(v, device=device) for v in host[0]]
        variances = [xp.asarray(v, device=device) for v in host[1]]
        return values, variances, used, met
    # Where each output row sits in the parts' arrays joined end to end.
    sizes_run = [p[1][0].shape[0] for p in parts]
    starts = np.concatenate([[0], np.cumsum(sizes_run)[:-1]]).astype(np.int64)
    where = np.empty(n, dtype=np.int64)
    for (out_rows, _, _, positions), start in zip(parts, starts):
        where[out_rows] = start + positions
    trivial = len(parts) == 1 and np.array_equal(where, np.arange(n)) and sizes_run[0] == n
    pick = None if trivial else adapter.step_array(xp, where, device=device)

    def gather(which: int, pos: int, shape: tuple):
        arrays = [p[which][pos] for p in parts]
        joined = arrays[0] if len(arrays) == 1 else xp.concat(arrays, axis=0)
        if pick is not None:
            joined = xp.take(joined, pick, axis=0)
        return xp.reshape(joined, (n, *shape))

    values = [gather(1, pos, f) for pos, f in enumerate(feat)]
    variances = [gather(2, pos, f) for pos, f in enumerate(feat)]
    return values, variances, used, met


def _converged(xp, values: list, var: list, gap, active: np.ndarray, rtol: float, stdevs: float) -> np.ndarray:
    """Rows whose standard error (and completeness residual) are within ``rtol`` of ``||values||``."""
    k = active.size  # the arrays may hold padded rows after these
    err2 = _host(sum(xp.sum(v, axis=1) for v in var))[:k]
    scale = np.sqrt(_host(sum(xp.sum(v * v, axis=1) for v in values)))[:k]
    ok = err2 <= (rtol * scale) ** 2
    if stdevs == 0:
        total = _host(sum(xp.sum(v, axis=1) for v in values))[:k]
        ok &= np.abs(total - _host(gap)[active]) <= rtol * scale
    return ok


def _check_gradients(xp, values: list, name: str) -> None:
    shown = _validation.nonfinite_rows(xp, values)
    if shown:
        msg = (
            f"the model produced NaN or inf gradients for {name} at input row(s) {shown}; "
            "check the model for operations that are not differentiable there (log of 0, sqrt at 0, ...)"
        )
        raise FloatingPointError(msg)


def _stack(xp, arrays: list, many: bool):
    return xp.stack(arrays, axis=-1) if many else arrays[0]


def _check_adaptive(rtol, max_samples, n_samples: int, design) -> tuple[float | None, int]:
    """Validated ``rtol`` and the most blocks of ``n_samples`` the adaptive mode may use."""
    if rtol is None:
        if max_samples is not None:
            msg = f"`max_samples` applies only with `rtol` (adaptive mode); got max_samples={max_samples!r} and rtol=None"
            raise ValueError(msg)
        return None, 1
    rtol = _validation.check_nonnegative_float(rtol, "rtol")
    if rtol == 0:
        msg = "`rtol` must be > 0 (a relative tolerance on the standard error); got 0"
        raise ValueError(msg)
    if not design.extensible:
        msg = (
            f"`rtol` (adaptive mode) needs a sampler that can add samples; {design.name!r} is a fixed rule. "
            f"Use sampler='auto' or one of {', '.join(map(repr, _sampling.EXTENSIBLE))}"
        )
        raise ValueError(msg)
    if max_samples is None:
        max_samples = 32 * n_samples
    max_samples = _validation.check_positive_int(max_samples, "max_samples")
    if max_samples < n_samples:
        msg = f"`max_samples` must be >= `n_samples` ({n_samples}), the first round; got {max_samples}"
        raise ValueError(msg)
    return rtol, max_samples // n_samples


def run(
    adapter: Adapter,
    x: tuple,
    background: tuple,
    *,
    target: Any = None,
    n_samples: int = 200,
    sampler: str | _sampling.Design = "auto",
    stdevs: float = 0.0,
    seed: Any = None,
    batch_size: int | None = None,
    progress: bool = False,
    xp: Any = None,
    rtol: float | None = None,
    max_samples: int | None = None,
) -> Result:
    """Validate, then explain ``x`` against ``background`` through ``adapter``.

    ``sampler`` may also be a :class:`gradshap._sampling.Design` (Integrated Gradients
    passes its quadrature rule this way). With ``rtol``, each row gets blocks of
    ``n_samples`` samples, doubling, until its standard error is at most ``rtol`` times
    the norm of its values (and, without smoothing, so is its completeness residual),
    or until ``max_samples``; ``Result.n_samples`` then holds the samples used per row.
    """
    n_samples = _validation.check_positive_int(n_samples, "n_samples")
    stdevs = _validation.check_nonnegative_float(stdevs, "stdevs")
    xp = _validation.namespace_of(x + background, "x") if xp is None else xp
    _validation.check_arrays(xp, x, background, finite=False)
    device = _validation.device_of(xp, x[0])
    feature_size = sum(math.prod(a.shape[1:]) for a in x)
    if batch_size is None:
        batch_size = default_batch_size(feature_size, device=device, compiled=adapter.pads)
    batch_size = _validation.check_positive_int(batch_size, "batch_size")
    n, nb = x[0].shape[0], background[0].shape[0]
    design = sampler if isinstance(sampler, _sampling.Design) else _sampling.plan(sampler, n_samples, nb)
    rtol, max_blocks = _check_adaptive(rtol, max_samples, n_samples, design)
    if callable(target) and not isinstance(target, (str, type)):
        adapter, target = _composed(adapter, target), None
    key = _sampling.seed_key(seed)
    # The session (the model's mode and state, restored after) covers deciding the path too,
    # which may trace the model.
    with _global_rng_guard(), adapter.session():
        # An adapter that compiles whole programs runs the column step's calls, and the
        # general path's of whole blocks, as a few programs (see _attribute_program), on its
        # own arrays.
        loop = None
        if xp is adapter.xp and _programs_run(design, stdevs, rtol, batch_size):
            loop = adapter.row_loop(x)
        program = loop is not None
        # Where a new row count compiles or traces anew, the rows are padded to a few counts
        # (see _padded_rows); the results are cut back to the caller's rows.
        rows, x_in = n, x
        n = _padded_rows(adapter, xp, design, stdevs, rtol, batch_size, rows, program)
        x = _pad(adapter, xp, x, n)
        # Where x and the background fit one forward chunk, they go through the model together
        # (one call, one reduction to check finiteness); larger x is not copied. Only a failed
        # check looks for the rows (a sum of finite numbers may also overflow).
        fits = n + nb <= batch_size
        joined = tuple(xp.concat([a, b], axis=0) for a, b in zip(x, background)) if fits and not program else None
        # The inputs' finiteness. Reading a check waits for the device, so a compiling adapter
        # (whose programs the host queues) without adaptive rounds (which read values between
        # rounds) queues the inputs' sums now and reads them with the first target's check of
        # its values: one wait where there were two (JAX MLP 10.06 -> 9.66 ms, TF 9.63 -> 9.09,
        # A/B in one process). The clear error for a NaN or inf input then comes after the
        # model has run on it. Eager frameworks gain nothing, and NumPy would warn of inf - inf.
        checked = joined or x + background
        probe = adapter.pads and rtol is None and not any(_validation.is_lazy(a) for a in checked)
        input_probe = None
        if probe and not (program and fits):  # else the outputs' program sums them
            input_probe = _input_sum(xp, checked)
        elif not probe and not all(_validation.all_finite(xp, a) for a in checked):
            _validation.check_arrays(xp, x_in, background)
        outputs = None
        if program and fits:
            try:
                cuts = _pieces(design, batch_size, n)[2]
                outputs = adapter.fuse(_program(_outputs_program, paired=design.paired, probe=probe, cuts=cuts))(
                    xp, x, background)
            except _NotRows:  # the eager path below says which input's output is wrong
                pass
        pieces = None
        if outputs is not None:
            out_x, ref_b, input_probe, cut = outputs
            pieces = cuts, cut
        else:
            parts = None if joined is None else _forward_joined(adapter, xp, joined, n, nb, batch_size)
            if parts is None:
                parts = _forward(adapter, xp, x, batch_size), _forward(adapter, xp, background, batch_size)
            out_x = _targets.as_matrix(xp, parts[0], n)
            out_b = _targets.as_matrix(xp, parts[1], nb, "the model's output on `background`")
            acc = _accumulation_dtype(xp, out_x.dtype)
            out_x = xp.astype(out_x, acc, copy=False)
            out_b = xp.astype(out_b, acc, copy=False)
            # Per-row baselines (Integrated Gradients) compare with their own baseline.
            ref_b = out_b if design.paired else xp.expand_dims(xp.mean(out_b, axis=0), axis=0)
        acc = out_x.dtype
        selection = _targets.select(xp, target, out_x, dtype=x[0].dtype, rows=rows,
                                    place=lambda a, dtype: adapter.step_array(xp, a, dtype=dtype, device=device))
        total_grads = rows * design.n_samples * len(selection.cotangents) if rtol is None else None
        bar = _progress_bar(progress, total_grads)
        try:
            per_target = []
            for cot in selection.cotangents:
                # Only adaptive rounds need the completeness target up front; otherwise the
                # output and base value are made after the chunk steps are queued (an
                # asynchronous device then starts on them while the host makes these).
                gap = None
                if rtol is not None:
                    cot_acc = xp.astype(cot, acc, copy=False)
                    gap = xp.sum(out_x * cot_acc, axis=1) - xp.sum(ref_b * cot_acc, axis=1)
                while True:
                    try:
                        if program:
                            shares = _attribute_program(adapter, xp, x, background, cot, design=design, key=key,
                                                        batch_size=batch_size, bar=bar, loop=loop, pieces=pieces,
                                                        rows=rows)
                        else:
                            attribute = functools.partial(_attribute_columns, rows=rows) \
                                if _uses_columns(design, stdevs, rtol, batch_size) else \
                                functools.partial(_attribute, stdevs=stdevs, rtol=rtol, max_blocks=max_blocks, rows=rows)
                            vals, var, used, met = attribute(
                                adapter, xp, x, background, cot, gap, design=design, key=key,
                                batch_size=batch_size, bar=bar,
                            )
                        break
                    except Exception as err:
                        if batch_size == 1 or not adapter.is_out_of_memory(err):
                            raise
                        # Draws do not depend on chunking: a smaller batch gives the same numbers.
                        batch_size //= 2
                        warnings.warn(
                            f"gradshap: out of device memory; retrying with batch_size={batch_size}",
                            ResourceWarning, stacklevel=3,
                        )
                        if bar is not None:
                            bar.reset()
                        # (Rows padded for the programs are dropped after any path.)
                        program = program and _programs_run(design, stdevs, rtol, batch_size)
                # The results: one program where the shares came from programs or where eager
                # ops compile at each new shape, else eager ops.
                if program:
                    used, met = design.n_samples, None
                else:
                    shares = [vals], [var]
                if program or (adapter.eager_compiles and xp is adapter.xp):
                    vals, errs, base, output, delta, check = adapter.fuse(_finish_program)(
                        xp, x, out_x, ref_b, cot, *shares, input_probe)
                else:
                    vals, errs, base, output, delta, check = _finish_program(
                        xp, None, x, out_x, ref_b, cot, *shares, input_probe)
                if n != rows:  # the padding rows dropped (their numbers are in `check`: copies of rows')
                    vals, errs = [v[:rows, ...] for v in vals], [v[:rows, ...] for v in errs]
                    base, output, delta = base[:rows, ...], output[:rows, ...], delta[:rows, ...]
                per_target.append((vals, errs, base, output, delta, used, met))
                # Checked last: reading the check waits for the device, so the ops above are
                # queued first. The inputs' sum is read with the first target's.
                if not _validation.all_finite(xp, check):
                    if input_probe is not None:
                        _validation.check_arrays(xp, x_in, background)
                    _check_gradients(xp, vals, "the selected target")
                input_probe = None
        finally:
            if bar is not None:
                bar.close()
    if rtol is not None:
        _warn_unconverged([t[6] for t in per_target], rtol, max_blocks * n_samples)
    many = selection.many
    dtype = x[0].dtype
    values = tuple(
        xp.astype(_stack(xp, [t[0][pos] for t in per_target], many), dtype, copy=False) for pos in range(len(x))
    )
    stderr = tuple(
        xp.astype(_stack(xp, [t[1][pos] for t in per_target], many), dtype, copy=False) for pos in range(len(x))
    )
    base, output, delta = (_stack(xp, [t[i] for t in per_target], many) for i in (2, 3, 4))
    if rtol is None:
        used = design.n_samples
    else:
        used = np.stack([t[5] for t in per_target], axis=-1) if many else per_target[0][5]
    return Result(values, stderr, base, output, delta, selection.label, design.name, used)


# Adapters composed with a callable target, per adapter, by the callable: a compiling
# adapter keeps its programs, so calls that pass the same function compile once (JAX, a
# new adapter per call compiled its programs at every call: 0.5 s on the MLP).
_COMPOSED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_COMPOSED_KEPT = 8


def _composed(adapter: Adapter, fn: Callable) -> Adapter:
    """``adapter.compose(fn)``, the same object for the same ``fn`` (the last few kept)."""
    try:
        hash(fn)
        with _KEPT_LOCK:
            kept = _COMPOSED.setdefault(adapter, collections.OrderedDict())
    except TypeError:  # an adapter that cannot be weakly referenced, or an unhashable callable
        return adapter.compose(fn)
    with _KEPT_LOCK:
        if fn not in kept:
            kept[fn] = adapter.compose(fn)
            while len(kept) > _COMPOSED_KEPT:
                kept.popitem(last=False)
        kept.move_to_end(fn)
        return kept[fn]


def _warn_unconverged(met: list, rtol: float, limit: int) -> None:
    bad = np.flatnonzero(~np.all(np.stack(met, axis=-1), axis=-1))
    if bad.size:
        shown = ", ".join(map(str, bad[:10])) + (" ..." if bad.size > 10 else "")
        msg = (
            f"{bad.size} row(s) did not reach rtol={rtol} within max_samples={limit} (rows {shown}); "
            "their standard error is larger than asked. Raise `max_samples` or `rtol`"
        )
        warnings.warn(msg, RuntimeWarning, stacklevel=4)


@contextlib.contextmanager
def _global_rng_guard():
    """Python's and NumPy's global RNG states as found, whatever the model does with them."""
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


def _progress_bar(progress: bool, total: int | None):
    if not progress:
        return None
    from gradshap.backends import require

    tqdm = require("tqdm", "plots")
    return tqdm.tqdm(total=total, unit="grad", desc="gradshap", dynamic_ncols=True)


class _FunctionAdapter(Adapter):
    """A user's ``value_and_grad(points) -> (outputs, gradients)`` of a scalar function."""

    name = "function"

    def __init__(self, value_and_grad: Callable, n_inputs: int):
        self._fn = value_and_grad
        self._n_inputs = n_inputs

    def _call(self, points: tuple):
        out, grads = self._fn(points if self._n_inputs > 1 else points[0])
        return out, grads if isinstance(grads, tuple) else (grads,)

    def forward(self, points: tuple):
        return self._call(points)[0]

    def value_and_grad(self, points: tuple, cotangent):
        return self._call(points)

    def compose(self, fn: Callable):
        msg = (
            "a callable `target` cannot be composed with a plain `value_and_grad`; select the "
            "output inside value_and_grad, or use gradshap.GradientExplainer"
        )
        raise TypeError(msg)


def expected_gradients(
    value_and_grad: Callable,
    x: Any,
    background: Any,
    *,
    target: Any = None,
    n_samples: int = 200,
    sampler: str = "auto",
    stdevs: float = 0.0,
    seed: Any = None,
    batch_size: int | None = None,
    progress: bool = False,
    xp: Any = None,
    rtol: float | None = None,
    max_samples: int | None = None,
):
    """Expected Gradients for any differentiable function, in any array-API namespace.

    Parameters
    ----------
    value_and_grad : callable or Adapter
        ``value_and_grad(points) -> (outputs, gradients)`` for a function with one scalar
        output per row: ``outputs`` has shape ``(m,)`` and ``gradients`` the shape of
        ``points`` (a tuple of arrays for a model with several inputs). Rows must be
        independent (no batch statistics). An adapter from :mod:`gradshap.backends`
        is also accepted and then supports every kind of ``target``.
    x, background : array or tuple of arrays
        Rows to explain, and the background rows whose distribution defines "absent".
    target : None
        With a plain ``value_and_grad`` the function is already scalar: leave ``None``.
    n_samples, sampler, stdevs, seed, batch_size, progress, rtol, max_samples
        As for :class:`gradshap.GradientExplainer`.
    xp : array namespace, optional
        Inferred from ``x`` when not given.

    Returns
    -------
    Explanation

    Examples
    --------
    >>> import numpy as np, gradshap
    >>> w = np.array([1.0, -2.0, 0.5])
    >>> vg = lambda p: (p @ w, np.broadcast_to(w, p.shape))
    >>> bg = np.zeros((4, 3)); x = np.ones((2, 3))
    >>> exp = gradshap.expected_gradients(vg, x, bg, n_samples=8, seed=0)
    >>> np.allclose(exp.values, w * (x - bg.mean(0)))
    True
    """
    from gradshap.explanation import Explanation

    xs = _validation.as_inputs(x, "x")
    bgs = _validation.as_inputs(background, "background")
    adapter = value_and_grad if isinstance(value_and_grad, Adapter) else _FunctionAdapter(value_and_grad, len(xs))
    if not isinstance(value_and_grad, Adapter) and target is not None:
        msg = (
            "`target` must be None with a plain `value_and_grad`, which already returns one "
            f"scalar per row; got {target!r}. Select the output inside value_and_grad, or use "
            "gradshap.GradientExplainer"
        )
        raise ValueError(msg)
    result = run(
        adapter, xs, bgs, target=target, n_samples=n_samples, sampler=sampler, stdevs=stdevs,
        seed=seed, batch_size=batch_size, progress=progress, xp=xp, rtol=rtol, max_samples=max_samples,
    )
    return Explanation.from_result(result, data=x, many_inputs=isinstance(x, (tuple, list)))
