"""Strict numerics and the fixtures shared by the whole suite: one ``backend`` fixture for the
tests that run in every framework, and the compile-count check of the compiling adapters."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

# Strict numerics: JAX in float64 where asked, no TF32 in torch matmuls.
os.environ.setdefault("JAX_ENABLE_X64", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=1")

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

#: The frameworks of the ``backend`` fixture (Keras runs per backend in tests/test_keras_*.py).
FRAMEWORKS = ("numpy", "torch", "jax", "tensorflow")


def import_or_fail(name: str):
    """pytest.importorskip locally; a hard failure under CI, where every framework must be present."""
    if IN_CI:
        __import__(name)
        return sys.modules[name]
    return pytest.importorskip(name)


@pytest.fixture(autouse=True, scope="session")
def _strict_numerics():
    if "torch" in sys.modules or IN_CI:
        torch = import_or_fail("torch")
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    yield


@pytest.fixture
def rng():
    return np.random.default_rng(20261121)


@pytest.fixture(params=FRAMEWORKS)
def backend(request):
    """One framework's arrays and models (:class:`models.Backend`), for every framework of
    :data:`FRAMEWORKS`; a test picks some with
    ``@pytest.mark.parametrize("backend", [...], indirect=True)``."""
    from models import Backend

    return Backend(request.param)


def assert_compiles_once_per_chunk_shape(make_explainer, x, traces) -> None:
    """A compiling adapter compiles the model once per shape of its points, and a call's
    points take few shapes, whatever the number of rows.

    ``make_explainer()``: a fresh explainer on a background of 10 rows at ``batch_size=40``;
    ``x``: at least 80 rows; ``traces()``: how often the model's Python function has run so
    far, which on a compiling framework is once per trace. The calls take 20 samples a row.
    A forward pass runs at most 40 rows, a shorter one padded with copies of its rows to a
    power of two; the chunk steps run the plan's rows, and the last rows of a call
    likewise padded to a power of two (docs/architecture.md). So, with bounds that follow
    from that and not from the plan:

    - a fresh explainer's first call on one row traces at most three shapes: the forward
      pass over ``x``, the one over the background, and one chunk step;
    - a fresh explainer's first call on 40 rows, at most four: the two forward passes, and
      the chunk steps of the plan's rows and of the last rows;
    - the same call again traces nothing;
    - calls on each row count from 1 to 45 together trace at most 14 shapes: forward
      passes of 40 rows or of a power of two up to 32 (7), and chunk steps of the plan's
      rows or of a power of two below them (at most 7); then calls on other row counts,
      up to 80, with other seeds, trace nothing new.
    """
    start = traces()
    make_explainer()(x[:1], n_samples=20, seed=0)
    assert 1 <= traces() - start <= 3, traces() - start
    explainer, start = make_explainer(), traces()
    explainer(x[:40], n_samples=20, seed=0)
    first = traces() - start
    assert 1 <= first <= 4, first
    explainer(x[:40], n_samples=20, seed=0)
    assert traces() - start == first, "a second identical call traced the model again"
    for rows in range(1, 46):
        explainer(x[:rows], n_samples=20, seed=rows)
    swept = traces() - start
    assert swept <= 14, f"calls on 1 to 45 rows traced {swept} shapes"
    for rows, seed in ((80, 1), (75, 2), (41, 3), (33, 4), (7, 5), (2, 6), (1, 7)):
        explainer(x[:rows], n_samples=20, seed=seed)
        assert traces() - start == swept, f"a call on {rows} rows traced the model again"
