"""Strict numerics and the framework fixtures shared by the whole suite."""

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

FRAMEWORKS = ("numpy", "torch", "jax")


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


def assert_one_trace_per_chunk_shape(explainer, x, traces, *, programs: bool = False) -> None:
    """``traces()``: how often the model has been traced so far (0 before the first call).

    7 rows x 10 samples at batch_size 24 run as chunks of 2 rows x 10 samples (the 4th
    with one row, padded): one forward trace (x and the background together, 15 rows, pad
    to 16) and one trace of the fused chunk step (interpolation, VJP and statistics in one
    compiled program); a repeat call traces nothing. 20 samples over the 8 background rows
    take the column step: 4 columns of 3 samples and 4 of 2 (chunks of 2 rows x 3 passes x
    4 columns and 2 rows x 2 x 4; the 7th row's two chunks are "slots" of the same shapes),
    two new shapes, traced once each. With ``programs`` (an adapter whose ``row_loop``
    runs the column step as whole programs: JAX), that call traces six times: the check
    for primitives slow in loops, the outputs' program, and the rows' programs of two
    piece sizes, each with one loop body per chunk shape: the first row group's 2 rows,
    then 4 rows, then the last row padded to 2 with a copy (:func:`_engine._program_rows`),
    which runs the first piece's programs.
    """
    explainer(x, n_samples=10, seed=0)
    assert traces() == 2
    explainer(x, n_samples=10, seed=1)
    assert traces() == 2
    explainer(x, n_samples=20, seed=0)
    columns = 8 if programs else 4
    assert traces() == columns
    explainer(x, n_samples=20, seed=1)
    assert traces() == columns
