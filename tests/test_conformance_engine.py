"""The engine is pure array API: it runs on array-api-strict and inside jax.jit."""

from __future__ import annotations

import numpy as np

import gradshap
from conftest import import_or_fail
from models import mlp_weights, numpy_mlp


def test_engine_runs_on_array_api_strict(rng):
    xps = import_or_fail("array_api_strict")
    w = rng.normal(size=(5, 2))
    ws = xps.asarray(w)

    def f(p):
        return p @ ws

    def jacobian(p):
        return xps.broadcast_to(xps.reshape(xps.asarray(w.T), (1, 2, 5)), (p.shape[0], 2, 5))

    bg, x = rng.normal(size=(6, 5)), rng.normal(size=(3, 5))
    exp = gradshap.GradientExplainer((f, jacobian), xps.asarray(bg), framework="numpy")(
        xps.asarray(x), target=np.array([0, 1, 1]), n_samples=12, sampler="balanced", seed=0, stdevs=0.0
    )
    assert isinstance(exp.values, type(xps.asarray(x)))
    expected = w[:, [0, 1, 1]].T * (x - bg.mean(0))
    np.testing.assert_allclose(np.asarray(exp.values), expected, atol=1e-12)
    many = gradshap.GradientExplainer((f, jacobian), xps.asarray(bg), framework="numpy")(
        xps.asarray(x), target=[1, 0], n_samples=5, sampler="iid", seed=0, stdevs=0.3
    )
    assert many.values.shape == (3, 5, 2)


def test_engine_traces_under_jax_jit(rng):
    jax = import_or_fail("jax")
    jnp = jax.numpy
    weights = mlp_weights(rng)
    ws = [(jnp.asarray(w), jnp.asarray(b)) for w, b in weights]

    def f(p):
        h = p
        for i, (w, b) in enumerate(ws):
            h = h @ w + b
            h = jnp.tanh(h) if i < len(ws) - 1 else h
        return h

    def value_and_grad(p):
        # Scalar function: the sum of outputs 0 and 2.
        return jax.value_and_grad(lambda q: (f(q)[:, 0] + f(q)[:, 2]).sum())(p)[0] * jnp.ones(p.shape[0]), jax.grad(
            lambda q: (f(q)[:, 0] + f(q)[:, 2]).sum()
        )(p)

    bg, x = jnp.asarray(rng.normal(size=(7, 6))), jnp.asarray(rng.normal(size=(4, 6)))

    def explain(x, bg):
        exp = gradshap.expected_gradients(value_and_grad, x, bg, n_samples=9, seed=3, batch_size=10)
        return exp.values, exp.stderr

    jitted_values, jitted_stderr = jax.jit(explain)(x, bg)
    # Same numbers eagerly, from the NumPy reference model with the same seed.
    fnp, jac = numpy_mlp(weights)
    ref = gradshap.GradientExplainer((lambda p: fnp(p)[:, 0] + fnp(p)[:, 2], lambda p: jac(p)[:, 0] + jac(p)[:, 2]),
                                     np.asarray(bg), framework="numpy", batch_size=10)(np.asarray(x), n_samples=9, seed=3)
    np.testing.assert_allclose(np.asarray(jitted_values), ref.values, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(np.asarray(jitted_stderr), ref.stderr, rtol=1e-8, atol=1e-12)


def test_jax_adapter_compiles_once_for_a_long_call(rng):
    """Chunks are padded to one shape: many chunks, one trace of the VJP."""
    jax = import_or_fail("jax")
    jnp = jax.numpy
    traces = {"n": 0}
    w = jnp.asarray(rng.normal(size=(3,)))

    def model(p):
        traces["n"] += 1  # runs once per trace, not per call
        return p @ w

    bg, x = jnp.asarray(rng.normal(size=(5, 3))), jnp.asarray(rng.normal(size=(23, 3)))
    explainer = gradshap.GradientExplainer(model, bg, batch_size=16)
    explainer(x, n_samples=6, seed=0)  # 23 rows x 6 samples: 9 chunks of the VJP
    # One VJP trace (chunks of 5 rows x 3 samples); forward traces for 16 and 8 rows
    # (x: 16 + 7 -> 8; background: 5 -> 8; together they would not fit one chunk).
    assert traces["n"] == 3
    explainer(x[:11], n_samples=6, seed=1)  # x and the background together: 16 rows, seen before
    explainer(x[:13], n_samples=6, seed=2)  # 18 rows: separately, 16 (seen) and 8 (seen)
    assert traces["n"] == 3
    # Fewer rows than a chunk holds: chunks shrink to the rows there are (3 x 3 points, not
    # padded to 5 x 3); x and the background (3 + 5 rows) are a forward of 8 (seen): one new shape.
    explainer(x[:3], n_samples=6, seed=1)
    assert traces["n"] == 4
    explainer(x[:3], n_samples=6, seed=2)
    assert traces["n"] == 4
