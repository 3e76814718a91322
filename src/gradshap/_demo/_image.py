"""The image demo: a small CNN on scikit-learn's 8x8 digits, explained with heatmaps.

Each test image is explained for the class the model predicts (``target="predicted"``),
against 100 training images as background. The PyTorch model takes channel-first
images (N, 1, 8, 8), the Flax model channel-last (N, 8, 8, 1); the plots handle both.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from gradshap._demo import _common, _models
from gradshap._demo._report import Report, confusion_figure, finish_axes
from gradshap.explanation import Explanation

CLASSES = tuple(range(10))
PIXELS = [f"pixel ({r}, {c})" for r in range(8) for c in range(8)]


def load(seed: int, framework: str) -> dict:
    """Digits scaled to [0, 1], split 80/20 (stratified), in the framework's image layout."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    ds = load_digits()
    X = (ds.images / 16.0).astype(np.float32)
    X = X[:, None, :, :] if framework == "torch" else X[:, :, :, None]
    X_train, X_test, y_train, y_test = train_test_split(X, ds.target.astype(np.int64), test_size=0.2,
                                                        stratify=ds.target, random_state=seed)
    return {"X_train": X_train, "y_train": y_train, "X_test": X_test, "y_test": y_test, "n_rows": len(X)}


def _label(c: int) -> str:
    return f"digit {c}"


def run(args) -> int:
    _common.needs(args.framework, not args.no_report)
    timer = _common.Timer()
    progress = not args.no_progress
    fw = args.framework
    with timer.stage("data"):
        d = load(args.seed, fw)
    layout = "channel-first (N, 1, 8, 8)" if fw == "torch" else "channel-last (N, 8, 8, 1)"
    print(f"gradshap demo: image, framework {fw}")
    print(f"data: digits (scikit-learn), {d['n_rows']} images 8x8, {layout}; train {len(d['y_train'])}, "
          f"test {len(d['y_test'])}")
    model, losses, logits = _common.train(args, d, kind="cnn", size=len(CLASSES), task="multiclass", timer=timer,
                                          progress=progress)
    y_test, y_pred = d["y_test"], np.argmax(logits, axis=1)
    accuracy = float((y_pred == y_test).mean())
    print(f"model: CNN conv 8 - conv 16 - maxpool - dense 64 - 10; Adam, {args.epochs} epochs, "
          f"final training loss {losses[-1]:.4f}")

    n, background_rows, explainer, exp = _common.explain_test_set(args, d, model, feature_names=PIXELS, timer=timer,
                                                                  progress=progress, target="predicted")
    with timer.stage("explanation"):
        wrong = np.flatnonzero(y_pred[:n] != y_test[:n])
        exp_true = None
        if wrong.size:  # the mistakes once more, for the class they should have been
            _, exp_true = _common.explain(
                fw, model, d["X_train"][background_rows], d["X_test"][:n][wrong], feature_names=PIXELS,
                n_samples=args.n_samples, seed=args.seed, progress=False, target=y_test[:n][wrong],
            )
    correct = y_pred[:n] == y_test[:n]
    labels = np.where(correct, np.char.add("digit ", y_pred[:n].astype(str)), "mistake")
    grouped = exp.groupby(labels, order=[_label(c) for c in CLASSES])
    completeness = _common.delta_summary(exp)
    base = np.asarray(exp.base_values, dtype=np.float64)
    print(f"test accuracy {accuracy:.3f} on {len(y_test)} images; explained {n}, {wrong.size} of them misclassified")
    print(f"explanation: {len(background_rows)} background images, {args.n_samples} samples per image, sampler "
          f"{exp.sampler!r}, seed {args.seed}; target = the predicted class's logit")
    print("base values E[f_c(b)] per class: " + "  ".join(
        f"{c}: {float(base[exp.target == c][0]):+.2f}" for c in CLASSES if (exp.target == c).any()))
    print(f"completeness: worst |delta| = {completeness['max_abs_delta']:.3g}, mean |delta| = "
          f"{completeness['mean_abs_delta']:.3g} (spread of f(x) - E[f(b)]: {completeness['spread_of_output_minus_base']:.3g})")
    print(f"\ncorrectly classified images per class: mean logit and the {min(args.top, 3)} pixels with the largest "
          f"mean attribution ({int(round(100 * grouped.level))}% intervals):")
    for c in CLASSES:
        g = grouped[_label(c)]
        if g.n == 0:
            print(f"  digit {c}: no rows")
            continue
        parts = []
        for feature, mean, low, high, _ in _common.group_rows(g, PIXELS, min(args.top, 3)):
            interval = f"[{low:+.2f}, {high:+.2f}]" if np.isfinite(low) else "(n = 1)"
            parts.append(f"{feature.replace('pixel ', '')} {mean:+.2f} {interval}")
        print(f"  digit {c}  n={g.n:<3d} f(x) {g.output_mean:+6.2f}   " + "   ".join(parts))

    summary = {
        "demo": "image", "framework": fw, "seed": args.seed, "epochs": args.epochs,
        "final_training_loss": losses[-1], "test_rows": len(y_test), "explained_rows": n,
        "accuracy": accuracy, "misclassified_explained": int(wrong.size),
        "background_rows": len(background_rows), "n_samples": args.n_samples, "sampler": exp.sampler,
        "base_values": {c: float(base[exp.target == c][0]) for c in CLASSES if (exp.target == c).any()},
        **completeness,
        "groups": {_label(c): {"n": grouped[_label(c)].n, "output_mean": grouped[_label(c)].output_mean} for c in CLASSES},
        "labels": labels.tolist(),
    }

    def report():
        rows = min(n, 16)
        _common.run_convergence(args, timer, summary, explainer, d["X_test"][:rows], target=y_pred[:rows],
                                progress=progress)
        with timer.stage("report"):
            background_logits = _models.predict(fw, model, d["X_train"][background_rows])
            return _write_report(args, exp, exp_true, wrong, grouped, y_test[:n], y_pred[:n], logits[:n],
                                 background_logits, summary)

    return _common.finish(args, timer, summary, report)


