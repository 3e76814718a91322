"""Figures for explanations (matplotlib; ``pip install gradshap[plots]``).

Every function works under any matplotlib backend, including the non-interactive
``Agg``; single-panel plots take ``ax=None`` and return the Axes they drew on, the
multi-panel ones (:func:`image`, :func:`completeness`) return the Figure. matplotlib is
imported only when a plot is drawn, so ``import gradshap.plots`` needs nothing extra.

Colours follow one convention: red pushes the model output up, blue pushes it down.

- :func:`bar` -- mean attribution per feature with confidence intervals; one group or
  several side by side.
- :func:`importance` -- global importance, mean ``|attribution|`` per feature.
- :func:`beeswarm` -- every row's attribution per feature, coloured by the feature value.
- :func:`waterfall` -- one row, from the base value to the output, with the completeness
  residual as its own step.
- :func:`image` -- heatmaps over images (channel-first or channel-last), per row, averaged
  over rows, or one per group.
- :func:`completeness` -- ``sum(values)`` against ``output - base_values``, and ``delta``.
- :func:`text` and :func:`text_html` -- tokens coloured by their attribution (from
  :func:`gradshap.token_attributions`), as a figure or as HTML for a report.
- :func:`curves` -- deletion / insertion curves of :mod:`gradshap.metrics`, with a band over rows.
- :func:`comparison` -- scores of several methods (:func:`gradshap.metrics.compare`) with intervals.
"""

from __future__ import annotations

import html
import math
from typing import Any, Sequence

import numpy as np

from gradshap._groups import Group, GroupedExplanation, z_value
from gradshap.explanation import Explanation
from gradshap.backends import require

__all__ = ["bar", "beeswarm", "comparison", "completeness", "curves", "image", "importance", "text", "text_html", "waterfall"]

POSITIVE = "#d7263d"  # pushes the output up
NEGATIVE = "#1b6ec2"  # pushes the output down
NEUTRAL = "#8c8c8c"
_GROUP_COLORS = ("#2a9d8f", "#e9c46a", "#e76f51", "#6d597a", "#264653", "#f4a261", "#8ab17d", "#b56576")


def _mpl():
    """matplotlib.pyplot, or an ImportError that says what to install."""
    require("matplotlib", "plots")
    import matplotlib.pyplot as plt

    return plt


def _new_axes(ax, size):
    if ax is not None:
        return ax
    _, ax = _mpl().subplots(figsize=size, layout="constrained")
    return ax


# ----------------------------------------------------------------- inputs

def _one_target(exp: Explanation, what: str) -> Explanation:
    if not isinstance(exp, Explanation):
        msg = f"`{what}` must be a gradshap.Explanation; got {type(exp).__name__}"
        raise TypeError(msg)
    if isinstance(exp.values, tuple):
        msg = (
            f"`{what}` explains a model with {len(exp.values)} inputs; plot one input at a time, "
            "e.g. dataclasses.replace(exp, values=exp.values[0], stderr=exp.stderr[0], data=exp.data[0])"
        )
        raise ValueError(msg)
    if exp.several_targets:
        msg = f"`{what}` explains several targets {exp.target}; plot one with exp.select_target(k)"
        raise ValueError(msg)
    return exp.to_numpy()


def _names(names: Any, shape: tuple) -> list[str]:
    """One name per flattened feature; ``feature i`` or ``x[i, j]`` when none fit."""
    size = math.prod(shape)
    if names is not None and len(names) == size:
        return [str(s) for s in names]
    if len(shape) == 1:
        return [f"feature {i}" for i in range(size)]
    return ["x[" + ", ".join(map(str, idx)) + "]" for idx in np.ndindex(*shape)]


def _flat(exp: Explanation, what: str = "exp"):
    """(values (n, F), data (n, F) or None, names, numpy Explanation)."""
    exp = _one_target(exp, what)
    values = np.asarray(exp.values, dtype=np.float64)
    n, shape = values.shape[0], values.shape[1:]
    data = None
    if exp.data is not None:
        d = np.asarray(exp.data)
        if d.shape == values.shape and np.issubdtype(d.dtype, np.number):
            data = d.reshape(n, -1).astype(np.float64)
    return values.reshape(n, -1), data, _names(exp.feature_names, shape), exp


def _groups_of(obj: Any, groups: Sequence | None, level: float | None, what: str) -> list[Group]:
    """The groups to draw, each a :class:`Group`; an Explanation is one group of all rows."""
    if isinstance(obj, Explanation):
        exp = _one_target(obj, what)
        return [Group.of(None, np.arange(len(exp)), exp, 0.95 if level is None else level)]
    if isinstance(obj, Group):
        found = [obj]
    elif isinstance(obj, GroupedExplanation):
        keys = list(obj) if groups is None else list(groups)
        found = [obj[k] for k in keys]
    else:
        msg = f"`{what}` must be a gradshap.Explanation, GroupedExplanation or Group; got {type(obj).__name__}"
        raise TypeError(msg)
    for g in found:
        _one_target(g.explanation, what)
    if level is not None:
        found = [Group.of(g.name, g.rows, g.explanation, level) for g in found]
    return found


