"""The tabular demo: the Gradient SHAP tutorial's MLP on breast-cancer data, explained by group.

The positive class is *malignant* (scikit-learn codes it 0; we flip it so that 1 is
malignant), so TP are malignant tumours the model calls malignant. Attributions explain
the model's logit for malignant, in logit units: they sum to ``f(x) - E f(b)`` up to the
reported residual ``delta``.
"""

from __future__ import annotations

import dataclasses
import numpy as np

import gradshap
from gradshap._demo import _common, _metrics, _models
from gradshap._demo._report import Report, confusion_figure, finish_axes
from gradshap._groups import CONFUSION

GROUP_TEXT = {
    "TP": "malignant, called malignant",
    "TN": "benign, called benign",
    "FP": "benign, called malignant",
    "FN": "malignant, called benign",
}


def load(seed: int) -> dict:
    """Breast-cancer data, split 80/20 (stratified) and standardized with the training statistics."""
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    ds = load_breast_cancer()
    X = ds.data.astype(np.float32)
    y = (ds.target == 0).astype(np.int64)  # 1 = malignant
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.2, stratify=y, random_state=seed)
    mean, std = X_train.mean(axis=0), X_train.std(axis=0)
    return {
        "names": [str(n) for n in ds.feature_names],
        "X_train": ((X_train - mean) / std).astype(np.float32), "y_train": y_train,
        "X_test": ((X_test - mean) / std).astype(np.float32), "y_test": y_test,
        "X_test_raw": X_test, "n_rows": len(X), "n_positive": int(y.sum()),
    }


def run(args) -> int:
    _common.needs(args.framework, not args.no_report)
    timer = _common.Timer()
    progress = not args.no_progress
    fw = args.framework
    with timer.stage("data"):
        d = load(args.seed)
    names, n_features = d["names"], len(d["names"])
    print(f"gradshap demo: tabular, framework {fw}")
    print(f"data: breast cancer (scikit-learn), {d['n_rows']} rows x {n_features} features; "
          f"train {len(d['y_train'])}, test {len(d['y_test'])}; positive class = malignant "
          f"({d['n_positive']} of {d['n_rows']})")

    model, losses, logits = _common.train(args, d, kind="mlp", size=n_features, task="binary", timer=timer,
                                          progress=progress)
    logits = logits[:, 0]
    y_test, y_pred = d["y_test"], (logits > 0).astype(np.int64)
    accuracy = float((y_pred == y_test).mean())
    print(f"model: MLP {n_features}-64-64-1, ReLU, BatchNorm, dropout 0.5; Adam, {args.epochs} epochs, "
          f"final training loss {losses[-1]:.4f}")

    n, background_rows, explainer, exp = _common.explain_test_set(args, d, model, feature_names=names, timer=timer,
                                                                  progress=progress)
    # Show features in their original units (the model saw them standardized).
    exp = dataclasses.replace(exp, data=d["X_test_raw"][:n])
    labels = gradshap.confusion_labels(y_test[:n], y_pred[:n])
    grouped = exp.groupby(labels)
    base = float(np.mean(exp.base_values))
    completeness = _common.delta_summary(exp)
    counts = {g: int((labels == g).sum()) for g in CONFUSION}

    print(f"test accuracy {accuracy:.3f} on {len(y_test)} rows; explained {n}: "
          + "  ".join(f"{g} {counts[g]}" for g in CONFUSION))
    print(f"explanation: {len(background_rows)} background rows, {args.n_samples} samples per row, "
          f"sampler {exp.sampler!r}, seed {args.seed}; attributions explain the logit of 'malignant'")
    print(f"base value E[f(b)] = {base:+.4f} (probability {1 / (1 + np.exp(-base)):.3f})")
    print(f"completeness: worst |delta| = {completeness['max_abs_delta']:.3g}, mean |delta| = "
          f"{completeness['mean_abs_delta']:.3g} (spread of f(x) - E[f(b)]: {completeness['spread_of_output_minus_base']:.3g})")
    print(f"\nmean attribution of the top {args.top} features per group, with "
          f"{int(round(100 * grouped.level))}% intervals (mean +- 1.96 standard errors across the group's rows):")
    for g in CONFUSION:
        _common.print_group(g, grouped[g], names, args.top, GROUP_TEXT[g])

    summary = {
        "demo": "tabular", "framework": fw, "seed": args.seed, "epochs": args.epochs,
        "final_training_loss": losses[-1], "test_rows": len(y_test), "explained_rows": n,
        "accuracy": accuracy, "counts": counts, "background_rows": len(background_rows),
        "n_samples": args.n_samples, "sampler": exp.sampler, "base_value": base, **completeness,
        "groups": {
            g: {"n": grouped[g].n, "output_mean": grouped[g].output_mean,
                "top_features": [dict(zip(("feature", "mean", "low", "high", "stderr"), r))
                                 for r in _common.group_rows(grouped[g], names, args.top)]}
            for g in CONFUSION
        },
        "labels": labels.tolist(),
    }

    def report():
        _common.run_convergence(args, timer, summary, explainer, d["X_test"][:min(n, 40)], progress=progress)
        comparison = _metrics.compare(args, timer, summary, explainer, d["X_test"][:min(n, 40)])
        with timer.stage("report"):
            background_logits = _models.predict(fw, model, d["X_train"][background_rows])[:, 0]
            return _write_report(args, exp, grouped, labels, y_test, y_pred, logits, background_logits, summary,
                                 comparison)

    return _common.finish(args, timer, summary, report)


