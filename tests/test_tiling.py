"""The chunk plan: memory set by batch_size, every sample covered once, few wasted points."""

from __future__ import annotations

import numpy as np
import pytest

from gradshap import _tiling


@pytest.mark.parametrize("n_samples", [1, 7, 64, 200, 801, 10**5])
@pytest.mark.parametrize("columns", [1, 3, 8, 100, 1000])
@pytest.mark.parametrize("batch_size", [1, 3, 48, 334, 8192])
def test_chunks_hold_at_most_batch_size_and_cover_every_sample_once(n_samples, columns, batch_size):
    if columns > n_samples:
        pytest.skip("a design never has more columns than samples")
    t = _tiling.plan(n_samples, columns, batch_size)
    assert t.rows >= 1 and t.passes >= 1 and t.width >= 1
    assert t.points <= batch_size
    # Every sample (pass j // columns of column j % columns) lies in exactly one tile.
    total = -(-n_samples // columns)
    covered = np.zeros(((total + t.passes) * columns + t.width) * 2, dtype=int)
    for group, p0 in t.tiles:
        c0 = t.column_starts[group]
        for p in range(p0, p0 + t.passes):
            for c in range(c0, c0 + t.width):
                if c < columns:
                    covered[p * columns + c] += 1
    assert np.all(covered[:n_samples] == 1)
    assert t.column_starts[-1] < columns <= t.column_starts[-1] + t.width


@pytest.mark.parametrize(("n_samples", "columns"), [(200, 1), (200, 100), (200, 64), (1000, 100), (4096, 1), (300, 200)])
@pytest.mark.parametrize("batch_size", [334, 2048, 8192])
def test_chunks_are_nearly_full_of_useful_points_for_many_rows(n_samples, columns, batch_size):
    """With many rows, nearly every point computed is a sample: memory and time are spent
    on the work, not on padding."""
    t = _tiling.plan(n_samples, columns, batch_size)
    useful = n_samples * t.rows  # the samples of one row group
    computed = len(t.tiles) * t.points
    assert useful >= 0.8 * computed
    assert t.points >= 0.75 * batch_size


def test_the_chunk_shape_does_not_depend_on_the_row_count():
    t = _tiling.plan(200, 100, 8192)
    assert [_tiling.rows_per_chunk(t, n, compiled=True) for n in (t.rows, 10 * t.rows, 10**6)] == [t.rows] * 3
    # Fewer rows than a chunk holds: as many rows, or for a compiling adapter the next power of two.
    assert _tiling.rows_per_chunk(t, 5, compiled=False) == 5
    assert _tiling.rows_per_chunk(t, 5, compiled=True) == 8


def test_default_batch_size_follows_the_input_size():
    assert _tiling.default_batch_size(30, device="cpu") == 4369
    assert _tiling.default_batch_size(30, device="cpu", compiled=True) == 8192
    assert _tiling.default_batch_size(3 * 224 * 224, device="cpu") == 64
    assert _tiling.default_batch_size(784, device="cuda:0") == 1337
