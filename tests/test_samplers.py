"""Sampling designs: layout, determinism, exactness, honest standard errors and convergence rates."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from analytic_models import linear, network, relative_error
from models import reference_estimate

import gradshap
from gradshap import _sampling

RANDOM = ("iid", "balanced", "lattice", "sobol")
ALL = (*RANDOM, "exhaustive")


@pytest.fixture
def problem(rng):
    d = 5
    return rng.normal(size=(3, d)), rng.normal(size=(16, d)), network(d, seed=3)


def _all_samples(design, rows, blocks=1):
    out = [_sampling.draw(design, 99, rows, b, 0, design.n_samples) for b in range(blocks)]
    return np.concatenate([o[0] for o in out], axis=1), np.concatenate([o[1] for o in out], axis=1)


# --------------------------------------------------------------------------- plans and layout


@pytest.mark.parametrize("n", [1, 15, 16, 40, 200])
def test_auto_is_lattice(n):
    assert _sampling.plan("auto", n, 16).name == "lattice"
    assert gradshap.SAMPLERS == ("auto", "iid", "balanced", "lattice", "sobol", "exhaustive")


def test_bad_sampler_names_the_argument():
    with pytest.raises(ValueError, match="`sampler` must be one of"):
        _sampling.plan("halton", 10, 4)
    with pytest.raises(TypeError, match="`sampler`"):
        gradshap.expected_gradients(linear(np.ones(2)), np.ones((1, 2)), np.zeros((3, 2)), sampler=3)


def test_exhaustive_needs_one_node_per_background_row():
    with pytest.raises(ValueError, match=r"`n_samples` >= the number of background rows \(16\)"):
        _sampling.plan("exhaustive", 15, 16)


@pytest.mark.parametrize("name", ["balanced", "lattice"])
@pytest.mark.parametrize("n", [16, 23, 40, 64])
def test_every_background_row_gets_floor_or_ceil_samples(name, n):
    design = _sampling.plan(name, n, 16)
    index, alpha = _all_samples(design, np.arange(4))
    for row in index:
        counts = np.bincount(row, minlength=16)
        assert set(counts) <= {n // 16, -(-n // 16)}
        assert counts.sum() == n
    assert np.all((alpha > 0) & (alpha < 1))


@pytest.mark.parametrize("name", ["balanced", "lattice"])
def test_fewer_samples_than_background_rows_draws_distinct_rows(name):
    index, _ = _all_samples(_sampling.plan(name, 10, 16), np.arange(5))
    assert all(len(set(row)) == 10 for row in index)


def test_lattice_columns_are_shifted_lattices_that_extend_by_doubling():
    design = _sampling.plan("lattice", 16 * 3 + 5, 16)  # columns of 4 and 3 samples
    rows = np.arange(3)
    for blocks in (1, 2, 4):
        index, alpha = _all_samples(design, rows, blocks)
        for r in rows:
            for b in range(16):
                a = np.sort(alpha[r, index[r] == b])
                m = a.size
                assert m in (3 * blocks, 4 * blocks)
                gaps = np.diff(np.concatenate([a, [a[0] + 1.0]]))
                np.testing.assert_allclose(gaps, 1.0 / m, atol=1e-12)


def test_lattice_shifts_are_stratified_across_background_rows():
    design = _sampling.plan("lattice", 32, 16)
    index, alpha = _all_samples(design, np.arange(2))
    for r in range(2):
        first = np.array([alpha[r, index[r] == b].min() for b in range(16)])  # in (0, 1/2)
        strata = np.floor(first * 2 * 16).astype(int)
        assert sorted(strata) == list(range(16))


def test_balanced_alphas_are_latin_within_each_pass():
    design = _sampling.plan("balanced", 48, 16)
    _, alpha = _all_samples(design, np.arange(3))
    for r in range(3):
        for p in range(3):
            strata = np.floor(alpha[r, p * 16 : (p + 1) * 16] * 16).astype(int)
            assert sorted(strata) == list(range(16))


def test_sobol_replicates_are_scrambled_nets():
    """Each replicate's first 2^m points put exactly one point in every elementary box."""
    design = _sampling.plan("sobol", 8 * 64, 64)
    rows = np.arange(2)
    for rho in range(2):
        pts = _sampling._sobol_points(7, rows, rho, np.arange(64))
        for r in rows:
            for k in range(7):
                cells = np.floor(pts[r, :, 0] * 2**k).astype(int) * 2 ** (6 - k) + np.floor(
                    pts[r, :, 1] * 2 ** (6 - k)).astype(int)
                assert sorted(cells) == list(range(64))
    index, alpha = _all_samples(design, rows)
    # Background row = first digits of coordinate 1: with 64 rows and 64 points per replicate, one each.
    for r in rows:
        for rho in range(design.columns):
            assert sorted(index[r, rho :: design.columns]) == list(range(64))


