"""Forward-only Shapley references, and where Expected Gradients equals them."""

from __future__ import annotations

import numpy as np
import pytest
from analytic_models import additive, linear, multilinear, network

import gradshap
from gradshap.reference import exact_shapley, sampling_shapley


@pytest.fixture
def data(rng):
    return rng.normal(size=(3, 6)), rng.normal(size=(10, 6))


# --------------------------------------------------------------------------- exact_shapley


def test_hand_computed_game():
    # f = x0 * x1 against a zero baseline: v({}) = v({0}) = v({1}) = 0, v({0, 1}) = 6.
    exp = exact_shapley(lambda p: p[:, 0] * p[:, 1], np.array([[2.0, 3.0]]), np.zeros((1, 2)))
    np.testing.assert_allclose(exp.values, [[3.0, 3.0]])
    np.testing.assert_allclose(exp.base_values, [0.0])
    np.testing.assert_allclose(exp.output, [6.0])


def test_linear_and_additive_models_have_closed_forms(data, rng):
    x, bg = data
    w = rng.normal(size=6)
    np.testing.assert_allclose(exact_shapley(linear(w).f, x, bg).values, w * (x - bg.mean(0)), rtol=1e-12, atol=1e-13)
    expected = w * (np.sin(x) - np.sin(bg).mean(0))
    np.testing.assert_allclose(exact_shapley(additive(w).f, x, bg).values, expected, rtol=1e-12, atol=1e-13)


def test_efficiency_symmetry_and_dummy(data):
    x, bg = data
    model = network(6, seed=1)

    def f(p):  # feature 5 is ignored; features 0 and 1 enter symmetrically
        q = p.copy()
        q[:, 5] = 0.0
        q[:, 1] = q[:, 0]
        return model.f(q) + np.tanh(p[:, 0] + p[:, 1])

    x = x.copy()
    x[:, 1] = x[:, 0]
    bg = bg.copy()
    bg[:, 1] = bg[:, 0]
    exp = exact_shapley(f, x, bg)
    np.testing.assert_allclose(exp.values.sum(1), f(x) - f(bg).mean(), rtol=1e-12)
    np.testing.assert_allclose(exp.delta, 0.0, atol=1e-12)
    np.testing.assert_allclose(exp.values[:, 5], 0.0, atol=1e-14)
    assert np.max(np.abs(exp.stderr)) == 0.0


def test_groups_are_players(data, rng):
    x, bg = data
    w = rng.normal(size=6)
    groups = [[0, 3], [1], [2, 4, 5]]
    exp = exact_shapley(additive(w).f, x, bg, groups=groups)
    per_feature = exact_shapley(additive(w).f, x, bg).values
    assert exp.values.shape == (3, 3)
    np.testing.assert_allclose(exp.values, np.stack([per_feature[:, g].sum(1) for g in groups], axis=1), rtol=1e-12)
    ids = np.array([0, 1, 2, 0, 2, 2])
    np.testing.assert_allclose(exact_shapley(additive(w).f, x, bg, groups=ids).values, exp.values, rtol=1e-13)


def test_image_shaped_inputs_keep_their_shape(rng):
    x, bg = rng.normal(size=(2, 2, 3)), rng.normal(size=(4, 2, 3))
    exp = exact_shapley(lambda p: np.sum(p**2, axis=(1, 2)), x, bg)
    assert exp.values.shape == (2, 2, 3)
    np.testing.assert_allclose(exp.values, x**2 - (bg**2).mean(0), rtol=1e-12, atol=1e-13)


def test_bad_arguments_are_named(data):
    x, bg = data
    with pytest.raises(ValueError, match="`groups` must partition"):
        exact_shapley(lambda p: p[:, 0], x, bg, groups=[[0, 1], [1, 2]])
    with pytest.raises(ValueError, match="`groups` must cover every feature"):
        exact_shapley(lambda p: p[:, 0], x, bg, groups=[[0, 1], [2]])
    with pytest.raises(ValueError, match="`f` must return one scalar per row"):
        exact_shapley(lambda p: p, x, bg)
    with pytest.raises(ValueError, match="d=21 players is more than 20"):
        exact_shapley(lambda p: p[:, 0], np.zeros((1, 21)), np.zeros((2, 21)))


def test_array_api_namespaces_are_kept(data):
    torch = pytest.importorskip("torch")
    xps = pytest.importorskip("array_api_strict")
    x, bg = data
    w = np.arange(6.0)
    ref = exact_shapley(linear(w).f, x, bg).values
    wt = torch.from_numpy(w)
    out = exact_shapley(lambda p: p @ wt, torch.from_numpy(x), torch.from_numpy(bg))
    assert isinstance(out.values, torch.Tensor)
    np.testing.assert_allclose(out.values.numpy(), ref, rtol=1e-12, atol=1e-13)
    ws = xps.asarray(w)
    strict = exact_shapley(lambda p: p @ ws, xps.asarray(x), xps.asarray(bg))
    np.testing.assert_allclose(np.asarray(strict.values), ref, rtol=1e-12, atol=1e-13)
    perm = sampling_shapley(lambda p: p @ ws, xps.asarray(x), xps.asarray(bg), n_permutations=5, seed=0)
    assert np.asarray(perm.values).shape == (3, 6)