def _pick(order_score: np.ndarray, names: list[str], max_display: int, features: Sequence | None) -> np.ndarray:
    """Indices of the features to show, most important first."""
    if features is not None:
        lookup = {n: i for i, n in enumerate(names)}
        picked = []
        for f in features:
            if isinstance(f, str):
                if f not in lookup:
                    msg = f"`features` names {f!r}, which is not a feature; the features are {names[:8]}{' ...' if len(names) > 8 else ''}"
                    raise ValueError(msg)
                picked.append(lookup[f])
            else:
                picked.append(int(f))
        return np.asarray(picked, dtype=np.int64)
    if not isinstance(max_display, int) or max_display < 1:
        msg = f"`max_display` must be a positive int; got {max_display!r}"
        raise ValueError(msg)
    score = np.where(np.isfinite(order_score), order_score, -np.inf)
    return np.argsort(-score, kind="stable")[:max_display]


def _group_label(g: Group) -> str:
    return f"{g.name} (n={g.n})" if g.name is not None else f"all rows (n={g.n})"


def _ci_text(level: float) -> str:
    return f"{100 * level:g}% CI"


# ------------------------------------------------------------- bar charts

def _bars(obj, *, kind, max_display, features, groups, level, ax, title, what):
    found = _groups_of(obj, groups, level, what)
    lvl = found[0].level
    z = z_value(lvl)
    shape = np.asarray(found[0].explanation.values).shape[1:]
    names = _names(found[0].explanation.feature_names, shape)
    stat, err = ("mean", "stderr") if kind == "bar" else ("abs_mean", "abs_stderr")
    means = np.stack([np.asarray(getattr(g, stat)).reshape(-1) for g in found])
    errs = np.stack([np.asarray(getattr(g, err)).reshape(-1) for g in found]) * z
    drawn = [k for k, g in enumerate(found) if g.n > 0]
    if len(drawn) == 1:
        score = np.abs(means[drawn[0]])
    elif drawn:  # several groups: the features that matter over all their rows, so no small group dominates
        pooled = np.stack([np.asarray(found[k].abs_mean).reshape(-1) * found[k].n for k in drawn])
        score = pooled.sum(axis=0)
    else:
        score = np.zeros(means.shape[1])
    idx = _pick(score, names, max_display, features)
    k, n_groups = len(idx), len(drawn)
    ax = _new_axes(ax, (7.5, max(2.4, 0.34 * k * max(1.0, 0.55 * n_groups) + 1.3)))
    y = np.arange(k, dtype=float)
    if not drawn:
        ax.text(0.5, 0.5, "no rows in this group", ha="center", va="center", transform=ax.transAxes, color=NEUTRAL)
    height = 0.8 / max(1, n_groups)
    for slot, gk in enumerate(drawn):
        g = found[gk]
        m, e = means[gk, idx], errs[gk, idx]
        pos = y - 0.4 + height * (slot + 0.5) if n_groups > 1 else y
        if n_groups > 1:
            color = _GROUP_COLORS[gk % len(_GROUP_COLORS)]
        elif kind == "bar":
            color = [POSITIVE if v >= 0 else NEGATIVE for v in m]
        else:
            color = "#5e548e"
        ax.barh(pos, m, height=height * 0.92, color=color, label=_group_label(g) if n_groups > 1 else None)
        ok = np.isfinite(e)
        if ok.any():
            ax.errorbar(m[ok], pos[ok], xerr=e[ok], fmt="none", ecolor="#222222", elinewidth=1, capsize=2.5 if n_groups > 1 else 3.5)
        if n_groups == 1:
            span = np.nanmax(np.abs(m) + np.where(ok, e, 0)) if k else 1.0
            for v, ev, p in zip(m, np.where(ok, e, 0.0), pos):
                end = v + ev if v >= 0 else v - ev
                ax.text(end + (0.02 if v >= 0 else -0.02) * span, p, f"{v:+.3g}" if kind == "bar" else f"{v:.3g}", va="center",
                        ha="left" if v >= 0 else "right", fontsize=8, color="#333333")
    ax.axvline(0.0, color="#444444", lw=0.8)
    ax.set_yticks(y, [names[i] for i in idx])
    ax.set_ylim(k - 0.5, -0.5)
    ax.margins(x=0.18)
    ax.grid(axis="x", color="#e6e6e6", lw=0.6)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    if kind == "bar":
        ax.set_xlabel(f"mean attribution to the model output ({_ci_text(lvl)})")
    else:
        ax.set_xlabel(f"mean |attribution| ({_ci_text(lvl)})")
    if n_groups > 1 or (len(found) > 1 and not drawn):
        handles, labels = ax.get_legend_handles_labels()
        for g in found:
            if g.n == 0:  # empty groups still appear, so a reader sees they exist
                handles.append(_mpl().Rectangle((0, 0), 1, 1, fc="white", ec=NEUTRAL))
                labels.append(f"{_group_label(g)}: no rows")
        ax.legend(handles, labels, loc="best", fontsize=8, framealpha=0.85, edgecolor="none")
    if title is None:
        if n_groups == 1 and found[drawn[0]].name is not None:
            g = found[drawn[0]]
            title = f"{g.name}: {'mean attribution' if kind == 'bar' else 'mean |attribution|'} (n={g.n})"
        elif n_groups == 1:
            title = "global importance" if kind == "importance" else f"mean attribution (n={found[0].n})"
        elif kind == "bar":
            title = "mean attribution per group"
        else:
            title = "mean |attribution| per group"
    ax.set_title(title, loc="left", fontsize=11)
    return ax


