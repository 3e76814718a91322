"""TensorFlow adapter: tf.Module and callables of tf.Tensor, compiled once per chunk shape
(with XLA where it pays), and the array namespace gradshap gives the engine for tf.Tensor
(array-api-compat does not cover TensorFlow).

Keras models on every backend are tested in tests/test_keras_*.py (tests/run.py runs them
once per backend).
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import assert_compiles_once_per_chunk_shape, import_or_fail

tf = import_or_fail("tensorflow")
import gradshap  # noqa: E402
from gradshap import _sampling  # noqa: E402
from gradshap.backends._tf_namespace import namespace  # noqa: E402
from models import mlp_weights, numpy_mlp, tf_mlp  # noqa: E402

ATOL = 2e-6  # float32 rounding of sums of a few products of O(1) numbers


class Linear(tf.Module):
    """``x @ w + b`` with a trace counter: ``__call__`` runs in Python once per trace."""

    def __init__(self, w, b=0.5):
        super().__init__()
        self.w, self.b, self.calls = tf.Variable(w[:, None]), tf.Variable([b], dtype=w.dtype), 0

    def __call__(self, x):
        self.calls += 1
        return x @ self.w + self.b


@pytest.fixture
def linear(rng):
    w = rng.standard_normal(5).astype(np.float32)
    return w, rng.standard_normal((3, 5)).astype(np.float32), rng.standard_normal((8, 5)).astype(np.float32)


def test_namespace_matches_numpy(rng):
    xp = namespace()
    a = rng.standard_normal((3, 4)).astype(np.float32)
    t = xp.asarray(a)
    cpu = xp.device(t)
    assert isinstance(t, tf.Tensor) and t.dtype == tf.float32
    # The array API's default dtypes, which the one-hot target code compares across.
    assert xp.asarray(3).dtype == tf.int64 and xp.asarray(0.5).dtype == tf.float32
    assert xp.arange(4).dtype == tf.int64 and xp.argmax(t, axis=1).dtype == tf.int64
    assert xp.asarray(a, dtype=xp.float64, device=cpu).dtype == tf.float64
    idx = xp.asarray(np.array([2, 0, 2]))
    checks = [
        (xp.take(t, idx, axis=0), a[[2, 0, 2]]),
        (xp.reshape(t, (4, -1)), a.reshape(4, -1)),
        (xp.expand_dims(t, axis=1), a[:, None]),
        (xp.broadcast_to(xp.expand_dims(t, axis=0), (2, 3, 4)), np.broadcast_to(a, (2, 3, 4))),
        (xp.concat([t, t], axis=0), np.concatenate([a, a])),
        (xp.stack([t, t], axis=-1), np.stack([a, a], -1)),
        (xp.mean(t, axis=1), a.mean(1)),
        (xp.sum(t, axis=0), a.sum(0)),
        (xp.sqrt(xp.astype(t * t, xp.float64, copy=False)), np.abs(a)),
        (xp.full((2, 3), np.inf, dtype=xp.float32, device=cpu), np.full((2, 3), np.inf)),
        (xp.ones((2, 1), dtype=xp.float64, device=cpu), np.ones((2, 1))),
        (xp.arange(5, device=cpu), np.arange(5)),
        (xp.argmax(t, axis=1), a.argmax(1)),
    ]
    for got, want in checks:
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-6)
    bad = xp.asarray(np.array([[1.0, np.nan], [0.0, 1.0]], np.float32))
    assert xp.any(~xp.isfinite(bad), axis=1).numpy().tolist() == [True, False]
    assert not bool(xp.all(xp.isfinite(bad)))
    assert xp.finfo(xp.float32).bits == 32 and xp.finfo(xp.float16).bits == 16
    assert xp.isdtype(tf.float64, "real floating") and not xp.isdtype(tf.int32, "real floating")
    assert xp.isdtype(tf.int32, ("bool", "integral")) and xp.isdtype(tf.float32, tf.float32)
    assert xp.astype(t, tf.float32, copy=False) is t


def test_tf_module_linear_is_exact(linear):
    w, x, bg = linear
    model = Linear(w)
    explainer = gradshap.GradientExplainer(model, tf.constant(bg), batch_size=24)
    assert explainer.framework == "tensorflow"

    exp = explainer(tf.constant(x), n_samples=16, sampler="balanced", seed=1)
    assert isinstance(exp.values, tf.Tensor) and exp.values.dtype == tf.float32 and exp.values.shape == x.shape
    assert exp.values.device == tf.constant(x).device
    np.testing.assert_allclose(exp.values.numpy(), w * (x - bg.mean(0)), rtol=0, atol=ATOL)
    np.testing.assert_allclose(exp.delta.numpy(), 0.0, atol=4 * ATOL)
    np.testing.assert_allclose(exp.output.numpy(), x @ w + 0.5, rtol=1e-6)
    np.testing.assert_allclose(exp.base_values.numpy(), np.full(3, bg.mean(0) @ w + 0.5), rtol=1e-6)

    exp = explainer(tf.constant(x), n_samples=7, sampler="iid", seed=3)
    index, _, _ = _sampling.samples("iid", _sampling.seed_key(3), np.arange(3), 7, 8)
    np.testing.assert_allclose(exp.values.numpy(), w * (x - bg[index].mean(1)), rtol=0, atol=ATOL)


def test_float64(linear):
    w, x, bg = (a.astype(np.float64) for a in linear)
    exp = gradshap.GradientExplainer(Linear(w), tf.constant(bg))(tf.constant(x), n_samples=16, sampler="balanced", seed=0)
    assert exp.values.dtype == tf.float64
    np.testing.assert_allclose(exp.values.numpy(), w * (x - bg.mean(0)), rtol=0, atol=1e-12)


def test_float32_inputs_and_a_float64_output(linear):
    """TF adds no mixed dtypes: the inputs' finiteness sums (float32) and the values' check
    (the output's float64) are read together, so they must meet in one dtype."""
    w, x, bg = linear
    tw = tf.constant(w[:, None])
    exp = gradshap.GradientExplainer(lambda p: tf.cast(p @ tw, tf.float64), tf.constant(bg))(
        tf.constant(x), n_samples=16, sampler="balanced", seed=0)
    assert exp.values.dtype == tf.float32 and exp.output.dtype == tf.float64
    np.testing.assert_allclose(exp.values.numpy(), w * (x - bg.mean(0)), rtol=0, atol=ATOL)
    bad = x.copy()
    bad[1, 0] = np.inf
    with pytest.raises(ValueError, match=r"`x` contains NaN or inf in row\(s\) 1"):
        gradshap.GradientExplainer(lambda p: tf.cast(p @ tw, tf.float64), tf.constant(bg))(
            tf.constant(bad), n_samples=16, seed=0)


def test_compiles_once_per_chunk_shape(linear):
    w, _, _ = linear
    model = Linear(w)
    rng = np.random.default_rng(0)
    bg = tf.constant(rng.standard_normal((10, 5)).astype(np.float32))
    x = tf.constant(rng.standard_normal((80, 5)).astype(np.float32))
    assert_compiles_once_per_chunk_shape(lambda: gradshap.GradientExplainer(model, bg, batch_size=40), x,
                                         lambda: model.calls)


def test_a_few_rows_run_the_chunks_of_the_count_they_pad_to(linear, rng, capsys):
    """Fewer rows than a chunk holds run as fewer rows per chunk, padded with copies of
    rows to a power of two: after a call of 6 rows a call of 5 traces nothing new, with a
    background row per column (16 samples over 8 background rows, 2 per column) and with
    iid draws; the values are the caller's rows'."""
    w, _, bg = linear
    model = Linear(w)
    x = rng.standard_normal((6, 5)).astype(np.float32)
    explainer = gradshap.GradientExplainer(model, tf.constant(bg))
    key = _sampling.seed_key(2)
    index, _, _ = _sampling.samples("iid", key, np.arange(5), 16, 8)
    for sampler, expected in (("balanced", w * (x[:5] - bg.mean(0))), ("iid", w * (x[:5] - bg[index].mean(1)))):
        explainer(tf.constant(x), n_samples=16, sampler=sampler, seed=2)
        calls = model.calls
        exp = explainer(tf.constant(x[:5]), n_samples=16, sampler=sampler, seed=2)
        assert model.calls == calls, sampler
        assert exp.values.shape == (5, 5) and exp.output.shape == (5,)
        np.testing.assert_allclose(exp.values.numpy(), expected, rtol=0, atol=ATOL)
        np.testing.assert_allclose(exp.output.numpy(), x[:5] @ w + 0.5, rtol=1e-6)
        capsys.readouterr()
        explainer(tf.constant(x[:5]), n_samples=16, sampler=sampler, seed=2, progress=True)
        assert "80/80" in capsys.readouterr().err, sampler  # the caller's rows only


def test_plain_callable_with_several_inputs_and_an_unused_one(rng):
    """A linear function of two tensors and a third it ignores: exact per input."""
    xa, ba = rng.standard_normal((4, 3)).astype(np.float32), rng.standard_normal((6, 3)).astype(np.float32)
    xb, bb = rng.standard_normal((4, 2, 2)).astype(np.float32), rng.standard_normal((6, 2, 2)).astype(np.float32)
    c = rng.standard_normal((2, 2)).astype(np.float32)

    def f(a, b, unused):
        return tf.reduce_sum(a * 2.0, axis=1) + tf.reduce_sum(b * c, axis=(1, 2))

    x = tuple(map(tf.constant, (xa, xb, xa)))
    bg = tuple(map(tf.constant, (ba, bb, ba)))
    exp = gradshap.GradientExplainer(f, bg, batch_size=20)(x, n_samples=12, sampler="balanced", seed=4)
    assert [v.shape for v in exp.values] == [(4, 3), (4, 2, 2), (4, 3)]
    np.testing.assert_allclose(exp.values[0].numpy(), 2.0 * (xa - ba.mean(0)), rtol=0, atol=ATOL)
    np.testing.assert_allclose(exp.values[1].numpy(), c * (xb - bb.mean(0)), rtol=0, atol=ATOL)
    np.testing.assert_array_equal(exp.values[2].numpy(), 0.0)
    np.testing.assert_allclose(exp.delta.numpy(), 0.0, atol=4 * ATOL)


@pytest.mark.parametrize("as_dict", [False, True], ids=["list", "dict"])
def test_several_outputs_need_a_callable_target(as_dict, linear):
    w, x, bg = linear
    model = Linear(w)

    def two(points):
        outs = (points * 3.0, model(points)[:, 0])
        return {"scores": outs[0], "risk": outs[1]} if as_dict else list(outs)

    explainer = gradshap.GradientExplainer(two, tf.constant(bg))
    with pytest.raises(TypeError, match=r"^the model's output is a (dict|list) of 2 outputs.*select one with a callable `target`"):
        explainer(tf.constant(x), n_samples=8)
    pick = (lambda outs: outs["risk"]) if as_dict else (lambda outs: outs[1])
    exp = explainer(tf.constant(x), target=pick, n_samples=16, sampler="balanced", seed=0)
    np.testing.assert_allclose(exp.values.numpy(), w * (x - bg.mean(0)), rtol=0, atol=ATOL)


def test_targets_on_a_multi_output_module(rng):
    w = rng.standard_normal((5, 3)).astype(np.float32)
    x, bg = rng.standard_normal((4, 5)).astype(np.float32), rng.standard_normal((8, 5)).astype(np.float32)
    explainer = gradshap.GradientExplainer(lambda p: p @ w, tf.constant(bg))
    expected = w.T[None] * (x - bg.mean(0))[:, None, :]  # (n, outputs, features)
    rows = np.arange(4)
    for target, want in [
        (1, expected[:, 1]),
        ([0, 2], np.stack([expected[:, 0], expected[:, 2]], -1)),
        (np.array([2, 0, 1, 1]), expected[rows, [2, 0, 1, 1]]),
        ("predicted", expected[rows, np.argmax(x @ w, 1)]),
    ]:
        exp = explainer(tf.constant(x), target=target, n_samples=16, sampler="balanced", seed=0)
        np.testing.assert_allclose(exp.values.numpy(), want, rtol=0, atol=ATOL, err_msg=str(target))


def test_bad_inputs_are_refused(linear):
    w, x, bg = linear
    explainer = gradshap.GradientExplainer(Linear(w), tf.constant(bg))
    with pytest.raises(TypeError, match="one framework.*numpy.ndarray.*convert them to one type"):
        explainer(x, n_samples=4)
    with pytest.raises(TypeError, match="one framework.*numpy.ndarray"):
        gradshap.GradientExplainer(Linear(w), (tf.constant(bg), bg))
    ids = tf.constant(np.arange(15).reshape(3, 5))
    with pytest.raises(TypeError, match="`x` has dtype .*int64.*; expected a real floating dtype.*embedding output"):
        gradshap.GradientExplainer(Linear(w), tf.cast(tf.constant(bg), tf.int64))(ids)


def test_keras_model_through_the_tensorflow_entry_point(linear):
    """framework="tensorflow" with a Keras model (on the TensorFlow backend) uses the Keras adapter."""
    keras = import_or_fail("keras")
    if keras.backend.backend() != "tensorflow":
        pytest.skip("Keras runs another backend in this process")
    w, x, bg = linear
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(1)])
    model.set_weights([w[:, None], np.zeros(1, np.float32)])
    explainer = gradshap.GradientExplainer(model, tf.constant(bg), framework="tensorflow")
    assert explainer.framework == "keras"
    exp = explainer(tf.constant(x), n_samples=16, sampler="balanced", seed=0)
    np.testing.assert_allclose(exp.values.numpy(), w * (x - bg.mean(0)), rtol=0, atol=ATOL)