# --------------------------------------------------------------------------- sampling_shapley


def test_sampling_shapley_is_unbiased_with_an_honest_stderr(data):
    x, bg = data
    model = network(6, seed=2)
    exact = exact_shapley(model.f, x, bg).values
    runs = [sampling_shapley(model.f, x, bg, n_permutations=64, seed=s) for s in range(150)]
    est = np.array([r.values for r in runs])
    err = np.array([r.stderr for r in runs])
    z = (est - exact) / err
    assert abs(np.mean(est - exact)) < 0.1 * np.sqrt(np.mean((est - exact) ** 2))
    ratio = np.sqrt(np.mean((est - exact) ** 2) / np.mean(err**2))
    assert 0.85 <= ratio <= 1.15, ratio
    assert np.mean(np.abs(z) > 1.96) < 0.08
    # Each permutation splits f(x) - f(b) exactly, so only the baseline draw misses completeness.
    np.testing.assert_allclose(runs[0].output, model.f(x), rtol=1e-13)


def test_sampling_shapley_is_reproducible_and_batch_independent(data):
    x, bg = data
    model = network(6, seed=2)
    a = sampling_shapley(model.f, x, bg, n_permutations=50, seed=3)
    b = sampling_shapley(model.f, x, bg, n_permutations=50, seed=3, batch_size=9)
    c = sampling_shapley(model.f, x, bg, n_permutations=50, seed=4)
    np.testing.assert_allclose(a.values, b.values, rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(a.stderr, b.stderr, rtol=1e-10)
    assert not np.allclose(a.values, c.values)
    with pytest.raises(ValueError, match="`n_permutations`"):
        sampling_shapley(model.f, x, bg, n_permutations=0)


# --------------------------------------------------------------------------- Expected Gradients = SHAP


@pytest.mark.parametrize("kind", ["linear", "additive", "multilinear"])
@pytest.mark.parametrize("sampler", ["exhaustive", "lattice"])
def test_expected_gradients_equals_exact_shapley(rng, kind, sampler):
    """Where the path integral is interventional SHAP: linear, additive and multilinear models."""
    d = 6
    x, bg = rng.normal(size=(4, d)), rng.normal(size=(8, d))
    w = rng.normal(size=d)
    model = {
        "linear": linear(w),
        "additive": additive(w),
        "multilinear": multilinear([(0, 1, 2), (3, 4), (1, 5), (2,), (0, 3, 4, 5)], rng.normal(size=5)),
    }[kind]
    shap = exact_shapley(model.f, x, bg).values
    if sampler == "exhaustive":
        # Degree-3 integrand in alpha: two Gauss-Legendre nodes per background row are exact, and
        # the additive model's smooth integrand converges geometrically.
        n = 8 * (24 if kind == "additive" else 2)
        eg = gradshap.expected_gradients(model, x, bg, n_samples=n, sampler=sampler).values
        np.testing.assert_allclose(eg, shap, rtol=1e-8, atol=1e-10)
    elif kind == "linear":
        eg = gradshap.expected_gradients(model, x, bg, n_samples=8, sampler=sampler, seed=0).values
        np.testing.assert_allclose(eg, shap, rtol=1e-12, atol=1e-13)
    else:  # random designs converge to it, at the lattice's 1/n
        exp = gradshap.expected_gradients(model, x, bg, n_samples=8 * 512, sampler=sampler, seed=0)
        assert np.max(np.abs(exp.values - shap) / exp.stderr) < 5.0
        assert np.max(np.abs(exp.values - shap)) < 1e-3 * np.max(np.abs(shap))


def test_expected_gradients_differs_from_shapley_beyond_multilinear_models():
    """f = x0^2 x1 from a zero baseline at x = (1, 1): SHAP splits f evenly, the path integral 2:1."""
    def vg(p):
        return p[:, 0] ** 2 * p[:, 1], np.stack([2 * p[:, 0] * p[:, 1], p[:, 0] ** 2], axis=1)

    x, bg = np.ones((1, 2)), np.zeros((1, 2))
    eg = gradshap.expected_gradients(vg, x, bg, n_samples=2, sampler="exhaustive").values
    shap = exact_shapley(lambda p: vg(p)[0], x, bg).values
    np.testing.assert_allclose(eg, [[2.0 / 3.0, 1.0 / 3.0]], rtol=1e-14)
    np.testing.assert_allclose(shap, [[0.5, 0.5]], rtol=1e-14)


def test_torch_multilinear_model_matches_exact_shapley(rng):
    torch = pytest.importorskip("torch")

    class Bilinear(torch.nn.Module):
        def forward(self, p):
            return p[:, 0] * p[:, 1] - 2.0 * p[:, 1] * p[:, 2] * p[:, 3] + p[:, 3]

    x, bg = torch.from_numpy(rng.normal(size=(3, 4))), torch.from_numpy(rng.normal(size=(6, 4)))
    model = Bilinear()
    eg = gradshap.GradientExplainer(model, bg)(x, n_samples=12, sampler="exhaustive").values
    with torch.no_grad():
        shap = exact_shapley(model, x, bg).values
    np.testing.assert_allclose(eg.numpy(), shap.numpy(), rtol=1e-10, atol=1e-12)
