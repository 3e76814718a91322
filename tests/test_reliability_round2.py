"""Reliability, round 2: defects found trying to break gradshap (huge arguments, NaN outputs,
threads, empty inputs, grad-tracking inputs, narrow dtypes, damaged files). Each test states
what a careful user gets: correct numbers, or a clear error that names the argument."""

from __future__ import annotations

import os
import threading
import tracemalloc

import numpy as np
import pytest

import gradshap
from conftest import import_or_fail
from gradshap import _sampling


def _three_outputs(backend):
    """``[sum(x), log(x0), 2 x1]``: finite where ``x0 > 0``, NaN where ``x0 < 0``."""
    if backend.name == "numpy":
        def f(p):
            with np.errstate(invalid="ignore"):
                return np.stack([p.sum(1), np.log(p[:, 0]), 2 * p[:, 1]], axis=1)

        def jacobian(p):
            jac = np.zeros((p.shape[0], 3, p.shape[1]))
            jac[:, 0, :] = 1.0
            jac[:, 1, 0] = 1.0 / p[:, 0]
            jac[:, 2, 1] = 2.0
            return jac

        return f, jacobian
    if backend.name == "torch":
        torch = backend.lib
        return lambda p: torch.stack([p.sum(1), torch.log(p[:, 0]), 2 * p[:, 1]], dim=1)
    if backend.name == "jax":
        jnp = backend.lib.numpy
        return lambda p: jnp.stack([p.sum(1), jnp.log(p[:, 0]), 2 * p[:, 1]], axis=1)
    tf = backend.lib
    return lambda p: tf.stack([tf.reduce_sum(p, 1), tf.math.log(p[:, 0]), 2 * p[:, 1]], axis=1)


def _positive(rng, n, d=4):
    return rng.uniform(0.5, 1.5, size=(n, d))


def test_a_huge_batch_size_plans_the_work_there_is(backend, rng):
    bg, x = backend.array(rng.normal(size=(10, 5))), backend.array(rng.normal(size=(4, 5)))
    model = backend.linear(rng.normal(size=(5, 3)), rng.normal(size=3))
    ref = gradshap.GradientExplainer(model, bg)(x, target=0, n_samples=24, seed=3)
    big = gradshap.GradientExplainer(model, bg, batch_size=10**12)(x, target=0, n_samples=24, seed=3)
    np.testing.assert_allclose(backend.host(big.values), backend.host(ref.values), rtol=1e-12, atol=1e-14)


