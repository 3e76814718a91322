"""gradshap.metrics on a Keras 3 model, on the backend this process runs (tests/run.py runs this
file once per backend, with KERAS_BACKEND set)."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import import_or_fail

keras = import_or_fail("keras")
pytestmark = pytest.mark.keras_backend
from gradshap import metrics  # noqa: E402

ATOL = 2e-6  # float32 rounding of sums of a few products of O(1) numbers


def test_deletion_and_infidelity_of_a_keras_linear_model(rng):
    w = rng.standard_normal(5).astype(np.float32)
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(1, use_bias=False)])
    model.layers[0].set_weights([w[:, None]])
    x = rng.standard_normal((4, 5)).astype(np.float32)
    bg = rng.standard_normal((6, 5)).astype(np.float32)
    bg -= bg.mean(axis=0)
    curve = metrics.deletion(model, x, w * x, bg, steps=5, batch_size=7)
    ordered = -np.sort(-(w * x).astype(np.float64), axis=1)
    expected = (x @ w)[:, None] - np.concatenate([np.zeros((4, 1)), np.cumsum(ordered, axis=1)], axis=1)
    np.testing.assert_allclose(curve.outputs, expected, atol=ATOL)
    score = metrics.infidelity(model, x, np.broadcast_to(w, x.shape), background=bg, n_perturb=5, seed=0)
    np.testing.assert_allclose(score.per_row, 0.0, atol=1e-10)
