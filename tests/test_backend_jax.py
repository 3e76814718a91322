"""JAX adapter: plain callables, functools.partial(apply, params), Flax NNX and Equinox;
compiled once per chunk shape, with the numbers of the NumPy reference."""

from __future__ import annotations

import functools

import numpy as np
import pytest

import gradshap
from conftest import assert_compiles_once_per_chunk_shape, import_or_fail
from models import mlp_weights, numpy_mlp


def _reference(weights, bg, x, **kw):
    return gradshap.GradientExplainer(numpy_mlp(weights), bg, framework="numpy")(x, **kw)


def _apply(params, x):
    jnp = import_or_fail("jax").numpy
    h = x
    for i, (w, b) in enumerate(params["layers"]):
        h = h @ w + b
        h = jnp.tanh(h) if i < len(params["layers"]) - 1 else h
    return h * params["scale"]


def test_partial_apply_params_matches_numpy_reference(rng):
    jnp = import_or_fail("jax").numpy
    weights = mlp_weights(rng)
    params = {"layers": [(jnp.asarray(w), jnp.asarray(b)) for w, b in weights], "scale": 1.0}
    bg, x = rng.normal(size=(8, 6)), rng.normal(size=(3, 6))
    kw = dict(target=2, n_samples=30, seed=11)
    exp = gradshap.GradientExplainer(functools.partial(_apply, params), jnp.asarray(bg))(jnp.asarray(x), **kw)
    ref = _reference(weights, bg, x, **kw)
    np.testing.assert_allclose(np.asarray(exp.values), ref.values, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(np.asarray(exp.base_values), ref.base_values, rtol=1e-12)


def test_equinox_module_is_vmapped_over_rows(rng):
    jax = import_or_fail("jax")
    eqx = import_or_fail("equinox")
    jnp = jax.numpy
    weights = mlp_weights(rng, sizes=(6, 16, 3))

    class PerExample(eqx.Module):
        w1: jax.Array
        b1: jax.Array
        w2: jax.Array
        b2: jax.Array
        drop: eqx.nn.Dropout

        def __call__(self, x):  # one example, as Equinox modules are written
            h = self.drop(jnp.tanh(x @ self.w1 + self.b1), key=None)
            return h @ self.w2 + self.b2

    (w1, b1), (w2, b2) = weights
    module = PerExample(*(jnp.asarray(a) for a in (w1, b1, w2, b2)), eqx.nn.Dropout(0.5))
    bg, x = rng.normal(size=(8, 6)), rng.normal(size=(3, 6))
    kw = dict(target="predicted", n_samples=24, seed=5)
    exp = gradshap.GradientExplainer(module, jnp.asarray(bg))(jnp.asarray(x), **kw)
    ref = _reference(weights, bg, x, **kw)
    np.testing.assert_allclose(np.asarray(exp.values), ref.values, rtol=1e-10, atol=1e-13)
    assert module.drop.inference is False  # the user's module is untouched


def test_flax_module_updates_between_calls_are_seen(rng):
    jax = import_or_fail("jax")
    nnx = import_or_fail("flax.nnx")
    jnp = jax.numpy
    lin = nnx.Linear(3, 1, rngs=nnx.Rngs(0), param_dtype=jnp.float64)
    bg, x = jnp.zeros((4, 3)), jnp.ones((2, 3))
    explainer = gradshap.GradientExplainer(lin, bg)
    first = explainer(x, n_samples=8, seed=0)
    np.testing.assert_allclose(np.asarray(first.values), np.broadcast_to(np.asarray(lin.kernel[...])[:, 0], (2, 3)), rtol=1e-12)
    lin.kernel[...] = lin.kernel[...] * 2.0  # e.g. a training step between two explanations
    second = explainer(x, n_samples=8, seed=0)
    np.testing.assert_allclose(np.asarray(second.values), 2 * np.asarray(first.values), rtol=1e-12)


def test_jax_float32_default_stays_float32(rng):
    jnp = import_or_fail("jax").numpy
    w = jnp.asarray(rng.normal(size=(4,)), dtype=jnp.float32)
    bg = jnp.asarray(rng.normal(size=(6, 4)), dtype=jnp.float32)
    x = jnp.asarray(rng.normal(size=(2, 4)), dtype=jnp.float32)
    exp = gradshap.GradientExplainer(lambda p: p @ w, bg)(x, n_samples=12, sampler="balanced", seed=0)
    assert exp.values.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(exp.values), np.asarray(w * (x - bg.mean(0))), rtol=1e-5, atol=1e-6)


