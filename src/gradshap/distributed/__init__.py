"""Explaining a whole dataset on an engine the user already runs: Ray Data and Dask.

Every draw is keyed by (seed, row id) (see :mod:`gradshap._sampling`), so however the
rows are split over blocks, workers, retries and orders, each row gets the numbers one
call over all rows gives it. The entry points here only cut the data, hand each piece
its row ids and one resolved seed, and join the pieces; the scheduling is Ray's or Dask's.

Importing this package imports neither Ray nor Dask: each entry point imports its engine
when called (``pip install gradshap[ray]`` or ``gradshap[dask]``).
"""

from gradshap.distributed._dask import LazyExplanation as LazyExplanation
from gradshap.distributed._dask import explain_dask_array as explain_dask_array
from gradshap.distributed._ray import explain_ray_dataset as explain_ray_dataset
from gradshap.distributed._rows import explain_rows as explain_rows
from gradshap.distributed._rows import from_records as from_records

__all__ = ["LazyExplanation", "explain_dask_array", "explain_ray_dataset", "explain_rows", "from_records"]
