"""The one Expected Gradients engine: plan -> points -> chunked VJP -> running sums -> result.

Written against the Python array API. For input row ``r`` and sample ``j`` the sampler
gives a background index ``b`` and an ``alpha``; the point explained is
``b + alpha * (x - b)`` and the sample's contribution is ``(x - b) * grad f(point)``.
Chunks are rectangles of (rows x samples) with at most ``batch_size`` points, so the
per-row mean and spread come from axis reductions, never from boolean masks or
value-dependent shapes; block statistics merge with Chan's formula. Accumulation is
in the input's dtype, or float32 for half-precision inputs.
"""

from __future__ import annotations

import contextlib
import math
import random
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from gradshap import _sampling, _targets, _validation
from gradshap.backends import Adapter

__all__ = ["Result", "default_batch_size", "expected_gradients", "run"]

# Points per chunk aim at this many input elements; clamped to [_MIN_BATCH, _MAX_BATCH].
# Accelerators want large chunks. On CPU a chunk whose activations stay in cache is
# faster (measured in benchmarks/: the small CNN ran 1.7x slower at 2**20 elements than
# at 2**17); a compiled step (JAX) costs a dispatch per chunk, so it takes twice more.
_ELEMENTS_PER_CHUNK = 2**20
_ELEMENTS_PER_CHUNK_CPU = 2**17
_MIN_BATCH, _MAX_BATCH = 64, 8192
# Most (baseline, alpha) pairs the host draws in one call (16 bytes each), and how many
# chunks' worth it draws at once below that.
_DRAWS_PER_CALL = 2**16
_CHUNKS_PER_DRAW = 4


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
    n_samples: int


def _accumulation_dtype(xp, dtype):
    return dtype if xp.finfo(dtype).bits >= 32 else xp.float32


def _pad(xp, arrays: tuple, size: int) -> tuple:
    """Rows repeated up to ``size`` (for frameworks that compile once per shape)."""
    m = arrays[0].shape[0]
    if m == size:
        return arrays
    idx = xp.asarray(np.arange(size) % m, device=_validation.device_of(xp, arrays[0]))
    return tuple(xp.take(a, idx, axis=0) for a in arrays)


def _forward(adapter: Adapter, xp, inputs: tuple, batch: int):
    """Model outputs over ``inputs`` in chunks of ``batch`` rows.

    A padding adapter compiles once per shape: a short last chunk is padded to the next
    power of two (not to ``batch``), so the forward pass for a few rows stays cheap and
    the number of shapes stays small.
    """
    n = inputs[0].shape[0]
    outs = []
    for r0 in range(0, n, batch):
        part = tuple(a[r0 : min(n, r0 + batch), ...] for a in inputs)
        m = part[0].shape[0]
        if adapter.pads:
            part = _pad(xp, part, min(batch, 1 << (m - 1).bit_length()))
        outs.append(adapter.forward(part)[:m, ...])
    return outs[0] if len(outs) == 1 else xp.concat(outs, axis=0)


def _block_stats(xp, contributions: list) -> tuple[list, list]:
    """Per-row mean and sum of squared deviations over the sample axis (axis 1)."""
    means = [xp.mean(g, axis=1) for g in contributions]
    m2s = [xp.sum((g - xp.expand_dims(mu, axis=1)) ** 2, axis=1) for g, mu in zip(contributions, means)]
    return means, m2s


class _Stats:
    """Per-row mean and sum of squared deviations, merged block by block (Chan et al.)."""

    def __init__(self):
        self.count = 0
        self.mean: list = []
        self.m2: list = []

    def merge(self, means: list, m2s: list, s: int) -> None:
        if self.count == 0:
            self.mean, self.m2 = list(means), list(m2s)
        else:
            total = self.count + s
            for k, (mu, m2) in enumerate(zip(means, m2s)):
                d = mu - self.mean[k]
                self.mean[k] = self.mean[k] + d * (s / total)
                self.m2[k] = self.m2[k] + m2 + d * d * (self.count * s / total)
        self.count += s


