"""gradshap.plots: every plot rendered to PNG under Agg, and what it shows checked against the numbers."""

from __future__ import annotations

import subprocess
import sys
from statistics import NormalDist

import numpy as np
import pytest

import gradshap
from gradshap import Explanation, plots
from conftest import import_or_fail

Z95 = NormalDist().inv_cdf(0.975)
NAMES = ["radius", "texture", "perimeter", "area", "smoothness", "compactness", "concavity", "symmetry"]


@pytest.fixture(autouse=True)
def _agg():
    matplotlib = import_or_fail("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    yield
    plt.close("all")


def _png(obj, tmp_path, name: str) -> np.ndarray:
    """Save a Figure (or an Axes' figure) as PNG at its own dpi and read it back: RGB in [0, 1]."""
    import matplotlib.image

    fig = getattr(obj, "figure", obj)
    path = tmp_path / f"{name}.png"
    fig.savefig(path, dpi=fig.dpi)
    return matplotlib.image.imread(path)[..., :3]


def _assert_not_blank(img: np.ndarray) -> None:
    inked = (img < 0.9).any(axis=-1).mean()
    colours = np.unique((img[::3, ::3] * 255).astype(np.uint8).reshape(-1, 3), axis=0)
    assert inked > 0.02, f"only {inked:.1%} of the pixels are drawn"
    assert len(colours) > 20


def _bars(ax) -> list:
    from matplotlib.container import BarContainer

    return [p for c in ax.containers if isinstance(c, BarContainer) for p in c.patches]


def _by_position(patches) -> list:
    """Bars from the top of the chart down (the y axis is inverted: small y is on top)."""
    return sorted(patches, key=lambda p: p.get_y())


def _reddish(rgb) -> bool:
    return rgb[0] > rgb[2] + 0.25


def _bluish(rgb) -> bool:
    return rgb[2] > rgb[0] + 0.25


@pytest.fixture
def exp(rng):
    """30 rows x 8 features with known means (some positive, some negative) and consistent outputs."""
    means = np.array([1.2, -0.8, 0.3, -2.0, 0.05, 0.6, -0.1, 1.7])
    values = means + 0.5 * rng.normal(size=(30, 8))
    base = np.full(30, -0.4)
    delta = 0.02 * rng.normal(size=30)
    output = base + values.sum(axis=1) - delta
    data = rng.normal(size=(30, 8)) * 3 + 10
    return Explanation(values=values, base_values=base, output=output, delta=delta,
                       stderr=np.abs(0.05 * rng.normal(size=(30, 8))) + 0.01, data=data,
                       feature_names=list(NAMES), sampler="balanced", n_samples=64)


# ------------------------------------------------------------------ bar

def test_bar_shows_the_top_means_with_their_intervals(exp, tmp_path):
    from matplotlib.container import ErrorbarContainer

    ax = plots.bar(exp, max_display=5)
    _assert_not_blank(_png(ax, tmp_path, "bar"))
    mean = exp.values.mean(axis=0)
    order = np.argsort(-np.abs(mean))[:5]
    bars = _by_position(_bars(ax))
    assert len(bars) == 5
    np.testing.assert_allclose([b.get_width() for b in bars], mean[order], rtol=1e-12)
    assert [t.get_text() for t in ax.get_yticklabels()] == [NAMES[j] for j in order]
    for b, j in zip(bars, order):
        assert (_reddish if mean[j] > 0 else _bluish)(b.get_facecolor())
    # error bars: mean +- 1.96 * (standard error across the rows)
    se = exp.values.std(axis=0, ddof=1) / np.sqrt(30)
    (errors,) = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    segments = sorted(errors.lines[2][0].get_segments(), key=lambda s: s[0][1])
    for seg, j in zip(segments, order):
        np.testing.assert_allclose([seg[0][0], seg[1][0]], [mean[j] - Z95 * se[j], mean[j] + Z95 * se[j]], rtol=1e-9)


def test_bar_features_argument_fixes_the_features_and_their_order(exp):
    ax = plots.bar(exp, features=["symmetry", 0, "area"])
    bars = _by_position(_bars(ax))
    np.testing.assert_allclose([b.get_width() for b in bars], exp.values.mean(axis=0)[[7, 0, 3]], rtol=1e-12)
    with pytest.raises(ValueError, match="'volume', which is not a feature"):
        plots.bar(exp, features=["volume"])
    with pytest.raises(ValueError, match="`max_display`"):
        plots.bar(exp, max_display=0)


def test_bar_side_by_side_groups(exp, tmp_path):
    labels = np.array(["TP"] * 12 + ["TN"] * 10 + ["FP"] * 8)
    grouped = exp.groupby(labels)  # FN is empty
    ax = plots.bar(grouped, max_display=4)
    _assert_not_blank(_png(ax, tmp_path, "bar_groups"))
    bars = _bars(ax)
    assert len(bars) == 4 * 3  # four features x the three groups that have rows
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["TP (n=12)", "TN (n=10)", "FP (n=8)", "FN (n=0): no rows"]
    # each group's bars are its own means
    features = [NAMES.index(t.get_text()) for t in ax.get_yticklabels()]
    for container, name in zip([c for c in ax.containers if hasattr(c, "patches")], ["TP", "TN", "FP"]):
        np.testing.assert_allclose([p.get_width() for p in _by_position(container.patches)],
                                   exp.values[labels == name].mean(axis=0)[features], rtol=1e-12)
    one = plots.bar(grouped["FP"], max_display=3)
    assert len(_bars(one)) == 3 and one.get_title(loc="left") == "FP: mean attribution (n=8)"
    empty = plots.bar(grouped["FN"])
    assert _bars(empty) == [] and "no rows in this group" in [t.get_text() for t in empty.texts]


def test_importance_is_mean_absolute_value_in_decreasing_order(exp, tmp_path):
    ax = plots.importance(exp, max_display=6)
    _assert_not_blank(_png(ax, tmp_path, "importance"))
    widths = [b.get_width() for b in _by_position(_bars(ax))]
    expected = np.sort(np.abs(exp.values).mean(axis=0))[::-1][:6]
    np.testing.assert_allclose(widths, expected, rtol=1e-12)
    assert all(not t.get_text().startswith("+") for t in ax.texts)


# -------------------------------------------------------------- beeswarm

def test_beeswarm_has_one_point_per_row_and_feature_coloured_by_value(exp, tmp_path):
    ax = plots.beeswarm(exp, max_display=4)
    _assert_not_blank(_png(ax, tmp_path, "beeswarm"))
    order = np.argsort(-np.abs(exp.values).mean(axis=0))[:4]
    assert [t.get_text() for t in ax.get_yticklabels()] == [NAMES[j] for j in order]
    swarms = ax.collections
    assert len(swarms) == 4
    for pos, (dots, j) in enumerate(zip(swarms, order)):
        xy = dots.get_offsets()
        np.testing.assert_allclose(xy[:, 0], exp.values[:, j], rtol=1e-12)
        assert np.all(np.abs(xy[:, 1] - pos) <= 0.4 + 1e-12)
        colours = dots.get_facecolors()
        assert _reddish(colours[np.argmax(exp.data[:, j])]) and _bluish(colours[np.argmin(exp.data[:, j])])


def test_beeswarm_without_data_is_grey(exp):
    import dataclasses

    ax = plots.beeswarm(dataclasses.replace(exp, data=None), max_display=2)
    colours = ax.collections[0].get_facecolors()
    assert np.allclose(colours[:, 0], colours[:, 2])


# -------------------------------------------------------------- waterfall

def test_waterfall_goes_from_base_value_to_output(exp, tmp_path):
    row = 7
    ax = plots.waterfall(exp, row, max_display=5)
    _assert_not_blank(_png(ax, tmp_path, "waterfall"))
    v = exp.values[row]
    order = np.argsort(-np.abs(v))
    bars = _by_position(_bars(ax))
    assert len(bars) == 4 + 1 + 1  # four features, "4 other features", the residual
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels[:4] == [f"{NAMES[j]} = {exp.data[row, j]:.3g}" for j in order[:4]]
    assert labels[4:] == ["4 other features", "completeness residual −δ"]
    widths = [b.get_width() for b in bars]
    np.testing.assert_allclose(widths[:4], v[order[:4]], rtol=1e-12)
    np.testing.assert_allclose(widths[4], v[order[4:]].sum(), rtol=1e-12)
    np.testing.assert_allclose(widths[5], -exp.delta[row], rtol=1e-12)
    # the chain starts at the base value (bottom) and ends at f(x) (top)
    assert bars[-1].get_x() == pytest.approx(exp.base_values[row])
    assert bars[0].get_x() + bars[0].get_width() == pytest.approx(exp.output[row], abs=1e-12)
    for upper, lower in zip(bars[:-1], bars[1:]):
        assert upper.get_x() == pytest.approx(lower.get_x() + lower.get_width())
    with pytest.raises(IndexError, match="`row`"):
        plots.waterfall(exp, 30)


# ------------------------------------------------------------------ image

def _images(rng, layout: str, n: int = 4):
    """Image values with +1 at pixel (2, 3) and -1 at (5, 6) in every row (summed over channels)."""
    heat = np.zeros((n, 8, 8))
    heat[:, 2, 3], heat[:, 5, 6] = 1.0, -1.0
    if layout == "2d":
        values = heat
    elif layout == "first":
        values = np.stack([0.25 * heat, 0.75 * heat], axis=1)
    else:
        values = np.stack([0.5 * heat, 0.2 * heat, 0.3 * heat], axis=-1)
    data = rng.uniform(size=values.shape)
    z = np.zeros(n)
    return Explanation(values=values, base_values=z, output=z, delta=z, stderr=np.zeros_like(values), data=data)


def _pixel(img: np.ndarray, ax, col: float, row: float) -> np.ndarray:
    """The PNG colour at data coordinates (col, row) of ``ax``."""
    x, y = ax.transData.transform((col, row))
    return img[int(round(img.shape[0] - y)), int(round(x))]


@pytest.mark.parametrize("layout", ["2d", "first", "last"])
def test_image_colours_carry_the_sign(layout, rng, tmp_path):
    e = _images(rng, layout)
    fig = plots.image(e, 1, show_input=False)
    img = _png(fig, tmp_path, f"image_{layout}")
    _assert_not_blank(img)
    ax = fig.axes[0]
    heat = ax.get_images()[-1]
    channels = {"2d": None, "first": 0, "last": -1}[layout]
    expected = e.values[1] if channels is None else e.values[1].sum(axis=channels)
    np.testing.assert_allclose(heat.get_array(), expected, rtol=1e-12)
    assert expected[2, 3] == 1.0 and expected[5, 6] == -1.0
    assert heat.get_clim() == (-1.0, 1.0)  # centred at zero
    assert _reddish(_pixel(img, ax, 3, 2)), _pixel(img, ax, 3, 2)
    assert _bluish(_pixel(img, ax, 6, 5)), _pixel(img, ax, 6, 5)
    neutral = _pixel(img, ax, 0, 7)
    assert abs(neutral[0] - neutral[2]) < 0.1


def test_image_rows_share_one_scale_and_show_inputs(rng, tmp_path):
    e = _images(rng, "first", n=3)
    e.values[2] *= 4.0
    fig = plots.image(e, [0, 2], titles=["small", "large"])
    _assert_not_blank(_png(fig, tmp_path, "image_rows"))
    visible = [ax for ax in fig.axes if ax.get_visible() and ax.get_images()]
    assert len(visible) == 4  # input and attribution for each of two rows
    assert [ax.get_title() for ax in visible[:2]] == ["small", "large"]
    clims = {ax.get_images()[-1].get_clim() for ax in visible[2:]}
    assert clims == {(-4.0, 4.0)}
    picture = e.data[0].mean(axis=0)  # two channels: shown as their mean, scaled to [0, 1]
    np.testing.assert_allclose(visible[0].get_images()[0].get_array(), (picture - picture.min()) / np.ptp(picture), rtol=1e-12)


def test_image_mean_and_groups_average_the_rows(rng, tmp_path):
    e = _images(rng, "last", n=6)
    e.values[:3] *= 3.0
    fig = plots.image(e, mean=True, show_input=False)
    np.testing.assert_allclose(fig.axes[0].get_images()[-1].get_array(), e.values.sum(axis=-1).mean(axis=0))
    grouped = e.groupby(np.array(["a", "a", "a", "b", "b", "b"]), order=["a", "b", "c"])
    fig = plots.image(grouped)
    _assert_not_blank(_png(fig, tmp_path, "image_groups"))
    panels = [ax for ax in fig.axes if ax.get_images()]
    assert [ax.get_title() for ax in panels[:2]] == ["a (n=3)", "b (n=3)"]  # the empty group is left out
    np.testing.assert_allclose(panels[2].get_images()[-1].get_array(), e.values[:3].sum(axis=-1).mean(axis=0))
    np.testing.assert_allclose(panels[3].get_images()[-1].get_array(), e.values[3:].sum(axis=-1).mean(axis=0))


def test_image_needs_a_channel_axis_when_it_cannot_tell():
    v = np.zeros((2, 3, 5, 3))
    e = Explanation(values=v, base_values=np.zeros(2), output=np.zeros(2), delta=np.zeros(2), stderr=v)
    with pytest.raises(ValueError, match="channel_axis='first' or 'last'"):
        plots.image(e)
    fig = plots.image(e, channel_axis="first", show_input=False)
    assert fig.axes[0].get_images()[-1].get_array().shape == (5, 3)
    with pytest.raises(ValueError, match="one title per panel"):
        plots.image(e, [0, 1], titles=["x"], channel_axis="last")


# ------------------------------------------------------------ completeness

def test_completeness_plots_sum_against_output_minus_base(exp, tmp_path):
    fig = plots.completeness(exp)
    _assert_not_blank(_png(fig, tmp_path, "completeness"))
    points = fig.axes[0].collections[0].get_offsets()
    np.testing.assert_allclose(points[:, 0], exp.output - exp.base_values, rtol=1e-12)
    np.testing.assert_allclose(points[:, 1], exp.values.sum(axis=1), rtol=1e-12)
    assert f"max |δ| = {np.abs(exp.delta).max():.3g}" in fig.axes[1].get_title(loc="left")


# ----------------------------------------------------------------- inputs

def test_plots_with_a_real_explainer_and_several_targets(rng):
    W = rng.normal(size=(4, 3))
    jac = lambda x: np.broadcast_to(W.T, (x.shape[0], 3, 4)).copy()  # noqa: E731
    e = gradshap.GradientExplainer((lambda x: x @ W, jac), rng.normal(size=(5, 4)), framework="numpy")(
        rng.normal(size=(10, 4)), target=[0, 2], n_samples=10, seed=0)
    with pytest.raises(ValueError, match="select_target"):
        plots.bar(e)
    ax = plots.bar(e.select_target(1))
    np.testing.assert_allclose(sorted(b.get_width() for b in _bars(ax)), np.sort(e.values[..., 1].mean(axis=0)), rtol=1e-12)
    two = Explanation(values=(np.zeros((2, 3)), np.zeros((2, 1))), base_values=np.zeros(2), output=np.zeros(2),
                      delta=np.zeros(2), stderr=(np.zeros((2, 3)), np.zeros((2, 1))))
    with pytest.raises(ValueError, match="2 inputs"):
        plots.beeswarm(two)
    with pytest.raises(TypeError, match="gradshap.Explanation"):
        plots.waterfall(np.zeros((3, 3)))


def test_missing_matplotlib_names_the_extra(exp, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match=r"pip install gradshap\[plots\]"):
        plots.bar(exp)


def test_importing_plots_imports_no_matplotlib():
    code = "import sys, gradshap, gradshap.plots; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ----------------------------------------------------------------- text


def _token_explanation():
    """Two rows of 5 positions; the second row's last two are padding (zero attribution)."""
    values = np.array([[0.5, -1.0, 0.25, 0.0, 2.0], [-0.5, 1.0, 0.1, 0.0, 0.0]])
    return Explanation(values=values, base_values=np.array([0.1, 0.2]), output=values.sum(1) + [0.1, 0.2],
                       delta=np.zeros(2), stderr=np.zeros_like(values), data=np.arange(10).reshape(2, 5))


TOKENS = [["the", "film", "was", "<b>", "great"], ["not", "bad", "!"]]


def test_text_html_colours_each_shown_token_by_its_value():
    import re

    page = plots.text_html(_token_explanation(), TOKENS)
    spans = re.findall(r'background: rgba\((\d+), (\d+), (\d+), ([\d.]+)\)[^>]*title="([^"]+)">([^<]*)</span>', page)
    assert [s[5] for s in spans] == ["the", "film", "was", "&lt;b&gt;", "great", "not", "bad", "!"]
    values = [0.5, -1.0, 0.25, 0.0, 2.0, -0.5, 1.0, 0.1]
    for (r, g, b, alpha, title, _), v in zip(spans, values):
        assert float(title) == v
        assert float(alpha) == pytest.approx(abs(v) / 2.0, abs=1e-3)  # the largest |value| shown is 2
        assert (int(r), int(g), int(b)) == ((215, 38, 61) if v >= 0 else (27, 110, 194))
    assert "row 1: f(x) = 0.8, base = 0.2" in page
    assert "row 0" not in plots.text_html(_token_explanation(), TOKENS, captions=False)
    assert "review 7: f(x) = 1.85" in plots.text_html(_token_explanation(), TOKENS, names=["review 7", "review 9"])


def test_text_figure_draws_the_same_tokens(tmp_path):
    fig = plots.text(_token_explanation(), TOKENS, scale=1.0, width=12, title="review")
    boxes = [(t.get_text(), t.get_bbox_patch().get_facecolor()) for t in fig.axes[0].texts if t.get_bbox_patch()]
    assert [b[0] for b in boxes] == ["the", "film", "was", "<b>", "great", "not", "bad", "!"]
    for (_, rgba), v in zip(boxes, [0.5, -1.0, 0.25, 0.0, 2.0, -0.5, 1.0, 0.1]):
        assert rgba[3] == pytest.approx(min(1.0, abs(v)))  # scale=1: full colour from |value| 1 on
        assert _reddish(rgba) == (v > 0) if v != 0 else True
    _assert_not_blank(_png(fig, tmp_path, "text"))


def test_text_views_reject_what_they_cannot_show():
    exp = _token_explanation()
    with pytest.raises(ValueError, match="one sequence of tokens per row"):
        plots.text_html(exp, TOKENS[:1])
    with pytest.raises(ValueError, match=r"`tokens\[1\]` has 6 tokens"):
        plots.text(exp, [TOKENS[0], ["a"] * 6])
    with pytest.raises(ValueError, match=r"values of shape \(rows, tokens\)"):
        plots.text_html(gradshap.Explanation(values=np.zeros((2, 3, 4)), base_values=np.zeros(2), output=np.zeros(2),
                                             delta=np.zeros(2), stderr=np.zeros((2, 3, 4))), TOKENS)