def test_sobol_directions_are_the_second_sobol_dimension():
    dirs = _sampling._DIRECTIONS[1] >> np.uint64(32 - 8)
    assert list(dirs[:8]) == [128 * m // 2**k for k, m in enumerate([1, 3, 5, 15, 17, 51, 85, 255])]


def test_seed_changes_draws_and_exhaustive_ignores_it():
    d1 = _sampling.draw(_sampling.plan("lattice", 32, 16), 1, np.arange(2), 0, 0, 32)
    d2 = _sampling.draw(_sampling.plan("lattice", 32, 16), 2, np.arange(2), 0, 0, 32)
    assert not np.allclose(d1[1], d2[1])
    e1 = _sampling.draw(_sampling.plan("exhaustive", 32, 16), 1, np.arange(2), 0, 0, 32)
    e2 = _sampling.draw(_sampling.plan("exhaustive", 32, 16), 2, np.arange(2), 0, 0, 32)
    np.testing.assert_array_equal(e1[1], e2[1])
    np.testing.assert_allclose(e1[2][:16], 0.5)


# --------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("sampler", ALL)
def test_same_seed_same_values_for_any_batch_size_and_row_subset(problem, sampler):
    x, bg, model = problem
    ref = gradshap.expected_gradients(model, x, bg, n_samples=37, sampler=sampler, seed=5)
    for batch in (1, 7, 40, 1000):
        out = gradshap.expected_gradients(model, x, bg, n_samples=37, sampler=sampler, seed=5, batch_size=batch)
        np.testing.assert_allclose(out.values, ref.values, rtol=0, atol=1e-13)
        np.testing.assert_allclose(out.stderr, ref.stderr, rtol=1e-9, atol=1e-13)
    # Randomness is keyed by a row's position: more rows after it change nothing.
    first = gradshap.expected_gradients(model, x[:1], bg, n_samples=37, sampler=sampler, seed=5)
    np.testing.assert_allclose(first.values, ref.values[:1], rtol=0, atol=1e-13)


@pytest.mark.parametrize("sampler", ALL)
def test_compiled_adapter_gives_the_numpy_values_for_any_batch_size(problem, sampler):
    """JAX keeps a call's chunks at few shapes (the last rows padded with copies of them,
    slots past a column's samples weighted 0): the numbers must not move."""
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    x, bg, model = problem
    w, c, v = (jnp.asarray(a) for a in model.params)
    explainer = lambda batch: gradshap.GradientExplainer(  # noqa: E731
        lambda p: jnp.maximum(p @ w.T + c, 0.0) @ v, jnp.asarray(bg), batch_size=batch)
    ref = gradshap.expected_gradients(model, x, bg, n_samples=37, sampler=sampler, seed=5)
    for batch in (1, 7, 40, 1000):
        out = explainer(batch)(jnp.asarray(x), n_samples=37, sampler=sampler, seed=5)
        np.testing.assert_allclose(np.asarray(out.values), ref.values, rtol=0, atol=1e-12)
        np.testing.assert_allclose(np.asarray(out.stderr), ref.stderr, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("sampler", RANDOM)
def test_draws_are_counter_based_per_row(sampler):
    design = _sampling.plan(sampler, 40, 16)
    full = _sampling.draw(design, 11, np.arange(6), 0, 0, 40)
    part = _sampling.draw(design, 11, np.array([4]), 0, 0, 40)
    sliced = [_sampling.draw(design, 11, np.array([4]), 0, s0, s1) for s0, s1 in [(0, 16), (16, 32), (32, 40)]]
    np.testing.assert_array_equal(part[0][0], full[0][4])
    np.testing.assert_array_equal(part[1][0], full[1][4])
    np.testing.assert_array_equal(np.concatenate([s[1] for s in sliced], axis=1)[0], full[1][4])


# --------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("sampler", ["balanced", "lattice", "exhaustive", "auto"])
@pytest.mark.parametrize("n", [32, 40, 64])
def test_linear_model_is_exact_with_zero_stderr_when_the_background_is_covered(rng, sampler, n):
    w = rng.normal(size=4)
    x, bg = rng.normal(size=(3, 4)), rng.normal(size=(16, 4))
    exp = gradshap.expected_gradients(linear(w), x, bg, n_samples=n, sampler=sampler, seed=0)
    np.testing.assert_allclose(exp.values, w * (x - bg.mean(0)), rtol=1e-12, atol=1e-13)
    # Each background row's contribution is the same for every alpha: no error, none reported.
    assert np.max(exp.stderr) < 1e-12
    np.testing.assert_allclose(exp.delta, 0.0, atol=1e-12)


@pytest.mark.parametrize("sampler", ["balanced", "lattice", "iid"])
def test_linear_model_gives_w_times_x_minus_the_baselines_drawn(rng, sampler):
    w = rng.normal(size=4)
    x, bg = rng.normal(size=(3, 4)), rng.normal(size=(16, 4))
    exp = gradshap.expected_gradients(linear(w), x, bg, n_samples=10, sampler=sampler, seed=4)
    index, _, _ = _sampling.draw(_sampling.plan(sampler, 10, 16), _sampling.seed_key(4), np.arange(3), 0, 0, 10)
    np.testing.assert_allclose(exp.values, w * (x - bg[index].mean(1)), rtol=1e-12, atol=1e-13)


# --------------------------------------------------------------------------- honest standard errors


def _spread_vs_reported(sampler, n, *, act, seeds=200):
    rng = np.random.default_rng(1)
    d = 6
    model = network(d, seed=0, act=act)
    bg, x = rng.normal(size=(16, d)), 1.5 * rng.normal(size=(4, d))
    ref = gradshap.expected_gradients(model, x, bg, n_samples=16 * 2048, sampler="exhaustive").values
    runs = [gradshap.expected_gradients(model, x, bg, n_samples=n, sampler=sampler, seed=s) for s in range(seeds)]
    est, err = np.array([r.values for r in runs]), np.array([r.stderr for r in runs])
    ratio = np.sqrt(np.sum((est - ref) ** 2) / np.sum(err**2))
    z = (est - ref) / err
    return ratio, z


@pytest.mark.parametrize(("sampler", "n"), [("iid", 64), ("balanced", 64), ("lattice", 64), ("lattice", 48),
                                            ("sobol", 256)])
def test_stderr_matches_the_observed_spread_on_a_relu_network(sampler, n):
    ratio, z = _spread_vs_reported(sampler, n, act="relu")
    assert 0.8 <= ratio <= 1.25, ratio
    assert abs(np.mean(z)) < 0.1
    # sobol's 8 replicates give Student-t(7) z-scores: standard deviation sqrt(7/5).
    assert 0.85 <= np.std(z) <= (1.35 if sampler == "sobol" else 1.15)
    assert np.mean(np.abs(z) > 1.96) < (0.12 if sampler == "sobol" else 0.08)


@pytest.mark.parametrize(("sampler", "n"), [("iid", 64), ("balanced", 64), ("sobol", 256)])
def test_stderr_matches_the_observed_spread_on_a_smooth_network(sampler, n):
    ratio, _ = _spread_vs_reported(sampler, n, act="tanh")
    assert 0.75 <= ratio <= 1.25, ratio


def test_lattice_stderr_is_conservative_on_a_smooth_network():
    # The lattice's error model counts every variation as a kink; smooth paths are integrated better.
    ratio, z = _spread_vs_reported("lattice", 64, act="tanh")
    assert 0.3 <= ratio <= 0.9, ratio
    assert np.mean(np.abs(z) > 1.96) < 0.05


def test_balanced_reported_stderr_no_longer_uses_the_iid_formula(rng):
    """Within-background-row spread only: far below the i.i.d. formula when baselines dominate."""
    d = 6
    model = network(d, seed=0)
    bg, x = 3.0 * rng.normal(size=(16, d)), rng.normal(size=(2, d))
    bal = gradshap.expected_gradients(model, x, bg, n_samples=64, sampler="balanced", seed=0)
    iid = gradshap.expected_gradients(model, x, bg, n_samples=64, sampler="iid", seed=0)
    assert np.linalg.norm(bal.stderr) < 0.5 * np.linalg.norm(iid.stderr)


def test_exhaustive_stderr_is_an_error_indicator_of_the_right_size():
    rng = np.random.default_rng(2)
    d = 6
    bg, x = rng.normal(size=(16, d)), 1.5 * rng.normal(size=(40, d))
    relu, smooth = network(d, seed=0), network(d, seed=0, act="tanh")
    # On kinks the indicator is the right size; on smooth paths Gauss-Legendre does far better than it says.
    for model, lo, hi, m in ((relu, 0.3, 3.0, 1024), (smooth, 0.0, 0.5, 64)):
        ref = gradshap.expected_gradients(model, x, bg, n_samples=16 * m, sampler="exhaustive").values
        exp = gradshap.expected_gradients(model, x, bg, n_samples=16 * 4, sampler="exhaustive")
        ratio = np.sqrt(np.sum((exp.values - ref) ** 2) / np.sum(exp.stderr**2))
        assert lo <= ratio <= hi, ratio


# --------------------------------------------------------------------------- convergence rates


def _rmse(model, x, bg, ref, sampler, n, seeds):
    errs = [relative_error(gradshap.expected_gradients(model, x, bg, n_samples=n, sampler=sampler, seed=s).values, ref)
            for s in range(seeds)]
    return float(np.sqrt(np.mean(np.square(errs))))


def _slope(budgets, errors):
    return float(np.polyfit(np.log(budgets), np.log(errors), 1)[0])


@pytest.mark.parametrize(("sampler", "act", "lo", "hi"), [
    ("iid", "tanh", -0.62, -0.38),
    ("balanced", "tanh", -0.62, -0.38),
    ("lattice", "tanh", -1.15, -0.85),
    ("lattice", "relu", -1.15, -0.85),
    ("sobol", "tanh", -1.75, -1.25),
])
def test_sampler_converges_at_its_rate(sampler, act, lo, hi):
    """Slopes of log error against log budget, with 8 background rows (a power of two for sobol).

    i.i.d. and balanced are Monte Carlo in alpha (n^-1/2); the lattice's error falls like 1/n
    once every background row is covered; a scrambled net like n^-3/2 on smooth integrands.
    """
    rng = np.random.default_rng(3)
    d = 4
    model = network(d, seed=1, act=act)
    bg, x = rng.normal(size=(8, d)), 1.5 * rng.normal(size=(3, d))
    ref = gradshap.expected_gradients(model, x, bg, n_samples=8 * 4096, sampler="exhaustive").values
    budgets = [64, 128, 256, 512, 1024]
    errors = [_rmse(model, x, bg, ref, sampler, n, seeds=24) for n in budgets]
    slope = _slope(budgets, errors)
    assert lo <= slope <= hi, (slope, errors)


def test_exhaustive_converges_faster_than_any_power_on_a_smooth_model():
    rng = np.random.default_rng(3)
    d = 4
    model = network(d, seed=1, act="tanh")
    bg, x = rng.normal(size=(8, d)), rng.normal(size=(3, d))
    ref = gradshap.expected_gradients(model, x, bg, n_samples=8 * 64, sampler="exhaustive").values
    errors = [relative_error(gradshap.expected_gradients(model, x, bg, n_samples=8 * m, sampler="exhaustive").values,
                             ref).max() for m in (4, 8, 16, 32)]
    slopes = np.diff(np.log(errors)) / np.log(2.0)  # local order per doubling of the nodes
    assert errors[-1] < 1e-13 < errors[0]
    assert np.all(np.diff(slopes) < 0) and slopes[-2] < -8, slopes  # steepening: geometric convergence


# --------------------------------------------------------------------------- namespaces and frameworks


def test_torch_model_gives_the_numpy_values_from_the_same_seed(problem):
    torch = pytest.importorskip("torch")
    x, bg, model = problem
    w, c, v = model.params
    net = torch.nn.Sequential(torch.nn.Linear(5, w.shape[0]), torch.nn.ReLU(), torch.nn.Linear(w.shape[0], 1)).double()
    with torch.no_grad():
        net[0].weight.copy_(torch.from_numpy(w))
        net[0].bias.copy_(torch.from_numpy(c))
        net[2].weight.copy_(torch.from_numpy(v[None]))
        net[2].bias.zero_()
    explainer = gradshap.GradientExplainer(net, torch.from_numpy(bg))
    for sampler in ("lattice", "sobol", "exhaustive"):
        out = explainer(torch.from_numpy(x), n_samples=48, sampler=sampler, seed=9)
        ref = gradshap.expected_gradients(model, x, bg, n_samples=48, sampler=sampler, seed=9)
        np.testing.assert_allclose(out.values.numpy(), ref.values, atol=1e-12)
        np.testing.assert_allclose(out.stderr.numpy(), ref.stderr, atol=1e-12)
        assert out.sampler == sampler


def test_several_inputs_share_the_baseline_draw_and_alpha(rng):
    w1, w2 = rng.normal(size=3), rng.normal(size=2)

    def vg(points):
        a, b = points
        return a @ w1 + b @ w2, (np.broadcast_to(w1, a.shape).copy(), np.broadcast_to(w2, b.shape).copy())

    x = (rng.normal(size=(2, 3)), rng.normal(size=(2, 2)))
    bg = (rng.normal(size=(8, 3)), rng.normal(size=(8, 2)))
    exp = gradshap.expected_gradients(vg, x, bg, n_samples=24, seed=0)
    np.testing.assert_allclose(exp.values[0], w1 * (x[0] - bg[0].mean(0)), atol=1e-12)
    np.testing.assert_allclose(exp.values[1], w2 * (x[1] - bg[1].mean(0)), atol=1e-12)


# --------------------------------------------------------------------------- the convergence study


def test_convergence_study_quick_smoke(tmp_path):
    """benchmarks/convergence.py --quick runs end to end and writes its table, JSON and plot."""
    for module in ("torch", "sklearn", "captum", "shap", "matplotlib"):
        pytest.importorskip(module)
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "convergence.py"
    spec = importlib.util.spec_from_file_location("convergence_study", path)
    study = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # third-party deprecations inside captum and shap
        assert study.main(["--quick", "--out", str(tmp_path)]) == 0
    table = (tmp_path / "convergence.md").read_text()
    assert "gradshap lattice" in table and "captum GradientShap" in table and "shap GradientExplainer" in table
    assert (tmp_path / "convergence.png").stat().st_size > 10_000
    result = json.loads((tmp_path / "convergence.json").read_text())
    # Even the smoke run shows the design's advantage at 200 samples on the CNN.
    cnn = result["workloads"]["cnn"]["curves"]
    assert cnn["gradshap lattice"]["200"]["error"] < cnn["gradshap iid"]["200"]["error"]
    shap_rows = {r["model"]: r["relative_distance"] for r in result["eg_vs_shap"]}
    assert shap_rows["linear"] < 1e-12 and shap_rows["ReLU network (8-16-1)"] > 1e-2


# --------------------------------------------------------------------------- designs with a background row per column


@pytest.mark.parametrize("sampler", ["lattice", "balanced"])
@pytest.mark.parametrize("n_samples", [32, 37, 80])
def test_columns_of_one_background_row_give_the_estimate_of_their_draws(problem, sampler, n_samples):
    """With at least as many samples as background rows, every sample of a column uses the
    column's background row (equal and unequal column counts here), which the engine may
    exploit (reduce the gradients per column, then multiply by the column's ``x - b``).
    At every batch size the values are the estimate written out in NumPy from the draws,
    and values and standard errors are those of a call whose smoothing noise is too small
    to move any point (``stdevs=1e-300``: every sample gets its own noise, so no column
    has one ``x - b``)."""
    x, bg, model = problem
    x = np.concatenate([x] * 5)  # 15 rows: several row groups and a short last one
    want = reference_estimate(model.grad, x, bg, n_samples=n_samples, sampler=sampler, seed=2)
    noisy = gradshap.expected_gradients(model, x, bg, n_samples=n_samples, sampler=sampler, seed=2, stdevs=1e-300)
    np.testing.assert_allclose(noisy.values, want, rtol=1e-12, atol=1e-13)
    for batch_size in (6, 40, 1000):
        out = gradshap.expected_gradients(model, x, bg, n_samples=n_samples, sampler=sampler, seed=2,
                                          batch_size=batch_size)
        np.testing.assert_allclose(out.values, want, rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(out.stderr, noisy.stderr, rtol=1e-9, atol=1e-13)
        assert np.all(out.stderr > 0)


def test_compiled_adapter_gives_the_numpy_numbers_where_rows_fill_no_whole_chunk(problem):
    """JAX runs the last rows of a call, fewer than a chunk holds, padded with copies of
    them. At row counts and batch sizes that leave such rows, the numbers are NumPy's."""
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    x, bg, model = problem
    x = np.concatenate([x] * 5)
    w, c, v = (jnp.asarray(a) for a in model.params)
    for batch_size in (24, 50):
        explainer = gradshap.GradientExplainer(lambda p: jnp.maximum(p @ w.T + c, 0.0) @ v, jnp.asarray(bg),
                                               batch_size=batch_size)
        for rows in (13, 15):
            ref = gradshap.expected_gradients(model, x[:rows], bg, n_samples=37, seed=5)
            out = explainer(jnp.asarray(x[:rows]), n_samples=37, seed=5)
            np.testing.assert_allclose(np.asarray(out.values), ref.values, rtol=0, atol=1e-12)
            np.testing.assert_allclose(np.asarray(out.stderr), ref.stderr, rtol=1e-9, atol=1e-12)


def test_many_columns_give_the_numpy_numbers_on_a_compiling_adapter(rng):
    """200 samples over 100 background rows (100 columns) at batch_size 8192, for 200 and
    201 rows on JAX: the same numbers as NumPy's eager run."""
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    w = rng.normal(size=(6, 3))
    x, bg = rng.normal(size=(201, 3)), rng.normal(size=(100, 3))

    def vg(p):
        return np.tanh(p @ w[:3].T).sum(1), (1 - np.tanh(p @ w[:3].T) ** 2) @ w[:3]

    for n_rows in (200, 201):
        ref = gradshap.expected_gradients(vg, x[:n_rows], bg, n_samples=200, seed=4, batch_size=8192)
        out = gradshap.GradientExplainer(lambda p: jnp.tanh(p @ jnp.asarray(w[:3]).T).sum(1), jnp.asarray(bg),
                                         batch_size=8192)(jnp.asarray(x[:n_rows]), n_samples=200, seed=4)
        np.testing.assert_allclose(np.asarray(out.values), ref.values, rtol=0, atol=1e-12)
        np.testing.assert_allclose(np.asarray(out.stderr), ref.stderr, rtol=1e-9, atol=1e-13)

@pytest.mark.parametrize("block", [0, 1, 3])
def test_lattice_alphas_wrap_like_a_float_mod_where_a_shift_rounds_to_the_stratum_end(monkeypatch, block):
    """Shifts of exactly 1 and within an ulp of it (where ``p + v + shift`` rounds up to
    the column's count): the alphas are ``mod(p + v + shift, m) / m`` to the last bit, and
    lie in [0, 1)."""
    design = _sampling.plan("lattice", 23, 10)  # 3 columns of 3 samples, 7 of 2
    below_one = np.nextafter(1.0, 0.0)
    shifts = np.tile(np.array([1.0, below_one, 0.5, 1.0, below_one, 0.25, 1.0, 0.75, below_one, 1e-9]), (2, 1))
    monkeypatch.setattr(_sampling, "_stratified_shifts", lambda key, rows, n: shifts[: len(rows), :n])
    _, alpha, _ = _sampling.draw(design, 5, np.arange(2), block, 0, 23)
    j = np.arange(23)
    m = design.counts[j % 10].astype(float)
    expected = np.mod(j // 10 + _sampling._radical_inverse(block) + shifts[:, j % 10], m) / m
    np.testing.assert_array_equal(alpha, expected)
    assert np.all((alpha >= 0) & (alpha < 1))
    if block == 0:
        assert np.any(alpha == 0.0)  # some wrapped
