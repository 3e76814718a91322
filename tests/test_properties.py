"""Property-based tests of the attribution axioms on random small models (hypothesis)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import gradshap
from models import numpy_mlp

SETTINGS = settings(max_examples=12, deadline=None, derandomize=True)


@st.composite
def problems(draw, n_features=st.integers(2, 6)):
    d = draw(n_features)
    width = draw(st.integers(2, 8))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    weights = [(rng.normal(size=(d, width)), rng.normal(size=width) * 0.3), (rng.normal(size=(width, 2)), rng.normal(size=2))]
    bg = rng.normal(size=(draw(st.integers(1, 9)), d))
    x = rng.normal(size=(draw(st.integers(1, 4)), d))
    return weights, bg, x


def explain(weights, bg, x, **kw):
    kw.setdefault("target", 0)
    return gradshap.GradientExplainer(numpy_mlp(weights), bg, framework="numpy", batch_size=kw.pop("batch_size", None))(x, **kw)


@SETTINGS
@given(problems(), st.sampled_from(["iid", "balanced"]))
def test_completeness_in_expectation(problem, sampler):
    weights, bg, x = problem
    deltas = np.stack([explain(weights, bg, x, n_samples=16, sampler=sampler, seed=s).delta for s in range(48)])
    mean, se = deltas.mean(0), deltas.std(0, ddof=1) / np.sqrt(len(deltas))
    assert np.all(np.abs(mean) <= 4.5 * se + 1e-12), (mean, se)


@SETTINGS
@given(problems(), st.integers(0, 5), st.floats(0.0, 0.5))
def test_dummy_feature_gets_exactly_zero(problem, which, stdevs):
    weights, bg, x = problem
    j = which % x.shape[1]
    weights[0][0][j, :] = 0.0  # the model ignores feature j
    exp = explain(weights, bg, x, n_samples=12, seed=1, stdevs=stdevs)
    assert np.all(exp.values[:, j] == 0.0)
    assert np.all(exp.stderr[:, j] == 0.0)


@SETTINGS
@given(problems(n_features=st.integers(2, 5)))
def test_symmetric_features_get_equal_values(problem):
    weights, bg, x = problem
    weights[0][0][1, :] = weights[0][0][0, :]  # f is symmetric in features 0 and 1
    x = x.copy()
    x[:, 1] = x[:, 0]
    swapped = bg.copy()
    swapped[:, [0, 1]] = bg[:, [1, 0]]
    bg = np.concatenate([bg, swapped])  # a background symmetric in features 0 and 1
    exp = explain(weights, bg, x, n_samples=400, sampler="balanced", seed=2)
    gap = np.abs(exp.values[:, 0] - exp.values[:, 1])
    assert np.all(gap <= 5 * np.hypot(exp.stderr[:, 0], exp.stderr[:, 1]) + 1e-12)


@SETTINGS
@given(problems(), problems())
def test_linearity_in_the_model(p1, p2):
    w1, bg, x = p1
    w2 = p2[0]
    d = x.shape[1]
    if w2[0][0].shape[0] != d:
        w2 = [(np.resize(w2[0][0], (d, w2[0][0].shape[1])), w2[0][1]), w2[1]]
    f1, g1 = numpy_mlp(w1)
    f2, g2 = numpy_mlp(w2)
    both = (lambda p: 2.0 * f1(p) - f2(p), lambda p: 2.0 * g1(p) - g2(p))
    kw = dict(target=1, n_samples=10, seed=3, stdevs=0.1)
    combined = gradshap.GradientExplainer(both, bg, framework="numpy")(x, **kw)
    a = gradshap.GradientExplainer((f1, g1), bg, framework="numpy")(x, **kw)
    b = gradshap.GradientExplainer((f2, g2), bg, framework="numpy")(x, **kw)
    np.testing.assert_allclose(combined.values, 2.0 * a.values - b.values, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(combined.base_values, 2.0 * a.base_values - b.base_values, rtol=1e-10, atol=1e-12)


@SETTINGS
@given(problems(), st.integers(1, 64), st.integers(1, 40), st.sampled_from(["iid", "balanced"]))
def test_invariant_to_batch_size(problem, batch_size, n_samples, sampler):
    weights, bg, x = problem
    kw = dict(n_samples=n_samples, sampler=sampler, seed=4, stdevs=0.2)
    small = explain(weights, bg, x, batch_size=batch_size, **kw)
    whole = explain(weights, bg, x, batch_size=10_000, **kw)
    np.testing.assert_allclose(small.values, whole.values, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(small.delta, whole.delta, rtol=1e-10, atol=1e-12)


@SETTINGS
@given(problems())
def test_inputs_and_background_never_mutated(problem):
    weights, bg, x = problem
    bg0, x0 = bg.copy(), x.copy()
    explain(weights, bg, x, n_samples=8, seed=5, stdevs=0.3)
    np.testing.assert_array_equal(bg, bg0)
    np.testing.assert_array_equal(x, x0)
