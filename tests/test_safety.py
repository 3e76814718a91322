"""The user's model and global state are left exactly as found, also when a call fails."""

from __future__ import annotations

import random
import subprocess
import sys

import numpy as np
import pytest

import gradshap
from conftest import import_or_fail


def global_rngs() -> dict:
    """Every global generator's state in this process, comparable with ==: Python's, NumPy's
    and, where the framework is imported, torch's, TensorFlow's global ``tf.random.Generator``
    (object and state) and Keras' global ``SeedGenerator`` (object and state)."""
    mt = np.random.get_state()
    state = {"python": random.getstate(), "numpy": (mt[1].tobytes(), *mt[2:])}
    if "torch" in sys.modules:
        state["torch"] = sys.modules["torch"].get_rng_state().numpy().tobytes()
    tf_ops = sys.modules.get("tensorflow.python.ops.stateful_random_ops")
    if tf_ops is not None:
        gen = tf_ops.global_generator  # read without creating one
        state["tensorflow"] = None if gen is None else (id(gen), gen.state.numpy().tobytes())
    if "keras" in sys.modules:
        from keras.src.backend.common import global_state

        gen = global_state.get_global_attribute("global_seed_generator")
        host = sys.modules["keras"].ops.convert_to_numpy
        state["keras"] = None if gen is None else (id(gen), host(gen.state.value).tobytes())
    return state


def assert_same_rngs(before: dict, after: dict) -> None:
    assert before.keys() == after.keys()
    for name in before:
        assert before[name] == after[name], f"the {name} global generator is not as found"


def tf_op_seed_draws(seed: int, taken: int) -> tuple[np.ndarray, np.ndarray]:
    """What users see of TensorFlow's op-level seeds: the next ``tf.random.uniform`` draw,
    and the one it must be, replayed from ``tf.random.set_seed(seed)`` and ``taken`` draws."""
    tf = sys.modules["tensorflow"]
    got = tf.random.uniform([3]).numpy()
    tf.random.set_seed(seed)
    for _ in range(taken):
        tf.random.uniform([2])
    return got, tf.random.uniform([3]).numpy()


class Tripwire:
    """A host callback for inside a model: counts its runs, draws from Python's and NumPy's
    global generators each time, and raises on run ``fail_at``."""

    def __init__(self):
        self.runs, self.fail_at = 0, None

    def __call__(self, *_):
        self.runs += 1
        random.random()
        np.random.rand(2)
        if self.runs == self.fail_at:
            raise RuntimeError("boom inside the model")
        return np.zeros((), np.float32)


def interrupt_at_chunk(adapter, chunk: int) -> dict:
    """Make ``adapter`` raise KeyboardInterrupt when the engine asks for chunk ``chunk``
    (after the earlier chunks completed); returns the call counter. The engine runs every
    chunk through the chunk step it gets from ``adapter.compile`` (compiled where the
    framework compiles); the other steps it compiles (merges, estimates, the finish) do
    not run the model and are not counted."""
    from gradshap import _engine

    original, calls = adapter.compile, {"n": 0}

    def compile(fn):
        compiled = original(fn)
        if fn is not _engine._chunk:
            return compiled

        def interrupt(xp, *arrays, **static):
            calls["n"] += 1
            if calls["n"] == chunk:
                raise KeyboardInterrupt
            return compiled(xp, *arrays, **static)

        return interrupt

    adapter.compile = compile
    return calls


def _torch_bn_model(torch):
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(5, 8), torch.nn.ReLU(), torch.nn.BatchNorm1d(8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 1)
    )
    model.train()
    # Give BatchNorm non-trivial running statistics.
    with torch.no_grad():
        model(torch.randn(64, 5) * 3 + 1)
    model[0].weight.requires_grad_(False)  # a user's frozen layer must stay frozen
    return model


def _snapshot(torch, model):
    return (
        [m.training for m in model.modules()],
        [p.requires_grad for p in model.parameters()],
        {k: v.clone() for k, v in model.state_dict().items()},
        [p.grad for p in model.parameters()],
        torch.get_rng_state().clone(),
        np.random.get_state()[1].copy(),
        random.getstate(),
    )


def _assert_same(torch, before, after):
    assert before[0] == after[0]
    assert before[1] == after[1]
    for k in before[2]:
        assert torch.equal(before[2][k], after[2][k]), k
    assert all(g is None for g in after[3])
    assert torch.equal(before[4], after[4])
    np.testing.assert_array_equal(before[5], after[5])
    assert before[6] == after[6]


