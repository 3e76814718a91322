"""gradshap.metrics against analytic answers (linear models) and against captum's metrics."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import gradshap
from gradshap import metrics
from conftest import import_or_fail


def _centered(rng, n: int, d: int) -> np.ndarray:
    bg = rng.normal(size=(n, d))
    return bg - bg.mean(axis=0)  # zero mean: the mean fill is exactly 0


# --------------------------------------------------------------------------- deletion / insertion


def _linear_case(backend, rng, d: int = 5, n: int = 4):
    w, b = rng.normal(size=(d, 1)), rng.normal(size=(1,))
    bg = _centered(rng, 6, d)
    x = rng.normal(size=(n, d))
    model = backend.linear(w, b)
    explainer = backend.explainer(model, backend.array(bg))
    # exhaustive: every background row, Gauss-Legendre in alpha: exactly w * (x - mean(bg)) = w * x.
    exp = explainer(backend.array(x), n_samples=12, sampler="exhaustive")
    return w[:, 0], b[0], bg, x, model, exp


def _all_orders_auc(w, b, x, steps):
    """Deletion AUC of every removal order of each row (fill 0), in NumPy."""
    d = x.shape[1]
    fractions = np.arange(steps + 1) / steps
    out = {}
    for order in itertools.permutations(range(d)):
        contrib = (w * x)[:, list(order)]
        curve = (x @ w + b)[:, None] - np.concatenate([np.zeros((x.shape[0], 1)), np.cumsum(contrib, axis=1)], axis=1)
        out[order] = ((curve[:, 1:] + curve[:, :-1]) / 2 * np.diff(fractions)).sum(axis=1)
    return out


def test_deletion_in_attribution_order_is_optimal_on_a_linear_model(backend, rng):
    w, b, bg, x, model, exp = _linear_case(backend, rng)
    np.testing.assert_allclose(backend.host(exp.values), w * x, rtol=1e-10, atol=1e-12)
    curve = metrics.deletion(model, backend.array(x), exp, backend.array(bg), steps=5, framework=backend.name)
    # Removing feature i moves f by -w_i x_i: the curve after k steps is f(x) minus the k largest.
    contrib = -np.sort(-(w * x), axis=1)
    expected = (x @ w + b)[:, None] - np.concatenate([np.zeros((4, 1)), np.cumsum(contrib, axis=1)], axis=1)
    np.testing.assert_allclose(curve.outputs, expected, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(curve.fractions, np.arange(6) / 5)
    aucs = _all_orders_auc(w, b, x, 5)
    best = np.min(np.stack(list(aucs.values())), axis=0)
    np.testing.assert_allclose(curve.auc.per_row, best, rtol=1e-10, atol=1e-10)
    assert all(np.all(a >= curve.auc.per_row - 1e-10) for a in aucs.values())
    # Some other order is strictly worse (the test could fail).
    assert max(np.max(a - curve.auc.per_row) for a in aucs.values()) > 0.1
    assert curve.auc.stderr == pytest.approx(np.std(best, ddof=1) / 2)


def test_insertion_in_attribution_order_is_optimal_on_a_linear_model(backend, rng):
    w, b, bg, x, model, exp = _linear_case(backend, rng)
    curve = metrics.insertion(model, backend.array(x), exp, backend.array(bg), steps=5, framework=backend.name)
    contrib = -np.sort(-(w * x), axis=1)
    expected = b + np.concatenate([np.zeros((4, 1)), np.cumsum(contrib, axis=1)], axis=1)
    np.testing.assert_allclose(curve.outputs, expected, rtol=1e-10, atol=1e-10)
    assert curve.auc.better == "higher"
    # A reversed order inserts the negative contributions first: a smaller area.
    worse = metrics.insertion(model, backend.array(x), -w * x, backend.array(bg), steps=5, framework=backend.name)
    assert np.all(worse.auc.per_row < curve.auc.per_row)


def test_deletion_with_groups_removes_whole_patches(rng):
    # A 1x4x4 "image", 2x2 patches; the linear model's patch contribution is the patch sum.
    w = rng.normal(size=16)
    x = rng.normal(size=(3, 1, 4, 4))
    bg = rng.normal(size=(5, 1, 4, 4))
    f = (lambda p: np.reshape(p, (p.shape[0], -1)) @ w, lambda p: np.broadcast_to(w.reshape(1, 1, 4, 4), p.shape))
    groups = metrics.patches((1, 4, 4), 2)
    attributions = w.reshape(1, 1, 4, 4) * (x - bg.mean(axis=0))
    curve = metrics.deletion(f, x, attributions, bg, groups=groups, steps=4, framework="numpy")
    ids = groups.reshape(-1)
    contrib = np.stack([np.bincount(ids, weights=row, minlength=4) for row in attributions.reshape(3, -1)])
    ordered = -np.sort(-contrib, axis=1)
    fx = x.reshape(3, -1) @ w
    expected = fx[:, None] - np.concatenate([np.zeros((3, 1)), np.cumsum(ordered, axis=1)], axis=1)
    np.testing.assert_allclose(curve.outputs, expected, rtol=1e-12, atol=1e-12)
    # One map per row gives the same as the shared map repeated.
    per_row = metrics.deletion(f, x, attributions, bg, groups=np.broadcast_to(groups, x.shape), steps=4,
                               framework="numpy")
    np.testing.assert_array_equal(per_row.outputs, curve.outputs)


def test_fill_row_takes_one_background_row_per_input_row(rng):
    w = rng.normal(size=4)
    f = (lambda p: p @ w, lambda p: np.broadcast_to(w, p.shape))
    x, bg = rng.normal(size=(6, 4)), rng.normal(size=(9, 4))
    attributions = rng.normal(size=(6, 4))
    curve = metrics.deletion(f, x, attributions, bg, steps=4, fill="row", seed=3, framework="numpy")
    assert curve.fill_rows.shape == (6,) and len(set(curve.fill_rows.tolist())) > 1
    again = metrics.deletion(f, x, attributions, bg, steps=4, fill="row", seed=3, framework="numpy")
    np.testing.assert_array_equal(again.fill_rows, curve.fill_rows)
    b = bg[curve.fill_rows]
    order = np.argsort(-attributions, axis=1, kind="stable")
    for r in range(6):
        removed = order[r, :4]
        point = x[r].copy()
        point[removed[:2]] = b[r, removed[:2]]
        assert curve.outputs[r, 2] == pytest.approx(point @ w, rel=1e-12)
        assert curve.outputs[r, 4] == pytest.approx(b[r] @ w, rel=1e-12)
    fixed = metrics.deletion(f, x, attributions, bg, steps=4, fill=2, framework="numpy")
    np.testing.assert_allclose(fixed.outputs[:, -1], np.full(6, bg[2] @ w), rtol=1e-12)


def test_curves_do_not_depend_on_batch_size_and_use_per_row_targets(rng):
    torch = import_or_fail("torch")
    weights = [(rng.normal(size=(6, 8)), rng.normal(size=8)), (rng.normal(size=(8, 3)), rng.normal(size=3))]
    from models import torch_mlp

    model = torch_mlp(weights).train()  # left in training mode: the metric must restore it
    x, bg = torch.from_numpy(rng.normal(size=(5, 6))), torch.from_numpy(rng.normal(size=(7, 6)))
    target = torch.tensor([0, 2, 1, 1, 0])
    attributions = rng.normal(size=(5, 6))
    big = metrics.deletion(model, x, attributions, bg, target=target, steps=6, batch_size=1000)
    small = metrics.deletion(model, x, attributions, bg, target=target, steps=6, batch_size=4)
    np.testing.assert_allclose(small.outputs, big.outputs, rtol=1e-12, atol=1e-12)
    assert model.training and all(m.training for m in model.modules())
    with torch.no_grad():
        out = model.eval()(x).numpy()
    model.train()
    np.testing.assert_allclose(big.outputs[:, 0], out[np.arange(5), target.numpy()], rtol=1e-12)


def test_curve_errors_name_the_argument(rng):
    f = (lambda p: p.sum(axis=1), lambda p: np.ones_like(p))
    x, bg = rng.normal(size=(2, 3)), rng.normal(size=(4, 3))
    with pytest.raises(ValueError, match=r"`attributions` has shape \(2, 4\); expected the shape of `x`, \(2, 3\)"):
        metrics.deletion(f, x, np.ones((2, 4)), bg, framework="numpy")
    with pytest.raises(ValueError, match="`fill` must be 'mean', 'row'"):
        metrics.deletion(f, x, np.ones((2, 3)), bg, fill="zeros", framework="numpy")
    with pytest.raises(ValueError, match=r"`groups` must give one group id per feature, shape \(3,\)"):
        metrics.deletion(f, x, np.ones((2, 3)), bg, groups=np.zeros(5, dtype=int), framework="numpy")
    with pytest.raises(ValueError, match="`steps`"):
        metrics.deletion(f, x, np.ones((2, 3)), bg, steps=0, framework="numpy")


def test_import_gradshap_metrics_imports_no_framework_or_matplotlib():
    import subprocess
    import sys

    code = ("import sys, gradshap.metrics; bad = [m for m in ('torch', 'jax', 'tensorflow', 'keras', 'matplotlib') "
            "if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_plot_of_curves_draws_the_mean_and_its_band(rng, tmp_path):
    matplotlib = import_or_fail("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from gradshap import plots

    w = rng.normal(size=5)
    f = (lambda p: p @ w, lambda p: np.broadcast_to(w, p.shape))
    x, bg = rng.normal(size=(8, 5)), _centered(rng, 6, 5)
    deletion = metrics.deletion(f, x, w * x, bg, steps=5, framework="numpy")
    random = metrics.deletion(f, x, rng.normal(size=(8, 5)), bg, steps=5, framework="numpy")
    ax = plots.curves({"attribution order": deletion, "random order": random})
    lines = ax.get_lines()
    np.testing.assert_allclose(lines[0].get_ydata(), deletion.outputs.mean(axis=0))
    low, high = deletion.band(0.95)
    half = 1.959964 * deletion.outputs.std(axis=0, ddof=1) / np.sqrt(8)
    np.testing.assert_allclose(high - low, 2 * half, rtol=1e-6, atol=1e-12)
    band = ax.collections[0].get_paths()[0].vertices
    assert band[:, 1].min() == pytest.approx(low.min()) and band[:, 1].max() == pytest.approx(high.max())
    assert "AUC" in lines[0].get_label() and len(ax.collections) == 2
    ax.figure.savefig(tmp_path / "curves.png")
    plt.close("all")


# --------------------------------------------------------------------------- infidelity


def test_infidelity_of_the_gradient_of_a_linear_model_is_zero(backend, rng):
    # f(x) - f(x - I) = w . I exactly: attributions w predict every change; c * w do after
    # the normalisation (beta = 1 / c), and miss by (c - 1)^2 (w . I)^2 without it.
    d = 5
    w, b = rng.normal(size=(d, 1)), rng.normal(size=(1,))
    x, bg = rng.normal(size=(4, d)), rng.normal(size=(7, d))
    model = backend.linear(w, b)
    X, B = backend.array(x), backend.array(bg)
    grad = np.broadcast_to(w[:, 0], x.shape)
    exact = metrics.infidelity(model, X, grad, background=B, n_perturb=6, seed=1, framework=backend.name)
    np.testing.assert_allclose(exact.per_row, 0.0, atol=1e-20)
    scaled = metrics.infidelity(model, X, 3.0 * grad, background=B, n_perturb=6, seed=1, framework=backend.name)
    np.testing.assert_allclose(scaled.per_row, 0.0, atol=1e-20)
    np.testing.assert_allclose(scaled.details["beta"], 1.0 / 3.0, rtol=1e-12)
    raw = metrics.infidelity(model, X, 3.0 * grad, background=B, n_perturb=6, seed=1, normalize=False,
                             framework=backend.name)
    I = backend.host(metrics.background_perturbations(X, B, n_perturb=6, seed=1))
    np.testing.assert_allclose(raw.per_row, (4.0 * (I @ w[:, 0]) ** 2).mean(axis=1), rtol=1e-12)
    assert raw.stderr == pytest.approx(np.std(raw.per_row, ddof=1) / 2)


def test_background_perturbations_replace_a_subset_by_a_background_row(rng):
    x, bg = rng.normal(size=(3, 6)), rng.normal(size=(5, 6))
    I = metrics.background_perturbations(x, bg, n_perturb=40, fraction=0.5, seed=2)
    perturbed = x[:, None, :] - I
    for r in range(3):
        for p in range(40):
            kept = np.isclose(perturbed[r, p], x[r], rtol=0, atol=1e-15)
            matches = [np.allclose(perturbed[r, p][~kept], b[~kept], rtol=0, atol=1e-15) for b in bg]
            assert any(matches)
    share = np.mean(np.abs(I) > 0)
    assert 0.4 < share < 0.6  # each feature replaced with probability one half
    whole = metrics.background_perturbations(x, bg, n_perturb=4, fraction=1.0, seed=2)
    assert all(any(np.allclose(x[r] - whole[r, p], b) for b in bg) for r in range(3) for p in range(4))
    groups = np.array([0, 0, 0, 1, 1, 1])
    grouped = metrics.background_perturbations(x, bg, n_perturb=10, groups=groups, seed=2)
    moved = np.abs(grouped) > 0
    assert np.all(moved[..., :3] == moved[..., :1]) and np.all(moved[..., 3:] == moved[..., 3:4])


@pytest.mark.parametrize("normalize", [True, False])
def test_infidelity_equals_captum(rng, normalize):
    torch = import_or_fail("torch")
    captum_metrics = import_or_fail("captum.metrics")
    from models import mlp_weights, torch_mlp

    model = torch_mlp(mlp_weights(rng))
    x, bg = torch.from_numpy(rng.normal(size=(6, 6))), torch.from_numpy(rng.normal(size=(9, 6)))
    exp = gradshap.IntegratedGradients(model, bg.mean(dim=0))(x, target=1, n_steps=16)
    I = metrics.background_perturbations(x, bg, n_perturb=8, seed=5)
    ours = metrics.infidelity(model, x, exp, perturbations=I, normalize=normalize, batch_size=10)
    drawn = metrics.infidelity(model, x, exp, background=bg, n_perturb=8, seed=5, normalize=normalize)
    np.testing.assert_allclose(drawn.per_row, ours.per_row, rtol=1e-12)

    def perturb(inputs):
        flat = I.reshape(-1, 6)  # captum repeats each row n_perturb times in a row
        return flat, inputs - flat

    theirs = captum_metrics.infidelity(model, perturb, x, exp.values, target=1, n_perturb_samples=8,
                                       normalize=normalize)
    np.testing.assert_allclose(ours.per_row, theirs.numpy().reshape(-1), rtol=1e-6)
    assert np.all(ours.per_row > 1e-6)  # a nonlinear model: not trivially zero


# --------------------------------------------------------------------------- max-sensitivity


def test_max_sensitivity_of_a_linear_model_is_the_relative_shift(backend, rng):
    # Exact Expected Gradients of a linear model: w * (x - mean(bg)); it moves by w * eps.
    d, n, k = 6, 3, 4
    w, b = rng.normal(size=(d, 1)), rng.normal(size=(1,))
    x, bg = rng.normal(size=(n, d)), rng.normal(size=(5, d))
    explainer = backend.explainer(backend.linear(w, b), backend.array(bg))
    eps = rng.uniform(-0.1, 0.1, size=(n, k, d))
    score = metrics.max_sensitivity(lambda z: explainer(z, n_samples=10, sampler="exhaustive"), backend.array(x),
                                    perturbations=backend.array(eps))
    base = w[:, 0] * (x - bg.mean(axis=0))
    expected = np.linalg.norm(w[:, 0] * eps, axis=2) / np.linalg.norm(base, axis=1)[:, None]
    np.testing.assert_allclose(score.details["per_perturbation"], expected, rtol=1e-9)
    np.testing.assert_allclose(score.per_row, expected.max(axis=1), rtol=1e-9)


def test_max_sensitivity_draws_within_the_radius(rng):
    x = rng.normal(size=(4, 50))
    explain = lambda z: z - 1.0  # noqa: E731 - attributions that move exactly with the input
    score = metrics.max_sensitivity(explain, x, radius=0.05, n_perturb=3, seed=4, norm=np.inf)
    scale = np.max(np.abs(x - 1.0), axis=1)
    moved = score.details["per_perturbation"] * scale[:, None]  # max |eps| of each draw
    assert np.all(moved <= 0.05) and np.all(moved > 0.04)
    again = metrics.max_sensitivity(explain, x, radius=0.05, n_perturb=3, seed=4, norm=np.inf)
    np.testing.assert_array_equal(again.per_row, score.per_row)


def test_same_seed_max_sensitivity_sees_no_monte_carlo_noise(rng):
    from models import mlp_weights, numpy_mlp

    f, jac = numpy_mlp(mlp_weights(rng))
    x, bg = rng.normal(size=(5, 6)), rng.normal(size=(20, 6))
    explainer = gradshap.GradientExplainer((f, jac), bg, framework="numpy")
    same = metrics.max_sensitivity(lambda z: explainer(z, target=0, n_samples=16, sampler="iid", seed=7), x,
                                   radius=0.0, n_perturb=3, seed=0)
    np.testing.assert_array_equal(same.per_row, 0.0)  # the same draws: the same explanation
    fresh = metrics.max_sensitivity(lambda z: explainer(z, target=0, n_samples=16, sampler="iid"), x,
                                    radius=0.0, n_perturb=3, seed=0)
    assert np.all(fresh.per_row > 0.05)  # two independent 16-sample estimates differ


def test_max_sensitivity_equals_captum_on_integrated_gradients(rng):
    torch = import_or_fail("torch")
    captum_metrics = import_or_fail("captum.metrics")
    from models import mlp_weights, torch_mlp

    model = torch_mlp(mlp_weights(rng))
    x = torch.from_numpy(rng.normal(size=(5, 6)))
    ig = gradshap.IntegratedGradients(model, torch.zeros(6, dtype=torch.float64))
    eps = rng.uniform(-0.1, 0.1, size=(5, 4, 6))
    ours = metrics.max_sensitivity(lambda z: ig(z, target=2, n_steps=16), x, perturbations=torch.from_numpy(eps))

    def perturb(inputs):
        return inputs + torch.from_numpy(eps.reshape(-1, 6))  # rows repeated n_perturb times in a row

    theirs = captum_metrics.sensitivity_max(lambda z: ig(z, target=2, n_steps=16).values, x, perturb_func=perturb,
                                            n_perturb_samples=4)
    np.testing.assert_allclose(ours.per_row, theirs.numpy(), rtol=1e-6)
    assert np.all(ours.per_row > 1e-3)


# --------------------------------------------------------------------------- error against a reference


def test_error_against_a_reference_is_computed_as_documented(rng):
    values, ref = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    se, ref_se = rng.uniform(0.1, 1, size=(4, 3)), rng.uniform(0.1, 1, size=(4, 3))
    exp = gradshap.Explanation(values=values, base_values=np.zeros(4), output=np.zeros(4), delta=np.zeros(4), stderr=se)
    refexp = gradshap.Explanation(values=ref, base_values=np.zeros(4), output=np.zeros(4), delta=np.zeros(4),
                                  stderr=ref_se)
    report = metrics.error(exp, refexp)
    err = values - ref
    np.testing.assert_allclose(report.relative_l2.per_row, np.linalg.norm(err, axis=1) / np.linalg.norm(ref, axis=1))
    np.testing.assert_allclose(report.max_error.per_row, np.abs(err).max(axis=1))
    z = err / np.sqrt(se**2 + ref_se**2)
    np.testing.assert_allclose(report.calibration.per_row, np.sqrt((z**2).mean(axis=1)))
    np.testing.assert_allclose(report.coverage.per_row, (np.abs(z) <= 1.959963984540054).mean(axis=1))
    # A plain array as the reference has no error of its own.
    plain = metrics.error(exp, ref)
    np.testing.assert_allclose(plain.calibration.per_row, np.sqrt(((err / se) ** 2).mean(axis=1)))
    with pytest.raises(ValueError, match="`reference` has 4 rows of 2 values"):
        metrics.error(exp, ref[:, :2])


def test_expected_gradients_stderr_is_calibrated_against_exact_shapley(rng):
    # Linear model: exact Shapley values are w * (x - mean(bg)); the iid estimate misses them by
    # w * (mean(bg) - mean of the drawn baselines), and its stderr should say how much.
    from gradshap import reference

    d, n = 8, 150
    w = rng.normal(size=d)
    f = (lambda p: p @ w, lambda p: np.broadcast_to(w, p.shape))
    x, bg = rng.normal(size=(n, d)), rng.normal(size=(30, d))
    exact = reference.exact_shapley(f[0], x[:3], bg)
    np.testing.assert_allclose(exact.values, w * (x[:3] - bg.mean(axis=0)), rtol=1e-10)
    exp = gradshap.GradientExplainer(f, bg, framework="numpy")(x, n_samples=40, sampler="iid", seed=3)
    report = metrics.error(exp, w * (x - bg.mean(axis=0)))
    assert report.relative_l2.mean > 0.05  # a real Monte Carlo error
    assert 0.85 < report.calibration.mean < 1.15
    assert abs(report.coverage.mean - 0.95) < 0.03
    # Stated errors 3x too small are seen as such.
    small = gradshap.Explanation(values=exp.values, base_values=exp.base_values, output=exp.output, delta=exp.delta,
                                 stderr=exp.stderr / 3)
    assert 2.5 < metrics.error(small, w * (x - bg.mean(axis=0))).calibration.mean < 3.5


def test_calibration_of_permutation_shapley_and_of_expected_gradients_on_a_nonlinear_model(rng):
    from gradshap import reference
    from models import mlp_weights, numpy_mlp

    f, jac = numpy_mlp(mlp_weights(rng))
    x, bg = rng.normal(size=(40, 6)), rng.normal(size=(20, 6))
    exact = reference.exact_shapley(lambda p: f(p)[:, 0], x, bg)
    permutation = reference.sampling_shapley(lambda p: f(p)[:, 0], x, bg, n_permutations=30, seed=1)
    report = metrics.error(permutation, exact)
    assert 0.8 < report.calibration.mean < 1.2 and report.relative_l2.mean > 0.05
    # Expected Gradients is not the Shapley value of a nonlinear model: against a converged
    # Expected Gradients its stderr is calibrated, against exact Shapley values it is not (bias).
    explainer = gradshap.GradientExplainer((f, jac), bg, framework="numpy")
    converged = explainer(x, target=0, n_samples=20 * 64, sampler="exhaustive")
    estimate = explainer(x, target=0, n_samples=100, sampler="iid", seed=2)
    assert 0.8 < metrics.error(estimate, converged).calibration.mean < 1.2
    assert metrics.error(estimate, exact).calibration.mean > 1.5


# --------------------------------------------------------------------------- compare


def test_compare_scores_every_method_on_the_same_rows_and_times_them(rng, tmp_path):
    import json

    w = rng.normal(size=5)
    f = (lambda p: p @ w, lambda p: np.broadcast_to(w, p.shape))
    x, bg = rng.normal(size=(6, 5)), _centered(rng, 8, 5)
    explainer = gradshap.GradientExplainer(f, bg, framework="numpy")
    exact = w * x
    ticks = iter(np.arange(0.0, 100.0, 1.5))  # each method's call takes 1.5 fake seconds
    methods = {"exhaustive": lambda z: explainer(z, n_samples=16, sampler="exhaustive"),
               "iid": lambda z: explainer(z, n_samples=4, sampler="iid", seed=0)}
    result = metrics.compare(methods, f, x, bg, metrics=("deletion", "infidelity", "error"), reference=exact,
                             framework="numpy", steps=5, clock=lambda: float(next(ticks)))
    assert result.seconds_per_row == {"exhaustive": 1.5 / 6, "iid": 1.5 / 6}
    names = [s.name for s in result.scores["iid"]]
    assert names == ["deletion_auc", "infidelity", "relative_l2", "calibration"]
    direct = metrics.deletion(f, x, methods["iid"](x), bg, steps=5, framework="numpy").auc
    np.testing.assert_array_equal(result.scores["iid"][0].per_row, direct.per_row)
    same = metrics.infidelity(f, x, methods["iid"](x), background=bg, seed=0, framework="numpy")
    np.testing.assert_array_equal(result.scores["iid"][1].per_row, same.per_row)
    exhaustive = dict(zip(names, result.scores["exhaustive"]))
    assert exhaustive["relative_l2"].mean < 1e-12 and result.scores["iid"][2].mean > 0.01
    paired = result.paired("deletion_auc", "iid", "exhaustive")
    np.testing.assert_allclose(paired.per_row, result.scores["iid"][0].per_row - exhaustive["deletion_auc"].per_row)
    text = result.table()
    assert "exhaustive" in text and "deletion_auc" in text and "±" in text
    record = json.loads(result.to_json(tmp_path / "cmp.json"))["records"][0]
    assert record["method"] == "exhaustive" and record["low"] < record["mean"] < record["high"]
    assert (tmp_path / "cmp.json").exists()
    matplotlib = import_or_fail("matplotlib")
    matplotlib.use("Agg")
    from gradshap import plots

    fig = plots.comparison(result)
    assert len(fig.axes) == 4
    fig.savefig(tmp_path / "cmp.png")
    with pytest.raises(ValueError, match="needs `reference`"):
        metrics.compare(methods, f, x, bg, metrics=("error",), framework="numpy")


def test_metrics_of_a_model_with_two_inputs_join_their_features(rng):
    w1, w2 = rng.normal(size=3), rng.normal(size=(2, 2))
    f = lambda a, b: a @ w1 + np.reshape(b, (b.shape[0], -1)) @ w2.reshape(-1)  # noqa: E731
    grad = lambda a, b: (np.broadcast_to(w1, a.shape), np.broadcast_to(w2, b.shape))  # noqa: E731
    x = (rng.normal(size=(4, 3)), rng.normal(size=(4, 2, 2)))
    bg = (_centered(rng, 5, 3), _centered(rng, 5, 4).reshape(5, 2, 2))
    exp = gradshap.GradientExplainer((f, grad), bg, framework="numpy")(x, n_samples=10, sampler="exhaustive")
    contrib = np.concatenate([w1 * x[0], (w2 * x[1]).reshape(4, -1)], axis=1)  # 7 joined features
    np.testing.assert_allclose(np.concatenate([exp.values[0], exp.values[1].reshape(4, -1)], axis=1), contrib,
                               rtol=1e-10, atol=1e-12)
    curve = metrics.deletion((f, grad), x, exp, bg, steps=7, framework="numpy")
    ordered = -np.sort(-contrib, axis=1)
    expected = f(*x)[:, None] - np.concatenate([np.zeros((4, 1)), np.cumsum(ordered, axis=1)], axis=1)
    np.testing.assert_allclose(curve.outputs, expected, rtol=1e-10, atol=1e-10)
    # Infidelity with one perturbation array per input; the gradient predicts a linear model exactly.
    I = metrics.background_perturbations(x, bg, n_perturb=3, seed=0)
    assert isinstance(I, tuple) and I[1].shape == (4, 3, 2, 2)
    grads = (np.broadcast_to(w1, x[0].shape), np.broadcast_to(w2, x[1].shape))
    np.testing.assert_allclose(metrics.infidelity((f, grad), x, grads, perturbations=I, framework="numpy").per_row,
                               0.0, atol=1e-20)
    score = metrics.max_sensitivity(lambda z: z, x, radius=0.1, n_perturb=2, seed=0)
    assert score.per_row.shape == (4,) and np.all(score.per_row > 0)
