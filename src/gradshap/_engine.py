"""The one Expected Gradients engine: validate -> plan -> outputs -> chunk loop -> finish.

For an input row ``x`` the design (:mod:`gradshap._sampling`) gives ``n_samples``
samples, each a background row ``b``, an ``alpha`` and a weight. The sample's
contribution is ``(x - b) * grad f(b + alpha * (x - b))``. Sample ``j`` sits in pass
``j // columns`` of column ``j % columns``; the engine keeps a weighted mean and spread
of the contributions per (row, column, feature), the estimate is the average of the
column means, and its variance is the design's error model applied to the spreads
(:class:`_Stats`, the one place that model lives).

A call, in order (:func:`run`):

1. validate the arguments and plan the design and the tiling (:mod:`gradshap._tiling`);
2. the model's outputs at ``x`` and at the background (:func:`_outputs`), then the targets;
3. per group of rows, per tile of passes and columns: draw on the host, run the chunk
   step (:func:`_chunk`: gather baselines, interpolate, ``value_and_grad``, multiply by
   ``x - b``, per-column mean and spread), merge into the statistics (Chan's formula);
   the group's estimate, variance and standard errors follow from them;
4. finish (:func:`_finish`): base values, outputs, residuals.

The chunk step, the merge, the error model and the finish are pure array code with
shapes fixed by their arguments: the adapter compiles each where its framework
compiles (:meth:`Adapter.compile`), once per shape. Every draw is made on the host
from the seed and the row's id, so no number depends on the tiling. Accumulation is in
the input's dtype, or float32 for half-precision inputs.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from gradshap import _arrays, _sampling, _targets, _tiling, _validation
from gradshap.backends import Adapter, _state, require

__all__ = ["Result", "run"]


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
    seed: int | None = None  # the integer seed the draws came from
    row_ids: Any = None  # the rows' ids (int64 numpy array) that keyed the draws


#: Groups of rows whose results stay on the device before they are copied to the host: a
#: copy then waits for no computation still queued (JAX runs ahead of the host).
_IN_FLIGHT = 8


def _accumulation_dtype(xp, dtype):
    return dtype if xp.finfo(dtype).bits >= 32 else xp.float32


# --------------------------------------------------------------------------- the pure steps


def _chunk(xp, value_and_grad, x_rows, background, cot, index, alpha, weight, inv_weight, noise, *,
           per_column: bool, nodes: bool):
    """One tile of ``k`` rows x ``P`` passes x ``G`` columns: per-column statistics.

    ``x_rows``: per input ``(k, *f)``; ``background``: per input ``(B, *f)``; ``cot``:
    ``(k, K)``; ``index``, ``alpha``: ``(k, P, G)``; ``weight``: ``(1, P, G, 1)``, 0 for
    padding; ``inv_weight``: ``(1, G, 1)``, one over each column's total weight here (0 for
    none); ``noise``: ``None`` or per input ``(k, P, G, F)``.

    Returns per input the weighted mean and spread of the contributions per column,
    ``(k, G, F)`` each, and with ``nodes`` their sum over the columns per pass ``(k, P,
    F)``. With ``per_column`` (every sample of a column uses the column's background row:
    ``index`` is constant over passes) the gradients are reduced per column first, then
    multiplied by the column's ``x - b`` once.
    """
    k, p, g = index.shape
    acc = alpha.dtype
    a = xp.reshape(alpha, (k, p, g, 1))
    picked = xp.reshape(index[:, :1, :] if per_column else index, (-1,))
    points, diffs = [], []
    for pos, (xr, bg) in enumerate(zip(x_rows, background)):
        fshape = tuple(bg.shape[1:])
        f = math.prod(fshape)
        base = xp.reshape(xp.astype(xp.take(bg, picked, axis=0), acc, copy=False), (k, -1, g, f))
        diff = xp.reshape(xp.astype(xr, acc, copy=False), (k, 1, 1, f)) - base
        if noise is not None:
            diff = diff + noise[pos]
        points.append(xp.astype(xp.reshape(base + a * diff, (k * p * g, *fshape)), bg.dtype, copy=False))
        diffs.append(diff)
    n_out = cot.shape[1]
    cots = xp.reshape(xp.broadcast_to(xp.reshape(cot, (k, 1, n_out)), (k, p * g, n_out)), (k * p * g, n_out))
    _, grads = value_and_grad(tuple(points), cots)
    means, m2s, sums = [], [], []
    for d, grad in zip(diffs, grads):
        c = xp.reshape(xp.astype(grad, acc, copy=False), (k, p, g, d.shape[-1]))
        if not per_column:
            c = d * c
        mu = xp.sum(weight * c, axis=1) * inv_weight
        dev = c - xp.expand_dims(mu, axis=1)
        m2 = xp.sum(weight * (dev * dev), axis=1)
        if per_column:
            d = d[:, 0, ...]
            mu, m2 = d * mu, d * d * m2
        means.append(mu)
        m2s.append(m2)
        if nodes:  # padding slots weigh 0 in every statistic; here they are masked
            sums.append(xp.sum(c * xp.astype(weight > 0, acc), axis=2))
    return means, m2s, sums


def _merge(xp, _, mean, m2, new_mean, new_m2, share, cross):
    """Chan's formula per column: ``(mean, m2)`` merged with a tile's; ``share`` and
    ``cross`` ``(1, G, 1)`` carry the weights (``W_new / W`` and ``W_old W_new / W``)."""
    out_mean, out_m2 = [], []
    for mu, s, new_mu, new_s in zip(mean, m2, new_mean, new_m2):
        d = new_mu - mu
        out_mean.append(mu + d * share)
        out_m2.append(s + new_s + d * d * cross)
    return out_mean, out_m2


def _estimate(xp, _, mean, m2, nodes, c_m2, c_between, w_center, c_nodes, *, columns: int, passes: int,
              between: bool, infinite: bool):
    """Estimate, variance and standard error per input ``(k, F)`` from the per-column statistics.

    ``mean``, ``m2``: per column group, per input ``(k, G, F)``, joined and cut to the
    design's ``columns``; ``nodes``: ``None``, or per pass tile, per input the sum over
    columns at each pass ``(k, P, F)``, cut to ``passes``. The variance is ``sum_c c_m2 *
    m2``, plus with ``between`` the weighted spread of the column means about their
    ``w_center``-weighted mean, plus with ``nodes`` the ``c_nodes``-weighted spread of the
    mean over columns at each node about the estimate; the factors come from
    :func:`_error_model`. ``infinite``: too few samples to tell (the variance is ``inf``).
    """
    def joined(parts, size):
        return [(xp.concat(list(arrays), axis=1) if len(arrays) > 1 else arrays[0])[:, :size, ...]
                for arrays in zip(*parts)]

    values, variances = [], []
    nodes = None if nodes is None else joined(nodes, passes)
    for pos, (mu, s) in enumerate(zip(joined(mean, columns), joined(m2, columns))):
        v = xp.mean(mu, axis=1)
        var = xp.sum(s * c_m2, axis=1)
        if between:
            center = xp.sum(mu * w_center, axis=1, keepdims=True)
            var = var + xp.sum(c_between * (mu - center) ** 2, axis=1)
        if nodes is not None:
            var = var + xp.sum(c_nodes * (nodes[pos] / columns - xp.expand_dims(v, axis=1)) ** 2, axis=1)
        values.append(v)
        variances.append(var + math.inf if infinite else var)
    return values, variances, [xp.sqrt(v) for v in variances]


def _selected(xp, out, cot):
    """``sum(out * cot)`` per row over the outputs that ``cot`` selects: a NaN in an output
    that is not explained stays out (``0 * nan`` would be NaN)."""
    return xp.sum(xp.where(cot != 0, out * cot, xp.zeros_like(out)), axis=1)


def _finish(xp, _, values, out_x, ref_b, cot):
    """A target's base values, outputs and completeness residuals ``(n,)``, given its values
    per input ``(n, *f)`` (read, not returned: a compiled step would return a copy)."""
    n, acc = out_x.shape[0], out_x.dtype
    cot = xp.astype(cot, acc, copy=False)
    output, base = _selected(xp, out_x, cot), _selected(xp, ref_b, cot)
    total = sum(xp.sum(xp.reshape(xp.astype(v, acc, copy=False), (n, math.prod(v.shape[1:]))), axis=1)
                for v in values)
    return base, output, total - (output - base)


# --------------------------------------------------------------------------- statistics


def _ratio(num, den) -> np.ndarray:
    """``num / den`` with 0 where ``den`` is 0 (host-side weights)."""
    num, den = np.broadcast_arrays(np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64))
    out = np.zeros(num.shape)
    np.divide(num, den, out=out, where=den != 0)
    return out


def _error_model(design: _sampling.Design, w: np.ndarray, blocks: int) -> tuple[list, dict]:
    """The factors of :func:`_estimate` (``c_m2``, ``c_between``, ``w_center`` per column,
    ``c_nodes`` per node) and its static flags, for a design whose columns hold the
    weights ``w`` after ``blocks`` blocks. The one place each design's error model lives."""
    g = design.columns
    zero, c_nodes, nodes, infinite = np.zeros(g), np.zeros(1), False, False
    if design.kind == "replicates":  # the spread between independent replicates
        return [zero, np.full(g, 1.0 / max(1, g * (g - 1))), np.full(g, 1.0 / g), c_nodes], \
            {"between": True, "nodes": False, "infinite": g < 2}
    a, b, a_single = design.column_constants(blocks)
    multi = design.counts * blocks >= 2
    c_m2, c_between, center = np.where(multi, _ratio(a, b * w), 0.0) / g**2, zero, zero
    single = 6.0 * float(np.sum(a_single[~multi])) / g**2
    if design.kind == "rule" and np.all(multi):
        # A rule shared by all columns errs alike in each on the part of the integrand common
        # to all background rows (the mean over columns at each node): that part does not
        # average out; the rest is taken as independent between columns.
        ratio = float(a[0] / b[0])
        c_m2 = ratio * _ratio(1.0, w) / g**2
        nodes = g > 1
        c_nodes = ratio * (1.0 - 1.0 / g) * design.rules[int(design.counts[0])][1]
    elif single and np.any(multi):
        # A column of one sample borrows the mean per-sample variance of the others (the
        # spread / (6 B) of a column: see _quadrature).
        c_m2 = c_m2 + single * np.where(multi, _ratio(1.0, 6.0 * b * w), 0.0) / np.count_nonzero(multi)
    elif single:
        # No column of two: the spread of all samples about their mean (between columns too)
        # stands in, an overestimate.
        n = float(np.sum(design.counts * blocks))
        scale = single * n / max(n - 1.0, 1.0) / np.sum(w)
        c_m2, c_between, center, infinite = np.full(g, scale), scale * w, w / np.sum(w), n < 2
    return [c_m2, c_between, center, c_nodes], {"between": bool(np.any(c_between)), "nodes": nodes,
                                                "infinite": bool(infinite)}


