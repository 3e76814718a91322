"""Core engine: exactness on linear models, seeds, chunking, targets, several inputs."""

from __future__ import annotations

import numpy as np
import pytest

import gradshap
from gradshap import _sampling
from conftest import import_or_fail
from models import jax_mlp, linear_weights, mlp_weights, numpy_mlp, torch_mlp


def make_linear(framework: str, w: np.ndarray, b: np.ndarray):
    """(model, to_framework_array) for f(x) = x @ w + b in float64."""
    if framework == "numpy":
        f = lambda p: p @ w + b  # noqa: E731
        g = lambda p: np.broadcast_to(w[:, 0], p.shape) if w.shape[1] == 1 else np.broadcast_to(w.T, (p.shape[0], *w.T.shape))  # noqa: E731
        return (f, g), (lambda a: np.asarray(a, dtype=np.float64))
    if framework == "torch":
        torch = import_or_fail("torch")
        lin = torch.nn.Linear(*w.shape).double()
        with torch.no_grad():
            lin.weight.copy_(torch.as_tensor(w.T))
            lin.bias.copy_(torch.as_tensor(b))
        return lin, (lambda a: torch.as_tensor(np.asarray(a, dtype=np.float64)))
    jax = import_or_fail("jax")
    jnp = jax.numpy
    wj, bj = jnp.asarray(w), jnp.asarray(b)
    return (lambda p: p @ wj + bj), (lambda a: jnp.asarray(np.asarray(a, dtype=np.float64)))


def np_(a):
    return gradshap.explanation.to_numpy(a)


def drawn_mean(seed, sampler, n_rows, n_samples, background):
    """Mean of the baselines the sampler draws for each row, as the estimate weighs them, from the same seed."""
    index, _, w = _sampling.samples(sampler, _sampling.seed_key(seed), np.arange(n_rows), n_samples,
                                    background.shape[0])
    return np.einsum("rsf,s->rf", background[index], w)


@pytest.mark.parametrize("framework", ["numpy", "torch", "jax"])
@pytest.mark.parametrize("sampler", ["iid", "balanced", "auto"])
@pytest.mark.parametrize("n_samples,seed", [(1, 0), (7, 1), (50, 12345)])
def test_linear_equals_weight_times_distance_to_drawn_baselines(framework, sampler, n_samples, seed, rng):
    w, b = linear_weights(rng, 5)
    bg, x = rng.normal(size=(13, 5)), rng.normal(size=(4, 5))
    model, arr = make_linear(framework, w, b)
    exp = gradshap.GradientExplainer(model, arr(bg), framework=framework)(arr(x), n_samples=n_samples, sampler=sampler, seed=seed)
    expected = w[:, 0] * (x - drawn_mean(seed, sampler, 4, n_samples, bg))
    np.testing.assert_allclose(np_(exp.values), expected, rtol=0, atol=1e-10)
    # Completeness residual of a linear model is exactly the baseline-sampling error.
    np.testing.assert_allclose(np_(exp.delta), (expected - w[:, 0] * (x - bg.mean(0))).sum(1), atol=1e-10)


@pytest.mark.parametrize("framework", ["numpy", "torch", "jax"])
def test_linear_balanced_covering_background_is_exact(framework, rng):
    w, b = linear_weights(rng, 4)
    bg, x = rng.normal(size=(8, 4)), rng.normal(size=(5, 4))
    model, arr = make_linear(framework, w, b)
    exp = gradshap.GradientExplainer(model, arr(bg))(arr(x), n_samples=24, sampler="balanced", seed=3)
    np.testing.assert_allclose(np_(exp.values), w[:, 0] * (x - bg.mean(0)), atol=1e-12)
    np.testing.assert_allclose(np_(exp.delta), 0.0, atol=1e-12)
    np.testing.assert_allclose(np_(exp.base_values), (bg @ w + b).mean(), atol=1e-12)
    np.testing.assert_allclose(np_(exp.output), (x @ w + b)[:, 0], atol=1e-12)


