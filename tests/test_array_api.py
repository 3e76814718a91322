"""The engine is pure array API: it runs on array-api-strict and inside jax.jit, with
every sampler, and gives the numbers it gives on NumPy."""

from __future__ import annotations

import numpy as np
import pytest
from analytic_models import network

import gradshap
from conftest import import_or_fail
from models import mlp_weights, numpy_mlp

ALL = ("iid", "balanced", "lattice", "sobol", "exhaustive")


@pytest.fixture
def problem(rng):
    d = 5
    return rng.normal(size=(3, d)), rng.normal(size=(16, d)), network(d, seed=3)


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


@pytest.mark.parametrize("sampler", ALL)
def test_every_sampler_runs_under_array_api_strict(problem, sampler):
    xps = import_or_fail("array_api_strict")
    x, bg, model = problem
    w, c, v = model.params
    wx, cx, vx = (xps.asarray(a) for a in (w, c, v))

    def vg(p):
        z = p @ xps.permute_dims(wx, (1, 0)) + cx
        slope = xps.astype(z > 0, p.dtype)
        return xps.sum(z * slope * vx, axis=1), (slope * vx) @ wx

    ref = gradshap.expected_gradients(model, x, bg, n_samples=40, sampler=sampler, seed=2)
    out = gradshap.expected_gradients(vg, xps.asarray(x), xps.asarray(bg), n_samples=40, sampler=sampler, seed=2)
    assert isinstance(out.values, type(xps.asarray(x)))
    np.testing.assert_allclose(np.asarray(out.values), ref.values, atol=1e-12)
    np.testing.assert_allclose(np.asarray(out.stderr), ref.stderr, atol=1e-12)


@pytest.mark.parametrize("sampler", ALL)
def test_every_sampler_traces_under_jax_jit(problem, sampler):
    jax = import_or_fail("jax")
    jnp = jax.numpy
    x, bg, model = problem
    w, c, v = (jnp.asarray(a) for a in model.params)

    def vg(p):
        z = p @ w.T + c
        slope = (z > 0).astype(p.dtype)
        return jnp.sum(z * slope * v, axis=1), (slope * v) @ w

    def explain(xx, bb):
        exp = gradshap.expected_gradients(vg, xx, bb, n_samples=40, sampler=sampler, seed=2)
        return exp.values, exp.stderr

    ref = gradshap.expected_gradients(model, x, bg, n_samples=40, sampler=sampler, seed=2)
    values, stderr = jax.jit(explain)(jnp.asarray(x), jnp.asarray(bg))
    np.testing.assert_allclose(np.asarray(values), ref.values, atol=1e-12)
    np.testing.assert_allclose(np.asarray(stderr), ref.stderr, atol=1e-12)