def _chunk(xp, value_and_grad, x_block, background, index, alpha, cot, noise):
    """One rectangle of k rows x s samples -> per-row block mean and M2 of the contributions.

    Pure array code with shapes fixed by its arguments, so that an adapter can compile it
    whole (:meth:`Adapter.fuse`): interpolation, the model's VJP, the multiply and the
    reductions then run as one program, with no eager op dispatched per chunk.

    ``x_block``: per input ``(k, *f)``; ``background``: per input ``(B, *f)``; ``index``,
    ``alpha``: ``(k, s)``, ``alpha`` in the accumulation dtype; ``cot``: ``(k, K)``; ``noise``:
    ``None`` or per input ``(k, s, *f)`` (already scaled by ``stdevs``).
    """
    k, s = index.shape
    acc = alpha.dtype
    flat_index = xp.reshape(index, (k * s,))
    points, diffs = [], []
    for pos, (xb, bg) in enumerate(zip(x_block, background)):
        fshape = tuple(bg.shape[1:])
        xr = xp.expand_dims(xp.astype(xb, acc, copy=False), axis=1)
        base = xp.reshape(xp.astype(xp.take(bg, flat_index, axis=0), acc, copy=False), (k, s, *fshape))
        if noise is not None:
            xr = xr + noise[pos]
        diff = xr - base
        a = xp.reshape(alpha, (k, s) + (1,) * len(fshape))
        points.append(xp.astype(xp.reshape(base + a * diff, (k * s, *fshape)), bg.dtype, copy=False))
        diffs.append(diff)
    n_out = cot.shape[1]
    cots = xp.reshape(xp.broadcast_to(xp.expand_dims(cot, axis=1), (k, s, n_out)), (k * s, n_out))
    _, grads = value_and_grad(tuple(points), cots)
    contributions = [d * xp.reshape(xp.astype(g, d.dtype, copy=False), d.shape) for d, g in zip(diffs, grads)]
    return _block_stats(xp, contributions)


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


def _pad_rows(a: np.ndarray, size: int) -> np.ndarray:
    return a if a.shape[0] == size else a[np.arange(size) % a.shape[0]]


