"""Conformance matrix, Keras cells: the MLP with BatchNorm and the small CNN of
tests/test_conformance.py, built as Keras models with the same NumPy weights, on the
backend this process runs (tests/run.py runs this file once per backend, with KERAS_BACKEND set), against the torch reference.
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import import_or_fail
from test_conformance import BATCH_SIZE, BN_EPS, CASES, N_SAMPLES, RTOL, SEED, data, relative_error, torch_reference, weights

keras = import_or_fail("keras")
pytestmark = pytest.mark.keras_backend  # tests/run.py runs these once per Keras backend


def keras_model(kind: str):
    p = weights(kind)
    L = keras.layers
    if kind == "mlp":
        model = keras.Sequential([
            keras.Input((6,)), L.Dense(16), L.BatchNormalization(epsilon=BN_EPS), L.Activation("tanh"), L.Dense(3),
        ])
        model.set_weights([p["w1"], p["b1"], p["gamma"], p["beta"], p["mean"], p["var"], p["w2"], p["b2"]])
        return model
    inputs = keras.Input((8, 8, 2))
    h = L.AveragePooling2D(2)(L.Conv2D(4, 3, activation="tanh")(inputs))
    model = keras.Model(inputs, L.Dense(3)(L.Flatten()(h)))  # functional, channels-last
    model.set_weights([p["k"], p["bk"], p["wd"], p["bd"]])
    return model


def keras_values(kind: str, host: bool = False) -> np.ndarray:
    """Attributions of the Keras model; ``host``: pass NumPy arrays instead of backend tensors."""
    import gradshap

    x, bg = data(kind) if host else (keras.ops.convert_to_tensor(a) for a in data(kind))
    explainer = gradshap.GradientExplainer(keras_model(kind), bg, batch_size=BATCH_SIZE)
    assert explainer.framework == "keras"
    values = explainer(x, seed=SEED, n_samples=N_SAMPLES, **CASES[kind]).values
    if host:
        assert isinstance(values, np.ndarray)
    else:
        assert keras.ops.is_tensor(values)
    assert keras.backend.standardize_dtype(values.dtype) == "float32"
    return keras.ops.convert_to_numpy(values)


@pytest.mark.parametrize("host", [False, True], ids=["backend-tensors", "numpy"])
@pytest.mark.parametrize("kind", sorted(CASES))
def test_keras_same_attributions_as_torch(kind, host):
    values = keras_values(kind, host)
    assert values.shape == data(kind)[0].shape + ((2,) if kind == "mlp" else ())  # channels-last kept
    assert relative_error(values, torch_reference(kind)) <= RTOL
