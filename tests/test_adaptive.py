"""Adaptive mode: each row keeps sampling until its standard error and residual meet ``rtol``."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from analytic_models import linear, network, relative_error

import gradshap


@pytest.fixture
def problem(rng):
    d = 6
    model = network(d, seed=7)
    bg = rng.normal(size=(16, d))
    x = rng.normal(size=(8, d)) * np.linspace(0.3, 3.0, 8)[:, None]  # rows of growing difficulty
    ref = gradshap.expected_gradients(model, x, bg, n_samples=16 * 1024, sampler="exhaustive").values
    return model, x, bg, ref


# Monte Carlo designs (error ~ n^-1/2) get a looser tolerance: 2% on the smallest rows would
# take them more than the 32768 samples allowed here.
@pytest.mark.parametrize(("sampler", "rtol"), [("auto", 0.02), ("sobol", 0.02), ("balanced", 0.05), ("iid", 0.05)])
def test_every_row_meets_the_tolerance(problem, sampler, rtol):
    model, x, bg, ref = problem
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        exp = gradshap.expected_gradients(model, x, bg, n_samples=32, sampler=sampler, seed=1, rtol=rtol,
                                          max_samples=32 * 1024)
    used = exp.n_samples
    assert isinstance(used, np.ndarray) and used.shape == (8,) and used.dtype == np.int64
    # Blocks of 32 samples, doubling: 32, 64, 128, ...
    assert set(np.log2(used // 32)) <= set(range(11)) and np.all(used % 32 == 0)
    norm = np.linalg.norm(exp.values, axis=1)
    assert np.all(np.linalg.norm(exp.stderr, axis=1) <= rtol * norm)
    assert np.all(np.abs(exp.delta) <= rtol * norm)
    # The standard error is honest, so the actual error is of the same size.
    assert np.all(relative_error(exp.values, ref) <= 4 * rtol)


def test_rows_stop_independently(problem):
    model, x, bg, _ = problem
    exp = gradshap.expected_gradients(model, x, bg, n_samples=32, seed=1, rtol=0.01, max_samples=32 * 256)
    assert len(set(exp.n_samples)) > 1
    # Each row's result is what a fixed budget of that size gives: rows do not interact.
    for r in (0, 7):
        fixed = gradshap.expected_gradients(model, x[: r + 1], bg, n_samples=32, seed=1, rtol=0.01,
                                            max_samples=32 * 256)
        np.testing.assert_allclose(fixed.values[r], exp.values[r], rtol=1e-12, atol=1e-14)
        assert fixed.n_samples[r] == exp.n_samples[r]


def test_smaller_tolerance_means_more_samples(problem):
    model, x, bg, _ = problem
    loose = gradshap.expected_gradients(model, x, bg, n_samples=32, seed=2, rtol=0.05, max_samples=8192)
    tight = gradshap.expected_gradients(model, x, bg, n_samples=32, seed=2, rtol=0.005, max_samples=8192)
    assert np.all(tight.n_samples >= loose.n_samples) and tight.n_samples.sum() > 4 * loose.n_samples.sum()


def test_independent_of_batch_size(problem):
    model, x, bg, _ = problem
    a = gradshap.expected_gradients(model, x, bg, n_samples=48, seed=3, rtol=0.01, max_samples=48 * 64)
    b = gradshap.expected_gradients(model, x, bg, n_samples=48, seed=3, rtol=0.01, max_samples=48 * 64,
                                    batch_size=40)
    np.testing.assert_array_equal(a.n_samples, b.n_samples)
    np.testing.assert_allclose(a.values, b.values, rtol=1e-12, atol=1e-14)


def test_linear_model_stops_after_the_first_round(rng):
    w = rng.normal(size=4)
    x, bg = rng.normal(size=(5, 4)), rng.normal(size=(16, 4))
    exp = gradshap.expected_gradients(linear(w), x, bg, n_samples=32, seed=0, rtol=1e-6)
    np.testing.assert_array_equal(exp.n_samples, 32)
    np.testing.assert_allclose(exp.values, w * (x - bg.mean(0)), rtol=1e-12)


def test_budget_cap_warns_and_reports_the_samples_used(problem):
    model, x, bg, _ = problem
    with pytest.warns(RuntimeWarning, match=r"did not reach rtol=1e-05 within max_samples=100"):
        exp = gradshap.expected_gradients(model, x, bg, n_samples=25, seed=0, rtol=1e-5, max_samples=100)
    np.testing.assert_array_equal(exp.n_samples, 100)  # 25, 50, 100


def test_bad_arguments_are_named(problem):
    model, x, bg, _ = problem
    with pytest.raises(ValueError, match="`rtol` must be > 0"):
        gradshap.expected_gradients(model, x, bg, rtol=0.0)
    with pytest.raises(TypeError, match="`rtol` must be a non-negative number"):
        gradshap.expected_gradients(model, x, bg, rtol="small")
    with pytest.raises(ValueError, match="`max_samples` must be >= `n_samples` \\(64\\)"):
        gradshap.expected_gradients(model, x, bg, n_samples=64, rtol=0.1, max_samples=32)
    with pytest.raises(ValueError, match="`max_samples` applies only with `rtol`"):
        gradshap.expected_gradients(model, x, bg, max_samples=1000)
    with pytest.raises(ValueError, match="`rtol` \\(adaptive mode\\) needs a sampler that can add samples"):
        gradshap.expected_gradients(model, x, bg, n_samples=32, sampler="exhaustive", rtol=0.1)


def test_explainer_with_several_targets_reports_samples_per_row_and_target(rng):
    torch = pytest.importorskip("torch")
    net = torch.nn.Sequential(torch.nn.Linear(5, 12), torch.nn.Tanh(), torch.nn.Linear(12, 3)).double()
    bg = torch.from_numpy(rng.normal(size=(16, 5)))
    x = torch.from_numpy(rng.normal(size=(4, 5)))
    exp = gradshap.GradientExplainer(net, bg)(x, target=[0, 2], n_samples=32, seed=0, rtol=0.02)
    assert exp.values.shape == (4, 5, 2)
    assert isinstance(exp.n_samples, np.ndarray) and exp.n_samples.shape == (4, 2)
    err = torch.linalg.vector_norm(exp.stderr, dim=1)
    assert bool(torch.all(err <= 0.02 * torch.linalg.vector_norm(exp.values, dim=1)))


def test_samples_per_row_survive_slicing_and_save(problem, tmp_path):
    model, x, bg, _ = problem
    exp = gradshap.expected_gradients(model, x, bg, n_samples=32, seed=1, rtol=0.01, max_samples=32 * 256)
    assert len(set(exp.n_samples)) > 1
    np.testing.assert_array_equal(exp[2:5].n_samples, exp.n_samples[2:5])
    mask = exp.n_samples > exp.n_samples.min()
    np.testing.assert_array_equal(exp[mask].n_samples, exp.n_samples[mask])
    back = gradshap.Explanation.load(exp.save(tmp_path / "adaptive"))
    np.testing.assert_array_equal(back.n_samples, exp.n_samples)
    assert f"{exp.n_samples.min()}..{exp.n_samples.max()} per row" in repr(exp)