class Tanh(tf.Module):
    """``tanh(x @ w1) @ w2``: no convolution, so XLA compiles its step on a CPU-only machine."""

    def __init__(self, w1, w2):
        super().__init__()
        self.w1, self.w2 = tf.Variable(w1), tf.Variable(w2)

    def __call__(self, x):
        return tf.tanh(x @ self.w1) @ self.w2


class Conv(tf.Module):
    """A 1-D convolution over the 5 features, then a sum: keeps the plain graph."""

    def __init__(self, k):
        super().__init__()
        self.k = tf.Variable(k.reshape(3, 1, 1))

    def __call__(self, x):
        h = tf.nn.conv1d(x[:, :, None], self.k, stride=1, padding="SAME")
        return tf.reduce_sum(tf.tanh(h), axis=1)


def test_xla_compiles_the_step_of_a_model_without_convolutions(rng):
    """On a CPU-only machine the adapter compiles the steps of a model without convolutions
    with XLA, and of one with a convolution without: the same numbers either way (float32
    rounding apart), and those of NumPy in float64."""
    if tf.config.list_logical_devices("GPU"):
        pytest.skip("XLA is chosen on CPU-only machines")
    w1 = rng.standard_normal((5, 6)).astype(np.float32)
    w2 = rng.standard_normal((6, 1)).astype(np.float32)
    x, bg = rng.standard_normal((3, 5)).astype(np.float32), rng.standard_normal((8, 5)).astype(np.float32)
    explainer = gradshap.GradientExplainer(Tanh(w1, w2), tf.constant(bg))
    exp = explainer(tf.constant(x), n_samples=32, seed=2)
    assert explainer.adapter._xla is True
    plain = gradshap.GradientExplainer(Tanh(w1, w2), tf.constant(bg))
    plain.adapter._xla = False  # decided: no XLA
    ref = plain(tf.constant(x), n_samples=32, seed=2)
    np.testing.assert_allclose(exp.values.numpy(), ref.values.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(exp.stderr.numpy(), ref.stderr.numpy(), rtol=1e-4, atol=1e-7)

    def value_and_grad(p):
        h = np.tanh(p @ w1)
        return (h @ w2)[:, 0], ((1 - h**2) * w2[:, 0]) @ w1.T

    want = gradshap.expected_gradients(value_and_grad, x.astype(np.float64), bg.astype(np.float64),
                                       n_samples=32, seed=2)
    np.testing.assert_allclose(exp.values.numpy(), want.values, rtol=1e-4, atol=1e-5)

    k = rng.standard_normal(3).astype(np.float32)
    conv = gradshap.GradientExplainer(Conv(k), tf.constant(bg))
    got = conv(tf.constant(x), n_samples=32, seed=2)
    assert conv.adapter._xla is False

    def conv_value_and_grad(p):
        # SAME cross-correlation of the 5 features with k, then sum(tanh(.)).
        padded = np.pad(p, ((0, 0), (1, 1)))
        h = np.tanh(k[0] * padded[:, :-2] + k[1] * padded[:, 1:-1] + k[2] * padded[:, 2:])
        d = 1 - h**2  # h_i depends on x_{i-1} (by k0), x_i (k1), x_{i+1} (k2)
        grad = k[1] * d
        grad[:, :-1] += k[0] * d[:, 1:]
        grad[:, 1:] += k[2] * d[:, :-1]
        return h.sum(1), grad

    want = gradshap.expected_gradients(conv_value_and_grad, x.astype(np.float64), bg.astype(np.float64),
                                       n_samples=32, seed=2)
    np.testing.assert_allclose(got.values.numpy(), want.values, rtol=1e-4, atol=1e-5)


def test_a_step_xla_cannot_compile_falls_back_to_the_plain_graph(linear):
    if tf.config.list_logical_devices("GPU"):
        pytest.skip("XLA is chosen on CPU-only machines")
    w, x, bg = linear

    @tf.custom_gradient
    def host_double(t):
        # tf.py_function runs Python: XLA cannot compile it.
        out = tf.py_function(lambda a: 2.0 * a, [t], t.dtype)
        out.set_shape(t.shape)
        return out, lambda dy: 2.0 * dy

    model = lambda t: host_double(t) @ tf.constant(w[:, None])  # noqa: E731
    explainer = gradshap.GradientExplainer(model, tf.constant(bg), framework="tensorflow")
    exp = explainer(tf.constant(x), n_samples=16, seed=0)
    assert explainer.adapter._xla is False  # XLA failed to compile; the plain graph ran the step
    np.testing.assert_allclose(exp.values.numpy(), 2 * w * (x - bg.mean(0)), rtol=0, atol=4 * ATOL)
    again = explainer(tf.constant(x), n_samples=16, seed=0)
    np.testing.assert_array_equal(again.values.numpy(), exp.values.numpy())


@pytest.mark.parametrize(("n_background", "batch_size"), [(7, 12), (40, 60)])
def test_dense_models_under_xla_give_the_numpy_numbers_and_never_retrace(rng, caplog, n_background, batch_size):
    """Where XLA compiles the step (a CPU, no convolution), with a background row per column
    (30 samples over 7 background rows) or one column (30 samples over 40), on 23 rows in
    many chunks: every kind of target gives the NumPy reference's numbers; calls at six row
    counts give no warning from TensorFlow of retracing, and the same counts again, with
    another seed, trace the model no more."""
    weights = mlp_weights(rng)
    bg, x = rng.normal(size=(n_background, 6)), rng.normal(size=(23, 6))
    module, traces = tf_mlp(weights), {"n": 0}

    def model(p):
        traces["n"] += 1  # runs once per trace
        return module(p)

    explainer = gradshap.GradientExplainer(model, tf.constant(bg), batch_size=batch_size)
    reference = gradshap.GradientExplainer(numpy_mlp(weights), bg, framework="numpy")
    per_row = rng.integers(0, 3, size=23)
    for target in (2, [0, 2], "predicted", per_row, tf.constant(per_row)):
        exp = explainer(tf.constant(x), target=target, n_samples=30, seed=5)
        ref = reference(x, target=per_row if isinstance(target, tf.Tensor) else target, n_samples=30, seed=5)
        for name in ("values", "stderr", "base_values", "output", "delta"):
            np.testing.assert_allclose(np.asarray(getattr(exp, name)), getattr(ref, name), rtol=1e-9, atol=1e-12,
                                       err_msg=f"{name} for target {target!r}")
    if not tf.config.list_logical_devices("GPU"):
        assert explainer.adapter._xla is True
    with caplog.at_level("WARNING"):
        for rows in (1, 3, 5, 9, 17, 22):
            exp = explainer(tf.constant(x[:rows]), target=1, n_samples=30, seed=5)
            np.testing.assert_allclose(exp.values.numpy(), reference(x[:rows], target=1, n_samples=30, seed=5).values,
                                       rtol=1e-9, atol=1e-12)
        traced = traces["n"]
        for rows in (1, 3, 5, 9, 17, 22):
            explainer(tf.constant(x[:rows]), target=1, n_samples=30, seed=6)
        assert traces["n"] == traced
    assert not [r for r in caplog.records if "retracing" in r.getMessage()]
