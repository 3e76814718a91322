"""Bad input gets an early, clear error naming the argument and the shapes or dtypes."""

from __future__ import annotations

import numpy as np
import pytest

import gradshap
from conftest import import_or_fail


def linear(w):
    return (lambda p: p @ w, lambda p: np.broadcast_to(w, p.shape))


@pytest.fixture
def explainer(rng):
    return gradshap.GradientExplainer(linear(rng.normal(size=3)), rng.normal(size=(5, 3)), framework="numpy")


def test_feature_shape_mismatch(explainer):
    with pytest.raises(ValueError, match=r"`x` and `background` disagree.*\(n, 3\), got \(2, 4\)"):
        explainer(np.zeros((2, 4)))


def test_single_row_without_batch_axis(explainer):
    with pytest.raises(ValueError, match=r"one row without a batch axis.*x\[None\]"):
        explainer(np.zeros(3))


def test_empty_background(rng):
    ex = gradshap.GradientExplainer(linear(np.ones(3)), np.zeros((0, 3)), framework="numpy")
    with pytest.raises(ValueError, match=r"`background` has zero rows \(shape \(0, 3\)\)"):
        ex(np.zeros((1, 3)))


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_input(explainer, bad):
    x = np.zeros((4, 3))
    x[2, 1] = bad
    with pytest.raises(ValueError, match=r"`x` contains NaN or inf in row\(s\) 2"):
        explainer(x)


@pytest.mark.parametrize("where", ["x", "background"])
def test_non_finite_found_with_x_and_background_checked_together(where):
    """x and the background are checked by one reduction over both; the error still names
    the array and the row."""
    x, bg = np.zeros((4, 3)), np.zeros((5, 3))
    (x if where == "x" else bg)[3, 0] = np.nan
    ex = gradshap.GradientExplainer(linear(np.ones(3)), bg, framework="numpy")
    with pytest.raises(ValueError, match=rf"`{where}` contains NaN or inf in row\(s\) 3"):
        ex(x, n_samples=10, seed=0)


def _nan_hiding_linear(backend, w: np.ndarray):
    """``nan_to_num(p) @ w`` in ``backend``: a model that maps NaN to a finite output and gradient."""
    if backend.name == "numpy":
        return (lambda p: np.nan_to_num(p) @ w), (lambda p: np.broadcast_to(w, p.shape))
    if backend.name == "torch":
        tw = backend.array(w)
        return lambda p: backend.lib.nan_to_num(p) @ tw
    if backend.name == "jax":
        jw = backend.array(w)
        return lambda p: backend.lib.numpy.nan_to_num(p) @ jw
    tf, tw = backend.lib, backend.array(w[:, None])
    return lambda p: tf.where(tf.math.is_nan(p), tf.zeros_like(p), p) @ tw


def test_non_finite_input_is_named_even_where_the_model_hides_it(backend):
    """A compiling adapter may read the inputs' check after the model has run (one wait on
    the device, not two); NumPy checks first. A model that maps NaN to a finite output and
    gradient must not let it by either way."""
    x = np.ones((4, 3))
    x[1, 2] = np.nan
    ex = backend.explainer(_nan_hiding_linear(backend, np.array([1.0, -2.0, 0.5])), backend.array(np.zeros((5, 3))))
    with pytest.raises(ValueError, match=r"`x` contains NaN or inf in row\(s\) 1; expected"):
        ex(backend.array(x), n_samples=10, seed=0)


@pytest.mark.parametrize("backend", ["jax", "tensorflow"], indirect=True)
@pytest.mark.parametrize("batch_size", [None, 24])
@pytest.mark.parametrize("rows", [3, 5, 7])
def test_non_finite_rows_are_the_callers_where_rows_are_padded(backend, batch_size, rows):
    """A compiling adapter runs a short group of rows padded with copies of its rows: a NaN
    in row 0 (in the input, or in the gradients there) is reported at row 0 alone, never at
    a copy of it."""
    x = np.ones((rows, 3))
    x[0, 2] = np.nan
    ex = backend.explainer(_nan_hiding_linear(backend, np.array([1.0, -2.0, 0.5])), backend.array(np.zeros((5, 3))),
                           batch_size=batch_size)
    with pytest.raises(ValueError, match=r"`x` contains NaN or inf in row\(s\) 0; expected"):
        ex(backend.array(x), n_samples=10, seed=0)
    # sqrt(p0^2) has a NaN gradient at p0 = 0, where every point of row 0 lies.
    if backend.name == "jax":
        jnp = backend.lib.numpy
        model = lambda p: jnp.sqrt(p[:, 0] ** 2) + p[:, 1]  # noqa: E731
    else:
        tf = backend.lib
        model = lambda p: tf.sqrt(p[:, 0] ** 2) + p[:, 1]  # noqa: E731
    ex = backend.explainer(model, backend.array(np.zeros((5, 3))), batch_size=batch_size)
    x = np.full((rows, 3), 2.0)
    x[0, 0] = 0.0
    with pytest.raises(FloatingPointError, match=r"NaN or inf gradients .* row\(s\) 0; check"):
        ex(backend.array(x), n_samples=10, seed=0)