def _counting_mlp(rng):
    """The tanh MLP's weights, the model on JAX, and the list of the row counts it was
    traced with (its Python function runs once per trace)."""
    jnp = import_or_fail("jax").numpy
    weights = mlp_weights(rng)
    params = {"layers": [(jnp.asarray(w), jnp.asarray(b)) for w, b in weights], "scale": 1.0}
    traced = []

    def model(p):
        traced.append(p.shape[0])
        return _apply(params, p)

    return weights, model, traced


def _assert_the_reference(explainer, weights, bg, x, **kw):
    """``explainer`` on ``x`` gives the NumPy reference's values, errors, base values,
    outputs, residuals and target."""
    jnp = import_or_fail("jax").numpy
    exp = explainer(jnp.asarray(x), **kw)
    target = kw.get("target")
    ref = _reference(weights, bg, x, **{**kw, "target": np.asarray(target) if hasattr(target, "devices") else target})
    for name in ("values", "stderr", "base_values", "output", "delta"):
        got = np.asarray(getattr(exp, name))
        assert got.shape == np.shape(getattr(ref, name)), name
        np.testing.assert_allclose(got, getattr(ref, name), rtol=1e-9, atol=1e-12,
                                   err_msg=f"{name} for {len(x)} rows, {kw}")
    np.testing.assert_array_equal(np.asarray(exp.target), np.asarray(ref.target))


def test_compiles_once_per_chunk_shape(rng):
    jnp = import_or_fail("jax").numpy
    w = jnp.asarray(rng.normal(size=(5,)))
    traces = {"n": 0}

    def model(p):
        traces["n"] += 1  # runs once per trace, not per call or chunk
        return jnp.tanh(p) @ w

    bg, x = jnp.asarray(rng.normal(size=(10, 5))), jnp.asarray(rng.normal(size=(80, 5)))
    assert_compiles_once_per_chunk_shape(lambda: gradshap.GradientExplainer(model, bg, batch_size=40), x,
                                         lambda: traces["n"])


def test_every_kind_of_target_gives_the_numpy_numbers(rng):
    """23 rows at batch_size 12, 30 samples over 7 background rows: many chunks, and a
    last group of rows padded with copies. Every kind of target, other rows and seeds, and
    a callable target give the NumPy reference's numbers for the caller's rows."""
    jnp = import_or_fail("jax").numpy
    weights = mlp_weights(rng)
    params = {"layers": [(jnp.asarray(w), jnp.asarray(b)) for w, b in weights], "scale": 1.0}
    bg, x = rng.normal(size=(7, 6)), rng.normal(size=(23, 6))
    explainer = gradshap.GradientExplainer(functools.partial(_apply, params), jnp.asarray(bg), batch_size=12)
    per_row = rng.integers(0, 3, size=23)
    for target in (2, [0, 2], "predicted", per_row, jnp.asarray(per_row)):
        _assert_the_reference(explainer, weights, bg, x, target=target, n_samples=30, seed=5)
    for rows, seed in ((slice(3, 8), 5), (slice(0, 5), 6), (slice(0, 5), 5), (slice(0, 23), 6)):
        _assert_the_reference(explainer, weights, bg, x[rows], target=2, n_samples=30, seed=seed)
    fnp, jac = numpy_mlp(weights)
    picked = explainer(jnp.asarray(x[:5]), target=lambda out: out[:, 1] - out[:, 0], n_samples=30, seed=5)
    ref = gradshap.GradientExplainer((lambda p: fnp(p)[:, 1] - fnp(p)[:, 0], lambda p: jac(p)[:, 1] - jac(p)[:, 0]),
                                     bg, framework="numpy")(x[:5], n_samples=30, seed=5)
    for name in ("values", "stderr", "output", "delta"):
        np.testing.assert_allclose(np.asarray(getattr(picked, name)), getattr(ref, name), rtol=1e-9, atol=1e-12,
                                   err_msg=name)