def bar(
    exp: Any,
    *,
    max_display: int = 10,
    features: Sequence | None = None,
    groups: Sequence | None = None,
    level: float | None = None,
    ax=None,
    title: str | None = None,
):
    """Mean attribution per feature with confidence intervals, optionally one bar per group.

    Parameters
    ----------
    exp : Explanation, GroupedExplanation or Group
        An Explanation is one group of all its rows. A GroupedExplanation draws its
        groups side by side (``groups`` picks some, in that order).
    max_display : int
        Number of features shown: those with the largest ``|mean|`` in any group.
    features : sequence of names or indices, optional
        Exactly these features, in this order (overrides ``max_display``).
    level : float, optional
        Interval coverage; by default the group's (0.95): ``mean +- 1.96 * stderr``,
        the standard error across the group's rows.
    ax : matplotlib Axes, optional

    Returns
    -------
    matplotlib.axes.Axes
        One horizontal bar per feature shown and group with rows.
    """
    return _bars(exp, kind="bar", max_display=max_display, features=features, groups=groups,
                 level=level, ax=ax, title=title, what="exp")


def importance(
    exp: Any,
    *,
    max_display: int = 10,
    features: Sequence | None = None,
    groups: Sequence | None = None,
    level: float | None = None,
    ax=None,
    title: str | None = None,
):
    """Global importance: mean ``|attribution|`` per feature with confidence intervals.

    Takes the same arguments as :func:`bar`; the statistic is the mean absolute value,
    which does not let positive and negative contributions cancel.
    """
    return _bars(exp, kind="importance", max_display=max_display, features=features, groups=groups,
                 level=level, ax=ax, title=title, what="exp")


# ----------------------------------------------------------------- beeswarm

def _swarm_layers(x: np.ndarray, n_bins: int = 60) -> np.ndarray:
    """A signed layer number per point: 0, +1, -1, +2, ... among points of similar value."""
    layers = np.zeros(x.size)
    finite = np.isfinite(x)
    if not finite.any():
        return layers
    lo, hi = np.min(x[finite]), np.max(x[finite])
    bins = np.zeros(x.size, dtype=np.int64)
    if hi > lo:
        bins = np.clip(((x - lo) / (hi - lo) * n_bins).astype(np.int64, copy=False), 0, n_bins - 1)
    order = np.lexsort((x, bins))
    count: dict[int, int] = {}
    for i in order:
        k = count.get(int(bins[i]), 0)
        count[int(bins[i])] = k + 1
        layers[i] = (k + 1) // 2 * (1 if k % 2 else -1)
    return layers


def beeswarm(
    exp: Explanation,
    *,
    max_display: int = 10,
    features: Sequence | None = None,
    ax=None,
    cmap: Any = "coolwarm",
    color_bar: bool = True,
    title: str | None = None,
):
    """Each row's attribution for each feature, coloured by the feature's value.

    Features are ordered by mean ``|attribution|``. A point's colour is the row's value
    of that feature, scaled between the feature's 5th and 95th percentiles (grey when
    ``exp.data`` is missing).

    Returns
    -------
    matplotlib.axes.Axes
    """
    values, data, names, _ = _flat(exp)
    n = values.shape[0]
    idx = _pick(np.abs(values).mean(axis=0) if n else np.zeros(values.shape[1]), names, max_display, features)
    k = len(idx)
    ax = _new_axes(ax, (8.0, max(2.4, 0.42 * k + 1.3)))
    plt = _mpl()
    colormap = plt.get_cmap(cmap)
    layers = [_swarm_layers(values[:, j]) for j in idx]
    widest = max((np.max(np.abs(lay)) for lay in layers if lay.size), default=1.0)
    step = min(0.06, 0.4 / max(widest, 1.0))
    for pos, (j, lay) in enumerate(zip(idx, layers)):
        x = values[:, j]
        if data is not None:
            d = data[:, j]
            finite = np.isfinite(d)
            lo, hi = (np.percentile(d[finite], [5, 95]) if finite.any() else (0.0, 1.0))
            if hi <= lo:
                lo, hi = (np.min(d[finite]), np.max(d[finite])) if finite.any() else (0.0, 1.0)
            scaled = np.clip((d - lo) / (hi - lo), 0, 1) if hi > lo else np.full(n, 0.5)
            colors = [colormap(s) if np.isfinite(s) else NEUTRAL for s in scaled]
        else:
            colors = NEUTRAL
        ax.scatter(x, pos + lay * step, c=colors, s=14, linewidths=0, alpha=0.9, zorder=3)
    ax.axvline(0.0, color="#444444", lw=0.8, zorder=1)
    ax.set_yticks(np.arange(k), [names[j] for j in idx])
    ax.set_ylim(k - 0.5, -0.5)
    ax.grid(axis="y", color="#eeeeee", lw=0.6)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.set_xlabel("attribution (impact on the model output)")
    ax.set_title(title or f"attributions of {n} rows", loc="left", fontsize=11)
    if color_bar and data is not None:
        mappable = plt.cm.ScalarMappable(cmap=colormap)
        mappable.set_array([0.0, 1.0])
        bar_ = ax.figure.colorbar(mappable, ax=ax, ticks=[0, 1], aspect=40, pad=0.02)
        bar_.ax.set_yticklabels(["low", "high"])
        bar_.set_label("feature value")
        bar_.outline.set_visible(False)
    return ax


