"""Explanation: row indexing, grouping, save/load and shap interop, checked against NumPy."""

from __future__ import annotations

import dataclasses
from statistics import NormalDist

import numpy as np
import pytest

import gradshap
from gradshap import Explanation
from conftest import import_or_fail

Z95 = NormalDist().inv_cdf(0.975)
FIELDS = ("values", "base_values", "output", "delta", "stderr", "data")


def _linear_model(w):
    return (lambda x: x @ w), (lambda x: np.broadcast_to(w, x.shape).copy())


@pytest.fixture
def exp(rng):
    """A linear model's explanation: values are exactly w * (x - mean of the baselines drawn)."""
    w = np.array([1.5, -2.0, 0.5, 0.0, 3.0])
    x = rng.normal(size=(12, 5))
    background = rng.normal(size=(6, 5))
    explainer = gradshap.GradientExplainer(_linear_model(w), background, framework="numpy",
                                           feature_names=list("abcde"))
    return explainer(x, n_samples=12, seed=3)


def _assert_rows(sub: Explanation, full: Explanation, rows) -> None:
    for name in FIELDS:
        np.testing.assert_array_equal(getattr(sub, name), getattr(full, name)[rows], err_msg=name)
    assert sub.feature_names == full.feature_names
    assert (sub.sampler, sub.n_samples, sub.target) == (full.sampler, full.n_samples, full.target)


# ------------------------------------------------------------------ indexing

def test_slices_masks_and_row_lists_select_rows(exp):
    _assert_rows(exp[2:7], exp, slice(2, 7))
    mask = exp.output > np.median(exp.output)
    _assert_rows(exp[mask], exp, mask)
    _assert_rows(exp[[5, 0, 5]], exp, [5, 0, 5])
    _assert_rows(exp[np.array([-1, 3])], exp, [11, 3])
    assert len(exp[mask]) == int(mask.sum()) == 6


def test_an_int_keeps_the_row_axis(exp):
    one = exp[4]
    assert len(one) == 1 and one.values.shape == (1, 5)
    _assert_rows(one, exp, slice(4, 5))
    _assert_rows(exp[-1], exp, slice(11, 12))


def test_bad_row_keys_raise_clear_errors(exp):
    with pytest.raises(IndexError, match="out of range"):
        exp[12]
    with pytest.raises(IndexError, match=r"shape \(12,\)"):
        exp[np.ones(5, dtype=bool)]
    with pytest.raises(TypeError, match="indexed by rows only"):
        exp[0, 1]
    with pytest.raises(TypeError, match="dtype float64"):
        exp[np.array([0.5])]


def test_per_row_targets_are_sliced_with_the_rows(rng):
    W = rng.normal(size=(4, 3))
    f = lambda x: x @ W  # noqa: E731
    jac = lambda x: np.broadcast_to(W.T, (x.shape[0], 3, 4)).copy()  # noqa: E731
    x = rng.normal(size=(9, 4))
    e = gradshap.GradientExplainer((f, jac), rng.normal(size=(5, 4)), framework="numpy")(x, target="predicted", n_samples=5, seed=0)
    np.testing.assert_array_equal(e.target, np.argmax(x @ W, axis=1))
    np.testing.assert_array_equal(e[2:5].target, np.argmax(x[2:5] @ W, axis=1))
    np.testing.assert_array_equal(e[[8, 1]].output, (x @ W)[[8, 1], np.argmax(x @ W, axis=1)[[8, 1]]])


def test_select_target_takes_one_of_several(rng):
    W = rng.normal(size=(4, 3))
    jac = lambda x: np.broadcast_to(W.T, (x.shape[0], 3, 4)).copy()  # noqa: E731
    x, bg = rng.normal(size=(6, 4)), rng.normal(size=(3, 4))
    e = gradshap.GradientExplainer((lambda x: x @ W, jac), bg, framework="numpy")(x, target=[2, 0], n_samples=6, seed=1)
    assert e.values.shape == (6, 4, 2)
    first = e.select_target(0)
    assert first.target == 2 and first.values.shape == (6, 4)
    # Balanced sampling with n_samples = 2 * |background| uses every baseline equally: exact.
    np.testing.assert_allclose(first.values, W[:, 2] * (x - bg.mean(axis=0)), atol=1e-12)
    np.testing.assert_allclose(e.select_target(1).output, x @ W[:, 0], atol=1e-12)
    with pytest.raises(IndexError, match=r"\[0, 2\)"):
        e.select_target(2)