def test_seed_fixes_result_for_every_batch_size(rng):
    weights = mlp_weights(rng)
    bg, x = rng.normal(size=(9, 6)), rng.normal(size=(5, 6))
    explainer = gradshap.GradientExplainer(numpy_mlp(weights), bg, framework="numpy")
    results = []
    for batch_size in (1, 7, 10000):
        explainer.batch_size = batch_size
        exp = explainer(x, target=[0, 2], n_samples=40, seed=99, stdevs=0.1)
        results.append((exp.values, exp.stderr, exp.delta))
    for values, stderr, delta in results[1:]:
        np.testing.assert_allclose(values, results[0][0], rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(stderr, results[0][1], rtol=1e-10, atol=1e-15)
        np.testing.assert_allclose(delta, results[0][2], rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("pads", [False, True])
def test_kept_draws_never_stand_in_for_other_draws(rng, monkeypatch, pads):
    """Seeded calls keep their draws (they depend on the seed and the rows' positions only).
    A call with another seed, other row positions, another budget, sampler or background
    must draw its own: each result is the one made with nothing kept. Without padding, at
    batch_size 600, every call draws its rows at once (40 and 60 samples draw rows 0..6
    alike); with it (``pads``), at batch_size 60, 7 rows at 40 samples run as row groups
    of 3 and then 1 row of slots, which draws apart. iid draws take the general path, whose
    chunks hold 15 rows (1 with ``pads``) and whose draw groups hold all 7."""
    from gradshap import _engine

    weights = mlp_weights(rng)
    bg, x = rng.normal(size=(9, 6)), rng.normal(size=(7, 6))
    calls = [(slice(0, 7), 5, 40, 9, "auto"), (slice(2, 7), 5, 40, 9, "auto"), (slice(0, 5), 5, 40, 9, "auto"),
             (slice(0, 7), 6, 40, 9, "auto"), (slice(0, 7), 5, 60, 9, "auto"), (slice(0, 7), 5, 40, 9, "balanced"),
             (slice(0, 7), 5, 40, 8, "auto"), (slice(0, 7), 5, 40, 9, "auto"),
             # iid draws run the general path, which keeps its draw groups too
             (slice(0, 7), 5, 40, 9, "iid"), (slice(2, 7), 5, 40, 9, "iid"), (slice(0, 7), 6, 40, 9, "iid"),
             (slice(0, 7), 5, 60, 9, "iid"), (slice(0, 7), 5, 40, 9, "iid")]

    def results():
        out = []
        for rows, seed, n_samples, nb, sampler in calls:
            explainer = gradshap.GradientExplainer(numpy_mlp(weights), bg[:nb], framework="numpy",
                                                   batch_size=60 if pads else 600)
            explainer.adapter.pads = pads
            exp = explainer(x[rows], target=1, n_samples=n_samples, seed=seed, sampler=sampler)
            out.append((exp.values, exp.stderr))
        return out

    limit = _engine._DRAWS_KEPT_BYTES
    monkeypatch.setattr(_engine, "_DRAWS_KEPT_BYTES", 0)  # every draw made anew
    fresh = results()
    assert not _engine._KEPT_DRAWS
    monkeypatch.setattr(_engine, "_DRAWS_KEPT_BYTES", limit)
    for (rows, *_), got, want in zip(calls, results(), fresh):
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
    assert any("draw" in found for found in _engine._KEPT_DRAWS)  # the general path's draw groups
    # Kept: the most recent draws, up to the limit in bytes.
    sizes = [size for _, size in _engine._KEPT_DRAWS.values()]
    assert len(sizes) > 4 and sum(sizes) <= limit
    # A new draw past a lower limit drops the oldest until the rest fit.
    monkeypatch.setattr(_engine, "_DRAWS_KEPT_BYTES", 2 * max(sizes))
    design = _sampling.plan("auto", 40, 9)
    made = _engine._column_draws(design, _sampling.seed_key(7), 0, 7)
    kept = list(_engine._KEPT_DRAWS.values())
    assert kept[-1][0] is made and sum(size for _, size in kept) <= 2 * max(sizes) and len(kept) < len(sizes)
    # The draws of rows 0..4 are those of the first 5 rows of any call; each kept draw is
    # what the sampler gives for its own rows, seed and design.
    cases = [("auto", 40, 5, 0, 5), ("auto", 40, 5, 2, 5), ("auto", 40, 6, 2, 5), ("auto", 60, 6, 2, 5),
             ("balanced", 60, 6, 2, 5), ("auto", 40, 5, 0, 5), ("auto", 40, 5, 3, 5)]
    for sampler, n_samples, seed, r0, r1 in cases:
        design, key = _sampling.plan(sampler, n_samples, 9), _sampling.seed_key(seed)
        for got, want in zip(_engine._column_draws(design, key, r0, r1),
                             _sampling.columns(design, key, np.arange(r0, r1))):
            np.testing.assert_array_equal(got, want)


def test_padding_with_slots_gives_the_unpadded_numbers(rng):
    """A padding adapter runs the last rows as slots (7 rows at batch_size 60: row groups of
    3, then 1 row of slots), drawn apart from the rest: the numbers of the plain path."""
    weights = mlp_weights(rng)
    bg, x = rng.normal(size=(9, 6)), rng.normal(size=(7, 6))
    out = []
    for pads in (False, True):
        explainer = gradshap.GradientExplainer(numpy_mlp(weights), bg, framework="numpy", batch_size=60)
        explainer.adapter.pads = pads
        out.append(explainer(x, target=1, n_samples=40, seed=5))
    np.testing.assert_allclose(out[1].values, out[0].values, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(out[1].stderr, out[0].stderr, rtol=1e-10, atol=1e-14)


def test_rows_do_not_depend_on_their_neighbours(rng):
    """Row r draws from (seed, r): explaining a prefix gives the prefix's values."""
    weights = mlp_weights(rng)
    bg, x = rng.normal(size=(9, 6)), rng.normal(size=(6, 6))
    explainer = gradshap.GradientExplainer(numpy_mlp(weights), bg, framework="numpy")
    full = explainer(x, target=1, n_samples=16, seed=5, sampler="iid")
    part = explainer(x[:3], target=1, n_samples=16, seed=5, sampler="iid")
    np.testing.assert_allclose(part.values, full.values[:3], rtol=1e-13)
    other = explainer(x, target=1, n_samples=16, seed=6, sampler="iid")
    assert np.abs(other.values - full.values).max() > 1e-3


def test_torch_and_jax_agree_in_float64(rng):
    weights = mlp_weights(rng)
    torch = import_or_fail("torch")
    jnp = import_or_fail("jax").numpy
    bg, x = rng.normal(size=(10, 6)), rng.normal(size=(4, 6))
    kw = dict(target="predicted", n_samples=64, seed=2026, stdevs=0.05)
    t = gradshap.GradientExplainer(torch_mlp(weights), torch.as_tensor(bg))(torch.as_tensor(x), **kw)
    j = gradshap.GradientExplainer(jax_mlp(weights), jnp.asarray(bg))(jnp.asarray(x), **kw)
    n = gradshap.GradientExplainer(numpy_mlp(weights), bg, framework="numpy")(x, **kw)
    for a, b in ((t, j), (t, n)):
        np.testing.assert_allclose(np_(a.values), np_(b.values), rtol=1e-8, atol=1e-12)
        np.testing.assert_allclose(np_(a.stderr), np_(b.stderr), rtol=1e-8, atol=1e-12)
        np.testing.assert_allclose(np_(a.delta), np_(b.delta), rtol=1e-8, atol=1e-12)
    assert np.abs(np_(t.values)).max() > 0.05  # not trivially zero


def test_nonlinear_error_falls_with_samples_and_is_within_stderr(rng):
    weights = mlp_weights(rng)
    model = numpy_mlp(weights)
    bg, x = rng.normal(size=(20, 6)), rng.normal(size=(6, 6))
    explainer = gradshap.GradientExplainer(model, bg, framework="numpy")
    reference = explainer(x, target=0, n_samples=20000, sampler="iid", seed=0).values
    errors, zs = [], []
    for n in (25, 100, 400, 1600):
        exp = explainer(x, target=0, n_samples=n, sampler="iid", seed=n)
        errors.append(np.linalg.norm(exp.values - reference) / np.linalg.norm(reference))
        zs.append(((exp.values - reference) / exp.stderr).ravel())
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    # error ~ n^-1/2: 64x the samples cuts it by about 8
    assert 4 < errors[0] / errors[-1] < 16, errors
    z = np.concatenate(zs)
    assert np.mean(np.abs(z) < 3) > 0.95, np.mean(np.abs(z) < 3)
    assert 0.7 < np.std(z) < 1.4, np.std(z)


def test_several_targets_stack_on_a_trailing_axis(rng):
    weights = mlp_weights(rng)
    bg, x = rng.normal(size=(7, 6)), rng.normal(size=(4, 6))
    explainer = gradshap.GradientExplainer(numpy_mlp(weights), bg, framework="numpy")
    many = explainer(x, target=[2, 0], n_samples=20, seed=1)
    assert many.values.shape == (4, 6, 2) and many.delta.shape == (4, 2)
    for k, t in enumerate((2, 0)):
        one = explainer(x, target=t, n_samples=20, seed=1)
        np.testing.assert_allclose(many.values[..., k], one.values, rtol=1e-13)
        np.testing.assert_allclose(many.base_values[:, k], one.base_values, rtol=1e-13)
    assert many.target == (2, 0)


def test_per_row_predicted_and_callable_targets(rng):
    weights = mlp_weights(rng)
    f, _ = numpy_mlp(weights)
    bg, x = rng.normal(size=(7, 6)), rng.normal(size=(5, 6))
    explainer = gradshap.GradientExplainer(numpy_mlp(weights), bg, framework="numpy")
    per_row = np.array([0, 2, 1, 1, 0])
    exp = explainer(x, target=per_row, n_samples=16, seed=4)
    for r, t in enumerate(per_row):
        one = explainer(x, target=int(t), n_samples=16, seed=4)
        np.testing.assert_allclose(exp.values[r], one.values[r], rtol=1e-13)
        np.testing.assert_allclose(exp.output[r], f(x)[r, t], rtol=1e-13)
    predicted = explainer(x, target="predicted", n_samples=16, seed=4)
    np.testing.assert_array_equal(predicted.target, f(x).argmax(1))
    np.testing.assert_allclose(predicted.output, f(x).max(1), rtol=1e-13)


@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_targets_made_on_the_host_equal_the_device_one_hot(framework, rng):
    """int, list and NumPy per-row targets build their cotangents on the host; a per-row
    target in the framework's own array type builds them with the framework's ops. Both
    explain the same scalars."""
    weights = mlp_weights(rng)
    make = {"torch": lambda w: torch_mlp(w, "float32"), "jax": jax_mlp}[framework]
    lib = import_or_fail(framework)
    asarray = lib.as_tensor if framework == "torch" else lib.numpy.asarray
    bg, x = rng.normal(size=(7, 6)).astype(np.float32), rng.normal(size=(5, 6)).astype(np.float32)
    explainer = gradshap.GradientExplainer(make(weights), asarray(bg))
    xa = asarray(x)
    per_row = np.array([0, 2, 1, 1, 0])
    on_device = explainer(xa, target=asarray(per_row), n_samples=16, seed=4)
    on_host = explainer(xa, target=per_row, n_samples=16, seed=4)
    np.testing.assert_array_equal(np.asarray(on_host.values), np.asarray(on_device.values))
    np.testing.assert_array_equal(np.asarray(on_host.output), np.asarray(on_device.output))
    assert type(on_host.values) is type(on_device.values) and on_host.values.dtype == on_device.values.dtype
    ones = explainer(xa, target=asarray(np.full(5, 2)), n_samples=16, seed=4)
    for target in (2, [2]):
        exp = explainer(xa, target=target, n_samples=16, seed=4)
        values = np.asarray(exp.values)
        np.testing.assert_array_equal(values[..., 0] if isinstance(target, list) else values, np.asarray(ones.values))


def test_callable_target_in_torch(rng):
    torch = import_or_fail("torch")
    weights = mlp_weights(rng)
    model = torch_mlp(weights)
    bg, x = torch.as_tensor(rng.normal(size=(7, 6))), torch.as_tensor(rng.normal(size=(5, 6)))
    explainer = gradshap.GradientExplainer(model, bg)
    diff = explainer(x, target=lambda out: out[:, 0] - out[:, 2], n_samples=16, seed=4)
    a = explainer(x, target=0, n_samples=16, seed=4)
    b = explainer(x, target=2, n_samples=16, seed=4)
    torch.testing.assert_close(diff.values, a.values - b.values, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(diff.output, a.output - b.output, rtol=1e-12, atol=1e-14)


def test_several_inputs_draw_baselines_jointly(rng):
    """A two-input model equals the one-input model on the concatenated features."""
    torch = import_or_fail("torch")
    weights = mlp_weights(rng)
    net = torch_mlp(weights)

    class TwoInputs(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, a, b):
            return self.net(torch.cat([a, b.reshape(b.shape[0], -1)], dim=1))

    bg, x = torch.as_tensor(rng.normal(size=(9, 6))), torch.as_tensor(rng.normal(size=(4, 6)))
    split = lambda t: (t[:, :2], t[:, 2:].reshape(-1, 2, 2))  # noqa: E731
    joint = gradshap.GradientExplainer(TwoInputs(), split(bg))(split(x), target=1, n_samples=30, seed=8)
    single = gradshap.GradientExplainer(net, bg)(x, target=1, n_samples=30, seed=8)
    assert isinstance(joint.values, tuple) and joint.values[1].shape == (4, 2, 2)
    torch.testing.assert_close(joint.values[0], single.values[:, :2], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(joint.values[1].reshape(4, 4), single.values[:, 2:], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(joint.delta, single.delta, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("framework", ["torch", "jax", "numpy"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_results_keep_namespace_dtype_and_device(framework, dtype, rng):
    w, b = linear_weights(rng, 3, 2)
    model, arr = make_linear(framework, w, b)
    if framework == "torch":
        torch = import_or_fail("torch")
        model = model.to(getattr(torch, dtype))
        conv = lambda a: arr(a).to(getattr(torch, dtype))  # noqa: E731
    elif framework == "jax":
        jnp = import_or_fail("jax").numpy
        conv = lambda a: jnp.asarray(a, dtype=dtype)  # noqa: E731
        model = lambda p, m=model: (p @ jnp.asarray(w, dtype) + jnp.asarray(b, dtype))  # noqa: E731
    else:
        conv = lambda a: np.asarray(a, dtype=dtype)  # noqa: E731
    bg, x = conv(rng.normal(size=(6, 3))), conv(rng.normal(size=(2, 3)))
    exp = gradshap.GradientExplainer(model, bg, framework=framework)(x, target=1, n_samples=4, seed=0)
    for a in (exp.values, exp.stderr):
        assert type(a) is type(x)
        assert str(a.dtype).endswith(dtype)
        assert a.shape == x.shape
    import array_api_compat as aac

    assert aac.device(exp.values) == aac.device(x)
    assert exp.sampler == "lattice" and exp.n_samples == 4


def test_seed_examples_image_three_features():
    """seeds/001, example 1: x=[0.8,0.6,0.9], black baseline, gradient [0.7,0.4,0.8]."""
    grad = np.array([0.7, 0.4, 0.8])
    model = (lambda p: p @ grad, lambda p: np.broadcast_to(grad, p.shape))
    exp = gradshap.GradientExplainer(model, np.zeros((1, 3)), framework="numpy")(
        np.array([[0.8, 0.6, 0.9]]), n_samples=5, seed=0
    )
    np.testing.assert_allclose(exp.values, [[0.56, 0.24, 0.72]], atol=1e-12)
    assert list(np.argsort(-exp.values[0])) == [2, 0, 1]  # eyes > ears > whiskers
    np.testing.assert_allclose(exp.delta, 0.0, atol=1e-12)


def test_seed_examples_credit_three_baselines():
    """seeds/001, example 2: three baselines with attributions averaged to [0.45, -0.15]."""
    x = np.array([80e3, 20e3])
    baselines = np.array([[30e3, 10e3], [50e3, 15e3], [40e3, 5e3]])
    per_baseline = np.array([[0.45, -0.15], [0.38, -0.12], [0.52, -0.18]])
    gradient_on_path = per_baseline / (x - baselines)

    def grad_f(p):
        # The gradient field of the example: constant along each baseline's path to x.
        direction = (x - p) / np.linalg.norm(x - p, axis=1, keepdims=True)
        unit = (x - baselines) / np.linalg.norm(x - baselines, axis=1, keepdims=True)
        return gradient_on_path[np.argmax(direction @ unit.T, axis=1)]

    model = (lambda p: np.zeros(p.shape[0]), grad_f)
    exp = gradshap.GradientExplainer(model, baselines, framework="numpy")(x[None], n_samples=30, sampler="balanced", seed=7)
    np.testing.assert_allclose(exp.values, [[0.45, -0.15]], atol=1e-12)


def test_functional_core_with_plain_value_and_grad(rng):
    w = rng.normal(size=4)
    bg, x = rng.normal(size=(8, 4)), rng.normal(size=(3, 4))
    exp = gradshap.expected_gradients(
        lambda p: (p @ w, np.broadcast_to(w, p.shape)), x, bg, n_samples=16, sampler="balanced", seed=1
    )
    np.testing.assert_allclose(exp.values, w * (x - bg.mean(0)), atol=1e-12)
    with pytest.raises(ValueError, match="`target` must be None"):
        gradshap.expected_gradients(lambda p: (p @ w, p), x, bg, target=0)


def test_progress_bar_counts_every_gradient(rng, capsys):
    bg, x = rng.normal(size=(4, 3)), rng.normal(size=(5, 3))
    w = rng.normal(size=3)
    gradshap.expected_gradients(lambda p: (p @ w, np.broadcast_to(w, p.shape)), x, bg, n_samples=10, progress=True, batch_size=8)
    err = capsys.readouterr().err
    assert "50/50" in err


def test_smoothing_noise_enters_interpolation_and_multiplier(rng):
    """Linear model with stdevs: values = w * (x + mean noise - mean baseline)."""
    w = rng.normal(size=3)
    bg, x = rng.normal(size=(6, 3)), rng.normal(size=(2, 3))
    model = (lambda p: p @ w, lambda p: np.broadcast_to(w, p.shape))
    exp = gradshap.GradientExplainer(model, bg, framework="numpy")(x, n_samples=12, sampler="balanced", stdevs=0.5, seed=3)
    key = _sampling.seed_key(3)
    noise = _sampling.normals(key, np.arange(2), 12 * 3, _sampling.STREAM_NOISE).reshape(2, 12, 3) * 0.5
    np.testing.assert_allclose(exp.values, w * (x + noise.mean(1) - bg.mean(0)), atol=1e-12)
    assert np.abs(noise.mean(1)).max() > 1e-3