# ---------------------------------------------------------------- waterfall

def waterfall(
    exp: Explanation,
    row: int = 0,
    *,
    max_display: int = 10,
    level: float = 0.95,
    ax=None,
    title: str | None = None,
):
    """One row's attributions as steps from the base value ``E f(b)`` to the output ``f(x)``.

    The largest contributions are at the top; the rest are summed in one step. Because
    the estimate's sum is ``f(x) - E f(b) + delta``, the completeness residual ``-delta``
    is drawn as its own grey step, so the chain ends exactly at ``f(x)``. Whiskers show
    each value's Monte Carlo interval (``z * stderr`` at ``level``).

    Returns
    -------
    matplotlib.axes.Axes
    """
    values, data, names, e = _flat(exp)
    n = values.shape[0]
    if not isinstance(row, (int, np.integer)) or not -n <= row < n:
        msg = f"`row` must be an int in [-{n}, {n}) for an Explanation of {n} rows; got {row!r}"
        raise IndexError(msg)
    v = values[row]
    se = np.asarray(e.stderr, dtype=np.float64).reshape(n, -1)[row] * z_value(level)
    base = float(np.asarray(e.base_values).reshape(n)[row])
    out = float(np.asarray(e.output).reshape(n)[row])
    delta = float(np.asarray(e.delta).reshape(n)[row])
    order = np.argsort(-np.abs(v), kind="stable")
    shown = order[: max(1, max_display - 1)] if v.size > max_display else order
    rest = order[len(shown):]
    # Steps from the top of the chart down; the chain is accumulated bottom-up from the base.
    steps = []
    for j in shown:
        label = names[j] if data is None else f"{names[j]} = {data[row, j]:.3g}"
        steps.append((label, v[j], se[j], POSITIVE if v[j] >= 0 else NEGATIVE))
    if rest.size:
        total = float(v[rest].sum())
        steps.append((f"{rest.size} other features", total, np.nan, POSITIVE if total >= 0 else NEGATIVE))
    steps.append(("completeness residual −δ", -delta, np.nan, NEUTRAL))
    k = len(steps)
    ax = _new_axes(ax, (8.0, max(2.8, 0.4 * k + 1.6)))
    start = base
    ends = []
    for pos in range(k - 1, -1, -1):
        label, val, err, color = steps[pos]
        ax.barh(pos, val, left=start, height=0.7, color=color, hatch="///" if color == NEUTRAL else None,
                edgecolor="white" if color == NEUTRAL else color, linewidth=0.5)
        if np.isfinite(err):
            ax.errorbar(start + val, pos, xerr=err, fmt="none", ecolor="#222222", elinewidth=0.9, capsize=2.5)
        ends.append((pos, start, start + val))
        start += val
    span = max(abs(out - base), np.max(np.abs(v)) if v.size else 0.0, 1e-12)
    for pos, s0, s1 in ends:
        val = s1 - s0
        err = steps[pos][2]
        pad = 0.015 * span + (err if np.isfinite(err) else 0.0)
        ax.text(s1 + pad if val >= 0 else s1 - pad, pos, f"{val:+.3g}", va="center", ha="left" if val >= 0 else "right",
                fontsize=8, color="#333333")
    for pos, s0, s1 in ends:  # connectors between consecutive steps
        if pos > 0:
            ax.plot([s1, s1], [pos - 0.35, pos - 0.65], color="#999999", lw=0.7)
    ax.axvline(base, color="#666666", lw=0.8, ls="--")
    ax.axvline(out, color="#222222", lw=0.8, ls="--")
    ax.text(base, k - 0.5 + 0.35, f" E[f(b)] = {base:.4g}", va="center", ha="left", fontsize=8.5, color="#444444")
    ax.text(out, -0.5 - 0.35, f" f(x) = {out:.4g}", va="center", ha="left", fontsize=8.5, color="#111111")
    ax.use_sticky_edges = False  # bars would pin the axis to the base value; keep a margin
    ax.set_ylim(k - 0.5 + 0.7, -0.5 - 0.7)
    ax.set_yticks(np.arange(k), [s[0] for s in steps])
    ax.margins(x=0.2)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.set_xlabel(f"model output (whiskers: Monte Carlo {_ci_text(level)})")
    ax.set_title(title or f"row {row}: f(x) = {out:.4g}, δ = {delta:+.2g}", loc="left", fontsize=11)
    return ax