def _stack(parts: list[Explanation]) -> Explanation:
    """Explanations of the same model, one after the other (NumPy), for a figure; unlike
    Explanation.concat it keeps rows of repeated ids (here: one image under two targets)."""
    cat = lambda name: np.concatenate([np.asarray(getattr(e, name)) for e in parts], axis=0)  # noqa: E731
    return dataclasses.replace(parts[0], values=cat("values"), base_values=cat("base_values"), output=cat("output"),
                               delta=cat("delta"), stderr=cat("stderr"), data=cat("data"), target=cat("target"),
                               row_ids=cat("row_ids"))


def _base_value_figure(background_logits: np.ndarray, exp: Explanation):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.5, 3.6), layout="constrained")
    classes = np.arange(background_logits.shape[1])
    base = background_logits.mean(axis=0)
    target = np.asarray(exp.target)
    out = np.asarray(exp.output, dtype=np.float64)
    mean_out = np.array([out[target == c].mean() if (target == c).any() else np.nan for c in classes])
    ax.bar(classes - 0.2, base, width=0.4, color="#8c8c8c", label="base value E[f_c(b)] (background mean)")
    ax.bar(classes + 0.2, mean_out, width=0.4, color="#5e548e", label="mean f_c(x) over images predicted c")
    ax.axhline(0.0, color="#444444", lw=0.8)
    ax.set_xticks(classes, [str(c) for c in classes])
    finish_axes(ax, title="each image is explained from its class's base value to its logit",
                xlabel="class c (the logit explained)", ylabel="logit")
    return fig


