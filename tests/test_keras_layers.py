"""``layer=`` for Keras models on the backend this process runs (tests/run.py runs this file once per backend).

The layer's attributions are Expected Gradients of the rest of the model at the layer's
activations: they must equal the engine's answer for a separately built head given the
activations, from the same seed, and satisfy completeness at the layer.
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import import_or_fail

keras = import_or_fail("keras")
pytestmark = pytest.mark.keras_backend  # tests/run.py runs these once per Keras backend
import gradshap  # noqa: E402

L = keras.layers


def host(a) -> np.ndarray:
    return keras.ops.convert_to_numpy(a)


def layers(seed=0):
    """The layers of a small model: Dense(8) is the cut; after it tanh, BatchNorm and Dense(2)."""
    keras.utils.set_random_seed(seed)
    return L.Dense(8, name="cut"), L.Activation("tanh"), L.BatchNormalization(), L.Dense(2)


def build(style: str, parts):
    cut, act, bn, out = parts
    if style == "sequential":
        model = keras.Sequential([keras.Input((4,)), L.Dense(5), cut, act, bn, out])
    else:
        inputs = keras.Input((4,))
        model = keras.Model(inputs, out(bn(act(cut(L.Dense(5)(inputs))))))
    rng = np.random.default_rng(3)
    weights = [0.5 * rng.standard_normal(w.shape).astype(np.float32) for w in model.get_weights()]
    weights[-3] = 0.5 + rng.random(8).astype(np.float32)  # BatchNorm's moving variance > 0
    model.set_weights(weights)
    return model


@pytest.fixture
def data(rng):
    return rng.standard_normal((5, 4)).astype(np.float32), rng.standard_normal((6, 4)).astype(np.float32)


@pytest.mark.parametrize("by_name", [True, False], ids=["name", "layer"])
@pytest.mark.parametrize("style", ["sequential", "functional"])
def test_equals_expected_gradients_of_the_head_on_the_activations(style, by_name, data):
    x, bg = data
    parts = layers()
    model = build(style, parts)
    weights = [w.copy() for w in model.get_weights()]
    got = gradshap.GradientExplainer(model, bg, layer="cut" if by_name else parts[0])(x, target=1, n_samples=36,
                                                                                      seed=4)
    body = keras.Model(model.inputs[0], parts[0].output)
    head = keras.Sequential([keras.Input((8,)), *parts[1:]])  # the same layer objects, so the same weights
    hx, hb = host(body(x)), host(body(bg))
    want = gradshap.GradientExplainer(head, hb)(hx, target=1, n_samples=36, seed=4)
    assert host(got.values).shape == (5, 8)
    for name in ("values", "base_values", "output", "delta"):
        np.testing.assert_allclose(host(getattr(got, name)), host(getattr(want, name)), rtol=1e-5, atol=1e-6,
                                   err_msg=name)
    np.testing.assert_allclose(host(got.data), hx, rtol=1e-6, atol=1e-6)
    for old, new in zip(weights, model.get_weights()):  # BatchNorm statistics included
        np.testing.assert_array_equal(new, old)


@pytest.mark.parametrize("style", ["sequential", "functional"])
def test_completeness_at_the_layer(style, data):
    x, bg = data
    model = build(style, layers())
    # 6 background rows x a 16-point Gauss-Legendre rule: exact up to float32 rounding.
    exp = gradshap.GradientExplainer(model, bg, layer="cut")(x, target=0, n_samples=6 * 16, sampler="exhaustive")
    f_x, f_b = host(model(x, training=False))[:, 0], host(model(bg, training=False))[:, 0]
    np.testing.assert_allclose(host(exp.output), f_x, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(host(exp.base_values), np.full(5, f_b.mean()), rtol=1e-5, atol=1e-6)
    scale = np.max(np.abs(f_x - f_b.mean()))
    np.testing.assert_allclose(host(exp.values).sum(axis=1), f_x - f_b.mean(), rtol=0, atol=1e-5 * scale)


def test_token_ids_explained_at_the_embedding(rng):
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((7,), dtype="int32"), L.Embedding(10, 4, name="emb"),
                              L.Activation("tanh"), L.GlobalAveragePooling1D(), L.Dense(1)])
    ids, bg = rng.integers(0, 10, size=(3, 7)).astype(np.int32), rng.integers(0, 10, size=(4, 7)).astype(np.int32)
    with pytest.raises(TypeError, match="integer token ids"):
        gradshap.GradientExplainer(model, bg)  # without a layer: no gradient with respect to ids
    exp = gradshap.IntegratedGradients(model, np.zeros((1, 7), np.int32), layer="emb")(ids, n_steps=24)
    assert host(exp.values).shape == (3, 7, 4)
    f_x, f_0 = host(model(ids))[:, 0], host(model(np.zeros((1, 7), np.int32)))[0, 0]
    np.testing.assert_allclose(host(exp.values).sum(axis=(1, 2)), f_x - f_0, rtol=0, atol=1e-5)


def test_body_head_pair(data):
    x, bg = data
    parts = layers()
    model = build("functional", parts)
    body = keras.Model(model.inputs[0], parts[0].output)
    head = keras.Sequential([keras.Input((8,)), *parts[1:]])
    got = gradshap.GradientExplainer(model, bg, layer=(body, head))(x, target=0, n_samples=12, seed=2)
    want = gradshap.GradientExplainer(model, bg, layer="cut")(x, target=0, n_samples=12, seed=2)
    np.testing.assert_allclose(host(got.values), host(want.values), rtol=1e-5, atol=1e-6)


def test_subclassed_model_and_unknown_names_are_refused(data):
    class Subclassed(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense, self.out = L.Dense(3, name="dense"), L.Dense(1)

        def call(self, x):
            return self.out(self.dense(x))

    model = Subclassed()
    model(data[1])
    with pytest.raises(ValueError, match=r"cannot cut `model`.*layer=\(body, head\)"):
        gradshap.GradientExplainer(model, data[1], layer="dense")
    with pytest.raises(ValueError, match="not the name of a layer"):
        gradshap.GradientExplainer(build("sequential", layers()), data[1], layer="nope")