def test_torch_model_state_untouched_by_a_call():
    torch = import_or_fail("torch")
    model = _torch_bn_model(torch)
    before = _snapshot(torch, model)
    bg, x = torch.randn(10, 5, generator=torch.Generator().manual_seed(1)), torch.randn(3, 5, generator=torch.Generator().manual_seed(2))
    before = _snapshot(torch, model)
    exp = gradshap.GradientExplainer(model, bg)(x, n_samples=20, seed=0)
    _assert_same(torch, before, _snapshot(torch, model))
    # The call ran in eval mode: the answer equals an explicit eval-mode model's.
    model.eval()
    ref = gradshap.GradientExplainer(model, bg)(x, n_samples=20, seed=0)
    torch.testing.assert_close(exp.values, ref.values)


def test_torch_model_state_restored_when_the_model_raises():
    torch = import_or_fail("torch")
    model = _torch_bn_model(torch)
    calls = {"n": 0}

    def fail_on_third_call(module, inputs, output):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("boom inside the model")

    handle = model[4].register_forward_hook(fail_on_third_call)
    bg, x = torch.zeros(10, 5), torch.ones(30, 5)
    before = _snapshot(torch, model)
    with pytest.raises(RuntimeError, match="boom inside the model"):
        gradshap.GradientExplainer(model, bg, batch_size=8)(x, n_samples=4, seed=0)
    handle.remove()
    _assert_same(torch, before, _snapshot(torch, model))


def test_torch_model_state_restored_on_keyboard_interrupt_between_chunks():
    torch = import_or_fail("torch")
    model = _torch_bn_model(torch)
    bg, x = torch.zeros(10, 5), torch.ones(30, 5)
    explainer = gradshap.GradientExplainer(model, bg, batch_size=8)
    calls = interrupt_at_chunk(explainer.adapter, 2)
    before = _snapshot(torch, model)
    with pytest.raises(KeyboardInterrupt):
        explainer(x, n_samples=4, seed=0)
    assert calls["n"] == 2
    _assert_same(torch, before, _snapshot(torch, model))


def _tf_module(tf, seed: int = 0):
    """A tf.Module with a trainable and a frozen layer, fixed statistics, and a call that uses
    every global generator at run time: TensorFlow's global Generator, an op-level-seeded
    draw, and (in a host callback that can also fail on its ``fail_at``-th run) Python's
    and NumPy's."""

    class Net(tf.Module):
        def __init__(self):
            super().__init__()
            rng = np.random.default_rng(seed)
            self.w1 = tf.Variable(rng.standard_normal((5, 8)).astype(np.float32), trainable=False)
            self.mean = tf.Variable(rng.standard_normal(8).astype(np.float32), trainable=False)
            self.w2 = tf.Variable(rng.standard_normal((8, 1)).astype(np.float32))
            self.tripwire = Tripwire()

        def __call__(self, x):
            flag = tf.reshape(tf.numpy_function(self.tripwire, [], tf.float32, stateful=True), [])
            noise = tf.random.get_global_generator().normal([8]) + tf.random.uniform([8])
            return tf.tanh(x @ self.w1 - self.mean + 0.0 * (noise + flag)) @ self.w2

    return Net()


def _tf_state(net):
    return [(v.name, v.trainable, v.numpy().copy()) for v in net.variables]


@pytest.fixture
def tf_seeded():
    """TensorFlow's generators seeded the way a user would, with draws already taken."""
    tf = import_or_fail("tensorflow")
    tf.random.set_seed(11)
    tf.random.uniform([2])
    tf.random.set_global_generator(tf.random.Generator.from_seed(5))
    tf.random.get_global_generator().normal([2])
    return tf


def _check_tf_untouched_then_normal(tf, net, before, rngs, x, bg):
    after = _tf_state(net)
    assert [(n, t) for n, t, _ in after] == [(n, t) for n, t, _ in before]
    for (name, _, old), (_, _, new) in zip(before, after):
        np.testing.assert_array_equal(new, old, err_msg=name)
    assert_same_rngs(rngs, global_rngs())
    np.testing.assert_array_equal(*tf_op_seed_draws(11, taken=1))
    net.tripwire.fail_at = None
    exp, ref = (gradshap.GradientExplainer(m, bg, batch_size=8)(x, n_samples=4, seed=0) for m in (net, _tf_module(tf)))
    for field in ("values", "output", "base_values"):
        np.testing.assert_array_equal(getattr(exp, field).numpy(), getattr(ref, field).numpy(), err_msg=field)


def _tf_data(tf):
    return tf.ones((6, 5)), tf.reshape(tf.range(40, dtype=tf.float32) / 40, (8, 5))