# -------------------------------------------------------------------- images

def _channel_axis(shape: tuple, channel_axis: Any) -> int | None:
    """Position of the channel axis in one sample's shape (None for a 2-D image)."""
    if len(shape) == 2:
        if channel_axis not in ("auto", None):
            msg = f"`channel_axis` is {channel_axis!r} but the images are 2-D, shape {shape}; leave it 'auto'"
            raise ValueError(msg)
        return None
    if len(shape) != 3:
        msg = f"`exp` must hold images: each row shaped (H, W), (C, H, W) or (H, W, C); got {shape}"
        raise ValueError(msg)
    if channel_axis in ("first", 0):
        return 0
    if channel_axis in ("last", -1, 2):
        return 2
    if channel_axis != "auto":
        msg = f"`channel_axis` must be 'auto', 'first' or 'last'; got {channel_axis!r}"
        raise ValueError(msg)
    first, last = shape[0] <= 4, shape[2] <= 4  # channels are few; image sides are not
    if first != last:
        return 0 if first else 2
    msg = f"cannot tell the channel axis of images shaped {shape}; pass channel_axis='first' or 'last'"
    raise ValueError(msg)


def _heat_and_picture(values: np.ndarray, data: np.ndarray | None, axis: int | None):
    """A signed heatmap (H, W): the values summed over channels; and the picture to show."""
    heat = values if axis is None else values.sum(axis=axis)
    picture = None
    if data is not None:
        img = data if axis is None else np.moveaxis(data, axis, -1)
        if img.ndim == 3 and img.shape[-1] == 1:
            img = img[..., 0]
        elif img.ndim == 3 and img.shape[-1] in (3, 4):
            img = img[..., :3]
        elif img.ndim == 3:
            img = img.mean(axis=-1)
        lo, hi = np.nanmin(img), np.nanmax(img)
        picture = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img, dtype=np.float64)
    return heat, picture


def _overlay_cmap():
    """The diverging map with opacity growing with |value|, so small values let the picture through."""
    plt = _mpl()
    from matplotlib.colors import ListedColormap

    rgba = plt.get_cmap("RdBu_r")(np.linspace(0.0, 1.0, 256))
    rgba[:, 3] = np.clip(np.sqrt(np.abs(np.linspace(-1.0, 1.0, 256))) * 1.25, 0.0, 1.0)
    return ListedColormap(rgba, name="gradshap_overlay")