@pytest.mark.parametrize("backend", ["torch", "jax", "tensorflow"], indirect=True)
def test_rows_stay_in_the_framework(backend, rng):
    x_np, bg_np = rng.normal(size=(8, 3)), rng.normal(size=(4, 3))
    w = np.array([1.0, -1.0, 2.0])
    x, bg = backend.array(x_np), backend.array(bg_np)
    e = backend.explainer(backend.linear(w[:, None], np.zeros(1)), bg)(x, n_samples=8, seed=0)
    sub = e[np.array([True, False] * 4)]
    kind = type(x)
    assert isinstance(sub.values, kind) and isinstance(sub.delta, kind) and isinstance(sub.data, kind)
    np.testing.assert_allclose(backend.host(sub.values), w * (x_np[::2] - bg_np.mean(axis=0)), atol=1e-12)
    np.testing.assert_allclose(backend.host(e[1:3].output), x_np[1:3] @ w, atol=1e-12)


def test_repr_is_short(exp):
    text = repr(exp)
    assert text.startswith("Explanation(n=12, values=numpy (12, 5) float64") and "max|delta|=" in text
    assert len(text) < 200


# ------------------------------------------------------------------ grouping

def test_confusion_labels():
    labels = gradshap.confusion_labels([1, 0, 1, 0, 1], np.array([1, 1, 0, 0, 1]))
    assert labels.tolist() == ["TP", "FP", "FN", "TN", "TP"]
    assert gradshap.confusion_labels(["m", "b"], ["b", "b"], positive="m").tolist() == ["FN", "TN"]
    with pytest.raises(ValueError, match="same shape"):
        gradshap.confusion_labels([1, 0], [1])


def test_group_statistics_equal_numpy_over_the_rows(exp):
    labels = np.array(["x", "y", "x", "z"] * 3)
    grouped = exp.groupby(labels)
    assert list(grouped) == ["x", "y", "z"]
    np.testing.assert_array_equal(grouped.counts, [6, 3, 3])
    for k, name in enumerate(grouped):
        rows = labels == name
        g = grouped[name]
        v = exp.values[rows]
        np.testing.assert_array_equal(g.rows, np.flatnonzero(rows))
        np.testing.assert_allclose(g.mean, v.mean(axis=0), rtol=1e-13)
        np.testing.assert_allclose(g.stderr, v.std(axis=0, ddof=1) / np.sqrt(rows.sum()), rtol=1e-13)
        np.testing.assert_allclose(g.halfwidth, Z95 * g.stderr, rtol=1e-13)
        np.testing.assert_allclose(g.low, g.mean - 1.959964 * g.stderr, rtol=1e-6)
        np.testing.assert_allclose(g.high, g.mean + 1.959964 * g.stderr, rtol=1e-6)
        np.testing.assert_allclose(g.abs_mean, np.abs(v).mean(axis=0), rtol=1e-13)
        np.testing.assert_allclose(g.mc_stderr, np.sqrt((exp.stderr[rows] ** 2).sum(axis=0)) / rows.sum(), rtol=1e-13)
        assert g.base_value == pytest.approx(exp.base_values[rows].mean())
        assert g.output_mean == pytest.approx(exp.output[rows].mean())
        assert g.max_abs_delta == pytest.approx(np.abs(exp.delta[rows]).max())
        np.testing.assert_array_equal(grouped.mean[k], g.mean)
        _assert_rows(g.explanation, exp, rows)


def test_confusion_groups_come_in_order_with_empty_ones(exp):
    labels = np.array(["TN", "TP", "FP", "TP"] * 3)
    grouped = exp.groupby(labels)
    assert list(grouped) == ["TP", "TN", "FP", "FN"]
    assert grouped["FN"].n == 0 and np.isnan(grouped["FN"].mean).all()
    assert np.isnan(grouped["FN"].max_abs_delta)
    np.testing.assert_allclose(grouped["TP"].mean, exp.values[labels == "TP"].mean(axis=0))


def test_group_order_level_and_single_rows(exp):
    labels = np.arange(12) % 4
    grouped = exp.groupby(labels, order=[3, 0, 7], level=0.8)
    assert list(grouped) == [3, 0, 7] and grouped[7].n == 0
    z80 = NormalDist().inv_cdf(0.9)
    np.testing.assert_allclose(grouped[3].high - grouped[3].mean, z80 * grouped[3].stderr, rtol=1e-12)
    single = exp.groupby(np.array(["one"] + ["rest"] * 11))["one"]
    assert single.n == 1 and np.isnan(single.stderr).all()
    np.testing.assert_array_equal(single.mean, exp.values[0])
    with pytest.raises(KeyError, match="the groups are"):
        grouped[1]
    with pytest.raises(ValueError, match=r"expected shape \(12,\)"):
        exp.groupby(np.zeros(3))
    with pytest.raises(ValueError, match="`level`"):
        exp.groupby(labels, level=1.5)


# ------------------------------------------------------------------ save/load

def _assert_same(a: Explanation, b: Explanation) -> None:
    for f in dataclasses.fields(Explanation):
        if f.name == "extras":
            continue
        va, vb = getattr(a, f.name), getattr(b, f.name)
        if isinstance(va, tuple) and va and isinstance(va[0], np.ndarray):
            assert isinstance(vb, tuple) and len(va) == len(vb), f.name
            for x, y in zip(va, vb):
                assert x.dtype == y.dtype and x.shape == y.shape, f.name
                np.testing.assert_array_equal(x, y, err_msg=f.name)
        elif isinstance(va, np.ndarray):
            assert isinstance(vb, np.ndarray) and va.dtype == vb.dtype and va.shape == vb.shape, f.name
            np.testing.assert_array_equal(va, vb, err_msg=f.name)
        else:
            assert va == vb and type(va) is type(vb), f.name


