"""What both demos share: imports with clear errors, timing, explaining, summaries."""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Any

import numpy as np

import gradshap
from gradshap._demo import _models
from gradshap.backends import require

__all__ = ["Timer", "explain", "explain_test_set", "finish", "group_rows", "needs", "report_checks",
           "run_convergence", "settings_rows", "top_features", "train"]


def needs(framework: str, report: bool) -> None:
    """Fail early, with the install command, when a package the demo uses is missing."""
    require("sklearn", "demo")
    require("tqdm", "plots")
    if framework == "torch":
        require("torch")
    else:
        require("jax")
        require("flax.nnx", "jax")
        require("optax", "jax")
    if report:
        require("matplotlib", "plots")


class Timer:
    """Wall time of each named stage."""

    def __init__(self):
        self.stages: dict[str, float] = {}
        self.start = time.perf_counter()

    @contextmanager
    def stage(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.stages[name] = self.stages.get(name, 0.0) + time.perf_counter() - t0

    @property
    def total(self) -> float:
        return time.perf_counter() - self.start


def train(args, d: dict, *, kind: str, size: int, task: str, timer: Timer, progress: bool):
    """Build and train the demo's model; returns (model, per-epoch losses, test-set logits)."""
    with timer.stage("training"):
        model = _models.build(args.framework, kind, size, args.seed)
        losses = _models.fit(args.framework, model, d["X_train"], d["y_train"], task=task, epochs=args.epochs,
                             seed=args.seed, progress=progress)
        logits = _models.predict(args.framework, model, d["X_test"])
    return model, losses, logits


def explain_test_set(args, d: dict, model, *, feature_names, timer: Timer, progress: bool, target: Any = None):
    """Explain the first ``--n-explain`` test rows against ``--background`` training rows.

    Returns (rows explained, background row numbers, explainer, NumPy Explanation).
    """
    n = min(args.n_explain or len(d["y_test"]), len(d["y_test"]))
    n_train = len(d["X_train"])
    background = np.sort(np.random.default_rng(args.seed).choice(n_train, size=min(args.background, n_train), replace=False))
    with timer.stage("explanation"):
        explainer, exp = explain(args.framework, model, d["X_train"][background], d["X_test"][:n],
                                 feature_names=feature_names, n_samples=args.n_samples, seed=args.seed,
                                 progress=progress, target=target)
    return n, background, explainer, exp


def run_convergence(args, timer: Timer, summary: dict, explainer, x: np.ndarray, *, target: Any = None,
                    progress: bool) -> None:
    """:func:`convergence` on the rows ``x``, into ``summary["convergence"]``."""
    with timer.stage("convergence"):
        if target is not None:
            target = _models.to_framework(args.framework, np.asarray(target, dtype=np.int64))
        result = convergence(explainer, _models.to_framework(args.framework, x), n_samples=args.n_samples,
                             seed=args.seed, target=target, progress=progress)
        summary["convergence"] = {**result, "rows": len(x)}


def settings_rows(args, summary: dict, what: str) -> list[tuple]:
    """The report's opening table: how the explanation was made and how complete it is."""
    return [
        ("framework", args.framework),
        ("test accuracy", f"{summary['accuracy']:.3f} ({summary['test_rows']} {what})"),
        (f"samples per {what[:-1]} / sampler / seed", f"{summary['n_samples']} / {summary['sampler']} / {args.seed}"),
        ("worst completeness residual |δ|", f"{summary['max_abs_delta']:.3g}"),
        ("mean |δ|", f"{summary['mean_abs_delta']:.3g}"),
        ("spread (std) of f(x) − E[f(b)]", f"{summary['spread_of_output_minus_base']:.3g}"),
    ]


def report_checks(rep, exp: gradshap.Explanation, summary: dict, *, what: str, data_note: str, code: str) -> None:
    """The report's end: the completeness and accuracy figures, and the files with how to use them."""
    from gradshap import plots

    rep.figure(plots.completeness(exp), "completeness",
               f"Completeness: each {what}'s sum of attributions against f(x) − E[f(b)] (left) and the residuals δ (right).")
    conv = summary["convergence"]
    rep.figure(convergence_figure(conv, n_rows=len(exp), used=conv["rows"]), "convergence",
               f"How the error falls with the number of samples per {what}, for i.i.d. draws of (baseline, α) as "
               "shap and captum make them and for gradshap's balanced design (every background row used "
               "equally often, α stratified). Same model, rows and seed.")
    rep.heading("Files", "files")
    exp.save(rep.folder / "explanation.npz")
    rep.link("explanation.npz", f"explanation.npz: the Explanation (every field{data_note})")
    rep.link("summary.json", "summary.json: the numbers printed by the demo")
    rep.code(code)
    rep.write()


def finish(args, timer: Timer, summary: dict, write_report) -> int:
    """Write the report (``write_report()`` returns it) and summary.json, and print where and how long."""
    report = None if args.no_report else write_report()
    summary["seconds"] = {**timer.stages, "total": timer.total}
    if report is not None:
        report.write_json("summary.json", summary)
        print(f"\nreport: {(report.folder / 'index.html').resolve()}")
    stages = ", ".join(f"{k} {v:.1f}" for k, v in timer.stages.items())
    print(f"time: {timer.total:.1f} s ({stages})")
    return 0


def explain(framework: str, model: Any, background: np.ndarray, x: np.ndarray, *, feature_names,
            n_samples: int, seed: int, progress: bool, target: Any = None) -> tuple[Any, gradshap.Explanation]:
    """The explainer and its Explanation of ``x`` (arrays in the framework, then NumPy)."""
    explainer = gradshap.GradientExplainer(
        model, _models.to_framework(framework, background), feature_names=feature_names
    )
    if target is not None and not isinstance(target, (int, str)):
        target = _models.to_framework(framework, np.asarray(target, dtype=np.int64))
    exp = explainer(_models.to_framework(framework, x), target=target, n_samples=n_samples, seed=seed,
                    progress=progress)
    return explainer, exp.to_numpy()


def top_features(group, names: list[str], top: int) -> np.ndarray:
    """Indices of the group's ``top`` features by ``|mean|`` (flattened)."""
    mean = np.asarray(group.mean).reshape(-1)
    if group.n == 0:
        return np.zeros(0, dtype=np.int64)
    return np.argsort(-np.abs(mean), kind="stable")[:top]


def group_rows(group, names: list[str], top: int) -> list[tuple]:
    """(feature, mean, low, high, stderr) for the group's top features."""
    mean = np.asarray(group.mean).reshape(-1)
    low, high = np.asarray(group.low).reshape(-1), np.asarray(group.high).reshape(-1)
    stderr = np.asarray(group.stderr).reshape(-1)
    return [(names[j], float(mean[j]), float(low[j]), float(high[j]), float(stderr[j]))
            for j in top_features(group, names, top)]


def print_group(name: str, group, names: list[str], top: int, description: str) -> None:
    if group.n == 0:
        print(f"\n{name}  n=0  ({description}): no rows")
        return
    print(f"\n{name}  n={group.n}  mean f(x) = {group.output_mean:+.3f}  ({description})")
    width = max(len(r[0]) for r in group_rows(group, names, top)) + 2
    print(f"    {'feature':<{width}}{'mean':>9}   {int(round(100 * group.level))}% interval")
    for feature, mean, low, high, _ in group_rows(group, names, top):
        interval = "(n = 1: none)" if not np.isfinite(low) else f"[{low:+.3f}, {high:+.3f}]"
        print(f"    {feature:<{width}}{mean:>+9.3f}   {interval}")


def delta_summary(exp: gradshap.Explanation) -> dict:
    delta = np.abs(np.asarray(exp.delta, dtype=np.float64))
    gap = np.asarray(exp.output, dtype=np.float64) - np.asarray(exp.base_values, dtype=np.float64)
    return {
        "max_abs_delta": float(delta.max()),
        "mean_abs_delta": float(delta.mean()),
        "spread_of_output_minus_base": float(np.std(gap)),
    }


def convergence(explainer, x, *, n_samples: int, seed: int, target: Any = None, progress: bool = False) -> dict:
    """Mean |delta| and the RMS error of the values against a reference run, per sampler and size.

    Sizes run from ``n_samples / 8`` to ``4 * n_samples`` (25 to 800 for the default 200);
    the reference takes ``32 * n_samples`` balanced samples with another seed, so its own
    error is independent of the runs it judges and small beside theirs.
    """
    sizes = sorted({max(2, int(round(n_samples * f))) for f in (0.125, 0.25, 0.5, 1, 2, 4)})
    reference = 32 * n_samples
    ref = explainer(x, target=target, n_samples=reference, seed=seed + 1000, progress=progress).to_numpy()
    ref_values = np.asarray(ref.values, dtype=np.float64)
    out: dict = {"sizes": list(sizes), "reference": reference}
    for sampler in ("iid", "balanced"):
        deltas, errors = [], []
        for n in sizes:
            e = explainer(x, target=target, n_samples=n, sampler=sampler, seed=seed).to_numpy()
            deltas.append(float(np.mean(np.abs(np.asarray(e.delta, dtype=np.float64)))))
            errors.append(float(np.sqrt(np.mean((np.asarray(e.values, dtype=np.float64) - ref_values) ** 2))))
        out[sampler] = {"mean_abs_delta": deltas, "rms_error": errors}
    return out


def convergence_figure(result: dict, *, n_rows: int, used: int):
    """Log-log plot of :func:`convergence`: both samplers, with a 1/sqrt(n) guide."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter, LogLocator

    sizes = np.asarray(result["sizes"], dtype=np.float64)
    fig, axes = plt.subplots(1, 2, figsize=(10.0, 3.8), layout="constrained")
    panels = (("rms_error", "RMS error of the attributions\n(against a %d-sample reference)" % result["reference"]),
              ("mean_abs_delta", "mean |δ| (completeness residual)"))
    styles = {"iid": dict(color="#8c8c8c", marker="o", ls="--", label="iid (as shap and captum sample)"),
              "balanced": dict(color="#d7263d", marker="s", label="balanced (gradshap's default)")}
    for ax, (key, label) in zip(axes, panels):
        for sampler, style in styles.items():
            ax.plot(sizes, result[sampler][key], **style)
        first = result["iid"][key][0]
        ax.plot(sizes, first * np.sqrt(sizes[0] / sizes), color="#bbbbbb", lw=0.8, ls=":", label="∝ 1/√n")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(sizes, [str(int(s)) for s in sizes])
        ax.minorticks_off()
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.set_xlabel("samples per row (n_samples)")
        ax.set_title(label, loc="left", fontsize=10)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
    axes[0].legend(fontsize=8, frameon=False)
    fig.suptitle(f"accuracy against the sample budget ({used} of {n_rows} explained rows)", fontsize=11)
    return fig