def image(
    exp: Any,
    rows: int | Sequence[int] | None = None,
    *,
    mean: bool = False,
    groups: Sequence | None = None,
    channel_axis: Any = "auto",
    titles: Sequence[str] | None = None,
    show_input: bool = True,
    input_cmap: str = "gray",
    ncols: int = 8,
    vmax: float | None = None,
):
    """Attribution heatmaps over images, red for positive and blue for negative, centred at 0.

    Parameters
    ----------
    exp : Explanation, GroupedExplanation or Group
        Images shaped ``(n, H, W)``, ``(n, C, H, W)`` (channel first) or ``(n, H, W, C)``
        (channel last). A GroupedExplanation gives one panel per group with rows (the
        group's mean attribution over its mean image), a Group one panel.
    rows : int or sequence of ints, optional
        The rows of an Explanation to draw, one panel each (default: row 0).
    mean : bool
        For an Explanation: one panel, the attributions averaged over ``rows`` (all rows
        when ``rows`` is None).
    channel_axis : "auto", "first" or "last"
        Where the channels are; "auto" takes the end axis with at most 4 entries (and
        asks when both or neither have).
    titles : sequence of str, optional
        One title per panel.
    show_input : bool
        Draw the input image above each heatmap (when ``exp.data`` is there).
    input_cmap : str
        Colormap of single-channel inputs ("gray_r" shows dark ink on white).
    vmax : float, optional
        The colour scale is ``[-vmax, vmax]``, shared by all panels; by default the
        99.5th percentile of ``|heatmap|`` over the panels.

    Returns
    -------
    matplotlib.figure.Figure
        Heatmaps sum the attributions over channels (their sum is each pixel's share of
        ``f(x) - E f(b)``).
    """
    plt = _mpl()
    panels = []  # (title, values (*shape), data or None)
    if isinstance(exp, (GroupedExplanation, Group)):
        for g in _groups_of(exp, groups, None, "exp"):
            if g.n == 0:
                continue
            e = g.explanation
            data = None if e.data is None else np.asarray(e.data, dtype=np.float64).mean(axis=0)
            panels.append((f"{g.name} (n={g.n})", np.asarray(g.mean), data))
    else:
        e = _one_target(exp, "exp")
        vals = np.asarray(e.values, dtype=np.float64)
        data = None if e.data is None else np.asarray(e.data, dtype=np.float64)
        if data is not None and data.shape != vals.shape:
            data = None
        picked = (np.arange(len(e)) if (mean and rows is None) else np.atleast_1d(np.asarray(0 if rows is None else rows)))
        if mean:
            panels.append((f"mean of {picked.size} rows", vals[picked].mean(axis=0),
                           None if data is None else data[picked].mean(axis=0)))
        else:
            for r in picked:
                panels.append((f"row {int(r)}", vals[int(r)], None if data is None else data[int(r)]))
    if not panels:
        msg = "`exp` has no rows to draw"
        raise ValueError(msg)
    if titles is not None:
        if len(titles) != len(panels):
            msg = f"`titles` must hold one title per panel ({len(panels)}); got {len(titles)}"
            raise ValueError(msg)
        panels = [(t, v, d) for t, (_, v, d) in zip(titles, panels)]
    axis = _channel_axis(tuple(panels[0][1].shape), channel_axis)
    drawn = [(t, *_heat_and_picture(v, d, axis)) for t, v, d in panels]
    if vmax is None:
        vmax = max(float(np.percentile(np.abs(h), 99.5)) for _, h, _ in drawn)
    vmax = vmax if vmax > 0 else 1.0
    with_input = show_input and drawn[0][2] is not None
    cols = min(max(1, ncols), len(drawn))
    blocks = math.ceil(len(drawn) / cols)
    per_block = 2 if with_input else 1
    fig, axes = plt.subplots(blocks * per_block, cols, figsize=(1.7 * cols + 1.2, 1.75 * blocks * per_block + 0.4),
                             squeeze=False, layout="constrained")
    overlay = _overlay_cmap()
    for k, (title, heat, picture) in enumerate(drawn):
        b, c = divmod(k, cols)
        top = axes[b * per_block, c]
        if with_input:
            top.imshow(picture, cmap=None if picture.ndim == 3 else input_cmap, interpolation="nearest")
            top.set_title(title, fontsize=9)
            low = axes[b * per_block + 1, c]
        else:
            low = top
            low.set_title(title, fontsize=9)
        if picture is not None:
            gray = picture.mean(axis=-1) if picture.ndim == 3 else picture
            low.imshow(gray, cmap=input_cmap, alpha=0.25, interpolation="nearest")
        low.imshow(heat, cmap=overlay, vmin=-vmax, vmax=vmax, interpolation="nearest")
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    for k in range(len(drawn), blocks * cols):
        b, c = divmod(k, cols)
        for r in range(per_block):
            axes[b * per_block + r, c].set_visible(False)
    if with_input:
        axes[0, 0].set_ylabel("input", fontsize=9)
        axes[1, 0].set_ylabel("attribution", fontsize=9)
    mappable = plt.cm.ScalarMappable(norm=plt.Normalize(-vmax, vmax), cmap="RdBu_r")
    bar_ = fig.colorbar(mappable, ax=axes.ravel().tolist(), shrink=0.85, aspect=25, pad=0.02)
    bar_.set_label("attribution (summed over channels)", fontsize=8)
    bar_.ax.tick_params(labelsize=7)
    return fig


# -------------------------------------------------------------- completeness

