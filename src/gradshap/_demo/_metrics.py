"""The demo report's comparison of samplers and Integrated Gradients with :mod:`gradshap.metrics`."""

from __future__ import annotations

import json
from typing import Any

import gradshap
from gradshap import metrics
from gradshap._demo import _models

__all__ = ["compare", "section"]

SAMPLERS = ("lattice", "iid", "sobol")


def compare(args, timer, summary: dict, explainer, x, *, target: Any = None):
    """Each sampler at ``--n-samples`` and Integrated Gradients (from the background mean, as
    many steps) on the rows ``x``: deletion and insertion AUC, infidelity, and the error against
    a converged Expected Gradients (the exhaustive rule, 16 nodes per background row)."""
    with timer.stage("metrics"):
        fw, n_samples, seed = args.framework, args.n_samples, args.seed
        rows = _models.to_framework(fw, x)
        background = explainer.background
        ig = gradshap.IntegratedGradients(explainer.model, _mean(background))
        methods = {s: (lambda z, s=s: explainer(z, target=target, n_samples=n_samples, sampler=s, seed=seed))
                   for s in SAMPLERS}
        methods["integrated gradients"] = lambda z: ig(z, target=target, n_steps=n_samples)
        converged = explainer(rows, target=target, n_samples=16 * len(background), sampler="exhaustive")
        result = metrics.compare(methods, explainer.model, rows, background, target=target, reference=converged,
                                 metrics=("deletion", "insertion", "infidelity", "error"), seed=seed)
        summary["metrics"] = json.loads(result.to_json())
    return result


def _mean(background):
    import array_api_compat as aac

    return aac.array_namespace(background).mean(background, axis=0, keepdims=True)


def section(rep, result, n_samples: int) -> None:
    from gradshap import plots

    rep.heading("Comparing samplers and Integrated Gradients", "metrics")
    rep.text(
        f"The same {result.n} rows explained by each sampler of Expected Gradients at {n_samples} samples per row "
        f"and by Integrated Gradients from the background's mean ({n_samples} Gauss-Legendre steps), scored with "
        "gradshap.metrics on the same fills and perturbations: the deletion and insertion areas (Petsiuk et al., "
        "2018; features replaced by the background mean), infidelity (Yeh et al., 2019; normalised, a random half "
        "of the features taken from a background row), and the error against a converged Expected Gradients with "
        "its calibration ratio (about 1 when the reported standard errors are right). Integrated Gradients from "
        "one baseline estimates another quantity: its error against Expected Gradients is not Monte Carlo noise."
    )
    names = [s.name for s in result.scores[result.methods[0]]]
    rows = []
    for method, scores in result.scores.items():
        rows.append([method, *(f"{s.mean:.4g} ± {1.96 * s.stderr:.2g}" for s in scores),
                     f"{1e3 * result.seconds_per_row[method]:.3g}"])
    rep.table(["method", *names, "ms per row"], rows)
    rep.figure(plots.comparison(result), "metrics",
               "Each method's mean score with its 95% interval over the rows (the spread between rows; "
               "differences between methods on the same rows are known more precisely).")
