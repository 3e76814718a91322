"""Integrated Gradients: quadrature rules, analytic path integrals, baselines and completeness."""

from __future__ import annotations

import decimal
import math
from decimal import Decimal

import numpy as np
import pytest
from analytic_models import linear, network

import gradshap
from gradshap import _quadrature

METHODS = _quadrature.METHODS


def _ig(model, baseline=None):
    return gradshap.IntegratedGradients(model.pair, baseline, framework="numpy")


# --------------------------------------------------------------------------- rules


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("m", [2, 3, 7, 10, 50, 64, 65, 100, 257])
def test_weights_sum_to_exactly_one(method, m):
    nodes, weights = _quadrature.rule(method, m)
    assert math.fsum(weights) == 1.0
    assert nodes.shape == weights.shape == (m,)
    assert np.all((nodes >= 0) & (nodes <= 1)) and np.all(np.diff(nodes) > 0) and np.all(weights > 0)


@pytest.mark.parametrize("m", [1, 2, 5, 20, 80, 300])
def test_gauss_legendre_is_exact_below_degree_2m(m):
    nodes, weights = _quadrature.gauss_legendre(m)
    for k in range(2 * m):
        assert abs(np.sum(weights * nodes**k) - 1.0 / (k + 1)) < 1e-13, k
    # Degree 2m is the first it cannot integrate: P_m(2t - 1)^2 integrates to 1/(2m + 1), and
    # vanishes at every node.
    legendre = np.polynomial.legendre.Legendre.basis(m)(2.0 * nodes - 1.0)
    assert np.max(np.abs(legendre)) < 1e-10
    assert abs(np.sum(weights * legendre**2) - 1.0 / (2 * m + 1)) > 0.9 / (2 * m + 1)


def _legendre_and_derivative(m, x):
    p0, p1 = Decimal(1), x
    for j in range(2, m + 1):
        p0, p1 = p1, ((2 * j - 1) * x * p1 - (j - 1) * p0) / j
    return p1, m * (x * p1 - p0) / (x * x - 1)


def _reference_node(m, t, newton_steps=3):
    """The node of the m-point rule on [0, 1] next to ``t``, and its weight: Newton's method
    on the three-term recurrence in 40-digit decimal arithmetic, from ``t``."""
    with decimal.localcontext() as ctx:
        ctx.prec = 40
        x = 2 * Decimal(float(t)) - 1
        for _ in range(newton_steps):
            p, dp = _legendre_and_derivative(m, x)
            x -= p / dp
        _, dp = _legendre_and_derivative(m, x)
        return float((x + 1) / 2), float(1 / ((1 - x * x) * dp * dp))


@pytest.mark.parametrize("m", [60, 64, 65, 100, 101, 150, 500])
def test_gauss_legendre_agrees_with_numpy_across_the_switch(m):
    nodes, weights = _quadrature.gauss_legendre(m)
    x, w = np.polynomial.legendre.leggauss(m)
    # Largest node difference: 0 up to 64 nodes (the same method), 2.2e-16 at 65 to 500.
    np.testing.assert_allclose(nodes, (x + 1.0) / 2.0, rtol=0, atol=1e-15)
    # Weights up to 100 nodes: within 2.1e-12 (numpy's own error at 100, the next test's
    # reference says); above, numpy's end weights are off by more (2e-7 at 3,000 nodes).
    if m <= 100:
        np.testing.assert_allclose(weights, w / w.sum(), rtol=5e-12)