def test_save_load_round_trips_every_field(exp, tmp_path):
    path = exp.save(tmp_path / "exp")
    assert path.name == "exp.npz"
    back = Explanation.load(path)
    _assert_same(exp, back)
    assert back.feature_names == list("abcde") and back.sampler == "lattice" and back.n_samples == 12


def test_save_load_several_inputs_targets_and_float32(rng, tmp_path):
    w1, w2 = np.array([1.0, 2.0], dtype=np.float32), np.array([[0.5], [-1.0], [3.0]], dtype=np.float32)
    f = lambda a, b: a @ w1 + (b @ w2)[:, 0]  # noqa: E731
    g = lambda a, b: (np.broadcast_to(w1, a.shape).copy(), np.broadcast_to(w2[:, 0], b.shape).copy())  # noqa: E731
    x = (rng.normal(size=(5, 2)).astype(np.float32), rng.normal(size=(5, 3)).astype(np.float32))
    bg = (rng.normal(size=(4, 2)).astype(np.float32), rng.normal(size=(4, 3)).astype(np.float32))
    e = gradshap.GradientExplainer((f, g), bg, framework="numpy")(x, n_samples=8, seed=2)
    e.feature_names = (["p", "q"], ["r", "s", "t"])
    assert isinstance(e.values, tuple) and e.values[0].dtype == np.float32
    back = Explanation.load(e.save(tmp_path / "two.npz"))
    _assert_same(e, back)
    # per-row targets (an array) and several targets (a tuple) survive too
    W = rng.normal(size=(4, 3))
    jac = lambda v: np.broadcast_to(W.T, (v.shape[0], 3, 4)).copy()  # noqa: E731
    ex = gradshap.GradientExplainer((lambda v: v @ W, jac), rng.normal(size=(3, 4)), framework="numpy")
    for target in ("predicted", [2, 0], 1):
        e = ex(rng.normal(size=(4, 4)), target=target, n_samples=3, seed=0)
        _assert_same(e, Explanation.load(e.save(tmp_path / "t.npz")))


def test_save_refuses_object_arrays_and_load_checks_the_file(exp, tmp_path):
    bad = dataclasses.replace(exp, data=np.array([object()] * 12))
    with pytest.raises(TypeError, match="`data` has dtype object"):
        bad.save(tmp_path / "bad.npz")
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(ValueError, match="not a saved gradshap Explanation"):
        Explanation.load(tmp_path / "other.npz")


# ------------------------------------------------------------------ shap

def test_to_shap_maps_every_field_and_shap_plots_work(exp):
    shap = import_or_fail("shap")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = exp.to_shap()
    assert isinstance(s, shap.Explanation)
    np.testing.assert_array_equal(s.values, exp.values)
    np.testing.assert_array_equal(s.base_values, exp.base_values)
    np.testing.assert_array_equal(s.data, exp.data)
    np.testing.assert_array_equal(s.error_std, exp.stderr)
    assert list(s.feature_names) == list("abcde")
    # shap's own plots draw it, and its rows are ours
    np.testing.assert_array_equal(s[3].values, exp.values[3])
    try:
        shap.plots.waterfall(s[3], show=False)
        ticks = [t.get_text() for t in plt.gcf().axes[0].get_yticklabels() if " = " in t.get_text()]
        shown = {t.split(" = ")[1]: float(t.split(" = ")[0].replace("\u2212", "-")) for t in ticks}
        assert set(shown) == set("abcde")
        for k, name in enumerate("abcde"):
            assert shown[name] == pytest.approx(exp.data[3, k], abs=2e-3)
        plt.close("all")
        shap.plots.bar(s, show=False)
        shap.plots.beeswarm(s, show=False)
    finally:
        plt.close("all")


def test_to_shap_several_inputs_give_one_per_input(rng):
    import_or_fail("shap")
    f = lambda a, b: a.sum(axis=1) + 2 * b.sum(axis=1)  # noqa: E731
    g = lambda a, b: (np.ones_like(a), 2 * np.ones_like(b))  # noqa: E731
    x = (rng.normal(size=(3, 2)), rng.normal(size=(3, 4)))
    e = gradshap.GradientExplainer((f, g), (np.zeros((2, 2)), np.zeros((2, 4))), framework="numpy")(x, n_samples=2, seed=0)
    first, second = e.to_shap()
    np.testing.assert_allclose(first.values, x[0])
    np.testing.assert_allclose(second.values, 2 * x[1])
    np.testing.assert_array_equal(first.base_values, e.base_values)