class _Stats:
    """Weighted mean and spread per (row, column, feature) of one group of rows, kept per
    group of columns; the weights are the same for every row and stay on the host."""

    def __init__(self, xp, tiling: _tiling.Tiling, host: Callable, merge: Callable):
        self.xp, self.host, self._merge = xp, host, merge
        self.weight = [np.zeros(tiling.width) for _ in tiling.column_starts]
        self.mean: list = [None] * len(tiling.column_starts)
        self.m2: list = [None] * len(tiling.column_starts)
        self.nodes: dict = {}  # first pass of a tile -> per input the sums over columns per pass

    def add(self, group: int, p0: int, weight: np.ndarray, means: list, m2s: list, sums: list) -> None:
        """A tile's statistics (column group ``group``, first pass ``p0``, column weights ``weight``)."""
        old = self.weight[group]
        if self.mean[group] is None:
            self.mean[group], self.m2[group] = means, m2s
        else:
            total = old + weight
            share, cross = (self.host(np.reshape(v, (1, -1, 1))) for v in (_ratio(weight, total),
                                                                           _ratio(old * weight, total)))
            self.mean[group], self.m2[group] = self._merge(self.xp, self.mean[group], self.m2[group], means, m2s,
                                                              share, cross)
        self.weight[group] = old + weight
        if sums:
            kept = self.nodes.get(p0)
            self.nodes[p0] = sums if kept is None else [a + b for a, b in zip(kept, sums)]

    def keep(self, positions) -> None:
        """Only the rows at ``positions`` (an index array) from now on."""
        xp = self.xp
        self.mean = [[xp.take(a, positions, axis=0) for a in grp] for grp in self.mean]
        self.m2 = [[xp.take(a, positions, axis=0) for a in grp] for grp in self.m2]


