"""Core engine: exactness on linear models, seeds, chunking, targets, several inputs."""

from __future__ import annotations

import numpy as np
import pytest

import gradshap
from gradshap import _sampling
from conftest import import_or_fail
from models import linear_weights, mlp_weights, numpy_mlp, reference_estimate, torch_mlp


def np_(a):
    return gradshap.explanation.to_numpy(a)


def drawn_mean(seed, sampler, n_rows, n_samples, background):
    """Mean of the baselines the sampler draws for each row, as the estimate weighs them, from the same seed."""
    index, _, w = _sampling.samples(sampler, _sampling.seed_key(seed), np.arange(n_rows), n_samples,
                                    background.shape[0])
    return np.einsum("rsf,s->rf", background[index], w)


@pytest.mark.parametrize("sampler", ["iid", "balanced", "auto"])
@pytest.mark.parametrize("n_samples,seed", [(1, 0), (7, 1), (50, 12345)])
def test_linear_equals_weight_times_distance_to_drawn_baselines(backend, sampler, n_samples, seed, rng):
    w, b = linear_weights(rng, 5)
    bg, x = rng.normal(size=(13, 5)), rng.normal(size=(4, 5))
    arr = backend.array
    exp = backend.explainer(backend.linear(w, b), arr(bg))(arr(x), n_samples=n_samples, sampler=sampler, seed=seed)
    expected = w[:, 0] * (x - drawn_mean(seed, sampler, 4, n_samples, bg))
    np.testing.assert_allclose(np_(exp.values), expected, rtol=0, atol=1e-10)
    # Completeness residual of a linear model is exactly the baseline-sampling error.
    np.testing.assert_allclose(np_(exp.delta), (expected - w[:, 0] * (x - bg.mean(0))).sum(1), atol=1e-10)


def test_linear_balanced_covering_background_is_exact(backend, rng):
    w, b = linear_weights(rng, 4)
    bg, x = rng.normal(size=(8, 4)), rng.normal(size=(5, 4))
    arr = backend.array
    exp = backend.explainer(backend.linear(w, b), arr(bg))(arr(x), n_samples=24, sampler="balanced", seed=3)
    np.testing.assert_allclose(np_(exp.values), w[:, 0] * (x - bg.mean(0)), atol=1e-12)
    np.testing.assert_allclose(np_(exp.delta), 0.0, atol=1e-12)
    np.testing.assert_allclose(np_(exp.base_values), (bg @ w + b).mean(), atol=1e-12)
    np.testing.assert_allclose(np_(exp.output), (x @ w + b)[:, 0], atol=1e-12)