@pytest.mark.parametrize("m", [65, 101, 150, 1000, 3000])
def test_gauss_legendre_matches_a_40_digit_reference(m):
    """Relative accuracy at the ends and where the tabled Bessel zeros give way to McMahon's
    expansion (k = 21, 22): largest errors 8e-16 (nodes), 3.3e-16 (weights). The code
    before Bogaert's expansions erred by up to 1.6e-10 and 1.9e-10 at 3,000 nodes."""
    nodes, weights = _quadrature.gauss_legendre(m)
    middle = m // 2 - 1  # the largest weights, which take the normalisation's residue
    for i in (0, 1, 2, 19, 20, 21, 22, middle, middle + 1):
        t, w = _reference_node(m, nodes[i])
        if i < middle:
            assert abs(nodes[i] - t) <= 1e-14 * t, (i, nodes[i], t)
            assert abs(weights[i] - w) <= 1e-14 * w, (i, weights[i], w)
        else:
            assert abs(nodes[i] - t) <= 1e-15 and abs(weights[i] - w) <= 1e-15, (i, nodes[i], t, weights[i], w)
    np.testing.assert_array_equal(nodes + nodes[::-1], 1.0)
    np.testing.assert_allclose(weights, weights[::-1], rtol=0, atol=1e-15)


def test_gauss_legendre_integrates_monomials_to_relative_rounding():
    """Every term of sum(w * t**k) is positive, so its rounding error is relative: at 200
    nodes every degree below 400 comes out within 5.3e-15 of 1 / (k + 1)."""
    nodes, weights = _quadrature.gauss_legendre(200)
    k = np.arange(400)
    sums = np.array([np.sum(weights * nodes**j) for j in k])
    np.testing.assert_allclose(sums, 1.0 / (k + 1), rtol=2e-14, atol=0)


def test_gauss_legendre_with_200k_nodes():
    m = 200_000
    nodes, weights = _quadrature.gauss_legendre(m)
    assert nodes.shape == weights.shape == (m,)
    assert math.fsum(weights) == 1.0 and np.all(weights > 0)
    assert 0.0 < nodes[0] and nodes[-1] < 1.0 and np.all(np.diff(nodes) > 0)
    # The integral of cos(3t) on [0, 1] is sin(3) / 3 (error 7e-18 here).
    assert abs(np.sum(weights * np.cos(3.0 * nodes)) - math.sin(3.0) / 3.0) < 1e-12
    # The first node, 3.6e-11 from 0, to full relative accuracy (and its weight).
    t, w = _reference_node(m, nodes[0], newton_steps=2)
    assert abs(nodes[0] - t) <= 1e-14 * t and abs(weights[0] - w) <= 1e-14 * w


def test_jump_constants_match_their_closed_forms():
    # Left rule with m nodes: on each cell W(t) - t falls from 1/m to 0, so A = 1/(3 m^2), and
    # W takes the values k/m, so B = (1 - 1/m^2) / 6.
    for m in (1, 4, 9):
        a, b = _quadrature.jump_constants(*_quadrature.rule("left", m))
        assert a == pytest.approx(1.0 / (3 * m * m), rel=1e-12)
        assert b == pytest.approx((1.0 - 1.0 / m**2) / 6.0, rel=1e-12, abs=1e-15)
    # Midpoint with one node: a jump at t errs by t or 1 - t.
    assert _quadrature.jump_constants(np.array([0.5]), np.array([1.0])) == pytest.approx((1.0 / 12.0, 0.0))


def test_bad_method_and_steps_name_the_argument(rng):
    ig = _ig(linear(np.ones(2)))
    x = rng.normal(size=(2, 2))
    with pytest.raises(ValueError, match="`method` must be one of"):
        ig(x, method="simpson")
    with pytest.raises(ValueError, match="`n_steps` must be at least 2 for method='trapezoid'"):
        ig(x, method="trapezoid", n_steps=1)
    with pytest.raises(ValueError, match="`n_steps`"):
        ig(x, n_steps=0)