def test_adaptive_rounds_check_the_inputs_before_the_model_runs():
    """Adaptive rounds read values between rounds, so a NaN input would run every round up
    to max_samples before its error: there the inputs are checked before any model call."""
    calls = []
    w = np.array([1.0, -2.0, 0.5])

    def f(p):
        calls.append(p.shape)
        return p @ w

    x = np.ones((4, 3))
    x[3, 0] = np.inf
    ex = gradshap.GradientExplainer((f, lambda p: np.broadcast_to(w, p.shape)), np.zeros((5, 3)), framework="numpy")
    with pytest.raises(ValueError, match=r"`x` contains NaN or inf in row\(s\) 3"):
        ex(x, n_samples=8, seed=0, rtol=0.01, max_samples=64)
    assert calls == []


def test_huge_finite_inputs_whose_sum_overflows_are_accepted():
    x = np.full((2, 3), 3e38, dtype=np.float32)
    bg = np.full((4, 3), 3e38, dtype=np.float32)  # the sum is inf in float32; every value is finite
    w = np.array([1e-38, 0.0, -1e-38], dtype=np.float32)
    exp = gradshap.GradientExplainer(linear(w), bg, framework="numpy")(x, n_samples=8, seed=0)
    np.testing.assert_array_equal(exp.values, 0.0)


def test_integer_input_suggests_embedding(explainer):
    with pytest.raises(TypeError, match=r"`x` has dtype int64.*embedding"):
        explainer(np.zeros((2, 3), dtype=np.int64))


def test_dtype_mismatch_is_not_cast(explainer):
    with pytest.raises(TypeError, match=r"`x` has dtype float32 but `background` has dtype float64"):
        explainer(np.zeros((2, 3), dtype=np.float32))


def test_mixed_frameworks_are_not_converted(rng):
    torch = import_or_fail("torch")
    model = torch.nn.Linear(3, 1).double()
    ex = gradshap.GradientExplainer(model, torch.zeros(4, 3, dtype=torch.float64))
    with pytest.raises(TypeError, match="one framework"):
        ex(np.zeros((2, 3)))


@pytest.mark.parametrize(
    "kwargs,exc,pattern",
    [
        (dict(n_samples=0), ValueError, r"`n_samples` must be a positive int \(>= 1\); got 0"),
        (dict(n_samples=2.5), TypeError, r"`n_samples` must be a positive int"),
        (dict(stdevs=-1.0), ValueError, r"`stdevs` must be a finite number >= 0"),
        (dict(sampler="sobolx"), ValueError, r"`sampler` must be one of 'auto', 'iid', 'balanced'"),
        (dict(seed=-3), ValueError, r"`seed` must be None, a non-negative int"),
        (dict(seed="abc"), TypeError, r"`seed` must be None"),
    ],
)
def test_absurd_arguments(explainer, kwargs, exc, pattern):
    with pytest.raises(exc, match=pattern):
        explainer(np.zeros((2, 3)), **kwargs)


def test_bad_batch_size(rng):
    with pytest.raises(ValueError, match=r"`batch_size` must be a positive int"):
        gradshap.GradientExplainer(linear(np.ones(3)), np.zeros((2, 3)), framework="numpy", batch_size=0)


def _multi_output(rng):
    w = rng.normal(size=(3, 4))
    return gradshap.GradientExplainer(
        (lambda p: p @ w, lambda p: np.broadcast_to(w.T, (p.shape[0], 4, 3))), rng.normal(size=(5, 3)), framework="numpy"
    )


def test_target_none_on_multi_output_lists_choices(rng):
    with pytest.raises(ValueError, match=r"has 4 outputs per row.*'predicted'.*callable"):
        _multi_output(rng)(np.zeros((2, 3)))


