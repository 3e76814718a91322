"""The Keras adapter on the backend this process runs (tests/run.py runs this file once per backend, with KERAS_BACKEND set).

Linear models have known answers: with weights ``w`` the Expected Gradients estimate is
``w * (x - mean of the baselines drawn)`` for any draw, and ``w * (x - mean(background))``
with a balanced design whose sample count is a multiple of the background size.
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import assert_compiles_once_per_chunk_shape, import_or_fail

keras = import_or_fail("keras")
pytestmark = pytest.mark.keras_backend  # tests/run.py runs these once per Keras backend
import gradshap  # noqa: E402
from gradshap import _sampling  # noqa: E402

BACKEND = keras.backend.backend()
L = keras.layers
ATOL = 2e-6  # float32 rounding of sums of a few products of O(1) numbers


@pytest.fixture
def linear(rng):
    """Weights (5,), bias, x (3, 5) and background (8, 5), float32."""
    w = rng.standard_normal(5).astype(np.float32)
    return w, np.float32(0.5), rng.standard_normal((3, 5)).astype(np.float32), rng.standard_normal((8, 5)).astype(np.float32)


class Subclassed(keras.Model):
    """A subclassed model whose ``call`` takes no ``training`` argument."""

    def __init__(self, outputs=1):
        super().__init__()
        self.dense = L.Dense(outputs)

    def call(self, x):
        return self.dense(x)


class TwoInputs(keras.Model):
    def __init__(self):
        super().__init__()
        self.flatten, self.dense = L.Flatten(), L.Dense(1)

    def call(self, inputs, training=None):
        a, b = inputs
        return self.dense(keras.ops.concatenate([a, self.flatten(b)], axis=-1))


def build(style: str, w, bias):
    if style == "sequential":
        model = keras.Sequential([keras.Input((5,)), L.Dense(1)])
    elif style == "functional":
        inputs = keras.Input((5,))
        model = keras.Model(inputs, L.Dense(1)(inputs))
    else:
        model = Subclassed()
        model(np.zeros((1, 5), np.float32))
    model.set_weights([w[:, None], np.full(1, bias, np.float32)])
    return model


def tensors(*arrays):
    return tuple(keras.ops.convert_to_tensor(a) for a in arrays)


def host(a) -> np.ndarray:
    return keras.ops.convert_to_numpy(a)


@pytest.mark.parametrize("as_numpy", [False, True], ids=["backend-tensors", "numpy"])
@pytest.mark.parametrize("style", ["sequential", "functional", "subclassed"])
def test_linear_model_is_exact(style, as_numpy, linear):
    w, bias, x, bg = linear
    xs, bgs = (x, bg) if as_numpy else tensors(x, bg)
    explainer = gradshap.GradientExplainer(build(style, w, bias), bgs, batch_size=24)
    assert explainer.framework == "keras"

    exp = explainer(xs, n_samples=16, sampler="balanced", seed=1)
    assert type(exp.values) is type(xs)  # NumPy in, NumPy out; backend tensors stay tensors
    np.testing.assert_allclose(host(exp.values), w * (x - bg.mean(0)), rtol=0, atol=ATOL)
    np.testing.assert_allclose(host(exp.delta), 0.0, atol=4 * ATOL)
    np.testing.assert_allclose(host(exp.output), x @ w + bias, rtol=1e-6)
    np.testing.assert_allclose(host(exp.base_values), np.full(3, bg.mean(0) @ w + bias), rtol=1e-6)

    exp = explainer(xs, n_samples=7, sampler="iid", seed=3)
    index, _, _ = _sampling.samples("iid", _sampling.seed_key(3), np.arange(3), 7, 8)
    np.testing.assert_allclose(host(exp.values), w * (x - bg[index].mean(1)), rtol=0, atol=ATOL)


def test_weights_are_read_at_every_call(linear):
    """An explainer made before the model changes explains the model as it is now."""
    w, bias, x, bg = linear
    model = build("functional", w, bias)
    explainer = gradshap.GradientExplainer(model, tensors(bg)[0], batch_size=24)
    explainer(tensors(x)[0], n_samples=8, seed=0)
    model.set_weights([-2 * w[:, None], np.zeros(1, np.float32)])
    exp = explainer(tensors(x)[0], n_samples=16, sampler="balanced", seed=0)
    np.testing.assert_allclose(host(exp.values), -2 * w * (x - bg.mean(0)), rtol=0, atol=2 * ATOL)


def test_numpy_float64_inputs_to_a_float32_model(linear):
    """Keras casts float64 inputs to the layer dtype; the gradient flows back as float64."""
    w, bias, x, bg = linear
    exp = gradshap.GradientExplainer(build("sequential", w, bias), bg.astype(np.float64))(
        x.astype(np.float64), n_samples=16, sampler="balanced", seed=0)
    assert exp.values.dtype == np.float64
    np.testing.assert_allclose(exp.values, w * (x - bg.mean(0)), rtol=0, atol=ATOL)


@pytest.mark.parametrize("style", ["functional", "subclassed"])
def test_several_inputs(style, rng):
    wa, wb = rng.standard_normal(3).astype(np.float32), rng.standard_normal((2, 2)).astype(np.float32)
    if style == "functional":
        a, b = keras.Input((3,)), keras.Input((2, 2))
        model = keras.Model([a, b], L.Dense(1)(L.Concatenate()([a, L.Flatten()(b)])))
    else:
        model = TwoInputs()
        model([np.zeros((1, 3), np.float32), np.zeros((1, 2, 2), np.float32)])
    model.set_weights([np.concatenate([wa, wb.ravel()])[:, None], np.zeros(1, np.float32)])
    x = (rng.standard_normal((4, 3)).astype(np.float32), rng.standard_normal((4, 2, 2)).astype(np.float32))
    bg = (rng.standard_normal((5, 3)).astype(np.float32), rng.standard_normal((5, 2, 2)).astype(np.float32))

    exp = gradshap.GradientExplainer(model, tensors(*bg), batch_size=16)(tensors(*x), n_samples=10, sampler="balanced", seed=2)
    assert isinstance(exp.values, tuple) and len(exp.values) == 2
    np.testing.assert_allclose(host(exp.values[0]), wa * (x[0] - bg[0].mean(0)), rtol=0, atol=ATOL)
    np.testing.assert_allclose(host(exp.values[1]), wb * (x[1] - bg[1].mean(0)), rtol=0, atol=ATOL)
    np.testing.assert_allclose(host(exp.delta), 0.0, atol=4 * ATOL)


def _state(model):
    return [(v.path, v.trainable, host(v.value).copy()) for v in model.variables]


def test_inference_mode_and_model_left_untouched(rng):
    """BatchNorm uses its moving statistics, Dropout is off, and no variable changes
    (BatchNorm statistics and the dropout seed state included)."""
    model = keras.Sequential([keras.Input((4,)), L.Dense(8), L.BatchNormalization(), L.Dropout(0.5), L.Dense(1)])
    bn = model.layers[1]
    bn.moving_mean.assign(rng.standard_normal(8).astype(np.float32))
    bn.moving_variance.assign((1 + rng.random(8)).astype(np.float32))
    before = _state(model)
    torch_flags = _torch_flags(model)
    x, bg = tensors(rng.standard_normal((3, 4)).astype(np.float32), rng.standard_normal((6, 4)).astype(np.float32))

    explainer = gradshap.GradientExplainer(model, bg, batch_size=32)
    first = host(explainer(x, n_samples=12, seed=5).values)
    second = host(explainer(x, n_samples=12, seed=5).values)
    np.testing.assert_array_equal(first, second)  # active dropout would differ
    # An inference-mode model is affine here (BatchNorm with moving statistics): exact.
    kernel = host(model.layers[0].kernel.value)
    scale = host(bn.gamma.value) / np.sqrt(host(bn.moving_variance.value) + bn.epsilon)
    w = kernel @ (scale * host(model.layers[3].kernel.value)[:, 0])
    np.testing.assert_allclose(first, w * (host(x) - host(bg).mean(0)), rtol=0, atol=5 * ATOL)

    after = _state(model)
    assert [(p, t) for p, t, _ in after] == [(p, t) for p, t, _ in before]
    for (path, _, old), (_, _, new) in zip(before, after):
        np.testing.assert_array_equal(new, old, err_msg=path)
    assert _torch_flags(model) == torch_flags


def _torch_flags(model):
    if BACKEND != "torch":
        return None
    return [m.training for m in model.modules()], [p.requires_grad for p in model.parameters()]


class Counting(keras.Model):
    """Counts how often ``call`` runs in Python: once per trace on compiled backends."""

    def __init__(self):
        super().__init__()
        self.dense, self.calls = L.Dense(1), 0

    def call(self, x, training=None):
        self.calls += 1
        return self.dense(x)


def test_compiled_backends_compile_once_per_chunk_shape(rng):
    if BACKEND == "torch":
        pytest.skip("the torch backend runs eagerly: nothing is traced")
    model = Counting()
    model(np.zeros((1, 5), np.float32))
    x, bg = tensors(rng.standard_normal((80, 5)).astype(np.float32), rng.standard_normal((10, 5)).astype(np.float32))
    assert_compiles_once_per_chunk_shape(lambda: gradshap.GradientExplainer(model, bg, batch_size=40), x,
                                         lambda: model.calls)


def test_integer_token_inputs_are_refused_and_the_embedding_output_explained(rng):
    model = keras.Sequential([keras.Input((6,), dtype="int32"), L.Embedding(20, 4), L.GlobalAveragePooling1D(), L.Dense(1)])
    ids = rng.integers(0, 20, (3, 6)).astype(np.int32)
    bg_ids = rng.integers(0, 20, (5, 6)).astype(np.int32)
    with pytest.raises(TypeError, match=r"`model` takes integer token ids .*inputs of dtype int32.*Explain the embedding output instead"):
        gradshap.GradientExplainer(model, bg_ids)
    lazy = keras.Sequential([L.Embedding(20, 4), L.GlobalAveragePooling1D(), L.Dense(1)])  # no Input: no dtype known
    with pytest.raises(TypeError, match=r"an Embedding first layer .*Explain the embedding output instead"):
        gradshap.GradientExplainer(lazy, bg_ids.astype(np.float32))

    # What the message says to do: the rest of the model, on embedded rows (mean then Dense: linear).
    embed, pool, dense = model.layers
    rest = keras.Sequential([keras.Input((6, 4)), pool, dense])
    x, bg = (host(embed(keras.ops.convert_to_tensor(a))) for a in (ids, bg_ids))
    exp = gradshap.GradientExplainer(rest, bg)(x, n_samples=10, sampler="balanced", seed=0)
    w = host(dense.kernel.value)[:, 0]
    np.testing.assert_allclose(exp.values, w / 6 * (x - bg.mean(0)), rtol=0, atol=ATOL)


class ListOutputs(keras.Model):
    def __init__(self, as_dict: bool):
        super().__init__()
        self.as_dict, self.first, self.second = as_dict, L.Dense(2), L.Dense(1)

    def call(self, x):
        a, b = self.first(x), self.second(x)
        return {"scores": a, "risk": b} if self.as_dict else [a, b]


@pytest.mark.parametrize("as_dict", [False, True], ids=["list", "dict"])
def test_several_outputs_need_a_callable_target(as_dict, linear):
    w, _, x, bg = linear
    model = ListOutputs(as_dict)
    model(bg[:1])
    model.second.set_weights([w[:, None], np.zeros(1, np.float32)])
    explainer = gradshap.GradientExplainer(model, tensors(bg)[0])
    # (JAX's jit returns a dict with its keys sorted.)
    expected = (r"^the model's output is a dict of 2 outputs \(keys '(scores', 'risk|risk', 'scores)'\).*"
                r"select one with a callable `target`.*target=lambda outputs: outputs\['(scores|risk)'\]\[:, 0\]"
                if as_dict else
                r"^the model's output is a list of 2 outputs.*select one with a callable `target`.*"
                r"target=lambda outputs: outputs\[0\]\[:, 0\]")
    with pytest.raises(TypeError, match=expected):
        explainer(tensors(x)[0], n_samples=8)

    pick = (lambda outs: outs["risk"][:, 0]) if as_dict else (lambda outs: outs[1][:, 0])
    exp = explainer(tensors(x)[0], target=pick, n_samples=16, sampler="balanced", seed=0)
    np.testing.assert_allclose(host(exp.values), w * (x - bg.mean(0)), rtol=0, atol=ATOL)


def test_arrays_of_another_framework_are_refused(linear):
    w, bias, x, bg = linear
    if BACKEND == "torch":
        foreign, kind = import_or_fail("jax").numpy.asarray, "jax"
    else:
        foreign, kind = import_or_fail("torch").from_numpy, "torch"
    explainer = gradshap.GradientExplainer(build("sequential", w, bias), foreign(bg))
    with pytest.raises(TypeError, match=rf"keras model must be NumPy arrays or {BACKEND} tensors \(Keras runs on {BACKEND}\); got {kind}"):
        explainer(foreign(x), n_samples=4)