def test_a_large_background_costs_memory_by_the_samples_drawn_not_by_its_rows(rng):
    """The default sampler draws distinct background rows for each input row. That cost
    3 x 8 bytes per (input row, background row) when it sorted a permutation of the whole
    background: 64 rows x 60,000 background rows peaked at 88 MiB there (0.9 MiB now)."""
    w = rng.normal(size=(3, 1))
    bg, x = rng.normal(size=(60_000, 3)), rng.normal(size=(64, 3))
    explainer = gradshap.GradientExplainer((lambda p: p @ w, lambda p: np.broadcast_to(w[:, 0], p.shape)), bg)
    tracemalloc.start()
    try:
        e = explainer(x, n_samples=16, seed=0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * 2**20, f"peak {peak / 2**20:.1f} MiB"
    # A linear model's attributions are w (x - mean of the baselines drawn): distinct rows.
    index, _, _ = _sampling.samples("auto", _sampling.seed_key(0), np.arange(64), 16, bg.shape[0])
    assert all(np.unique(row).size == 16 for row in index)
    np.testing.assert_allclose(e.values, w[:, 0] * (x - bg[index].mean(axis=1)), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("n", [2, 255, 256, 257, 1000, 4099])
def test_permutation_entries_are_a_bijection_with_uniform_positions(n):
    rows = np.arange(4000)
    perm = _sampling._permuted(11, rows[:50], np.arange(n), n, 3)
    assert all(np.array_equal(np.sort(p), np.arange(n)) for p in perm)
    # any subset of positions gives the same entries as the whole permutation
    some = np.array([n - 1, 0, n // 2])
    np.testing.assert_array_equal(_sampling._permuted(11, rows[:50], some, n, 3), perm[:, some])
    # the entry at one position is uniform over range(n) across rows: a chi-square test
    first = _sampling._permuted(5, rows, np.array([n // 3]), n, 3)[:, 0]
    bins = min(n, 20)
    counts = np.bincount(first * bins // n, minlength=bins)
    expected = np.bincount(np.arange(n) * bins // n, minlength=bins) * rows.size / n
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 50, chi2  # 19 degrees of freedom: p < 1e-4


def test_a_billion_samples_start_without_listing_their_chunks_or_draws():
    """Memory before the first gradient is set by the chunk, not by the number of chunks
    (n_samples / batch_size) or of samples: at 10**8 samples the draws alone were 1.6 GB."""
    torch = import_or_fail("torch")

    class FirstGradient(Exception):
        pass

    class Stop(torch.nn.Module):
        def forward(self, p):
            if p.requires_grad:
                raise FirstGradient
            return p.sum(1)

    bg, x = torch.randn(10, 5, dtype=torch.float64), torch.randn(1, 5, dtype=torch.float64)
    tracemalloc.start()
    try:
        with pytest.raises(FirstGradient):
            gradshap.GradientExplainer(Stop(), bg, batch_size=64)(x, n_samples=10**8)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20, f"peak {peak / 2**20:.1f} MiB"


def test_nan_in_an_output_not_explained_leaves_the_results_finite(backend, rng):
    x, bg = _positive(rng, 4), _positive(rng, 6)
    x[2, 0] = -1.0  # log of a negative number in output 1 only
    exp = gradshap.GradientExplainer(_three_outputs(backend), backend.array(bg))(backend.array(x), target=0,
                                                                                n_samples=32, seed=0)
    np.testing.assert_allclose(backend.host(exp.output), x.sum(1), rtol=1e-12)
    np.testing.assert_allclose(backend.host(exp.base_values), np.full(4, bg.sum(1).mean()), rtol=1e-12)
    assert np.all(np.abs(backend.host(exp.delta)) < 1e-9)


def test_nan_in_the_explained_output_is_an_error_naming_the_rows(backend, rng):
    x, bg = _positive(rng, 4), _positive(rng, 6)
    x[2, 0] = -1.0
    explainer = gradshap.GradientExplainer(_three_outputs(backend), backend.array(bg))
    with pytest.raises(FloatingPointError, match=r"NaN or inf at input row\(s\) 2 of `x`"):
        explainer(backend.array(x), target=1, n_samples=32, seed=0)


def test_nan_in_a_background_output_is_an_error_naming_the_background_rows(backend, rng):
    x, bg = _positive(rng, 3), _positive(rng, 6)
    bg[4, 0] = -0.5
    explainer = gradshap.GradientExplainer(_three_outputs(backend), backend.array(bg))
    with pytest.raises(FloatingPointError, match=r"NaN or inf at `background` row\(s\) 4"):
        explainer(backend.array(x), target=1, n_samples=32, seed=0)
    # the other outputs are still explained, with finite base values
    exp = explainer(backend.array(x), target=2, n_samples=32, seed=0)
    np.testing.assert_allclose(backend.host(exp.base_values), np.full(3, 2 * bg[:, 1].mean()), rtol=1e-12)


def test_a_nan_output_with_finite_gradients_is_an_error():
    torch = import_or_fail("torch")

    def f(p):  # NaN where x0 > 1 (a detached mask: the gradient stays finite)
        return p.sum(1) + torch.where(p[:, 0].detach() > 1.0, torch.nan, 0.0)

    x = torch.tensor([[0.5, 0.5], [2.0, 0.5]], dtype=torch.float64)
    bg = torch.full((3, 2), 0.2, dtype=torch.float64)
    with pytest.raises(FloatingPointError, match=r"input row\(s\) 1 of `x`"):
        gradshap.GradientExplainer(f, bg)(x, n_samples=8)
    with pytest.raises(FloatingPointError, match=r"`background` row\(s\) 0, 1, 2"):
        gradshap.GradientExplainer(f, bg + 1.0)(x[:1], n_samples=8)


def test_threads_sharing_a_train_mode_torch_model_get_eval_mode_numbers():
    """Thread A starts first; thread B starts while A is inside its call, and is still inside
    its own when A ends: A's end must not put the model back in training mode (Dropout on)
    under B, and the model ends as found."""
    torch = import_or_fail("torch")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Dropout(0.5), torch.nn.Linear(16, 1)).double()
    a_inside, b_inside, a_done = threading.Event(), threading.Event(), threading.Event()

    class Gate(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, p):
            name = threading.current_thread().name
            if name == "A" and not a_inside.is_set():
                a_inside.set()
                assert b_inside.wait(60), "thread B did not start"
            if name == "B" and p.requires_grad and not b_inside.is_set():
                b_inside.set()
                assert a_done.wait(60), "thread A did not finish"
            return self.net(p)

    model = Gate().train()
    bg, x = torch.randn(8, 6, dtype=torch.float64), torch.randn(5, 6, dtype=torch.float64)
    explainer = gradshap.GradientExplainer(model, bg)
    results, errors = {}, []

    def call(name):
        try:
            if name == "B":
                assert a_inside.wait(60)
            results[name] = explainer(x, n_samples=16, seed=1)
        except BaseException as err:  # reported below
            errors.append(err)
        finally:
            if name == "A":
                a_done.set()

    threads = [threading.Thread(target=call, args=(n,), name=n) for n in ("A", "B")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert model.training and all(m.training for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())
    reference = gradshap.GradientExplainer(model, bg)(x, n_samples=16, seed=1)
    for name in ("A", "B"):
        np.testing.assert_allclose(results[name].values.numpy(), reference.values.numpy(), rtol=1e-12)


def test_four_threads_on_one_explainer_agree_with_one_call():
    torch = import_or_fail("torch")
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Dropout(0.3), torch.nn.Tanh(),
                                torch.nn.Linear(16, 1)).double().train()
    bg, x = torch.randn(8, 6, dtype=torch.float64), torch.randn(40, 6, dtype=torch.float64)
    explainer = gradshap.GradientExplainer(model, bg, batch_size=64)
    reference = explainer(x, n_samples=32, seed=2).values.numpy()
    out = [None] * 4

    def call(k):
        out[k] = [explainer(x, n_samples=32, seed=2).values.numpy() for _ in range(3)]

    threads = [threading.Thread(target=call, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    for per_thread in out:
        for values in per_thread:
            np.testing.assert_allclose(values, reference, rtol=1e-12)
    assert model.training and all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("target", [0, [0, 2]])
def test_zero_rows_give_an_empty_explanation(backend, rng, target):
    bg = backend.array(rng.normal(size=(6, 5)))
    model = backend.linear(rng.normal(size=(5, 3)), rng.normal(size=3))
    exp = gradshap.GradientExplainer(model, bg)(backend.array(np.zeros((0, 5))), target=target, n_samples=8)
    trailing = (2,) if isinstance(target, list) else ()
    assert tuple(exp.values.shape) == (0, 5, *trailing)
    assert tuple(exp.stderr.shape) == (0, 5, *trailing)
    assert tuple(exp.base_values.shape) == tuple(exp.delta.shape) == (0, *trailing)


def test_inputs_with_different_row_counts_name_the_input(rng):
    f = (lambda a, b: a.sum(1) + b.sum(1), lambda a, b: (np.ones_like(a), np.ones_like(b)))
    bg = (rng.normal(size=(4, 2)), rng.normal(size=(4, 3)))
    with pytest.raises(ValueError, match=r"`x\[1\]` has 3 rows but `x\[0\]` has 5"):
        gradshap.GradientExplainer(f, bg)((rng.normal(size=(5, 2)), rng.normal(size=(3, 3))))
    with pytest.raises(ValueError, match=r"`background\[1\]` has 2 rows but `background\[0\]` has 4"):
        gradshap.GradientExplainer(f, (bg[0], bg[1][:2]))((rng.normal(size=(5, 2)), rng.normal(size=(5, 3))))


def test_inputs_that_require_grad_give_plain_tensors_without_warnings():
    torch = import_or_fail("torch")
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 2).double()
    bg, x = torch.randn(6, 5, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64)
    ref = gradshap.GradientExplainer(model, bg)(x, target=1, n_samples=16, seed=0)
    exp = gradshap.GradientExplainer(model, bg.requires_grad_())(x.clone().requires_grad_(), target=1,
                                                               n_samples=16, seed=0)
    for a in (exp.values, exp.stderr, exp.base_values, exp.output, exp.delta):
        assert a.grad_fn is None and not a.requires_grad
    np.testing.assert_array_equal(exp.values.numpy(), ref.values.numpy())


def test_a_call_inside_inference_mode_works_and_the_mode_is_kept():
    torch = import_or_fail("torch")
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 2).double()
    bg, x = torch.randn(6, 5, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64)
    ref = gradshap.GradientExplainer(model, bg)(x, target=1, n_samples=16, seed=0)
    with torch.inference_mode():
        xi, bi = x.clone(), bg.clone()  # inference tensors
        exp = gradshap.GradientExplainer(model, bi)(xi, target=1, n_samples=16, seed=0)
        assert torch.is_inference_mode_enabled()
    np.testing.assert_array_equal(exp.values.numpy(), ref.values.numpy())


@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_bfloat16_results_convert_save_and_load_as_exact_float32(framework, tmp_path, rng):
    lib = import_or_fail(framework)
    w = rng.normal(size=(5, 1)).astype(np.float32)
    if framework == "torch":
        model = lib.nn.Linear(5, 1, bias=False).to(lib.bfloat16)
        with lib.no_grad():
            model.weight.copy_(lib.from_numpy(w.T.copy()))
        make = lambda a: lib.from_numpy(a.astype(np.float32)).to(lib.bfloat16)  # noqa: E731
    else:
        jnp = lib.numpy
        wb = jnp.asarray(w, jnp.bfloat16)
        model = lambda p: (p @ wb)[:, 0]  # noqa: E731
        make = lambda a: jnp.asarray(a, jnp.bfloat16)  # noqa: E731
    exp = gradshap.GradientExplainer(model, make(rng.normal(size=(6, 5))))(make(rng.normal(size=(3, 5))),
                                                                        n_samples=8, seed=0)
    host = exp.to_numpy()
    assert host.values.dtype == np.float32 and host.base_values.dtype == np.float32
    native = exp.values.float().numpy() if framework == "torch" else np.asarray(exp.values.astype("float32"))
    np.testing.assert_array_equal(host.values, native)
    loaded = gradshap.Explanation.load(exp.save(tmp_path / "bf16"))
    assert loaded.values.dtype == np.float32
    np.testing.assert_array_equal(loaded.values, native)
    assert exp.to_shap().values.dtype == np.float32


def test_damaged_or_foreign_files_load_with_one_clear_error(tmp_path, rng):
    w = rng.normal(size=(3, 1))
    exp = gradshap.GradientExplainer((lambda p: p @ w, lambda p: np.broadcast_to(w[:, 0], p.shape)),
                                     rng.normal(size=(4, 3)))(rng.normal(size=(2, 3)), n_samples=8)
    good = exp.save(tmp_path / "good")
    data = good.read_bytes()
    (tmp_path / "truncated.npz").write_bytes(data[: len(data) // 2])
    np.savez(tmp_path / "foreign.npz", a=np.ones(3))
    with np.load(good) as archive:
        np.savez(tmp_path / "incomplete.npz", **{k: archive[k] for k in archive.files if k != "values"})
    (tmp_path / "text.npz").write_text("not an archive")
    for name, what in (("truncated", "not a zip file"), ("foreign", "no __meta__"),
                       ("incomplete", "entry is missing"), ("text", "not an .npz archive")):
        path = tmp_path / f"{name}.npz"
        with pytest.raises(ValueError, match=f"{name}.npz.*(?i:{what})"):
            gradshap.Explanation.load(path)
    with pytest.raises(FileNotFoundError):
        gradshap.Explanation.load(os.fspath(tmp_path / "missing.npz"))


def test_demo_refuses_an_out_below_a_file_before_training(tmp_path, capsys, monkeypatch):
    from gradshap import _demo

    def no_training(args):
        raise AssertionError("the demo started its work")

    (tmp_path / "afile").write_text("")
    import gradshap._demo._tabular as tabular

    monkeypatch.setattr(tabular, "run", no_training)
    assert _demo.main(["--out", str(tmp_path / "afile" / "sub"), "--no-progress"]) == 2
    assert "cannot write the report to --out" in capsys.readouterr().err


def test_feature_names_and_progress_are_validated(rng):
    w = rng.normal(size=(3, 1))
    f = (lambda p: p @ w, lambda p: np.broadcast_to(w[:, 0], p.shape))
    bg = rng.normal(size=(4, 3))
    with pytest.raises(TypeError, match=r"`feature_names` must be a sequence of names.*'abc'"):
        gradshap.GradientExplainer(f, bg, feature_names="abc")
    with pytest.raises(ValueError, match=r"`feature_names` has 2 names but `background` has shape \(4, 3\)"):
        gradshap.GradientExplainer(f, bg, feature_names=["a", "b"])
    with pytest.raises(TypeError, match=r"`feature_names` must be a sequence"):
        gradshap.IntegratedGradients(f, feature_names="abc")
    with pytest.raises(ValueError, match=r"`feature_names` has 4 names"):
        gradshap.IntegratedGradients(f, feature_names=list("abcd"))(bg[:1], n_steps=4)
    assert gradshap.GradientExplainer(f, bg, feature_names=("a", "b", "c"))(bg[:1], n_samples=4).feature_names == [
        "a", "b", "c"]
    with pytest.raises(TypeError, match=r"`progress` must be True or False; got 'yes'"):
        gradshap.GradientExplainer(f, bg)(bg[:1], n_samples=4, progress="yes")


def test_a_torch_model_given_other_arrays_or_another_dtype_says_what_it_expected(rng):
    torch = import_or_fail("torch")
    model = torch.nn.Linear(3, 1).double()
    bg, x = rng.normal(size=(4, 3)), rng.normal(size=(2, 3))
    with pytest.raises(TypeError, match=r"torch model must be torch tensors; got numpy.ndarray"):
        gradshap.GradientExplainer(model, bg)(x, n_samples=4)
    with pytest.raises(TypeError, match=r"have dtype float32 but the model's parameters are float64"):
        gradshap.GradientExplainer(model, torch.from_numpy(bg).float())(torch.from_numpy(x).float(), n_samples=4)


@pytest.mark.parametrize("framework", ["jax", "tensorflow"])
def test_a_compiling_framework_given_numpy_arrays_says_what_it_expected(rng, framework):
    """NumPy inputs with framework= a compiling framework are refused before the model runs."""
    import_or_fail(framework)
    calls = []

    def f(a):
        calls.append(1)
        return (a * a).sum(1)

    bg, x = rng.normal(size=(4, 3)), rng.normal(size=(2, 3))
    expected = {"jax": "jax arrays", "tensorflow": "tf.Tensor"}[framework]
    with pytest.raises(TypeError, match=rf"{framework} model must be {expected}; got numpy.ndarray"):
        gradshap.GradientExplainer(f, bg, framework=framework)(x, n_samples=4)
    assert calls == []


def test_a_conv_models_own_error_propagates_and_runs_the_model_once():
    torch = import_or_fail("torch")
    calls = []

    class Broken(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(2, 2, 3)

        def forward(self, p):
            calls.append(p.shape)
            raise RuntimeError("the model's own failure")

    with pytest.raises(RuntimeError, match="the model's own failure"):
        gradshap.GradientExplainer(Broken(), torch.zeros(3, 2, 5, 5))(torch.zeros(2, 2, 5, 5), n_samples=4)
    assert len(calls) == 1


def test_a_random_model_behind_a_plain_function_is_an_error():
    """gradshap cannot set the mode of a module it cannot see; it finds the model random."""
    torch = import_or_fail("torch")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 32), torch.nn.Dropout(0.5), torch.nn.Linear(32, 1)).double().train()
    bg, x = torch.randn(4, 6, dtype=torch.float64), torch.randn(3, 6, dtype=torch.float64)
    state = torch.get_rng_state()
    with pytest.raises(ValueError, match=r"not deterministic.*Dropout.*model.eval\(\)"):
        gradshap.GradientExplainer(lambda a: net(a), bg)(x, n_samples=8)
    assert torch.equal(torch.get_rng_state(), state)
    net.eval()
    exp = gradshap.GradientExplainer(lambda a: net(a), bg)(x, n_samples=8)
    assert float(abs(exp.delta).max()) < 1e-9