@pytest.mark.parametrize(
    "target,exc,pattern",
    [
        (4, ValueError, r"`target` 4 is out of range for a model with 4 outputs"),
        (-1, ValueError, r"`target` -1 is out of range"),
        ("argmax", ValueError, r"`target` string must be 'predicted'"),
        (np.array([0, 1, 2]), ValueError, r"one int per row: expected shape \(2,\), got \(3,\)"),
        (np.array([0, 9]), ValueError, r"out of range for a model with 4 outputs at row\(s\) 1"),
        (np.array([0.0, 1.0]), TypeError, r"integer dtype"),
        ([], ValueError, r"at least one int"),
        (1.5, TypeError, r"`target` must be"),
    ],
)
def test_bad_targets(rng, target, exc, pattern):
    with pytest.raises(exc, match=pattern):
        _multi_output(rng)(np.zeros((2, 3)), target=target)


def test_unexpected_output_rank(rng):
    ex = gradshap.GradientExplainer(
        (lambda p: np.zeros((p.shape[0], 2, 2)), lambda p: np.zeros_like(p)), np.zeros((3, 3)), framework="numpy"
    )
    with pytest.raises(ValueError, match=r"output has shape \(2, 2, 2\) for 2 input rows; expected \(2,\) or \(2, n_outputs\)"):
        ex(np.ones((2, 3)))


def test_nan_gradients_name_the_rows(rng):
    def grad(p):
        g = np.ones_like(p)
        g[p[:, 0] > 0.5] = np.nan
        return g

    ex = gradshap.GradientExplainer((lambda p: p.sum(1), grad), np.zeros((3, 3)), framework="numpy")
    x = np.zeros((4, 3))
    x[3] = 1.0
    with pytest.raises(FloatingPointError, match=r"NaN or inf gradients .* row\(s\) 3"):
        ex(x, n_samples=8, seed=0)


def test_unknown_framework_and_undetectable_model(rng):
    with pytest.raises(ValueError, match=r"`framework` must be one of"):
        gradshap.GradientExplainer(linear(np.ones(3)), np.zeros((2, 3)), framework="mxnet")
    with pytest.raises(TypeError, match=r"could not tell the framework"):
        gradshap.GradientExplainer(object(), np.zeros((2, 3)))


def _framework_case(backend):
    """A model of a (n, 3) array with 2 outputs whose gradient is NaN where x[:, 0] < 0 and
    log(0) is never hit otherwise, in ``backend``, float64."""
    w = backend.array(np.array([[1.0, -1.0], [0.5, 2.0], [-0.3, 0.2]]))
    sqrt = {"torch": lambda: backend.lib.sqrt, "jax": lambda: backend.lib.numpy.sqrt,
            "tensorflow": lambda: backend.lib.sqrt}[backend.name]()
    return lambda p: sqrt(p[:, :1]) + p @ w


@pytest.mark.parametrize("backend", ["torch", "jax", "tensorflow"], indirect=True)
def test_value_checks_run_in_every_framework(backend):
    """NaN inputs, NaN gradients and out-of-range target indices are caught for each
    framework's own arrays, not only for NumPy's (a JAX array is concrete outside jit)."""
    to_array = backend.array
    bg = np.abs(np.random.default_rng(0).normal(size=(6, 3))) + 0.5
    x = np.abs(np.random.default_rng(1).normal(size=(4, 3))) + 0.5
    ex = gradshap.GradientExplainer(_framework_case(backend), to_array(bg))
    ok = ex(to_array(x), target=1, n_samples=12, seed=0)  # sanity: the clean call works
    assert np.all(np.isfinite(backend.host(ok.values)))
    bad = x.copy()
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match=r"`x` contains NaN or inf in row\(s\) 2"):
        ex(to_array(bad), target=1, n_samples=12, seed=0)
    neg = x.copy()
    neg[3, 0] = -1.0  # sqrt of negatives on this row's path: NaN output and gradients
    with pytest.raises(FloatingPointError, match=r"NaN or inf gradients .* row\(s\) 3"):
        ex(to_array(neg), target=1, n_samples=12, seed=0)
    index = to_array(np.array([0, 1, 2, 1]), "int64")
    with pytest.raises(ValueError, match=r"`target` has values out of range for a model with 2 outputs at row\(s\) 2"):
        ex(to_array(x), target=index, n_samples=12, seed=0)


