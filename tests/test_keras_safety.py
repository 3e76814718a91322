"""A Keras model and the global random state are left exactly as found, also when the model
raises inside its call midway or a KeyboardInterrupt comes between chunks, on the backend
this process runs (tests/run.py runs this file once per backend, with KERAS_BACKEND set).

The model has a frozen layer, BatchNormalization with distinctive moving statistics, a
seeded Dropout, and layers that use the global generators at run time (Python, NumPy,
Keras' global SeedGenerator, and the backend's own: TensorFlow's or torch's), so that a
call which did not restore them would be caught.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

from conftest import import_or_fail
from test_safety import Tripwire, assert_same_rngs, global_rngs, interrupt_at_chunk, tf_op_seed_draws

keras = import_or_fail("keras")
pytestmark = pytest.mark.keras_backend  # tests/run.py runs these once per Keras backend
import gradshap  # noqa: E402

BACKEND = keras.backend.backend()
L = keras.layers


class TripwireLayer(L.Layer):
    """Identity that runs a :class:`Tripwire` at every run of the model, also inside
    compiled code and loops there (as a host callback of the input). The callback's value scales the input (by
    exactly 1), so the gradient needs it: a compiled chunk step that uses only the
    gradients would otherwise drop a pure callback as dead code."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.tripwire = Tripwire()

    def call(self, x):
        if BACKEND == "torch":
            self.tripwire()
            return x
        if BACKEND == "tensorflow":
            import tensorflow as tf

            flag = tf.reshape(tf.numpy_function(self.tripwire, [], tf.float32, stateful=True), [])
        else:
            import jax

            # An operand from the input: a callback without one is hoisted out of a loop
            # over chunks inside a program, and then runs once per program.
            first = jax.lax.stop_gradient(x[0, 0])
            flag = jax.pure_callback(self.tripwire, jax.ShapeDtypeStruct((), np.float32), first)
        return x * (1.0 + 0.0 * flag)

    def compute_output_shape(self, shape):
        return shape


class GlobalNoise(L.Layer):
    """Adds zero times draws from the global generators a model may use at inference:
    Keras' global SeedGenerator (unseeded keras.random) and the backend's own. JAX has no
    global generator and refuses unseeded draws in traced code: identity there."""

    def call(self, x):
        if BACKEND == "jax":
            return x
        noise = keras.random.normal(keras.ops.shape(x)[-1:])
        if BACKEND == "tensorflow":
            import tensorflow as tf

            noise = noise + tf.random.get_global_generator().normal(tf.shape(x)[-1:])
        else:
            import torch

            noise = noise + torch.rand(x.shape[-1:], dtype=x.dtype)
        return x + 0.0 * noise

    def compute_output_shape(self, shape):
        return shape


def build(weights=None):
    model = keras.Sequential([
        keras.Input((4,)), L.Dense(8, name="frozen"), L.BatchNormalization(), L.Activation("tanh"),
        L.Dropout(0.5, seed=3), TripwireLayer(name="tripwire"), GlobalNoise(), L.Dense(1),
    ])
    if weights is None:
        rng = np.random.default_rng(7)
        weights = [rng.standard_normal(w.shape).astype(np.float32) for w in model.get_weights()]
        weights[5] = 0.5 + rng.random(8).astype(np.float32)  # moving variance > 0
    model.set_weights(weights)
    model.get_layer("frozen").trainable = False
    return model


def model_state(model):
    torch_flags = None
    if BACKEND == "torch":
        torch_flags = [m.training for m in model.modules()], [p.requires_grad for p in model.parameters()]
    return (
        [layer.trainable for layer in model.layers],
        [(v.path, v.trainable, keras.ops.convert_to_numpy(v.value).copy()) for v in model.variables],
        torch_flags,
    )


def assert_same_state(before, after):
    assert before[0] == after[0]
    assert [(p, t) for p, t, _ in before[1]] == [(p, t) for p, t, _ in after[1]]
    for (path, _, old), (_, _, new) in zip(before[1], after[1]):
        np.testing.assert_array_equal(new, old, err_msg=path)
    assert before[2] == after[2]


@pytest.fixture
def data(rng):
    x = rng.standard_normal((6, 4)).astype(np.float32)
    bg = rng.standard_normal((8, 4)).astype(np.float32)
    return tuple(keras.ops.convert_to_tensor(a) for a in (x, bg))