@pytest.mark.parametrize(("n_background", "batch_size", "stdevs"), [(7, 40, 0.0), (40, 60, 0.0), (40, 60, 0.3)])
def test_other_row_counts_trace_nothing_new_and_give_the_numpy_numbers(rng, capsys, n_background, batch_size, stdevs):
    """30 samples over 7 background rows (a column per background row) or over 40 (one
    column of distinct rows), with smoothing noise or without. After calls on 30 to 38
    rows (the last rows of a call run in chunks of fewer rows, padded to a power of two:
    these calls run them too), calls with every kind of target on 37 and 33 rows trace the
    model no more, and give the NumPy reference's numbers for the caller's rows. The
    progress bar counts the caller's rows only."""
    jnp = import_or_fail("jax").numpy
    weights, model, traced = _counting_mlp(rng)
    bg, x = rng.normal(size=(n_background, 6)), rng.normal(size=(38, 6))
    explainer = gradshap.GradientExplainer(model, jnp.asarray(bg), batch_size=batch_size)
    kw = dict(n_samples=30, seed=4, stdevs=stdevs)
    for rows in range(30, 39):
        explainer(jnp.asarray(x[:rows]), target=1, **kw)
    seen = len(traced)
    per_row = rng.integers(0, 3, size=37)
    cases = [(37, 1), (37, "predicted"), (37, per_row), (37, jnp.asarray(per_row)), (37, [0, 2]), (33, 2),
             (33, per_row[:33])]
    for rows, target in cases:
        _assert_the_reference(explainer, weights, bg, x[:rows], target=target, **kw)
    assert len(traced) == seen
    capsys.readouterr()
    explainer(jnp.asarray(x[:37]), target=1, progress=True, **kw)
    assert "1110/1110" in capsys.readouterr().err  # the caller's rows only


def test_a_few_rows_trace_nothing_new_after_a_few_more(rng):
    """At the default batch_size a chunk holds more rows than these calls have: they run
    fewer rows per chunk, rounded up to a power of two, so 17 rows after 20 trace nothing
    new, and give the NumPy reference's numbers."""
    jnp = import_or_fail("jax").numpy
    weights, model, traced = _counting_mlp(rng)
    bg, x = rng.normal(size=(7, 6)), rng.normal(size=(20, 6))
    explainer = gradshap.GradientExplainer(model, jnp.asarray(bg))
    explainer(jnp.asarray(x), target=1, n_samples=30, seed=4)
    seen = len(traced)
    _assert_the_reference(explainer, weights, bg, x[:17], target=1, n_samples=30, seed=4)
    assert len(traced) == seen