# --------------------------------------------------------------------------- analytic integrals


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("n_steps", [2, 3, 17])
def test_constant_gradient_integrates_exactly(rng, method, n_steps):
    w = rng.normal(size=5)
    x, b = rng.normal(size=(4, 5)), rng.normal(size=5)
    exp = _ig(linear(w), b)(x, n_steps=n_steps, method=method)
    np.testing.assert_allclose(exp.values, w * (x - b), rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(exp.delta, 0.0, atol=1e-13)
    assert np.max(exp.stderr) < 1e-13
    assert exp.n_samples == n_steps and exp.sampler == method


def _product_ig(x, b):
    """IG of f = prod(x) from b: (x_i - b_i) * integral_0^1 prod_{j != i} (b_j + a (x_j - b_j)) da, exactly."""
    d = x.size
    out = np.empty(d)
    for i in range(d):
        poly = np.polynomial.Polynomial([1.0])
        for j in range(d):
            if j != i:
                poly = poly * np.polynomial.Polynomial([b[j], x[j] - b[j]])
        integral = poly.integ()
        out[i] = (x[i] - b[i]) * (integral(1.0) - integral(0.0))
    return out


def _product_model():
    def f(p):
        return np.prod(p, axis=1)

    def grad(p):
        d = p.shape[1]
        return np.stack([np.prod(np.delete(p, i, axis=1), axis=1) for i in range(d)], axis=1)

    return gradshap.IntegratedGradients((f, grad), framework="numpy"), f


@pytest.mark.parametrize("d", [2, 3, 6, 9])
def test_gauss_legendre_integrates_a_product_exactly(rng, d):
    """f = prod(x): the path integrand has degree d - 1, so ceil(d/2) nodes are exact."""
    _, f = _product_model()
    x, b = rng.normal(size=(3, d)), rng.normal(size=d)
    ig = gradshap.IntegratedGradients(_product_model()[0].model, b, framework="numpy")
    exp = ig(x, n_steps=(d + 1) // 2)
    expected = np.stack([_product_ig(row, b) for row in x])
    np.testing.assert_allclose(exp.values, expected, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(exp.delta, 0.0, atol=1e-12)
    np.testing.assert_allclose(exp.base_values, f(b[None]).repeat(3), rtol=1e-14)
    if d > 2:
        short = ig(x, n_steps=(d + 1) // 2 - 1)
        assert np.max(np.abs(short.values - expected)) > 1e-6


def _exp_model(c):
    """f = exp(c . x): IG from b is (x_i - b_i) c_i (e^{c.x} - e^{c.b}) / (c . (x - b))."""
    return gradshap.IntegratedGradients(
        (lambda p: np.exp(p @ c), lambda p: np.exp(p @ c)[:, None] * c), np.zeros(c.size), framework="numpy")


@pytest.mark.parametrize(("method", "order"), [("left", 1), ("right", 1), ("midpoint", 2), ("trapezoid", 2)])
def test_rules_converge_at_their_order(rng, method, order):
    c = rng.normal(size=4)
    x = rng.normal(size=(3, 4))
    exact = x * c * ((np.exp(x @ c) - 1.0) / (x @ c))[:, None]
    ig = _exp_model(c)
    steps = np.array([8, 16, 32, 64, 128])
    errors = [np.max(np.abs(ig(x, n_steps=int(m), method=method).values - exact)) for m in steps]
    slope = np.polyfit(np.log(steps), np.log(errors), 1)[0]
    assert -order - 0.1 <= slope <= -order + 0.1, slope


def test_gauss_legendre_converges_geometrically_on_an_exponential(rng):
    c = rng.normal(size=4)
    x = rng.normal(size=(3, 4))
    exact = x * c * ((np.exp(x @ c) - 1.0) / (x @ c))[:, None]
    errors = [np.max(np.abs(_exp_model(c)(x, n_steps=m).values - exact)) for m in (2, 4, 8)]
    assert errors[0] > 1e-4 and errors[1] < 1e-6 and errors[2] < 1e-13


# --------------------------------------------------------------------------- baselines and completeness


def test_default_baseline_is_zero_and_shapes_are_accepted(rng):
    w = rng.normal(size=3)
    x = rng.normal(size=(4, 3))
    model = linear(w)
    zero = _ig(model)(x)
    np.testing.assert_allclose(zero.values, w * x, rtol=1e-13)
    np.testing.assert_allclose(zero.base_values, np.full(4, model.f(np.zeros((1, 3)))[0]))
    b = rng.normal(size=3)
    for shaped in (b, b[None]):
        np.testing.assert_allclose(_ig(model, shaped)(x).values, w * (x - b), rtol=1e-12, atol=1e-13)


def test_per_row_baselines_and_per_row_completeness_residual(rng):
    model = network(4, seed=2, act="tanh")
    x, b = rng.normal(size=(5, 4)), rng.normal(size=(5, 4))
    exp = gradshap.IntegratedGradients(model.pair, b, framework="numpy")(x, n_steps=40)
    np.testing.assert_allclose(exp.base_values, model.f(b), rtol=1e-13)
    np.testing.assert_allclose(exp.output, model.f(x), rtol=1e-13)
    np.testing.assert_allclose(exp.delta, exp.values.sum(1) - (model.f(x) - model.f(b)), atol=1e-13)
    assert np.max(np.abs(exp.delta)) < 1e-10  # smooth path: Gauss-Legendre nearly exact
    for r in range(5):  # each row against its own baseline
        single = gradshap.IntegratedGradients(model.pair, b[r], framework="numpy")(x[r : r + 1], n_steps=40)
        np.testing.assert_allclose(single.values[0], exp.values[r], rtol=1e-12, atol=1e-14)


def test_bad_baseline_shape_names_the_argument(rng):
    ig = _ig(linear(np.ones(3)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"`baseline` has shape \(2, 3\); expected \(3,\), \(1, 3\) or \(4, 3\)"):
        ig(rng.normal(size=(4, 3)))
    with pytest.raises(TypeError, match="`x` has dtype float32 but `background` has dtype float64"):
        _ig(linear(np.ones(3)), np.zeros(3))(np.zeros((2, 3), dtype=np.float32))


def test_stderr_indicates_the_size_of_the_error_on_kinked_paths(rng):
    model = network(5, seed=4)
    x = 2.0 * rng.normal(size=(60, 5))
    ig = _ig(model)
    exact = ig(x, n_steps=2000, method="midpoint").values
    for method in ("gausslegendre", "midpoint", "left"):
        exp = ig(x, n_steps=8, method=method)
        ratio = np.sqrt(np.sum((exp.values - exact) ** 2) / np.sum(exp.stderr**2))
        assert 0.3 <= ratio <= 3.0, (method, ratio)


def test_integrated_gradients_is_expected_gradients_with_one_background_row(rng):
    model = network(4, seed=5)
    x, b = rng.normal(size=(3, 4)), rng.normal(size=(1, 4))
    ig = gradshap.IntegratedGradients(model.pair, b, framework="numpy")(x, n_steps=12)
    eg = gradshap.expected_gradients(model, x, b, n_samples=12, sampler="exhaustive")
    np.testing.assert_allclose(ig.values, eg.values, rtol=1e-13, atol=1e-15)


# --------------------------------------------------------------------------- frameworks


@pytest.mark.parametrize("backend", ["jax", "tensorflow"], indirect=True)
def test_per_row_baselines_on_compiling_frameworks_at_a_row_count_they_would_pad(rng, backend):
    """JAX and TensorFlow run a short group of rows padded with copies of its rows; per-row
    baselines pair row r with baseline row r (a copy with its row's baseline): each row
    gets the integral against its own baseline, with its own base value."""
    d = 4
    x, b = rng.normal(size=(5, d)), rng.normal(size=(5, d))
    expected = np.stack([_product_ig(row, base) for row, base in zip(x, b)])
    if backend.name == "jax":
        model = lambda p: backend.lib.numpy.prod(p, axis=1)  # noqa: E731
    else:
        model = lambda p: backend.lib.reduce_prod(p, axis=1)  # noqa: E731
    arr = backend.array
    exp = gradshap.IntegratedGradients(model, arr(b))(arr(x), n_steps=2)
    np.testing.assert_allclose(backend.host(exp.values), expected, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(backend.host(exp.base_values), np.prod(b, axis=1), rtol=1e-12)
    np.testing.assert_allclose(backend.host(exp.output), np.prod(x, axis=1), rtol=1e-12)


def test_torch_and_jax_models_give_the_analytic_integral(rng):
    torch = pytest.importorskip("torch")
    jax = pytest.importorskip("jax")
    d = 4
    x, b = rng.normal(size=(3, d)), rng.normal(size=d)
    expected = np.stack([_product_ig(row, b) for row in x])

    class Product(torch.nn.Module):
        def forward(self, p):
            return torch.prod(p, dim=1)

    module = Product()
    module.train()
    ig_t = gradshap.IntegratedGradients(module, torch.from_numpy(b))
    out_t = ig_t(torch.from_numpy(x), n_steps=2)
    assert ig_t.framework == "torch" and isinstance(out_t.values, torch.Tensor)
    np.testing.assert_allclose(out_t.values.numpy(), expected, rtol=1e-12)
    assert module.training  # left as found
    jnp = jax.numpy
    ig_j = gradshap.IntegratedGradients(lambda p: jnp.prod(p, axis=1))
    out_j = ig_j(jnp.asarray(x), n_steps=2)
    expected0 = np.stack([_product_ig(row, np.zeros(d)) for row in x])
    np.testing.assert_allclose(np.asarray(out_j.values), expected0, rtol=1e-12, atol=1e-14)
    assert ig_j.framework == "jax"


def test_several_targets_and_inputs(rng):
    w = rng.normal(size=(3, 2))

    def f(p):
        return p @ w

    def jac(p):
        return np.broadcast_to(w.T[None], (p.shape[0], 2, 3)).copy()

    x = rng.normal(size=(4, 3))
    exp = gradshap.IntegratedGradients((f, jac), framework="numpy")(x, target=[0, 1], n_steps=3)
    assert exp.values.shape == (4, 3, 2)
    np.testing.assert_allclose(exp.values[..., 1], w[:, 1] * x, rtol=1e-13)


def _square_sum(backend):
    """``f(a) = sum(a**2)`` in ``backend``: its exact Integrated Gradients from ``b`` are ``x**2 - b**2``."""
    if backend.name == "numpy":
        return (lambda a: (a * a).sum(1)), (lambda a: 2.0 * a)
    if backend.name == "tensorflow":
        return lambda a: backend.lib.reduce_sum(a * a, axis=1)
    return lambda a: (a * a).sum(1)


@pytest.mark.parametrize("shared_first", [True, False], ids=["shared-then-per-row", "per-row-then-shared"])
def test_shared_and_per_row_baselines_one_after_the_other(backend, shared_first):
    """One shared baseline, then one baseline per row (and the reverse order), on new
    explainers of the same class: each call integrates from its own baselines. (Draws kept
    between calls once gave the per-row call the shared baseline's numbers, and the
    reverse order an IndexError.)"""
    x = np.array([[1.5, 2.0, 3.0], [3.4, 1.2, 2.0]])
    baselines = np.array([[1.0, 1.0, 1.0], [-2.0, 0.5, 3.0]])
    f = _square_sum(backend)
    shared_b = baselines[:1]
    calls = [(shared_b, x**2 - shared_b**2), (baselines, x**2 - baselines**2)]
    for b, want in calls if shared_first else calls[::-1]:
        exp = gradshap.IntegratedGradients(f, backend.array(b), framework=backend.name)(backend.array(x), n_steps=8)
        np.testing.assert_allclose(backend.host(exp.values), want, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(backend.host(exp.base_values), np.broadcast_to((b**2).sum(1), (2,)), rtol=1e-12)
        np.testing.assert_allclose(backend.host(exp.delta), 0.0, atol=1e-12)
    per_row = gradshap.IntegratedGradients(f, backend.array(baselines), framework=backend.name)(
        backend.array(x), n_steps=8)
    np.testing.assert_allclose(backend.host(per_row.values)[1], [7.56, 1.19, -5.0], rtol=1e-12)