def completeness(exp: Explanation, *, title: str | None = None):
    """Check of completeness: ``sum(values)`` against ``f(x) - E f(b)``, and the residuals.

    Left: one point per row, on the diagonal when ``delta = 0``. Right: the histogram of
    ``delta``, with the worst ``|delta|`` marked.

    Returns
    -------
    matplotlib.figure.Figure
    """
    values, _, _, e = _flat(exp)
    n = values.shape[0]
    gap = np.asarray(e.output, dtype=np.float64).reshape(n) - np.asarray(e.base_values, dtype=np.float64).reshape(n)
    total = values.sum(axis=1)
    delta = np.asarray(e.delta, dtype=np.float64).reshape(n)
    plt = _mpl()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10.0, 4.0), layout="constrained")
    worst = float(np.max(np.abs(delta))) if n else float("nan")
    points = left.scatter(gap, total, s=14, c=np.abs(delta), cmap="viridis", linewidths=0, zorder=3)
    fig.colorbar(points, ax=left, label="|δ|", aspect=30, pad=0.01)
    lims = [min(gap.min(), total.min()), max(gap.max(), total.max())] if n else [0, 1]
    left.plot(lims, lims, color="#d7263d", lw=1, label="sum = f(x) − E[f(b)]", zorder=2)
    left.set_xlabel("f(x) − E[f(b)]")
    left.set_ylabel("sum of attributions")
    left.legend(loc="upper left", frameon=False, fontsize=8)
    left.set_title("completeness per row", loc="left", fontsize=11)
    right.hist(delta, bins=min(40, max(5, n // 3)), color="#5e548e")
    for s in (-worst, worst):
        right.axvline(s, color="#d7263d", lw=0.9, ls="--")
    spread = float(np.std(gap)) if n > 1 else float("nan")
    right.set_title(f"residual δ: max |δ| = {worst:.3g}  (spread of f(x) − E[f(b)]: {spread:.3g})",
                    loc="left", fontsize=10)
    right.set_xlabel("δ = sum of attributions − (f(x) − E[f(b)])")
    right.set_ylabel("rows")
    for ax in (left, right):
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
    if title:
        fig.suptitle(title)
    return fig


# -------------------------------------------------------------------- text

def _token_rows(exp: Explanation, tokens: Sequence, scale: float | None, what: str = "exp"):
    """``[(row, [(token, value), ...]), ...]``, the rows' explanation in NumPy, and the colour
    scale (the largest ``|value|`` shown, unless given)."""
    exp = _one_target(exp, what)
    values = np.asarray(exp.values, dtype=np.float64)
    if values.ndim != 2:
        msg = (f"`{what}` must hold one attribution per token, values of shape (rows, tokens) as "
               f"gradshap.token_attributions returns; got values of shape {values.shape}")
        raise ValueError(msg)
    n, length = values.shape
    if n == 1 and len(tokens) and isinstance(tokens[0], str):
        tokens = [tokens]
    if len(tokens) != n:
        msg = f"`tokens` must hold one sequence of tokens per row ({n}); got {len(tokens)}"
        raise ValueError(msg)
    rows = []
    for r, row in enumerate(tokens):
        if len(row) > length:
            msg = f"`tokens[{r}]` has {len(row)} tokens; the explanation has {length} positions"
            raise ValueError(msg)
        # Positions past the row's tokens, and None entries, are padding: not shown.
        rows.append((r, [(str(t), float(values[r, i])) for i, t in enumerate(row) if t is not None]))
    if scale is None:
        shown = [abs(v) for _, pairs in rows for _, v in pairs]
        scale = max(shown, default=0.0)
    return rows, exp, (scale if scale > 0 else 1.0)


_CHAR_INCHES = 0.085  # the advance of a 10 pt DejaVu Sans Mono character (6.0 pt)


def _token_colour(value: float, scale: float) -> tuple:
    """RGBA: red for positive, blue for negative, opacity ``|value| / scale`` (at most 1)."""
    rgb = POSITIVE if value >= 0 else NEGATIVE
    alpha = min(1.0, abs(value) / scale)
    return tuple(int(rgb[i : i + 2], 16) / 255 for i in (1, 3, 5)) + (alpha,)


def _row_caption(exp: Explanation, r: int, names: Sequence | None) -> str:
    out, base, delta = (float(np.asarray(getattr(exp, k), dtype=np.float64).reshape(-1)[r])
                        for k in ("output", "base_values", "delta"))
    return f"{f'row {r}' if names is None else names[r]}: f(x) = {out:.4g}, base = {base:.4g}, δ = {delta:.2g}"


def text_html(exp: Explanation, tokens: Sequence, *, scale: float | None = None, captions: bool = True,
              names: Sequence[str] | None = None) -> str:
    """Tokens coloured by attribution, as an HTML fragment (one paragraph per row).

    Parameters
    ----------
    exp : Explanation
        Per-token attributions ``(rows, tokens)``, e.g. from :func:`gradshap.token_attributions`.
    tokens : sequence of sequences of str
        Each row's tokens, aligned with the positions of ``values``; a row may be shorter
        than the explanation (padding past it is not shown), and ``None`` entries are
        skipped. For one row, a plain sequence of str.
    scale : float, optional
        The ``|attribution|`` drawn at full colour (default: the largest one shown).
    captions : bool
        Start each row with its ``f(x)``, base value and residual.
    names : sequence of str, optional
        What each row's caption calls it (default ``row i``).

    Returns
    -------
    str
        The HTML; each token's exact value is in its ``title`` (shown on hover). Red pushes
        the output up, blue down, and the opacity grows with ``|attribution|``.
    """
    rows, e, scale = _token_rows(exp, tokens, scale)
    parts = ['<div class="gradshap-text" style="font-family: monospace; line-height: 1.9">']
    for r, pairs in rows:
        parts.append("<p>")
        if captions:
            parts.append(f'<span style="color: {NEUTRAL}">{html.escape(_row_caption(e, r, names))}</span><br>')
        for tok, v in pairs:
            red, green, blue, alpha = _token_colour(v, scale)
            colour = f"rgba({round(red * 255)}, {round(green * 255)}, {round(blue * 255)}, {alpha:.3f})"
            parts.append(f'<span style="background: {colour}; padding: 1px 2px; border-radius: 3px" '
                         f'title="{v:.4g}">{html.escape(tok)}</span> ')
        parts.append("</p>")
    parts.append("</div>")
    return "".join(parts)


def text(exp: Explanation, tokens: Sequence, *, scale: float | None = None, width: int = 80,
         captions: bool = True, names: Sequence[str] | None = None, title: str | None = None):
    """Tokens coloured by attribution, as a matplotlib figure (the same view as :func:`text_html`).

    Tokens are set in a monospaced font, each on a box coloured like :func:`text_html`'s,
    wrapped at ``width`` characters; rows are separated by their captions.

    Returns
    -------
    matplotlib.figure.Figure
    """
    rows, e, scale = _token_rows(exp, tokens, scale)
    lines = []  # per line: (caption or None, [(column, token, value), ...])
    for r, pairs in rows:
        if captions:
            lines.append((_row_caption(e, r, names), []))
        line, col = [], 0
        for tok, v in pairs:
            if col and col + len(tok) > width:
                lines.append((None, line))
                line, col = [], 0
            line.append((col, tok, v))
            col += len(tok) + 1
        lines.append((None, line))
    plt = _mpl()
    inches = max(4.0, _CHAR_INCHES * (width + 2))
    fig = plt.figure(figsize=(inches, 0.32 * len(lines) + 0.6 + (0.3 if title else 0.0)))
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    ax.set_axis_off()
    ax.set_xlim(-1, inches / _CHAR_INCHES - 1)  # one x unit: one character of the 10 pt monospaced font
    ax.set_ylim(len(lines), -1.0 - (0.8 if title else 0.0))
    if title:
        ax.text(0, -1.0, title, fontsize=11, va="center")
    for y, (caption, line) in enumerate(lines):
        if caption is not None:
            ax.text(0, y, caption, fontsize=8, color=NEUTRAL, va="center")
        for col, tok, v in line:
            ax.text(col, y, tok, family="monospace", fontsize=10, va="center",
                    bbox={"boxstyle": "round,pad=0.15", "facecolor": _token_colour(v, scale), "edgecolor": "none"})
    return fig


    return fig


# -------------------------------------------------------------- metrics

def curves(curves: Any, *, level: float = 0.95, ax=None, title: str | None = None):
    """Deletion or insertion curves (:mod:`gradshap.metrics`): the mean over rows, with the band
    ``mean -+ z * stderr`` at ``level`` where there are several rows.

    Parameters
    ----------
    curves : Curve, or a mapping label -> Curve (several methods on one axes)
    level : float
        Coverage of the band (0.95: the 95% normal interval of the mean curve).

    Returns
    -------
    matplotlib.axes.Axes
    """
    items = dict(curves) if isinstance(curves, dict) else {None: curves}
    ax = _new_axes(ax, (6.0, 4.0))
    for k, (label, c) in enumerate(items.items()):
        color = _GROUP_COLORS[k % len(_GROUP_COLORS)]
        text = f"AUC {c.auc.mean:.3g} ± {z_value(level) * c.auc.stderr:.2g}"
        ax.plot(c.fractions, c.mean, color=color, lw=1.8, label=text if label is None else f"{label}: {text}")
        if c.outputs.shape[0] > 1:
            low, high = c.band(level)
            ax.fill_between(c.fractions, low, high, color=color, alpha=0.25, linewidth=0)
    kinds = {c.kind for c in items.values()}
    kind = kinds.pop() if len(kinds) == 1 else "deletion / insertion"
    ax.set_xlabel(f"fraction of features {'removed' if kind == 'deletion' else 'inserted'}")
    ax.set_ylabel("model output (target)")
    n = max(c.outputs.shape[0] for c in items.values())
    ax.set_title(title or f"{kind} curve, mean of {n} rows ({_ci_text(level)} band)", loc="left", fontsize=11)
    ax.legend(frameon=False, fontsize=8)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    return ax


def comparison(result: Any, *, title: str | None = None):
    """A :class:`gradshap.metrics.Comparison`: one panel per metric, each method's mean with its
    interval at the comparison's level, and the time per row in the method's label.

    Returns
    -------
    matplotlib.figure.Figure
    """
    methods = result.methods
    names = [s.name for s in result.scores[methods[0]]]
    plt = _mpl()
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names) + 1.5, 0.45 * len(methods) + 1.6),
                             layout="constrained", sharey=True, squeeze=False)
    z = z_value(result.level)
    y = np.arange(len(methods))
    labels = [f"{m} ({result.seconds_per_row[m] * 1e3:.3g} ms/row)" for m in methods]
    axes[0, 0].invert_yaxis()  # the first method on top (the axes share y)
    for k, (ax, name) in enumerate(zip(axes[0], names)):
        scores = [result.scores[m][k] for m in methods]
        means = np.array([s.mean for s in scores])
        halves = np.array([z * s.stderr for s in scores])
        colors = [_GROUP_COLORS[j % len(_GROUP_COLORS)] for j in range(len(methods))]
        for j in range(len(methods)):
            ax.errorbar(means[j], y[j], xerr=halves[j], fmt="o", color=colors[j], elinewidth=2, capsize=3, ms=5)
        ax.set_title(f"{name} ({scores[0].better})", loc="left", fontsize=10)
        ax.set_yticks(y, labels)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
    fig.suptitle(title or f"{len(methods)} methods on {result.n} rows, {_ci_text(result.level)}", fontsize=11)
    return fig
