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
    """Chunks of ``rows x passes x width`` points, and the tiles of the layout they cover.

    ``column_starts``: the first column of each group of ``width`` columns (the last group
    may reach past the layout's columns: those weigh 0). ``counts``: the passes of each
    group. A tile is ``passes`` passes of one group, from a first pass ``p0`` in
    :attr:`pass_starts`; a group's last tile may reach past its passes (those slots weigh
    0). Tiles are never listed: a call may have millions.
    """

    rows: int
    passes: int
    width: int
    column_starts: tuple
    counts: tuple

    @property
    def points(self) -> int:
        return self.rows * self.passes * self.width

    @property
    def pass_starts(self) -> range:
        """The first pass of each tile of the longest group."""
        return range(0, max(self.counts), self.passes)

    def groups_at(self, p0: int) -> list:
        """The column groups that have a tile from pass ``p0``."""
        return [group for group, count in enumerate(self.counts) if count > p0]

    @property
    def tiles(self) -> tuple:
        """``(group, p0)`` of every tile, in the order the engine runs them (for tests)."""
        return tuple((group, p0) for p0 in self.pass_starts for group in self.groups_at(p0))


def plan(n_samples: int, columns: int, batch_size: int) -> Tiling:
    """The tiling of a block of ``n_samples`` samples laid over ``columns`` columns.

    With ``n_samples = q * columns + r`` the first ``r`` columns hold ``q + 1`` samples and
    the others ``q``. Columns go in equal groups of at most ``batch_size``, each group's
    passes in tiles of equal size; the rows fill the rest of the chunk. Taken: the most
    samples per point computed (padding excluded) and, near that, the fewest tiles per
    row (each costs a merge).
    """
    q, r = divmod(n_samples, columns)
    options = []
    least_groups = -(-columns // batch_size)
    for groups in range(least_groups, min(columns, least_groups + 8) + 1):
        width = -(-columns // groups)
        counts = [q + (c0 < r) for c0 in range(0, columns, width)]  # passes of each group
        least_tiles = -(-max(counts) // (batch_size // width))
        for tiles in range(least_tiles, min(max(counts), least_tiles + 32) + 1):
            passes = -(-max(counts) // tiles)
            rows = max(1, batch_size // (passes * width))
            made = sum(-(-c // passes) for c in counts)
            options.append((rows * n_samples / made, made, rows, passes, width, counts))
    top = max(o[0] for o in options)
    _, _, rows, passes, width, counts = min((o for o in options if o[0] >= _NEAR_BEST * top), key=lambda o: o[1])
    return Tiling(rows, passes, width, tuple(range(0, columns, width)), tuple(counts))


def rows_per_chunk(tiling: Tiling, n_rows: int, *, compiled: bool) -> int:
    """The rows a chunk holds for a group of ``n_rows`` rows: the plan's, or fewer for the
    last rows of a call; a compiling adapter rounds those up to a power of two, so that
    any row count runs chunks of a few shapes only (the plan's, 1, 2, 4, 8, ...)."""
    if n_rows >= tiling.rows:
        return tiling.rows
    return min(tiling.rows, 1 << (n_rows - 1).bit_length()) if compiled else n_rows
