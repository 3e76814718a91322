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
