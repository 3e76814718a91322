"""Sampling designs: for each input row, the samples (baseline index, alpha, weight).

Randomness is counter-based. Every number is a hash of ``(key, row, stream, column)``,
so the draws for row ``r`` do not depend on which other rows are explained with it,
on ``batch_size``, on chunking, on the device or on the framework. The hash is
SplitMix64's finaliser, vectorised in NumPy on the host; the arrays it makes are
small (rows x samples) and are moved to the model's device once per chunk.

Layout
------
A design lays one block of ``n_samples`` samples out over ``columns`` columns: sample
``j`` belongs to column ``j % columns`` (pass ``j // columns``), so the first
``n_samples % columns`` columns hold one sample more than the others. The engine keeps a
weighted mean and spread per column, and the estimate is the average of the column means.

- ``iid``: one column; baselines and alphas i.i.d. uniform (the anchors' design).
- ``balanced``: one column per background row (a random permutation of the background),
  so every row is used ``floor(n/|B|)`` or ``ceil(n/|B|)`` times and weighs exactly
  ``1/|B|``; alphas are a Latin hypercube across the columns of each pass, i.i.d. within
  a column. With fewer samples than background rows: one column, baselines drawn
  without replacement.
- ``lattice``: the columns of ``balanced``; within a column of ``m`` samples the alphas
  are a randomly shifted lattice ``(p + shift) / m``, with the shifts of the columns
  stratified over (0, 1). The design ``auto`` stands for.
- ``sobol``: the textbook randomized quasi-Monte Carlo design: ``R`` independent
  scrambled 2-D Sobol sequences (linear matrix scramble and digital shift), the first
  coordinate choosing the background row, the second giving alpha; one column per
  sequence.
- ``exhaustive``: deterministic; every background row with the same Gauss-Legendre rule
  of ``m = floor(n/|B|)`` nodes (``m |B|`` samples).

Standard errors (see ``docs/accuracy.md``): within a column of the stratified designs
the spread of the samples becomes the variance of the column mean through the error
model of :mod:`gradshap._quadrature` (exact for i.i.d. alphas); ``sobol`` uses the spread
between its independent replicates.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field

import numpy as np

from gradshap import _quadrature

__all__ = [
    "SAMPLERS",
    "STREAM_NOISE",
    "Design",
    "draw",
    "normals",
    "plan",
    "samples",
    "rule_design",
    "seed_key",
    "uniforms",
]

#: Every sampler name the public API accepts.
SAMPLERS = ("auto", "iid", "balanced", "lattice", "sobol", "exhaustive")

#: Designs that can grow by doubling (adaptive mode).
EXTENSIBLE = ("iid", "balanced", "lattice", "sobol")

#: Independent Sobol sequences of the ``sobol`` design.
SOBOL_REPLICATES = 8

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)

# Independent streams of the hash, one per use.
_STREAM_INDEX = 1
_STREAM_ALPHA = 2
_STREAM_PERM_BASELINE = 3
_STREAM_PERM_STRATUM = 4
_STREAM_SHIFT = 5
_STREAM_PERM_SHIFT = 6
STREAM_NOISE = 16  # input k of a model uses streams around 2 * (STREAM_NOISE + k)
_STREAM_SOBOL = 1 << 20  # replicate rho uses 4 streams from _STREAM_SOBOL + 4 * rho


def _mix(z: np.ndarray) -> np.ndarray:
    if not isinstance(z, np.ndarray) or z.ndim == 0:
        z = z ^ (z >> np.uint64(30))
        z = z * _M1
        z = z ^ (z >> np.uint64(27))
        z = z * _M2
        return z ^ (z >> np.uint64(31))
    z = z ^ (z >> np.uint64(30))  # a new array; then in place, one buffer for all steps
    z *= _M1
    z ^= z >> np.uint64(27)
    z *= _M2
    z ^= z >> np.uint64(31)
    return z


def seed_key(seed: int | np.random.Generator | None) -> int:
    """A 64-bit key from ``seed``. ``None`` takes fresh OS entropy, never a global RNG."""
    if seed is None:
        return int(np.random.SeedSequence().generate_state(1, np.uint64)[0])
    if isinstance(seed, np.random.Generator):
        # Advances the caller's generator, as any use of a passed Generator does.
        return int(seed.integers(0, 2**64 - 1, dtype=np.uint64, endpoint=True))
    is_int = isinstance(seed, numbers.Integral) and not isinstance(seed, bool)
    if is_int and seed >= 0:
        return int(np.random.SeedSequence(int(seed)).generate_state(1, np.uint64)[0])
    msg = (
        "`seed` must be None, a non-negative int or a numpy.random.Generator; "
        f"got {seed!r} of type {type(seed).__name__}"
    )
    if is_int:
        raise ValueError(msg)
    raise TypeError(msg)


def _subkey(key: int, *parts: int) -> int:
    """A key for a sub-stream (a block, a pass), independent of ``key``'s other streams."""
    z = np.uint64(key)
    with np.errstate(over="ignore"):
        for part in parts:
            z = _mix(z ^ _mix(np.uint64(part) * _GOLDEN + _M1))
    return int(z)