# --------------------------------------------------------------------------- draws


def _layout(a: np.ndarray, design: _sampling.Design, tiling: _tiling.Tiling, fill) -> np.ndarray:
    """Per-sample values ``(k, m)`` of the passes from a tile's first pass, laid out as
    ``(k, passes, columns)`` (sample ``p * columns + c`` at pass ``p``, column ``c``), ``fill``
    past the block's samples and past the layout's columns."""
    g = design.columns
    full = np.full((a.shape[0], tiling.passes * g), fill, dtype=a.dtype)
    full[:, : a.shape[1]] = a
    grid = np.full((a.shape[0], tiling.passes, tiling.column_starts[-1] + tiling.width), fill, dtype=a.dtype)
    grid[:, :, :g] = np.reshape(full, (-1, tiling.passes, g))
    return grid


def _noise(design: _sampling.Design, tiling: _tiling.Tiling, key: int, ids: np.ndarray, block: int, p0: int,
           c0: int, sizes: list, stdevs: float) -> list:
    """The smoothing noise of one tile per input ``(k, P, G, F)``: sample ``j`` of a row takes
    numbers ``(block * n_samples + j) * F`` on of its stream, whatever the tiling."""
    g, n0 = design.columns, design.n_samples
    out = []
    for pos, size in enumerate(sizes):
        z = np.zeros((ids.size, tiling.passes, tiling.width, size))
        for p in range(tiling.passes):
            j0 = (p0 + p) * g + c0
            j1 = min((p0 + p) * g + min(c0 + tiling.width, g), n0)
            if j1 > j0:
                z[:, p, : j1 - j0] = np.reshape(_sampling.normals(
                    key, ids, (j1 - j0) * size, _sampling.STREAM_NOISE + pos, start=(block * n0 + j0) * size),
                    (ids.size, j1 - j0, size))
        out.append(stdevs * z)
    return out


