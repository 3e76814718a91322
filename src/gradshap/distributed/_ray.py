"""Ray Data: ``map_batches`` over a Dataset with a pool of actors, each building its model once."""

from __future__ import annotations

from typing import Callable

from gradshap import _sampling
from gradshap.backends import require
from gradshap.distributed._rows import explain_rows

__all__ = ["explain_ray_dataset"]


class _Explain:
    """One actor of the pool: builds the explainer once, then explains batch after batch."""

    def __init__(self, build: Callable, options: dict, column: str, id_column: str, target_column: str | None,
                 convert: Callable | None):
        self.explainer = build()
        self.options, self.column, self.id_column = options, column, id_column
        self.target_column, self.convert = target_column, convert

    def __call__(self, batch: dict) -> dict:
        options = dict(self.options)
        if self.target_column is not None:
            options["target"] = batch[self.target_column]
        x = batch[self.column]
        return explain_rows(self.explainer, x if self.convert is None else self.convert(x), batch[self.id_column],
                            **options)


def explain_ray_dataset(dataset, build: Callable, *, column: str = "x", id_column: str = "row_id",
                        target_column: str | None = None, convert: Callable | None = None, concurrency: int | tuple[int, int] = 1,
                        num_gpus: float = 0, num_cpus: float | None = None, batch_size: int = 256,
                        max_restarts: int | None = None, max_task_retries: int | None = None, **options):
    """Explain every row of a Ray Dataset on a pool of actors; one record per row.

    Each actor calls ``build()`` once and keeps the explainer it returns, so the model
    need not pickle (the function that builds it must) and loads once per actor. Rows are
    keyed by their id column and every batch gets the same seed, so the records do not
    depend on how Ray splits, orders or retries the batches: a batch lost with its actor
    is run again by Ray (``max_restarts``, ``max_task_retries``) and gives the same numbers.

    Parameters
    ----------
    dataset : ray.data.Dataset
        With a column of rows ``column`` (``(*features)`` per row) and a column of distinct
        non-negative integer ids ``id_column``.
    build : callable
        ``build() -> explainer`` (a :class:`gradshap.GradientExplainer` or
        :class:`gradshap.IntegratedGradients`), run on each actor.
    target_column : str, optional
        A column of one class per row, for per-row targets.
    convert : callable, optional
        Turns a batch's NumPy rows into the model's array (e.g. ``torch.from_numpy``, or
        a move to the actor's GPU).
    concurrency, num_gpus, num_cpus, batch_size
        The actor pool's size (an int, or ``(min, max)`` for a pool that Ray scales), the
        GPUs and CPUs per actor, and the rows per batch, as in ``Dataset.map_batches``.
    max_restarts, max_task_retries
        Ray's actor fault tolerance. ``None`` keeps Ray Data's own defaults for an actor
        pool (Ray 2.60: ``-1`` for both, restart a dead actor and retry its batches
        without limit); a number is passed on to Ray.
    **options
        For the explainer call (``n_samples``, ``sampler``, ``target``, ``stdevs``, ``seed``,
        ``rtol``, ...). ``seed=None`` resolves here, once, to one integer.

    Returns
    -------
    ray.data.Dataset
        Lazy records with columns ``row_id``, ``values``, ``stderr``, ``base_value``,
        ``output``, ``delta``, ``n_samples``, (``target``) and ``explained``; write them
        with ``write_parquet`` or join them with :func:`gradshap.distributed.from_records`.
    """
    data = require("ray.data", "ray")
    if not isinstance(dataset, data.Dataset):
        msg = f"`dataset` must be a ray.data.Dataset; got {type(dataset).__module__}.{type(dataset).__name__}"
        raise TypeError(msg)
    names = dataset.columns(fetch_if_missing=False)
    if names is not None:
        wanted = [c for c in (column, id_column, target_column) if c is not None]
        missing = [c for c in wanted if c not in names]
        if missing:
            msg = f"`dataset` has no column(s) {', '.join(map(repr, missing))}; its columns are {names}"
            raise ValueError(msg)
    if "row_ids" in options:
        msg = f"row ids come from the column `id_column`={id_column!r}; do not pass `row_ids`"
        raise TypeError(msg)
    options = dict(options, seed=_sampling.resolve_seed(options.get("seed")))
    if isinstance(concurrency, tuple) and len(concurrency) == 2:
        pool = data.ActorPoolStrategy(min_size=concurrency[0], max_size=concurrency[1])
    elif isinstance(concurrency, int) and not isinstance(concurrency, bool) and concurrency >= 1:
        pool = data.ActorPoolStrategy(size=concurrency)
    else:
        msg = f"`concurrency` must be a positive int or a pair (min, max) of them; got {concurrency!r}"
        raise ValueError(msg)
    remote = {name: value for name, value in (("max_restarts", max_restarts), ("max_task_retries", max_task_retries))
              if value is not None}
    return dataset.map_batches(
        _Explain, fn_constructor_args=(build, options, column, id_column, target_column, convert),
        compute=pool, num_cpus=num_cpus, num_gpus=num_gpus, batch_size=batch_size, batch_format="numpy",
        **remote)