@pytest.fixture
def seeded_globals():
    """Global generators seeded the way a user would, each with draws already taken."""
    keras.utils.set_random_seed(11)  # Python, NumPy, TF op-level seeds, torch; resets Keras' generator
    keras.random.normal((2,))  # creates Keras' global SeedGenerator and advances it
    tf = sys.modules.get("tensorflow")
    if tf is not None:
        tf.random.set_global_generator(tf.random.Generator.from_seed(5))
        tf.random.get_global_generator().normal([2])
        tf.random.uniform([2])  # one op-level draw taken
    return 11


def _explainer(model, bg):
    # 6 rows x 4 samples at most 8 points a chunk: forward(x), forward(background), then chunks.
    return gradshap.GradientExplainer(model, bg, batch_size=8)


def _check_untouched_then_normal(model, before, rngs, data, seed):
    x, bg = data
    assert_same_state(before, model_state(model))
    assert_same_rngs(rngs, global_rngs())
    if "tensorflow" in sys.modules:
        got, want = tf_op_seed_draws(seed, taken=1)
        np.testing.assert_array_equal(got, want)
    # A normal call now gives exactly the numbers of a fresh model with the same weights.
    model.get_layer("tripwire").tripwire.fail_at = None
    fresh = build(model.get_weights())
    exp, ref = (_explainer(m, bg)(x, n_samples=4, seed=0) for m in (model, fresh))
    for field in ("values", "output", "base_values"):
        np.testing.assert_array_equal(*(keras.ops.convert_to_numpy(getattr(e, field)) for e in (exp, ref)), err_msg=field)
    # Training mode still behaves as on the fresh model (batch statistics, seeded dropout).
    np.testing.assert_array_equal(*(keras.ops.convert_to_numpy(m(x, training=True)) for m in (model, fresh)))


def test_model_and_global_rngs_restored_when_the_model_raises_midway(data, seeded_globals):
    model = build()
    tripwire = model.get_layer("tripwire").tripwire
    before, rngs = model_state(model), global_rngs()
    tripwire.fail_at = 5  # runs 1-3: the forward passes (x, background, background again); 4: chunk 1; 5: chunk 2
    with pytest.raises(Exception, match="boom inside the model"):
        _explainer(model, data[1])(data[0], n_samples=4, seed=0)
    assert tripwire.runs >= 5
    _check_untouched_then_normal(model, before, rngs, data, seeded_globals)


def test_model_and_global_rngs_restored_on_keyboard_interrupt_between_chunks(data, seeded_globals):
    model = build()
    explainer = _explainer(model, data[1])
    calls = interrupt_at_chunk(explainer.adapter, 2)
    before, rngs = model_state(model), global_rngs()
    with pytest.raises(KeyboardInterrupt):
        explainer(data[0], n_samples=4, seed=0)
    assert calls["n"] == 2 and model.get_layer("tripwire").tripwire.runs == 4  # three forward passes (one the determinism check), one chunk
    _check_untouched_then_normal(model, before, rngs, data, seeded_globals)


def test_a_complete_call_leaves_everything_as_found(data, seeded_globals):
    model = build()
    before, rngs = model_state(model), global_rngs()
    _explainer(model, data[1])(data[0], n_samples=4, seed=0)
    assert model.get_layer("tripwire").tripwire.runs == 6  # the model really ran (and drew) at every chunk
    _check_untouched_then_normal(model, before, rngs, data, seeded_globals)


def test_a_global_seed_generator_the_call_creates_is_dropped_again(data):
    if BACKEND == "jax":
        pytest.skip("JAX refuses unseeded keras.random draws in traced code: no model can create it")
    model = build()  # (initializers draw their seeds from Python's generator)
    keras.utils.set_random_seed(3)  # no Keras global SeedGenerator until an unseeded draw
    assert global_rngs()["keras"] is None
    exp = _explainer(model, data[1])(data[0], n_samples=4, seed=0)
    assert global_rngs()["keras"] is None
    # The first unseeded draw after the call is the one it would have been without the call.
    got = keras.ops.convert_to_numpy(keras.random.normal((3,)))
    keras.utils.set_random_seed(3)
    np.testing.assert_array_equal(got, keras.ops.convert_to_numpy(keras.random.normal((3,))))
    assert np.isfinite(keras.ops.convert_to_numpy(exp.values)).all()
