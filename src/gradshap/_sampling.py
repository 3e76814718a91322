"""Sampling designs: for each input row, the ``n_samples`` pairs (baseline index, alpha).

Randomness is counter-based. Every number is a hash of ``(key, row, stream, column)``,
so the draws for row ``r`` do not depend on which other rows are explained with it,
on ``batch_size``, on chunking, on the device or on the framework. The hash is
SplitMix64's finaliser, vectorised in NumPy on the host; the arrays it makes are
small (rows x samples) and are moved to the model's device once per block of rows.
"""

from __future__ import annotations

import numbers

import numpy as np

__all__ = ["SAMPLERS", "STREAM_NOISE", "draw", "normals", "resolve", "seed_key", "uniforms"]

#: Every sampler name the public API accepts.
SAMPLERS = ("auto", "iid", "balanced")

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)

# Independent streams of the hash, one per use.
_STREAM_INDEX = 1
_STREAM_ALPHA = 2
_STREAM_PERM_BASELINE = 3
_STREAM_PERM_STRATUM = 4
STREAM_NOISE = 16  # input k of a model uses stream STREAM_NOISE + k


def _mix(z: np.ndarray) -> np.ndarray:
    z = z ^ (z >> np.uint64(30))
    z = z * _M1
    z = z ^ (z >> np.uint64(27))
    z = z * _M2
    return z ^ (z >> np.uint64(31))


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


def uniforms(key: int, rows: np.ndarray, n: int, stream: int, start: int = 0) -> np.ndarray:
    """Uniform numbers in (0, 1), shape ``(len(rows), n)``, float64.

    Column ``j`` of the result is number ``start + j`` of the row's stream, so a
    slice of columns can be made without making the columns before it.
    """
    rows = np.asarray(rows, dtype=np.uint64).reshape(-1)
    cols = np.arange(start + 1, start + n + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        row_state = _mix(np.uint64(key) ^ _mix(rows * _GOLDEN + np.uint64(stream) * _M2))
        bits = _mix(row_state[:, None] + cols[None, :] * _GOLDEN)
    return ((bits >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53


def normals(key: int, rows: np.ndarray, n: int, stream: int, start: int = 0) -> np.ndarray:
    """Standard normal numbers, shape ``(len(rows), n)``, float64 (Box-Muller)."""
    u1 = uniforms(key, rows, n, 2 * stream, start)
    u2 = uniforms(key, rows, n, 2 * stream + 1, start)
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)


def resolve(sampler: str, n_samples: int, n_background: int) -> str:
    """The concrete design that ``sampler`` stands for at this budget."""
    if sampler not in SAMPLERS:
        msg = f"`sampler` must be one of {', '.join(map(repr, SAMPLERS))}; got {sampler!r}"
        raise ValueError(msg)
    if sampler == "auto":
        # Stratifying baselines and alphas never raises the variance of the
        # estimate above i.i.d. sampling, and removes the baseline-draw term
        # whenever n_samples is a multiple of the background size.
        return "balanced"
    return sampler


def draw(
    sampler: str, key: int, rows: np.ndarray, n_samples: int, n_background: int
) -> tuple[np.ndarray, np.ndarray]:
    """Baseline indices (int64) and alphas (float64), each ``(len(rows), n_samples)``.

    ``sampler`` is a concrete design (see :func:`resolve`).
    """
    rows = np.asarray(rows)
    if sampler == "iid":
        u = uniforms(key, rows, n_samples, _STREAM_INDEX)
        index = np.minimum((u * n_background).astype(np.int64), n_background - 1)
        alpha = uniforms(key, rows, n_samples, _STREAM_ALPHA)
        return index, alpha
    if sampler == "balanced":
        # Baselines: a random permutation of the background, repeated, so that each
        # background row is used floor(n/B) or ceil(n/B) times.
        perm = np.argsort(uniforms(key, rows, n_background, _STREAM_PERM_BASELINE), axis=1)
        index = perm[:, np.arange(n_samples) % n_background].astype(np.int64)
        # Alphas: Latin hypercube over (0, 1), strata assigned in random order so that
        # each (baseline, alpha) pair is marginally uniform and the two independent.
        stratum = np.argsort(uniforms(key, rows, n_samples, _STREAM_PERM_STRATUM), axis=1)
        jitter = uniforms(key, rows, n_samples, _STREAM_ALPHA)
        alpha = (stratum + jitter) / n_samples
        return index, alpha
    msg = f"unknown concrete sampler {sampler!r}"
    raise ValueError(msg)