def test_seed_fixes_result_for_every_batch_size(backend, rng):
    """The draws are made from the seed and each row's position, never from the chunks:
    batch sizes of 1 point, 7 and 10**4 give the same numbers, smoothing noise included."""
    weights = mlp_weights(rng)
    bg, x = rng.normal(size=(9, 6)), rng.normal(size=(5, 6))
    results = []
    for batch_size in (1, 7, 10**4):
        explainer = backend.explainer(backend.mlp(weights), backend.array(bg), batch_size=batch_size)
        exp = explainer(backend.array(x), target=[0, 2], n_samples=40, seed=99, stdevs=0.1)
        results.append([backend.host(a) for a in (exp.values, exp.stderr, exp.delta)])
    for values, stderr, delta in results[1:]:
        np.testing.assert_allclose(values, results[0][0], rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(stderr, results[0][1], rtol=1e-10, atol=1e-15)
        np.testing.assert_allclose(delta, results[0][2], rtol=1e-10, atol=1e-13)


# One explainer's calls, each changing what its draws depend on: the rows (and so their
# positions), the seed, the budget, the sampler, the background. (rows, seed, n_samples,
# background rows, sampler); the last ones repeat earlier calls.
_CALLS = [(slice(0, 7), 5, 40, 9, "auto"), (slice(2, 7), 5, 40, 9, "auto"), (slice(0, 5), 5, 40, 9, "auto"),
          (slice(0, 7), 6, 40, 9, "auto"), (slice(0, 7), 5, 60, 9, "auto"), (slice(0, 7), 5, 40, 9, "balanced"),
          (slice(0, 7), 5, 40, 8, "auto"), (slice(0, 7), 5, 40, 9, "iid"), (slice(2, 7), 5, 40, 9, "iid"),
          (slice(0, 7), 6, 40, 9, "iid"), (slice(0, 7), 5, 60, 9, "iid"), (slice(0, 7), 5, 40, 9, "auto"),
          (slice(0, 7), 5, 40, 9, "iid")]


@pytest.mark.parametrize("backend", ["numpy", "jax"], indirect=True)
@pytest.mark.parametrize("batch_size", [60, 600])
def test_a_call_draws_its_own_samples_whatever_came_before(backend, batch_size, rng):
    """No call reuses the draws of another: each gives the estimate written out in NumPy
    from its own draws, and the same values and standard errors as in the reverse order of
    calls. On JAX, at batch_size 60, the rows do not fill whole chunks (copies pad them)."""
    weights = mlp_weights(rng)
    _, jacobian = numpy_mlp(weights)
    bg, x = rng.normal(size=(9, 6)), rng.normal(size=(7, 6))

    def run(order):
        explainers = {nb: backend.explainer(backend.mlp(weights), backend.array(bg[:nb]), batch_size=batch_size)
                      for nb in (8, 9)}
        out = {}
        for i in order:
            rows, seed, n_samples, nb, sampler = _CALLS[i]
            exp = explainers[nb](backend.array(x[rows]), target=1, n_samples=n_samples, seed=seed, sampler=sampler)
            out[i] = backend.host(exp.values), backend.host(exp.stderr)
        return out

    forward, backward = run(range(len(_CALLS))), run(reversed(range(len(_CALLS))))
    for i, (rows, seed, n_samples, nb, sampler) in enumerate(_CALLS):
        want = reference_estimate(lambda p: jacobian(p)[:, 1], x[rows], bg[:nb], n_samples=n_samples,
                                  sampler=sampler, seed=seed)
        np.testing.assert_allclose(forward[i][0], want, rtol=1e-10, atol=1e-12, err_msg=str(_CALLS[i]))
        np.testing.assert_allclose(backward[i][0], forward[i][0], rtol=1e-12, atol=1e-14, err_msg=str(_CALLS[i]))
        np.testing.assert_allclose(backward[i][1], forward[i][1], rtol=1e-10, atol=1e-14, err_msg=str(_CALLS[i]))


@pytest.mark.parametrize("backend", ["jax", "tensorflow"], indirect=True)
def test_padded_rows_give_the_numbers_of_the_unpadded_ones(backend, rng):
    """A compiling adapter keeps its chunks at few shapes: a short group of rows runs padded
    with copies of its rows, and a short forward pass padded to a power of two. NumPy pads
    nothing. At row counts that fill no whole chunk, every number is NumPy's, for the
    caller's rows only, and so is the progress bar's count."""
    weights = mlp_weights(rng)
    bg, x = rng.normal(size=(9, 6)), rng.normal(size=(7, 6))
    reference = gradshap.GradientExplainer(numpy_mlp(weights), bg, framework="numpy")
    for batch_size in (60, None):
        explainer = backend.explainer(backend.mlp(weights), backend.array(bg), batch_size=batch_size)
        for rows in (1, 3, 5, 7):
            exp = explainer(backend.array(x[:rows]), target=1, n_samples=40, seed=5)
            ref = reference(x[:rows], target=1, n_samples=40, seed=5)
            for name in ("values", "stderr", "base_values", "output", "delta"):
                got = backend.host(getattr(exp, name))
                assert got.shape == np.shape(getattr(ref, name)), name
                np.testing.assert_allclose(got, getattr(ref, name), rtol=1e-10, atol=1e-13,
                                           err_msg=f"{name}, {rows} rows, batch_size={batch_size}")


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


@pytest.mark.parametrize("backend", ["torch", "jax", "tensorflow"], indirect=True)
def test_every_framework_gives_the_numpy_numbers_in_float64(backend, rng):
    weights = mlp_weights(rng)
    bg, x = rng.normal(size=(10, 6)), rng.normal(size=(4, 6))
    kw = dict(target="predicted", n_samples=64, seed=2026, stdevs=0.05)
    got = backend.explainer(backend.mlp(weights), backend.array(bg))(backend.array(x), **kw)
    want = gradshap.GradientExplainer(numpy_mlp(weights), bg, framework="numpy")(x, **kw)
    for name in ("values", "stderr", "delta", "output", "base_values"):
        np.testing.assert_allclose(backend.host(getattr(got, name)), getattr(want, name), rtol=1e-8, atol=1e-12,
                                   err_msg=name)
    np.testing.assert_array_equal(backend.host(got.target), want.target)
    assert np.abs(want.values).max() > 0.05  # not trivially zero


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


@pytest.mark.parametrize("backend", ["torch", "jax", "tensorflow"], indirect=True)
def test_targets_made_on_the_host_equal_the_device_one_hot(backend, rng):
    """int, list and NumPy per-row targets build their cotangents on the host; a per-row
    target in the framework's own array type builds them with the framework's ops. Both
    explain the same scalars."""
    weights = mlp_weights(rng)
    bg, x = rng.normal(size=(7, 6)).astype(np.float32), rng.normal(size=(5, 6)).astype(np.float32)
    explainer = backend.explainer(backend.mlp(weights, "float32"), backend.array(bg, "float32"))
    xa = backend.array(x, "float32")
    per_row = np.array([0, 2, 1, 1, 0])
    on_device = explainer(xa, target=backend.array(per_row, "int64"), n_samples=16, seed=4)
    on_host = explainer(xa, target=per_row, n_samples=16, seed=4)
    np.testing.assert_array_equal(backend.host(on_host.values), backend.host(on_device.values))
    np.testing.assert_array_equal(backend.host(on_host.output), backend.host(on_device.output))
    assert type(on_host.values) is type(on_device.values) and on_host.values.dtype == on_device.values.dtype
    ones = explainer(xa, target=backend.array(np.full(5, 2), "int64"), n_samples=16, seed=4)
    for target in (2, [2]):
        exp = explainer(xa, target=target, n_samples=16, seed=4)
        values = backend.host(exp.values)
        np.testing.assert_array_equal(values[..., 0] if isinstance(target, list) else values, backend.host(ones.values))


@pytest.mark.parametrize("backend", ["torch", "jax", "tensorflow"], indirect=True)
def test_callable_target(backend, rng):
    weights = mlp_weights(rng)
    bg, x = backend.array(rng.normal(size=(7, 6))), backend.array(rng.normal(size=(5, 6)))
    explainer = backend.explainer(backend.mlp(weights), bg)
    diff = explainer(x, target=lambda out: out[:, 0] - out[:, 2], n_samples=16, seed=4)
    a = explainer(x, target=0, n_samples=16, seed=4)
    b = explainer(x, target=2, n_samples=16, seed=4)
    for name in ("values", "output", "delta"):
        np.testing.assert_allclose(backend.host(getattr(diff, name)),
                                   backend.host(getattr(a, name)) - backend.host(getattr(b, name)),
                                   rtol=1e-10, atol=1e-13, err_msg=name)


@pytest.mark.parametrize("backend", ["jax", "tensorflow"], indirect=True)
def test_a_callable_target_passed_again_traces_nothing_new(backend, rng):
    """A compiling adapter composed with a callable target is kept per callable, with its
    compiled steps: a second call with the same function traces the model no more; another
    function composes (and traces) anew, with its own numbers."""
    traces = {"n": 0}
    w = backend.array(rng.normal(size=(4, 3)))
    tanh = backend.lib.tanh if backend.name == "tensorflow" else backend.lib.numpy.tanh

    def model(p):
        traces["n"] += 1  # runs once per trace
        return tanh(p @ w)

    bg, x = backend.array(rng.normal(size=(5, 4))), backend.array(rng.normal(size=(6, 4)))
    explainer = backend.explainer(model, bg)

    def pick(out):
        return out[:, 0] - out[:, 2]

    first = explainer(x, target=pick, n_samples=20, seed=0)
    seen = traces["n"]
    again = explainer(x, target=pick, n_samples=20, seed=0)
    assert traces["n"] == seen
    np.testing.assert_array_equal(backend.host(again.values), backend.host(first.values))
    other = explainer(x, target=lambda out: out[:, 1], n_samples=20, seed=0)
    assert traces["n"] > seen
    single = explainer(x, target=1, n_samples=20, seed=0)
    np.testing.assert_allclose(backend.host(other.values), backend.host(single.values), rtol=1e-12, atol=1e-14)
    difference = backend.host(explainer(x, target=[0, 2], n_samples=20, seed=0).values)
    np.testing.assert_allclose(backend.host(first.values), difference[..., 0] - difference[..., 1],
                               rtol=1e-9, atol=1e-12)


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


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_results_keep_namespace_dtype_and_device(backend, dtype, rng):
    w, b = linear_weights(rng, 3, 2)
    bg, x = backend.array(rng.normal(size=(6, 3)), dtype), backend.array(rng.normal(size=(2, 3)), dtype)
    exp = backend.explainer(backend.linear(w, b, dtype), bg)(x, target=1, n_samples=4, seed=0)
    for a in (exp.values, exp.stderr, exp.base_values, exp.output, exp.delta):
        assert type(a) is type(x) and a.dtype == x.dtype
        assert backend.host(a).dtype == np.dtype(dtype)
        assert backend.device(a) == backend.device(x)
    assert exp.values.shape == exp.stderr.shape == x.shape
    assert exp.output.shape == exp.delta.shape == exp.base_values.shape == (2,)
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