def test_tensorflow_module_and_global_rngs_restored_when_the_model_raises(tf_seeded):
    tf = tf_seeded
    net, (x, bg) = _tf_module(tf), _tf_data(tf)
    before, rngs = _tf_state(net), global_rngs()
    net.tripwire.fail_at = 5  # runs 1-3: forward passes on x, background, background again; 4: chunk 1; 5: chunk 2
    with pytest.raises(Exception, match="boom inside the model"):
        gradshap.GradientExplainer(net, bg, batch_size=8)(x, n_samples=4, seed=0)
    assert net.tripwire.runs == 5
    _check_tf_untouched_then_normal(tf, net, before, rngs, x, bg)


def test_tensorflow_module_and_global_rngs_restored_on_keyboard_interrupt(tf_seeded):
    tf = tf_seeded
    net, (x, bg) = _tf_module(tf), _tf_data(tf)
    explainer = gradshap.GradientExplainer(net, bg, batch_size=8)
    calls = interrupt_at_chunk(explainer.adapter, 2)
    before, rngs = _tf_state(net), global_rngs()
    with pytest.raises(KeyboardInterrupt):
        explainer(x, n_samples=4, seed=0)
    assert calls["n"] == 2 and net.tripwire.runs == 4  # three forward passes, one chunk
    _check_tf_untouched_then_normal(tf, net, before, rngs, x, bg)


def test_tensorflow_complete_call_leaves_the_global_rngs_as_found(tf_seeded):
    tf = tf_seeded
    net, (x, bg) = _tf_module(tf), _tf_data(tf)
    before, rngs = _tf_state(net), global_rngs()
    gradshap.GradientExplainer(net, bg, batch_size=8)(x, n_samples=4, seed=0)
    assert net.tripwire.runs == 6  # the model drew from every generator at every run
    _check_tf_untouched_then_normal(tf, net, before, rngs, x, bg)


def test_tensorflow_global_generator_the_call_creates_is_dropped_again():
    tf = import_or_fail("tensorflow")
    tf_ops = sys.modules["tensorflow.python.ops.stateful_random_ops"]
    tf_ops.global_generator = None  # as in a fresh process: created on first use
    net, (x, bg) = _tf_module(tf), _tf_data(tf)
    gradshap.GradientExplainer(net, bg, batch_size=8)(x, n_samples=4, seed=0)
    assert tf_ops.global_generator is None


def test_flax_nnx_module_untouched_and_run_in_eval_mode():
    jax = import_or_fail("jax")
    nnx = import_or_fail("flax.nnx")
    jnp = jax.numpy

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.lin = nnx.Linear(4, 6, rngs=rngs, param_dtype=jnp.float64)
            self.bn = nnx.BatchNorm(6, rngs=rngs, param_dtype=jnp.float64, dtype=jnp.float64)
            self.drop = nnx.Dropout(0.5, rngs=rngs)
            self.out = nnx.Linear(6, 1, rngs=rngs, param_dtype=jnp.float64)

        def __call__(self, x):
            return self.out(self.drop(self.bn(jax.nn.relu(self.lin(x)))))[:, 0]

    net = Net(nnx.Rngs(0))
    net.bn.mean[...] = jnp.linspace(0.1, 0.6, 6, dtype=net.bn.mean[...].dtype)  # distinctive running statistics
    def host(a):
        if jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
            a = jax.random.key_data(a)  # the module's RNG streams must be untouched too
        return np.asarray(a)

    state_before = jax.tree_util.tree_map(host, nnx.state(net))
    bg = jnp.asarray(np.random.default_rng(0).normal(size=(8, 4)))
    x = jnp.asarray(np.random.default_rng(1).normal(size=(3, 4)))
    exp = gradshap.GradientExplainer(net, bg)(x, n_samples=16, seed=0)
    state_after = jax.tree_util.tree_map(host, nnx.state(net))
    jax.tree_util.tree_map(np.testing.assert_array_equal, state_before, state_after)
    assert net.bn.use_running_average is False and net.drop.deterministic is False
    # Deterministic (eval mode): the same call gives the same numbers, and completeness holds
    # in expectation for this piecewise-linear model.
    again = gradshap.GradientExplainer(net, bg)(x, n_samples=16, seed=0)
    np.testing.assert_array_equal(np.asarray(exp.values), np.asarray(again.values))
    net.eval()
    np.testing.assert_allclose(np.asarray(exp.output), np.asarray(net(x)), rtol=1e-12)


def test_import_gradshap_imports_no_framework():
    code = (
        "import sys, gradshap, gradshap.explanation, gradshap.cli;"
        "bad = [m for m in ('torch', 'jax', 'tensorflow', 'keras', 'flax', 'matplotlib') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