def _words(key: int, rows: np.ndarray, n: int, stream: int, start: int = 0) -> np.ndarray:
    """Random 64-bit words, shape ``(len(rows), n)``; column ``j`` is word ``start + j``."""
    rows = np.asarray(rows, dtype=np.uint64).reshape(-1)
    cols = np.arange(start + 1, start + n + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        row_state = _mix(np.uint64(key) ^ _mix(rows * _GOLDEN + np.uint64(stream) * _M2))
        return _mix(row_state[:, None] + cols[None, :] * _GOLDEN)


def uniforms(key: int, rows: np.ndarray, n: int, stream: int, start: int = 0) -> np.ndarray:
    """Uniform numbers in (0, 1), shape ``(len(rows), n)``, float64.

    Column ``j`` of the result is number ``start + j`` of the row's stream, so a
    slice of columns can be made without making the columns before it.
    """
    bits = _words(key, rows, n, stream, start)
    return ((bits >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53


def normals(key: int, rows: np.ndarray, n: int, stream: int, start: int = 0) -> np.ndarray:
    """Standard normal numbers, shape ``(len(rows), n)``, float64 (Box-Muller)."""
    u1 = uniforms(key, rows, n, 2 * stream, start)
    u2 = uniforms(key, rows, n, 2 * stream + 1, start)
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)


# Permutations of fewer elements than this are made whole (an argsort of uniforms, exactly
# uniform); larger ones are evaluated entry by entry (a keyed Feistel network), so that a
# few entries of a permutation of a large background cost O(1) each, not O(n log n).
_WHOLE_PERMUTATION = 256
_FEISTEL_ROUNDS = 6


def _permuted(key: int, rows: np.ndarray, positions: np.ndarray, n: int, stream: int) -> np.ndarray:
    """Entries ``positions`` (``(s,)``, each in ``range(n)``) of a random permutation of
    ``range(n)`` per row: ``(len(rows), s)`` int64.

    Large permutations are never built: a Feistel network keyed per row permutes the
    integers below the smallest even power of two that holds ``n``, and an entry that lands
    at or past ``n`` is permuted again until it falls inside (cycle walking: fewer than four
    rounds of it on average), which keeps it a bijection of ``range(n)``.
    """
    rows = np.asarray(rows, dtype=np.uint64).reshape(-1)
    positions = np.asarray(positions, dtype=np.int64).reshape(-1)
    if n <= _WHOLE_PERMUTATION:
        order = np.argsort(uniforms(key, rows, n, stream), axis=1)
        return order[:, positions].astype(np.int64, copy=False)
    half = ((n - 1).bit_length() + 1) // 2
    mask = np.uint64((1 << half) - 1)
    with np.errstate(over="ignore"):
        row_key = _mix(np.uint64(key) ^ _mix(rows * _GOLDEN + np.uint64(stream) * _M2))
        round_keys = np.stack([_mix(row_key + np.uint64(r + 1) * _M1) for r in range(_FEISTEL_ROUNDS)], axis=1)

        def feistel(v: np.ndarray, keys: np.ndarray) -> np.ndarray:
            for r in range(_FEISTEL_ROUNDS):
                left, right = v >> np.uint64(half), v & mask
                v = (right << np.uint64(half)) | (left ^ (_mix(keys[..., r] ^ (right * _GOLDEN)) & mask))
            return v

        out = feistel(np.broadcast_to(positions.astype(np.uint64), (rows.size, positions.size)),
                      round_keys[:, None, :])
        outside = np.nonzero(out >= np.uint64(n))
        while outside[0].size:
            out[outside] = feistel(out[outside], round_keys[outside[0]])
            outside = tuple(a[out[outside] >= np.uint64(n)] for a in outside)
    return out.astype(np.int64)


def _radical_inverse(i: int) -> float:
    """Van der Corput: the base-2 digits of ``i`` mirrored behind the binary point."""
    out, scale = 0.0, 0.5
    while i:
        out += scale * (i & 1)
        i >>= 1
        scale *= 0.5
    return out


# --------------------------------------------------------------------------- designs


@dataclass(frozen=True)
class Design:
    """A concrete sampling design for one block of ``n_samples`` samples per row.

    ``kind`` sets the error model of a column: ``"iid"`` (exact for i.i.d. alphas),
    ``"lattice"`` (a randomly shifted lattice), ``"rule"`` (a deterministic rule; its
    constants come from :func:`gradshap._quadrature.jump_constants`), or ``"replicates"``
    (columns are independent replicate estimates).
    """

    name: str
    n_samples: int
    n_background: int
    columns: int
    kind: str
    rules: dict = field(default_factory=dict)  # count -> (nodes, weights) for kind "rule"
    paired: bool = False  # row r uses background row r (Integrated Gradients per-row baselines)

    @property
    def counts(self) -> np.ndarray:
        """Samples per column in one block."""
        q, r = divmod(self.n_samples, self.columns)
        return q + (np.arange(self.columns) < r).astype(np.int64)

    @property
    def fixed_baselines(self) -> bool:
        """Column ``c`` of a row uses one background row for all its samples, and every
        weight is 1 (``balanced`` and ``lattice`` with a column per background row)."""
        return self.name in ("balanced", "lattice") and self.columns == self.n_background > 1

    @property
    def extensible(self) -> bool:
        return self.name in EXTENSIBLE

    def weights(self, start: int, stop: int) -> np.ndarray:
        """Weight of each sample ``start..stop-1`` of a block, the same for every row."""
        if self.kind != "rule":
            return np.ones(stop - start)
        return self.rule_values(np.arange(start, stop), 1)

    def rule_values(self, j: np.ndarray, which: int) -> np.ndarray:
        """Node (``which=0``) or weight (``which=1``) of samples ``j`` of a rule design."""
        p, c = j // self.columns, j % self.columns
        m = self.counts[c]
        out = np.empty(j.shape)
        for size in np.unique(m):
            sel = m == size
            out[sel] = self.rules[int(size)][which][p[sel]]
        return out

    def estimate_weights(self) -> np.ndarray:
        """Weight of each sample of one block in the estimate, ``(n_samples,)``, summing to 1.

        The estimate is the average over the columns of each column's weighted mean.
        """
        w = self.weights(0, self.n_samples)
        col = np.arange(self.n_samples) % self.columns
        return w / np.bincount(col, weights=w, minlength=self.columns)[col] / self.columns

    def column_constants(self, blocks: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Error-model constants per column after ``blocks`` blocks: ``(A, B, A1)``.

        For a column with several samples, the variance of its mean is ``A / B`` times
        the weighted spread of its samples; a column with one sample borrows the
        per-sample variance of the others, and ``A1`` turns that into its variance.
        """
        n = self.counts * blocks
        if self.kind == "rule":
            sizes, where = np.unique(self.counts, return_inverse=True)
            pairs = np.array([_quadrature.jump_constants(*self.rules[int(m)]) for m in sizes])
            a, b = pairs[where, 0], pairs[where, 1]
            return a, b, a
        nf = n.astype(np.float64)
        if self.kind == "lattice":
            a, b = 1.0 / (6.0 * nf**2), (1.0 - 1.0 / nf**2) / 6.0
        else:
            a, b = 1.0 / (6.0 * nf), (1.0 - 1.0 / nf) / 6.0
        return a, b, np.full(n.shape, 1.0 / 6.0)


def _check_name(sampler) -> None:
    if isinstance(sampler, str) and sampler in SAMPLERS:
        return
    msg = f"`sampler` must be one of {', '.join(map(repr, SAMPLERS))}; got {sampler!r}"
    raise (ValueError if isinstance(sampler, str) else TypeError)(msg)


def plan(sampler: str, n_samples: int, n_background: int) -> Design:
    """The design for ``sampler`` at ``n_samples`` per row and ``n_background`` rows.

    ``auto`` is ``lattice``: on the models of ``benchmarks/convergence.py`` it had the
    smallest error, or one within noise of it, at every budget from 16 to 4096 gradient
    evaluations per row (2.6 to 13 times less than i.i.d. sampling from 200 on), and its
    standard error was never smaller than the observed error (``docs/accuracy.md``).
    """
    _check_name(sampler)
    n, nb = int(n_samples), int(n_background)
    name = "lattice" if sampler == "auto" else sampler
    if name == "iid":
        return Design("iid", n, nb, 1, "iid")
    if name in ("balanced", "lattice"):
        if n < nb:  # baselines without replacement: one column of distinct rows
            return Design(name, n, nb, 1, "iid")
        return Design(name, n, nb, nb, "iid" if name == "balanced" else "lattice")
    if name == "sobol":
        reps = max(1, min(SOBOL_REPLICATES, n // 2))
        return Design("sobol", n, nb, reps, "replicates")
    # exhaustive
    if n < nb:
        msg = (
            f"`sampler`='exhaustive' needs `n_samples` >= the number of background rows "
            f"({nb}): every background row gets at least one Gauss-Legendre node; got n_samples={n}"
        )
        raise ValueError(msg)
    # The same m-point rule for every row (the n - m |B| samples left over are not used), so the
    # part of the quadrature error common to all rows can be estimated (see the engine).
    m = n // nb
    return Design("exhaustive", m * nb, nb, nb, "rule", {m: _quadrature.gauss_legendre(m)})


def rule_design(method: str, n_steps: int, *, paired: bool) -> Design:
    """Integrated Gradients: one baseline per row and a deterministic rule in alpha."""
    return Design(method, n_steps, 1, 1, "rule", {n_steps: _quadrature.rule(method, n_steps)},
                  paired=paired)


# --------------------------------------------------------------------------- draws


def draw(design: Design, key: int, rows: np.ndarray, block: int, start: int, stop: int):
    """Samples ``start..stop-1`` of block ``block`` for input rows ``rows``.

    Returns baseline indices ``(k, s)`` int64, alphas ``(k, s)`` float64 and weights
    ``(s,)`` float64 (the same for every row).
    """
    rows = np.asarray(rows, dtype=np.int64)
    j = np.arange(start, stop)
    weights = design.weights(start, stop)
    kind = design.name
    if kind == "iid":
        offset = block * design.n_samples + start
        u = uniforms(key, rows, stop - start, _STREAM_INDEX, offset)
        index = np.minimum((u * design.n_background).astype(np.int64), design.n_background - 1)
        return index, uniforms(key, rows, stop - start, _STREAM_ALPHA, offset), weights
    if design.kind == "rule":
        shape = (rows.size, j.size)
        alpha = np.broadcast_to(design.rule_values(j, 0), shape).copy()
        if kind == "exhaustive":
            return np.broadcast_to(j % design.columns, shape).copy(), alpha, weights
        # Integrated Gradients: one baseline, or row r's own baseline.
        index = rows[:, None] if design.paired else np.zeros((1, 1), np.int64)
        return np.broadcast_to(index, shape).copy(), alpha, weights
    if kind == "sobol":
        return (*_sobol(design, key, rows, block, j), weights)
    if design.columns == 1:
        return (*_without_replacement(design, key, rows, block, j), weights)
    c, p = j % design.columns, j // design.columns
    if j.size >= design.columns:  # every column: the whole permutation, then one gather
        index = _permuted(key, rows, np.arange(design.columns), design.n_background, _STREAM_PERM_BASELINE)[:, c]
    else:
        index = _permuted(key, rows, c, design.n_background, _STREAM_PERM_BASELINE)
    if kind == "balanced":
        return index, _latin_passes(design, key, rows, block, j), weights
    # lattice: column c holds the points (p + v + shift_c) / m_c, v the radical inverse of
    # the block, so blocks 0..2^t-1 together form a lattice of 2^t m_c points.
    shift = _stratified_shifts(key, rows, design.columns)
    m = design.counts[c].astype(np.float64)
    # ``mod(a, m)`` for ``0 <= a < m + 1``: one subtraction where ``a >= m`` (exact there), not
    # NumPy's slow float mod.
    alpha = p + _radical_inverse(block) + shift[:, c]
    np.subtract(alpha, m, out=alpha, where=alpha >= m)
    alpha /= m
    return index, alpha, weights


def samples(sampler: str, key: int, rows: np.ndarray, n_samples: int, n_background: int):
    """Every sample of ``sampler`` for ``rows`` at this budget, for benchmarks and reference
    estimators: indices and alphas ``(k, n)``, and each sample's weight in the estimate ``(n,)``.
    """
    design = plan(sampler, n_samples, n_background)
    index, alpha, _ = draw(design, key, np.asarray(rows), 0, 0, design.n_samples)
    return index, alpha, design.estimate_weights()


def _stratified_shifts(key: int, rows: np.ndarray, n: int) -> np.ndarray:
    """One point per stratum of (0, 1), strata in random order: ``(k, n)``."""
    order = _permuted(key, rows, np.arange(n), n, _STREAM_PERM_SHIFT)
    return (order + uniforms(key, rows, n, _STREAM_SHIFT)) / n


def _latin_passes(design: Design, key: int, rows: np.ndarray, block: int, j: np.ndarray) -> np.ndarray:
    """``balanced`` alphas: a Latin hypercube over the columns of each pass."""
    g = design.columns
    alpha = np.empty((rows.size, j.size))
    for p in np.unique(j // g):
        width = min(g, design.n_samples - p * g)  # columns in this pass
        sub = _subkey(key, block, p)
        strata = _permuted(sub, rows, np.arange(width), width, _STREAM_PERM_STRATUM)
        values = (strata + uniforms(sub, rows, width, _STREAM_ALPHA)) / width
        where = j // g == p
        alpha[:, where] = values[:, j[where] % g]
    return alpha


def _without_replacement(design: Design, key: int, rows: np.ndarray, block: int, j: np.ndarray):
    """Fewer samples than background rows: distinct baselines, stratified alphas."""
    n, nb = design.n_samples, design.n_background
    index = _permuted(key, rows, (block * n + j) % nb, nb, _STREAM_PERM_BASELINE)
    if design.name == "lattice":
        shift = uniforms(key, rows, 1, _STREAM_SHIFT)
        return index, np.mod(j + _radical_inverse(block) + shift, n) / n
    sub = _subkey(key, block)
    strata = _permuted(sub, rows, j, n, _STREAM_PERM_STRATUM)
    return index, (strata + uniforms(sub, rows, j.size, _STREAM_ALPHA, int(j[0]))) / n


# --------------------------------------------------------------------------- Sobol

_BITS = 32


def _direction_numbers() -> np.ndarray:
    """Generator columns of the first two Sobol coordinates as 32-bit integers, ``(2, 32)``."""
    first = [1 << (_BITS - 1 - k) for k in range(_BITS)]  # van der Corput
    m = [1]
    for _ in range(1, _BITS):  # primitive polynomial x + 1: m_k = 2 m_{k-1} xor m_{k-1}
        m.append((m[-1] << 1) ^ m[-1])
    second = [m[k] << (_BITS - 1 - k) for k in range(_BITS)]
    return np.array([first, second], dtype=np.uint64)


_DIRECTIONS = _direction_numbers()


def _parity(x: np.ndarray) -> np.ndarray:
    for shift in (32, 16, 8, 4, 2, 1):
        x = x ^ (x >> np.uint64(shift))
    return x & np.uint64(1)


def _scrambled_directions(key: int, rows: np.ndarray, rho: int, dim: int) -> np.ndarray:
    """Direction numbers after a random lower-triangular binary matrix: ``(k, 32)``.

    Output digit ``i`` (bit ``31 - i``) is the parity of the input digits ``0..i`` picked
    by row ``i`` of the matrix, whose diagonal is one, so the net structure is kept.
    """
    words = _words(key, rows, _BITS, _STREAM_SOBOL + 4 * rho + dim)
    out = np.zeros((rows.size, _BITS), dtype=np.uint64)
    full = np.uint64((1 << _BITS) - 1)
    for i in range(_BITS):
        diagonal = np.uint64(1 << (_BITS - 1 - i))
        above = full & ~np.uint64((1 << (_BITS - i)) - 1)  # digits 0..i-1
        mask = diagonal | (words[:, i] & above)
        out |= _parity(mask[:, None] & _DIRECTIONS[dim][None, :]) << np.uint64(_BITS - 1 - i)
    return out


def _sobol_points(key: int, rows: np.ndarray, rho: int, index: np.ndarray) -> np.ndarray:
    """Points ``index`` of replicate ``rho``'s scrambled sequence: ``(k, len(index), 2)``."""
    coords = []
    for dim in (0, 1):
        columns = _scrambled_directions(key, rows, rho, dim)
        x = np.zeros((rows.size, index.size), dtype=np.uint64)
        idx = index.astype(np.uint64)
        for k in range(_BITS):
            on = ((idx >> np.uint64(k)) & np.uint64(1)).astype(bool)
            x = np.where(on[None, :], x ^ columns[:, k : k + 1], x)
        shift = _words(key, rows, 1, _STREAM_SOBOL + 4 * rho + 2 + dim) >> np.uint64(64 - _BITS)
        coords.append(((x ^ shift).astype(np.float64) + 0.5) * 2.0**-_BITS)
    return np.stack(coords, axis=-1)


def _sobol(design: Design, key: int, rows: np.ndarray, block: int, j: np.ndarray):
    reps = design.columns
    rho, p = j % reps, j // reps
    per_block = design.counts  # points of each replicate per block
    index = np.empty((rows.size, j.size), dtype=np.int64)
    alpha = np.empty((rows.size, j.size))
    for r in np.unique(rho):
        where = rho == r
        u = _sobol_points(key, rows, int(r), block * per_block[r] + p[where])
        index[:, where] = np.minimum((u[..., 0] * design.n_background).astype(np.int64), design.n_background - 1)
        alpha[:, where] = u[..., 1]
    return index, alpha
