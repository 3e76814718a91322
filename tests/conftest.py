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


def assert_one_trace_per_chunk_shape(explainer, x, traces, *, framework: str) -> None:
    """``traces()``: how often the model has been traced so far (0 before the first call).

    7 rows x 10 samples at batch_size 24: 10 samples over 8 background rows give no
    column two samples, so the general path, with chunks of 2 samples (part of a pass) for
    12 rows; the 7 rows pad to 8 (:func:`_engine._few_rows`): chunks of 16 points. One
    forward trace (x and the background together, 15 rows, padded to 16) and one of the
    chunk step; a repeat call traces nothing. 20 samples over the 8 background rows take
    the column step: 4 columns of 3 samples and 4 of 2, chunks of 2 rows x 3 passes x 4
    columns (24 points) and 2 rows x 2 x 4 (16 points).

    - ``"jax"``: the column step runs as whole programs (:meth:`Adapter.row_loop`), and
      the call traces six times: the check for primitives slow in loops, the outputs'
      program, and the rows' programs of two piece sizes, each with one loop body per
      chunk shape: the first row group's 2 rows, then 4 rows, then the last row padded
      to 2 with a copy (:func:`_engine._program_rows`), which runs the first piece's
      programs. 8 in all.
    - ``"tensorflow"``: programs too, but the model inside the steps is a function of its
      own, traced once per shape of points across all steps and programs: of the two
      chunk shapes only the 24 points are new (the first call's chunks held 16). 3 in all.
    """
    explainer(x, n_samples=10, seed=0)
    assert traces() == 2
    explainer(x, n_samples=10, seed=1)
    assert traces() == 2
    explainer(x, n_samples=20, seed=0)
    columns = {"jax": 8, "tensorflow": 3}[framework]
    assert traces() == columns
    explainer(x, n_samples=20, seed=1)
    assert traces() == columns