# --------------------------------------------------------------------------- the chunk loop


def _attribute(adapter, xp, compile, x, background, cot_rows, gap, *, design, tiling, key, stdevs, compiled, bar,
               rtol=None, max_blocks=1, row_ids=None):
    """Values and standard errors per input ``(n, *f)``, samples used per row, and whether each met ``rtol``.

    Rows go in groups of the tiling's rows. Each group takes one block of
    ``design.n_samples`` samples per row; in adaptive mode the rows that have not met
    ``rtol`` take as many blocks again, until ``max_blocks``. ``gap``: each row's
    completeness target ``f(x) - base`` (adaptive mode checks the values' sum against it).
    Draws are keyed by ``row_ids`` (default: the rows' positions); positions index ``x``.
    """
    n, acc = x[0].shape[0], _accumulation_dtype(xp, x[0].dtype)
    device = _validation.device_of(xp, x[0])
    feat = [tuple(a.shape[1:]) for a in x]
    sizes = [math.prod(f) for f in feat]
    if n == 0:
        empty = [xp.full((0, *f), 0.0, dtype=acc, device=device) for f in feat]
        return [empty, empty, np.zeros(0, dtype=np.int64), np.ones(0, dtype=bool)]
    n0 = design.n_samples
    step, merge, estimate = compile(_chunk), compile(_merge), compile(_estimate)
    per_column = design.fixed_baselines and stdevs == 0
    nodes = design.kind == "rule" and design.columns > 1  # the error model reads the sums per node

    np_acc = np.float64 if xp.finfo(acc).bits == 64 else np.float32

    def host(a: np.ndarray, dtype=acc):
        """A small host array (indices, weights) as an argument: compiled steps take NumPy
        arrays as they are (JAX's and TensorFlow's conversion is much cheaper than an eager
        one placed on a device: about 0.5 ms each on JAX); eager ones take ``xp`` arrays."""
        if compiled:
            return np.asarray(a, dtype=np.int32 if dtype is xp.int64 else np_acc)
        return xp.asarray(a, dtype=dtype, device=device)

    def rows_of(ids: np.ndarray) -> list:
        if np.all(np.diff(ids) == 1):  # consecutive rows: a slice, a view
            return [a[int(ids[0]) : int(ids[-1]) + 1, ...] for a in (*x, cot_rows)]
        at = host(ids, xp.int64)
        return [xp.take(a, at, axis=0) for a in (*x, cot_rows)]

    def padded(m: int) -> np.ndarray:
        """Positions of ``m`` rows in a chunk: repeated up to the chunk's rows where it compiles."""
        return np.arange(_tiling.rows_per_chunk(tiling, m, compiled=compiled)) % m

    g = design.columns

    def tiles_at(p0: int) -> list:
        """The tiles from pass ``p0``: the samples they cover, and per column group its
        columns, the weights per column, the points that count, and the weights as arguments."""
        j0, j1 = p0 * g, min(n0, (p0 + tiling.passes) * g)
        weight = _layout(design.weights(j0, j1)[None, :], design, tiling, 0.0)[0]
        tiles = []
        for group in tiling.groups_at(p0):
            cut = slice(tiling.column_starts[group], tiling.column_starts[group] + tiling.width)
            w = weight[:, cut]
            tiles.append((group, cut, np.sum(w, axis=0), int(np.count_nonzero(w)), host(w[None, :, :, None]),
                          host(_ratio(1.0, np.sum(w, axis=0))[None, :, None])))
        return j0, j1, tiles

    models: dict = {}

    def estimate_of(stats: _Stats, blocks: int):
        if blocks not in models:
            factors, static = _error_model(design, np.concatenate(stats.weight)[: design.columns], blocks)
            models[blocks] = [host(np.reshape(f, (1, -1, 1))) for f in factors], static
        factors, static = models[blocks]
        sums = [stats.nodes[p0] for p0 in sorted(stats.nodes)] if static["nodes"] else None
        return estimate(xp, stats.mean, stats.m2, sums, *factors, columns=design.columns,
                        passes=-(-n0 // design.columns), between=static["between"], infinite=static["infinite"])

    # On the CPU each group's results go into host arrays that become the results without a
    # copy (:func:`gradshap._arrays.from_host`): small arrays kept alive between chunks fragment the C heap,
    # and joining them doubles the memory (peak memory grew 2.3-4x as fast as the results on
    # JAX's MLP; 1.0x so). TensorFlow (no ``from_dlpack``) keeps them on the device, and so
    # does a call of at most _IN_FLIGHT groups, where the copies would only add a wait.
    on_host = ("cpu" in str(device).lower() and (not compiled or hasattr(xp, "from_dlpack"))
               and n > _IN_FLIGHT * tiling.rows)
    buffers = [[_arrays.aligned_empty((n, s), np_acc) for s in sizes] for _ in range(2)] if on_host else None
    parts, used, met = [], np.zeros(n, dtype=np.int64), np.ones(n, dtype=bool)

    def drain(kept: int) -> None:
        """All parts but the last ``kept`` into the host buffers."""
        while len(parts) > kept:
            rows, values, errors, sel = parts.pop(0)
            for buffer, arrays in zip(buffers, (values, errors)):
                for pos, v in enumerate(arrays):
                    buffer[pos][rows] = np.from_dlpack(v)[sel]

    for r0 in range(0, n, tiling.rows):
        active = np.arange(r0, min(n, r0 + tiling.rows))
        ids = active[padded(active.size)]
        *x_rows, cot = rows_of(ids)
        stats = _Stats(xp, tiling, host, merge)
        blocks, new = 0, 1
        while True:
            for block in range(blocks, blocks + new):
                drawn = ids if row_ids is None else row_ids[ids]  # the draws' keys; ids: positions
                for p0 in tiling.pass_starts:  # drawn a tile's passes at a time: memory O(chunk)
                    j0, j1, tiles = tiles_at(p0)
                    index, alpha, _ = _sampling.draw(design, key, drawn, block, j0, j1, positions=ids)
                    index, alpha = _layout(index, design, tiling, 0), _layout(alpha, design, tiling, 0.5)
                    for group, cut, w_column, count, w, inv_w in tiles:
                        noise = None
                        if stdevs > 0:
                            c0 = tiling.column_starts[group]
                            noise = [host(z) for z in _noise(design, tiling, key, drawn, block, p0, c0, sizes, stdevs)]
                        means, m2s, sums = step(xp, x_rows, background, cot, host(index[:, :, cut], xp.int64),
                                                host(alpha[:, :, cut]), w, inv_w, noise,
                                                per_column=per_column, nodes=nodes)
                        stats.add(group, p0, w_column, means, m2s, sums)
                        if bar is not None:
                            bar.update(active.size * count)
            blocks += new
            values, var, errors = estimate_of(stats, blocks)
            ok = np.ones(active.size, dtype=bool)
            if rtol is not None:
                ok = _converged(xp, values, var, gap, active, rtol, stdevs)
            done = ok | (rtol is None or 2 * blocks > max_blocks)
            sel = np.flatnonzero(done)
            used[active[sel]], met[active[sel]] = blocks * n0, ok[sel]
            if sel.size:
                parts.append((active[sel], values, errors, sel))
            if buffers is not None:
                drain(_IN_FLIGHT)
            if sel.size == active.size:
                break
            keep = np.flatnonzero(~done)
            active, new = active[keep], blocks  # double the samples of the rows still going
            positions = keep[padded(keep.size)]
            ids = ids[positions]
            stats.keep(host(positions, xp.int64))
            *x_rows, cot = rows_of(ids)
    if buffers is not None:
        drain(0)
        return [[_arrays.from_host(xp, np.reshape(b, (n, *f)), device) for b, f in zip(buffer, feat)]
                for buffer in buffers] + [used, met]
    # Each row's place in the parts joined end to end; one gather puts them in order.
    starts = np.cumsum([0] + [p[1][0].shape[0] for p in parts])
    where = np.empty(n, dtype=np.int64)
    for (rows, _, _, sel), start in zip(parts, starts):
        where[rows] = start + sel
    at = None if np.array_equal(where, np.arange(n)) and starts[-1] == n else host(where, xp.int64)

    def joined(which: int, pos: int):
        whole = xp.concat([p[which][pos] for p in parts], axis=0) if len(parts) > 1 else parts[0][which][pos]
        return xp.reshape(whole if at is None else xp.take(whole, at, axis=0), (n, *feat[pos]))

    return [[joined(which, pos) for pos in range(len(x))] for which in (1, 2)] + [used, met]


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


def _host(a) -> np.ndarray:
    return np.asarray(_validation.to_numpy(a), dtype=np.float64)


# --------------------------------------------------------------------------- outputs and run


def _outputs(adapter: Adapter, xp, inputs: tuple, batch: int, compiled: bool):
    """The model's outputs at ``inputs``, in chunks of at most ``batch`` rows; where the
    adapter compiles, a short chunk is padded with copies of its rows to a power of two (few
    shapes). An output that is not one array (a tuple, a dict) is returned as it is, for the
    caller to use or to refuse (:func:`gradshap._targets.as_matrix` says what to do)."""
    n = inputs[0].shape[0]
    outs = []
    for r0 in range(0, n, batch):
        part = tuple(a[r0 : min(n, r0 + batch), ...] for a in inputs) if n > batch else inputs
        m = part[0].shape[0]
        size = min(batch, 1 << (m - 1).bit_length()) if compiled else m
        if size != m:
            at = xp.asarray(np.arange(size) % m, device=_validation.device_of(xp, part[0]))
            part = tuple(xp.take(a, at, axis=0) for a in part)
        out = adapter.forward(part)
        if isinstance(out, (tuple, list, dict)) or not hasattr(out, "ndim"):
            return out
        outs.append(out[:m, ...] if size != m else out)
    return outs[0] if len(outs) == 1 else xp.concat(outs, axis=0)


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
    compose: Callable | None = None,
    row_ids: Any = None,
) -> Result:
    """Validate, then explain ``x`` against ``background`` through ``adapter``.

    ``sampler`` may also be a :class:`gradshap._sampling.Design` (Integrated Gradients
    passes its quadrature rule this way). With ``rtol``, each row gets blocks of
    ``n_samples`` samples, doubling, until its standard error is at most ``rtol`` times
    the norm of its values (and, without smoothing, so is its completeness residual),
    or until ``max_samples``; ``Result.n_samples`` then holds the samples used per row.
    ``compose(fn)``: the adapter followed by a callable target (:func:`gradshap.backends.composer`).
    ``row_ids``: one distinct non-negative id per row (default ``arange(n)``); every draw
    is keyed by (seed, row id), so any partition of a dataset gives one call's numbers.
    """
    with _state.explaining(adapter):  # entered first: validation reads the inputs too
        n_samples = _validation.check_positive_int(n_samples, "n_samples")
        stdevs = _validation.check_nonnegative_float(stdevs, "stdevs")
        progress = _validation.check_bool(progress, "progress")
        xp = _validation.namespace_of(x + background, "x") if xp is None else xp
        _validation.check_arrays(xp, x, background)
        device = _validation.device_of(xp, x[0])
        native = _validation.own_arrays(adapter, xp, x + background)
        compiled = adapter.compiles and native
        if batch_size is None:
            feature_size = sum(math.prod(a.shape[1:]) for a in x)
            batch_size = _tiling.default_batch_size(feature_size, device=device, compiled=compiled)
        batch_size = _validation.check_positive_int(batch_size, "batch_size")
        n, nb = x[0].shape[0], background[0].shape[0]
        design = sampler if isinstance(sampler, _sampling.Design) else _sampling.plan(sampler, n_samples, nb)
        rtol, max_blocks = _validation.check_adaptive(rtol, max_samples, n_samples, design)
        composed = callable(target) and not isinstance(target, (str, type))
        if composed:
            adapter, target = (compose or adapter.compose)(target), None
        # The framework's compiled steps where the inputs are its own arrays; else eager ones
        # (Keras with NumPy inputs converts at each VJP).
        compile = adapter.compile if native else Adapter.compile.__get__(adapter)
        seed = _sampling.resolve_seed(seed)
        key = _sampling.seed_key(seed)
        row_ids = _validation.check_row_ids(row_ids, n)
        what = "the output of the callable `target`" if composed else "the model's output"
        # No rows: an empty result (a partition of a dataset may be empty), the model not called at x.
        out_x = _targets.as_matrix(xp, _outputs(adapter, xp, x, batch_size, compiled), n, what) if n else None
        what = f"{what} on `background`"
        out_b = _targets.as_matrix(xp, _outputs(adapter, xp, background, batch_size, compiled), nb, what)
        out_x = out_b[:0, ...] if out_x is None else out_x
        _check_deterministic(adapter, xp, background, out_b, batch_size, compiled)
        if composed and out_x.shape[1] != 1:
            msg = (f"the callable `target` must return one scalar per row, shape ({n},); it returned "
                   f"{_validation.shape_str((n, out_x.shape[1]))}")
            raise ValueError(msg)
        acc = _accumulation_dtype(xp, out_x.dtype)
        out_x, out_b = xp.astype(out_x, acc, copy=False), xp.astype(out_b, acc, copy=False)
        # Per-row baselines (Integrated Gradients) compare with their own baseline.
        ref_b = out_b if design.paired else xp.expand_dims(xp.mean(out_b, axis=0), axis=0)
        selection = _targets.select(xp, target, out_x, dtype=x[0].dtype)
        bar = _progress_bar(progress, n * design.n_samples * len(selection.cotangents) if rtol is None else None)
        finish = compile(_finish)
        per_target = []
        try:
            for cot in selection.cotangents:
                gap = None
                if rtol is not None:
                    cot_acc = xp.astype(cot, acc, copy=False)
                    gap = _selected(xp, out_x, cot_acc) - _selected(xp, ref_b, cot_acc)
                while True:
                    try:
                        tiling = _tiling.plan(design.n_samples, design.columns, batch_size)
                        vals, errs, used, met = _attribute(
                            adapter, xp, compile, x, background, cot, gap, design=design, tiling=tiling, key=key,
                            stdevs=stdevs, compiled=compiled, bar=bar, rtol=rtol, max_blocks=max_blocks,
                            row_ids=row_ids)
                        break
                    except Exception as err:
                        if batch_size == 1 or not adapter.is_out_of_memory(err):
                            raise
                        # Draws do not depend on the tiling: a smaller batch gives the same numbers.
                        batch_size //= 2
                        warnings.warn(f"gradshap: out of device memory; retrying with batch_size={batch_size}",
                                      ResourceWarning, stacklevel=3)
                        if bar is not None:
                            bar.reset()
                base, output, delta = finish(xp, vals, out_x, ref_b, cot)
                _validation.check_finite(xp, vals, output, base, delta, out_b, cot, paired=design.paired)
                per_target.append((vals, errs, base, output, delta, used, met))
        finally:
            if bar is not None:
                bar.close()
        if rtol is not None:
            _validation.warn_unconverged([t[6] for t in per_target], rtol, max_blocks * n_samples)
        many, dtype = selection.many, x[0].dtype
        values, stderr = (tuple(xp.astype(_stack(xp, [t[i][pos] for t in per_target], many), dtype, copy=False)
                                for pos in range(len(x))) for i in (0, 1))
        base, output, delta = (_stack(xp, [t[i] for t in per_target], many) for i in (2, 3, 4))
        used = design.n_samples
        if rtol is not None:
            used = np.stack([t[5] for t in per_target], axis=-1) if many else per_target[0][5]
        return Result(values, stderr, base, output, delta, selection.label, design.name, used, seed, row_ids)


def _check_deterministic(adapter: Adapter, xp, background: tuple, out_b, batch: int, compiled: bool) -> None:
    """The model's outputs on the first background rows again (the first chunk's shape: nothing
    new to compile) must be the first pass's: :func:`gradshap._validation.check_deterministic`."""
    m = min(background[0].shape[0], batch)
    again = _targets.as_matrix(xp, _outputs(adapter, xp, tuple(a[:m, ...] for a in background), batch, compiled), m)
    _validation.check_deterministic(xp, out_b[:m, ...], again)


def _stack(xp, arrays: list, many: bool):
    return xp.stack(arrays, axis=-1) if many else arrays[0]


def _progress_bar(progress: bool, total: int | None):
    if not progress:
        return None
    tqdm = require("tqdm", "plots")
    return tqdm.tqdm(total=total, unit="grad", desc="gradshap", dynamic_ncols=True)