def _several_outputs(backend, as_dict: bool):
    """A model whose output is a tuple (or dict) of two arrays: ``3 p`` and ``2 p[:, 0]``."""
    def f(p):
        return {"scores": p * 3.0, "risk": p[:, 0] * 2.0} if as_dict else (p * 3.0, p[:, 0] * 2.0)

    return (f, lambda p: p) if backend.name == "numpy" else f


@pytest.mark.parametrize("as_dict", [False, True], ids=["tuple", "dict"])
def test_several_outputs_and_a_target_that_is_not_callable(backend, as_dict, rng):
    """A model with a tuple or dict of outputs needs a callable target that picks one: any
    other target is refused with an error that says so, before any gradient."""
    bg, x = rng.normal(size=(4, 3)), rng.normal(size=(2, 3))
    explainer = backend.explainer(_several_outputs(backend, as_dict), backend.array(bg))
    # (JAX's jit returns a dict with its keys sorted.)
    expected = (r"^the model's output is a dict of 2 outputs \(keys '(scores', 'risk|risk', 'scores)'\); .*"
                r"select one with a callable `target`, e\.g\. target=lambda outputs: outputs\['(scores|risk)'\]\[:, 0\]"
                if as_dict else
                r"^the model's output is a tuple of 2 outputs; .*"
                r"select one with a callable `target`, e\.g\. target=lambda outputs: outputs\[0\]\[:, 0\]")
    for target in (None, 0, "predicted", [0, 1], np.array([0, 1])):
        with pytest.raises(TypeError, match=expected):
            explainer(backend.array(x), target=target, n_samples=8, seed=0)
    if backend.name == "numpy":
        return  # a plain (f, jacobian) pair cannot be composed with a callable target
    pick = (lambda outs: outs["risk"]) if as_dict else (lambda outs: outs[1])
    exp = explainer(backend.array(x), target=pick, n_samples=8, sampler="balanced", seed=0)
    want = np.zeros_like(x)
    want[:, 0] = 2.0 * (x[:, 0] - bg[:, 0].mean())
    np.testing.assert_allclose(backend.host(exp.values), want, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("backend", ["torch", "jax", "tensorflow"], indirect=True)
def test_a_callable_target_must_return_one_scalar_per_row(backend, rng):
    """A callable target that returns several outputs per row is refused as such, not as a
    missing target of a model with several outputs."""
    w, b = rng.normal(size=(3, 2)), rng.normal(size=2)
    bg, x = backend.array(rng.normal(size=(4, 3))), backend.array(rng.normal(size=(5, 3)))
    explainer = backend.explainer(backend.linear(w, b), bg)
    with pytest.raises(ValueError, match=r"^the callable `target` must return one scalar per row, shape \(5,\); "
                                         r"it returned \(5, 2\)"):
        explainer(x, target=lambda out: out, n_samples=8, seed=0)
    # One scalar per row, as (n,) or (n, 1), is what it takes.
    for pick in (lambda out: out[:, 1], lambda out: out[:, 1:]):
        exp = explainer(x, target=pick, n_samples=8, sampler="balanced", seed=0)
        np.testing.assert_allclose(backend.host(exp.values), w[:, 1] * (backend.host(x) - backend.host(bg).mean(0)),
                                   rtol=1e-12, atol=1e-13)


def test_a_callable_target_that_returns_several_outputs_is_named_as_such(rng):
    torch = import_or_fail("torch")
    bg, x = torch.from_numpy(rng.normal(size=(4, 3))), torch.from_numpy(rng.normal(size=(5, 3)))
    explainer = gradshap.GradientExplainer(lambda p: (p * 3.0, p[:, 0] * 2.0), bg)
    with pytest.raises(TypeError, match=r"^the output of the callable `target` is a tuple of 2 outputs"):
        explainer(x, target=lambda outs: outs, n_samples=8, seed=0)


def test_a_callable_target_on_an_analytic_pair_says_what_to_pass_instead(rng):
    w = rng.normal(size=(3, 2))
    pair = (lambda p: p @ w, lambda p: np.broadcast_to(w.T, (p.shape[0], 2, 3)))
    explainer = gradshap.GradientExplainer(pair, rng.normal(size=(4, 3)), framework="numpy")
    with pytest.raises(TypeError, match=r"^a callable `target` needs the gradient .* framework='numpy'"):
        explainer(rng.normal(size=(2, 3)), target=lambda out: out[:, 0], n_samples=8, seed=0)