def _write_report(args, exp, exp_true, wrong, grouped, y_true, y_pred, logits, background_logits, summary) -> Report:
    from gradshap import plots

    n = len(exp)
    rep = Report(args.out, f"gradshap demo: digits CNN explained ({args.framework})")
    rep.text(
        "A small convolutional network classifies scikit-learn's 8x8 handwritten digits. "
        "<code>gradshap.GradientExplainer</code> attributes each test image's predicted-class logit to its "
        f"64 pixels ({n} images explained, {summary['background_rows']} training images as background). "
        "Red pixels push towards the predicted class, blue ones away from it; the colour scale is centred at 0 "
        "and shared by the panels of a figure.", raw=True,
    )
    rep.table(None, _common.settings_rows(args, summary, "images")
              + [("image layout", "channel-first" if args.framework == "torch" else "channel-last")])

    rep.heading("Predictions", "predictions")
    rep.figure(confusion_figure(y_true, y_pred, [str(c) for c in CLASSES], title="explained test images"),
               "confusion", "Confusion matrix of the explained test images (rows: truth, columns: prediction).")

    rep.heading("What each class looks for", "classes")
    rep.figure(plots.image(grouped, input_cmap="gray_r", ncols=5), "class_means",
               "Per class, over the correctly classified images: the mean image (top) and the mean attribution "
               "to that class's logit (bottom).")
    examples = [int(np.flatnonzero((y_pred == c) & (y_true == c))[0]) for c in CLASSES if ((y_pred == c) & (y_true == c)).any()]
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    rep.figure(plots.image(exp, examples, titles=[f"{y_pred[r]} (p = {probs[r, y_pred[r]]:.2f})" for r in examples],
                           input_cmap="gray_r", ncols=5),
               "examples", "One correctly classified test image per class and its attribution to the predicted class.")

    rep.heading("Mistakes", "mistakes")
    if wrong.size:
        shown = wrong[:6]
        both = _stack([exp[shown], exp_true[: len(shown)]])
        titles = [f"called {y_pred[r]} (is {y_true[r]})" for r in shown] + [f"for {y_true[r]} (true)" for r in shown]
        rep.figure(plots.image(both, list(range(2 * len(shown))), titles=titles, input_cmap="gray_r", ncols=len(shown)),
                   "mistakes", "Misclassified images: the attribution to the class the model chose (upper pair of rows) "
                   "and to the true class (lower pair). Same colour scale.")
    else:
        rep.text("No explained image is misclassified.")

    rep.heading("Global view", "global")
    rep.figure(plots.image(dataclasses.replace(exp, values=np.abs(np.asarray(exp.values))), mean=True,
                           titles=["mean |attribution|"], input_cmap="gray_r"),
               "importance_map", "Mean |attribution| per pixel over all explained images (over the mean image).")
    rep.figure(plots.importance(exp, max_display=12), "importance",
               "The twelve pixels with the largest mean |attribution|, with 95% intervals.")
    rep.figure(plots.beeswarm(exp, max_display=12), "beeswarm",
               "Every image's attribution for those pixels, coloured by the pixel's ink.")
    row = examples[0] if examples else 0
    rep.figure(plots.waterfall(exp, row, max_display=12, title=f"test image {row}: predicted {y_pred[row]}, "
                               f"f(x) = {float(np.asarray(exp.output)[row]):+.3f}"),
               "waterfall", f"Waterfall of test image {row}: from its class's base value to its logit, pixel by pixel.")

    rep.heading("Base values and completeness", "checks")
    rep.figure(_base_value_figure(background_logits, exp), "base_value",
               "Each class's base value (its mean logit over the background images) and its mean logit over the "
               "images predicted as that class.")
    _common.report_checks(
        rep, exp, summary, what="image", data_note="",
        code='import gradshap\nfrom gradshap import plots\nexp = gradshap.Explanation.load("explanation.npz")\n'
             'plots.image(exp, [0, 1, 2], input_cmap="gray_r")')
    return rep