@pytest.mark.parametrize("batch_size", [220, 140])
def test_out_of_memory_retries_at_half_the_batch_with_the_same_numbers(rng, batch_size):
    """A device that cannot hold more than half the batch: the chunk step fails there with
    an out-of-memory error, the call runs again at half the batch_size, and gives the NumPy
    reference's numbers; after the failure no traced shape holds more points than that."""
    jnp = import_or_fail("jax").numpy
    weights, model, traced = _counting_mlp(rng)
    limit, failed = batch_size // 2, []

    def small_device(p):
        if p.shape[0] > limit:
            failed.append(len(traced))
            raise MemoryError("fake RESOURCE_EXHAUSTED")
        return model(p)

    bg, x = rng.normal(size=(40, 6)), rng.normal(size=(8, 6))
    explainer = gradshap.GradientExplainer(small_device, jnp.asarray(bg), batch_size=batch_size)
    explainer.adapter.is_out_of_memory = lambda err: "fake RESOURCE_EXHAUSTED" in str(err)
    with pytest.warns(ResourceWarning, match=f"retrying with batch_size={limit}$"):
        _assert_the_reference(explainer, weights, bg, x, target=1, n_samples=20, seed=3)
    assert len(failed) == 1 and traced[failed[0]:] and max(traced[failed[0]:]) <= limit


def test_a_convolution_model_gives_the_same_numbers_at_any_batch_size(rng):
    jax = import_or_fail("jax")
    jnp = jax.numpy
    kernel = jnp.asarray(rng.normal(size=(2, 1, 3, 3)))

    def conv(x):
        y = jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME")
        return jnp.sum(jnp.tanh(y), axis=(1, 2, 3))

    images = jnp.asarray(rng.normal(size=(4, 1, 6, 6)))
    results = [gradshap.GradientExplainer(conv, images, batch_size=b)(images[:3], n_samples=8, seed=1)
               for b in (7, 10**4)]
    np.testing.assert_allclose(np.asarray(results[0].values), np.asarray(results[1].values), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(np.asarray(results[0].stderr), np.asarray(results[1].stderr), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(np.asarray(results[0].delta), np.asarray(results[1].delta), rtol=1e-9, atol=1e-12)
    assert np.abs(np.asarray(results[0].values)).max() > 1e-3


_DEVICES_SCRIPT = """
import json, sys
import jax, numpy as np, gradshap
from models import jax_mlp, mlp_weights
rng = np.random.default_rng(5)
weights = mlp_weights(rng)
bg, x = jax.numpy.asarray(rng.normal(size=(9, 6))), jax.numpy.asarray(rng.normal(size=(13, 6)))
explainer = gradshap.GradientExplainer(jax_mlp(weights), bg, batch_size=int(sys.argv[1]))
exp = explainer(x, target=[0, 2], n_samples=30, seed=3, stdevs=0.1)
print(json.dumps({"devices": len(jax.devices()), "used": len(exp.values.sharding.device_set),
                  "values": np.asarray(exp.values).tolist(), "stderr": np.asarray(exp.stderr).tolist(),
                  "delta": np.asarray(exp.delta).tolist()}))
"""


@pytest.mark.parametrize("batch_size", [97, 4096])
def test_every_device_of_the_host_gives_one_devices_numbers(batch_size):
    """With 4 (virtual CPU) devices one call spreads its points over all of them and gives
    the numbers of one device: with small chunks (their points padded where they do not
    divide by 4) and with one chunk of every point."""
    import json
    import os
    import subprocess
    import sys

    import_or_fail("jax")
    tests = os.path.dirname(__file__)
    runs = {}
    for count in (1, 4):
        env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={count}",
               "JAX_ENABLE_X64": "1", "PYTHONPATH": os.pathsep.join([os.path.dirname(gradshap.__path__[0]), tests])}
        out = subprocess.run([sys.executable, "-c", _DEVICES_SCRIPT, str(batch_size)], env=env, capture_output=True,
                             text=True, check=True, timeout=300)
        runs[count] = json.loads(out.stdout.strip().splitlines()[-1])
    assert (runs[1]["devices"], runs[1]["used"]) == (1, 1)
    assert (runs[4]["devices"], runs[4]["used"]) == (4, 4)
    scale = np.max(np.abs(runs[1]["values"]))
    for name in ("values", "stderr", "delta"):
        np.testing.assert_allclose(runs[4][name], runs[1][name], rtol=1e-12, atol=1e-14 * scale, err_msg=name)