def _base_value_figure(background_logits, logits, labels, base):
    import matplotlib.pyplot as plt

    from gradshap.plots import _GROUP_COLORS

    fig, ax = plt.subplots(figsize=(8.5, 3.6), layout="constrained")
    everything = np.concatenate([background_logits, logits])
    bins = np.linspace(everything.min(), everything.max(), 41)
    ax.hist(background_logits, bins=bins, color="#bbbbbb", label=f"background rows (n={len(background_logits)})")
    present = [g for g in CONFUSION if (labels == g).any()][::-1]  # matplotlib lists stacked sets in reverse
    ax.hist([logits[labels == g] for g in present], bins=bins, stacked=True, histtype="step", linewidth=1.6,
            color=[_GROUP_COLORS[CONFUSION.index(g)] for g in present], label=[f"explained rows: {g}" for g in present])
    ax.axvline(base, color="#111111", lw=1.5, label=f"base value E[f(b)] = {base:+.3f}")
    ax.axvline(0.0, color="#d7263d", lw=1, ls=":", label="decision threshold (logit 0)")
    finish_axes(ax, title="the base value is the mean output over the background",
                xlabel="model output f (logit of malignant)", ylabel="rows")
    return fig


def _write_report(args, exp, grouped, labels, y_test, y_pred, logits, background_logits, summary,
                  comparison) -> Report:
    from gradshap import plots

    n = len(exp)
    rep = Report(args.out, f"gradshap demo: breast-cancer MLP explained ({args.framework})")
    rep.text(
        f"A multilayer perceptron ({len(exp.feature_names)}-64-64-1, ReLU, BatchNorm, dropout 0.5, as in the "
        "Gradient SHAP tutorial) classifies breast tumours as malignant or benign from 30 measurements "
        "(scikit-learn's breast-cancer data, standardized). <code>gradshap.GradientExplainer</code> attributes "
        f"the model's logit for <em>malignant</em> to the features, for each of the {n} test rows explained, "
        f"against {summary['background_rows']} background rows from the training set.", raw=True,
    )
    base = summary["base_value"]
    rep.table(None, _common.settings_rows(args, summary, "rows")
              + [("base value E[f(b)] (logit)", f"{base:+.4f}  (probability {1 / (1 + np.exp(-base)):.3f})")])
    rep.text(
        "How to read the numbers: attributions are in logit units and each row's attributions add up to "
        "f(x) − E[f(b)] up to the residual δ, which gradshap reports instead of hiding. A group's interval "
        "is its mean ± 1.96 standard errors across the group's rows (a normal approximation: with only a "
        "few rows in a group, read it as rough). Red pushes towards malignant, blue towards benign. δ shrinks as the samples per row grow "
        "(gradshap demo --n-samples; see the accuracy figure at the end)."
    )

    rep.heading("Predictions", "predictions")
    cells = {(1, 1): "TP", (0, 0): "TN", (0, 1): "FP", (1, 0): "FN"}
    rep.figure(confusion_figure(y_test, y_pred, ["benign", "malignant"], title="test set", cell_labels=cells),
               "confusion", "Confusion matrix on the test set (rows: truth, columns: prediction; positive = malignant).")

    rep.heading("Attributions by group: TP, TN, FP, FN", "groups")
    rep.figure(plots.bar(grouped, max_display=8), "groups",
               "Mean attribution of the eight features that matter most in any group, the groups side by side, "
               "with 95% intervals.")
    for g in CONFUSION:
        group = grouped[g]
        caption = f"{g} ({GROUP_TEXT[g]}), n = {group.n}: mean attribution per feature with 95% intervals."
        if group.n == 0:
            caption += " This group has no rows."
        elif group.n == 1:
            caption += " One row only: no interval."
        rep.figure(plots.bar(group, max_display=10), f"group_{g}", caption)
        if group.n:
            rep.table(("feature", "mean", "95% low", "95% high", "std. error"),
                      _common.group_rows(group, exp.feature_names, args.top))

    rep.heading("Global view", "global")
    rep.figure(plots.importance(exp, max_display=12), "importance",
               "Global importance: mean |attribution| over all explained rows, with 95% intervals.")
    rep.figure(plots.beeswarm(exp, max_display=12), "beeswarm",
               "Every row's attribution for the twelve most important features, coloured by the feature's "
               "value (original units, 5th to 95th percentile).")

    rep.heading("Single rows", "rows")
    rep.text("For the most confident row of each group: the steps from the base value to the row's output. "
             "Whiskers are each value's Monte Carlo 95% interval; the grey step is the completeness residual −δ.")
    for g in CONFUSION:
        rows = np.flatnonzero(labels == g)
        if rows.size == 0:
            continue
        sign = 1.0 if g in ("TP", "FP") else -1.0
        row = int(rows[np.argmax(sign * logits[:n][rows])])
        rep.figure(plots.waterfall(exp, row, max_display=10,
                                   title=f"{g}: test row {row}, f(x) = {exp.output[row]:+.3f}"),
                   f"waterfall_{g}", f"Waterfall of test row {row} ({g}: {GROUP_TEXT[g]}).")

    _metrics.section(rep, comparison, args.n_samples)

    rep.heading("Base value and completeness", "checks")
    rep.figure(_base_value_figure(background_logits, logits[:n], labels, summary["base_value"]), "base_value",
               "Model outputs over the background rows (grey) and the explained rows by group. The base value "
               "E[f(b)] is the background's mean output; every attribution is measured from it.")
    _common.report_checks(
        rep, exp, summary, what="row", data_note="; feature values in original units",
        code='import gradshap\nexp = gradshap.Explanation.load("explanation.npz")\n'
             'grouped = exp.groupby(labels)      # your own labels, one per row\n'
             'shap_exp = exp.to_shap()           # shap.plots.waterfall(shap_exp[0]) etc.')
    return rep
