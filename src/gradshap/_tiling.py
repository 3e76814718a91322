"""The chunk plan: how a call's (rows x samples) are cut into chunks of at most ``batch_size`` points.

A design lays each row's samples out over ``passes x columns`` (sample ``j`` is pass
``j // columns`` of column ``j % columns``; see :mod:`gradshap._sampling`). A chunk is a
tile of ``rows x passes x width``: some rows, some passes, some columns. Its shape depends
on ``batch_size`` and on that layout only, never on the number of rows explained: a call
runs every chunk at that one shape, and more samples mean more chunks of it.

There is one way to pad. Rows are padded with copies of rows where a compiling adapter
needs the one shape (the copies are dropped); passes and columns beyond the layout's are
padded with weight 0, so they add nothing to any statistic.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Tiling", "default_batch_size", "plan"]

# Points per chunk aim at this many input elements, clamped to [_MIN_BATCH, _MAX_BATCH].
# Accelerators want large chunks. On CPU a chunk whose activations stay in cache is
# faster (benchmarks/: the small CNN ran 1.7x slower at 2**20 elements than at 2**17); a
# compiled step pays a dispatch per chunk, so it takes twice more.
_ELEMENTS_PER_CHUNK = 2**20
_ELEMENTS_PER_CHUNK_CPU = 2**17
_MIN_BATCH, _MAX_BATCH = 64, 8192
# Among the tilings whose chunks hold this fraction of the best one's useful points, the
# one with the fewest tiles per row is taken (each costs a merge).
_NEAR_BEST = 0.95


def default_batch_size(feature_size: int, *, device=None, compiled: bool = False) -> int:
    """Points per chunk for inputs of ``feature_size`` elements per row on ``device``.

    ``compiled``: the adapter compiles the chunk step (:attr:`Adapter.compiles`).
    """
    on_cpu = device is not None and "cpu" in str(device).lower()
    elements = _ELEMENTS_PER_CHUNK_CPU * (2 if compiled else 1) if on_cpu else _ELEMENTS_PER_CHUNK
    return int(min(_MAX_BATCH, max(_MIN_BATCH, elements // max(1, feature_size))))


@dataclass(frozen=True)
class Tiling:
    """A chunk of ``rows x passes x width`` points, and where its tiles start.

    ``pass_starts``: the first pass of each tile of passes (the last tile may reach past
    the layout's passes: those weigh 0); ``column_starts``: likewise for the columns.
    """

    rows: int
    passes: int
    width: int
    pass_starts: tuple
    column_starts: tuple

    @property
    def points(self) -> int:
        return self.rows * self.passes * self.width


def plan(n_samples: int, columns: int, batch_size: int) -> Tiling:
    """The tiling of a block of ``n_samples`` samples laid over ``columns`` columns.

    Columns go in equal groups of at most ``batch_size``, and passes in equal tiles; the
    rows fill the rest of the chunk. Taken: the most useful points per chunk (padding
    excluded) and, near that, the fewest tiles per row (each costs a merge).
    """
    total = -(-n_samples // columns)
    options = []
    least_groups = -(-columns // batch_size)
    for groups in range(least_groups, min(columns, least_groups + 8) + 1):
        width = -(-columns // groups)
        least_tiles = -(-total // (batch_size // width))
        for tiles in range(least_tiles, min(total, least_tiles + 32) + 1):
            passes = -(-total // tiles)
            rows = max(1, batch_size // (passes * width))
            options.append((rows * total * columns / (tiles * groups), groups * tiles, rows, passes, width))
    top = max(o[0] for o in options)
    _, _, rows, passes, width = min((o for o in options if o[0] >= _NEAR_BEST * top), key=lambda o: o[1])
    return Tiling(rows, passes, width, tuple(range(0, total, passes)), tuple(range(0, columns, width)))


def rows_per_chunk(tiling: Tiling, n_rows: int, *, compiled: bool) -> int:
    """The rows a chunk holds for a call of ``n_rows`` rows: the plan's, or fewer for a
    small call; a compiling adapter rounds that up to a power of two (few shapes)."""
    if n_rows >= tiling.rows:
        return tiling.rows
    return min(tiling.rows, 1 << (n_rows - 1).bit_length()) if compiled else n_rows