def _attribute(adapter, xp, x, background, cot_rows, *, sampler, n_samples, stdevs, key, batch_size, bar):
    """Values and standard errors for one target; lists of arrays per input."""
    n, nb = x[0].shape[0], background[0].shape[0]
    dtype = x[0].dtype
    acc = _accumulation_dtype(xp, dtype)
    device = _validation.device_of(xp, x[0])
    feat = [tuple(a.shape[1:]) for a in x]
    sizes = [math.prod(f) for f in feat]
    k_rows, s_size = _plan(n_samples, batch_size, equal=adapter.pads)
    step = adapter.fuse(_chunk)
    # The host draws for several row blocks in one vectorised call: about
    # _CHUNKS_PER_DRAW chunks' worth of pairs, so that its memory too is set by
    # batch_size. Draws are per row, so the grouping changes no number.
    draw_pairs = min(_DRAWS_PER_CALL, _CHUNKS_PER_DRAW * batch_size)
    draw_rows = k_rows * max(1, draw_pairs // (k_rows * n_samples))
    values, m2 = [[] for _ in x], [[] for _ in x]
    # On CPU an eager framework's per-row results go straight into one host buffer: small
    # arrays kept alive between chunks fragment the C heap, and peak memory then grew with
    # the number of rows (torch MLP: 1.9x at 4x rows; 1.1x with the buffer). Compiling
    # adapters keep them on device, where reading them back would stall the pipeline.
    host = None
    if "cpu" in str(device).lower() and not adapter.pads and n > k_rows:
        np_dtype = np.float64 if xp.finfo(acc).bits == 64 else np.float32
        host = tuple([np.empty((n, *f), dtype=np_dtype) for f in feat] for _ in range(2))
    for r0 in range(0, n, k_rows):
        r1 = min(n, r0 + k_rows)
        k = r1 - r0
        # A padding adapter sees every block with k_rows rows (rows are independent, so the
        # repeated rows only cost time and are dropped after); samples are never padded.
        k_run = min(k_rows, n) if adapter.pads else k
        rows = np.arange(r0, r1)
        if r0 % draw_rows == 0:
            d0 = r0
            drawn = _sampling.draw(sampler, key, np.arange(r0, min(n, r0 + draw_rows)), n_samples, nb)
        index, alpha = (a[r0 - d0 : r1 - d0] for a in drawn)
        index = xp.asarray(_pad_rows(index, k_run), device=device)
        alpha = xp.asarray(_pad_rows(alpha, k_run), dtype=acc, device=device)
        # Whole arrays are passed unsliced: with a compiling adapter each eager op costs a dispatch.
        x_block, cot = (x, cot_rows) if k == n else (tuple(a[r0:r1, ...] for a in x), cot_rows[r0:r1, ...])
        if k_run != k:
            *x_block, cot = _pad(xp, (*x_block, cot), k_run)
        stats = _Stats()
        for s0 in range(0, n_samples, s_size):
            s1 = min(n_samples, s0 + s_size)
            s = s1 - s0
            noise = None
            if stdevs > 0:
                noise = tuple(
                    xp.asarray(
                        stdevs * _pad_rows(np.reshape(
                            _sampling.normals(key, rows, s * size, _sampling.STREAM_NOISE + pos, start=s0 * size),
                            (k, s, *fshape)), k_run),
                        dtype=acc, device=device,
                    )
                    for pos, (fshape, size) in enumerate(zip(feat, sizes))
                )
            index_s, alpha_s = (index, alpha) if s == n_samples else (index[:, s0:s1], alpha[:, s0:s1])
            means, m2s = step(xp, tuple(x_block), background, index_s, alpha_s, cot, noise)
            if k_run != k:
                means, m2s = [mu[:k, ...] for mu in means], [v[:k, ...] for v in m2s]
            stats.merge(means, m2s, s)
            if bar is not None:
                bar.update(k * s)
        for pos in range(len(x)):
            if host is not None:
                host[0][pos][r0:r1] = np.from_dlpack(stats.mean[pos])
                host[1][pos][r0:r1] = np.from_dlpack(stats.m2[pos])
            else:
                values[pos].append(stats.mean[pos])
                m2[pos].append(stats.m2[pos])
    if host is not None:
        values = [xp.asarray(v, device=device) for v in host[0]]
        m2 = [xp.asarray(v, device=device) for v in host[1]]
    else:
        values = [v[0] if len(v) == 1 else xp.concat(v, axis=0) for v in values]
        m2 = [v[0] if len(v) == 1 else xp.concat(v, axis=0) for v in m2]
    if n_samples > 1:
        stderr = [xp.sqrt(v / (n_samples * (n_samples - 1))) for v in m2]
    else:
        stderr = [xp.full(v.shape, math.inf, dtype=acc, device=device) for v in m2]
    return values, stderr


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


def run(
    adapter: Adapter,
    x: tuple,
    background: tuple,
    *,
    target: Any = None,
    n_samples: int = 200,
    sampler: str = "auto",
    stdevs: float = 0.0,
    seed: Any = None,
    batch_size: int | None = None,
    progress: bool = False,
    xp: Any = None,
) -> Result:
    """Validate, then explain ``x`` against ``background`` through ``adapter``."""
    n_samples = _validation.check_positive_int(n_samples, "n_samples")
    stdevs = _validation.check_nonnegative_float(stdevs, "stdevs")
    if not isinstance(sampler, str):
        msg = f"`sampler` must be one of {', '.join(map(repr, _sampling.SAMPLERS))}; got {sampler!r}"
        raise TypeError(msg)
    xp = _validation.namespace_of(x + background, "x") if xp is None else xp
    _validation.check_arrays(xp, x, background)
    feature_size = sum(math.prod(a.shape[1:]) for a in x)
    if batch_size is None:
        batch_size = default_batch_size(feature_size, device=_validation.device_of(xp, x[0]), compiled=adapter.pads)
    batch_size = _validation.check_positive_int(batch_size, "batch_size")
    concrete = _sampling.resolve(sampler, n_samples, background[0].shape[0])
    key = _sampling.seed_key(seed)
    if callable(target) and not isinstance(target, (str, type)):
        adapter, target = adapter.compose(target), None
    n = x[0].shape[0]
    with _global_rng_guard(), adapter.session():
        out_x = _targets.as_matrix(xp, _forward(adapter, xp, x, batch_size), n)
        out_b = _targets.as_matrix(xp, _forward(adapter, xp, background, batch_size), background[0].shape[0],
                                   "the model's output on `background`")
        acc = _accumulation_dtype(xp, out_x.dtype)
        out_x = xp.astype(out_x, acc, copy=False)
        mean_b = xp.mean(xp.astype(out_b, acc, copy=False), axis=0)
        selection = _targets.select(xp, target, out_x, dtype=x[0].dtype)
        bar = _progress_bar(progress, n * n_samples * len(selection.cotangents))
        try:
            per_target = []
            for cot in selection.cotangents:
                while True:
                    try:
                        vals, errs = _attribute(
                            adapter, xp, x, background, cot, sampler=concrete, n_samples=n_samples,
                            stdevs=stdevs, key=key, batch_size=batch_size, bar=bar,
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
                _check_gradients(xp, vals, "the selected target")
                cot_acc = xp.astype(cot, acc, copy=False)
                output = xp.sum(out_x * cot_acc, axis=1)
                base = xp.sum(xp.expand_dims(mean_b, axis=0) * cot_acc, axis=1)
                total = sum(xp.sum(xp.reshape(xp.astype(v, acc, copy=False), (n, -1)), axis=1) for v in vals)
                per_target.append((vals, errs, base, output, total - (output - base)))
        finally:
            if bar is not None:
                bar.close()
    many = selection.many
    dtype = x[0].dtype
    values = tuple(
        xp.astype(_stack(xp, [t[0][pos] for t in per_target], many), dtype, copy=False) for pos in range(len(x))
    )
    stderr = tuple(
        xp.astype(_stack(xp, [t[1][pos] for t in per_target], many), dtype, copy=False) for pos in range(len(x))
    )
    base, output, delta = (_stack(xp, [t[i] for t in per_target], many) for i in (2, 3, 4))
    return Result(values, stderr, base, output, delta, selection.label, concrete, n_samples)


@contextlib.contextmanager
def _global_rng_guard():
    """Python's and NumPy's global RNG states as found, whatever the model does with them."""
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


def _progress_bar(progress: bool, total: int):
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
    n_samples, sampler, stdevs, seed, batch_size, progress
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
        seed=seed, batch_size=batch_size, progress=progress, xp=xp,
    )
    return Explanation.from_result(result, data=x, many_inputs=isinstance(x, (tuple, list)))
