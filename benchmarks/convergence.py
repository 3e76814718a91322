"""Accuracy per gradient evaluation: error against a converged reference vs budget.

For a tabular MLP (the seed-002 architecture, trained briefly on sklearn's breast-cancer
data) and a small CNN (trained briefly on sklearn's 8x8 digits), every sampler of gradshap,
captum's GradientShap and shap's GradientExplainer estimate Expected Gradients with
16..4096 gradient evaluations per row. The error of a row is
``||phi_hat - phi|| / ||phi||`` against ``phi`` from a 2048-point midpoint rule in alpha
for every background row, computed in float64 with plain PyTorch (not with gradshap);
the table reports its root mean square over rows and seeds. A second part times each
method at the budget where it reaches 1% error, and a third compares Expected Gradients
with exact interventional Shapley values.

    python benchmarks/convergence.py            # full study (about 6 minutes on 2 cores)
    python benchmarks/convergence.py --quick    # smoke run (seconds)

Writes ``convergence.json``, ``convergence.md`` and ``convergence.png`` to ``--out``
(default ``benchmarks/out``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

sys.path.insert(0, str(HERE))

import workloads as bench_workloads  # noqa: E402

import gradshap  # noqa: E402
from gradshap.reference import exact_shapley  # noqa: E402

SAMPLERS = ("iid", "balanced", "lattice", "sobol", "exhaustive")
BUDGETS = (16, 32, 64, 128, 200, 256, 512, 1024, 2048, 4096)
QUICK_BUDGETS = (16, 200)


# --------------------------------------------------------------------------- workloads


def _mlp_module():
    """The seed-002 tabular classifier of the speed benchmark (its fixed initial weights)."""
    return bench_workloads.mlp_torch(bench_workloads.mlp_weights())


def _cnn_module():
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10),
    )


def _train(model, x, y, loss_fn, epochs: int):
    import torch

    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(x.shape[0], generator=gen)
        for i in range(0, x.shape[0] - 1, 64):
            idx = perm[i : i + 64]
            opt.zero_grad()
            loss_fn(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


def workloads(quick: bool) -> list[dict]:
    import torch
    from sklearn.datasets import load_breast_cancer, load_digits
    from sklearn.model_selection import train_test_split

    out = []
    features, labels = load_breast_cancer(return_X_y=True)
    xtr, xte, ytr, _ = train_test_split(features, labels, test_size=0.25, random_state=0, stratify=labels)
    mu, sd = xtr.mean(0), xtr.std(0)
    xtr, xte = (xtr - mu) / sd, (xte - mu) / sd
    mlp = _train(_mlp_module(), torch.tensor(xtr, dtype=torch.float32), torch.tensor(ytr, dtype=torch.float32)[:, None],
                 torch.nn.functional.binary_cross_entropy_with_logits, epochs=3 if quick else 30)
    out.append({
        "name": "mlp", "title": "tabular MLP (breast cancer, 30 features, 100 background rows)",
        "model": mlp, "x": torch.tensor(xte[: (4 if quick else 16)], dtype=torch.float32),
        "background": torch.tensor(xtr[:100], dtype=torch.float32), "target": None,
    })
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None]
    itr, ite, ltr, _ = train_test_split(images, digits.target, test_size=0.25, random_state=0, stratify=digits.target)
    cnn = _train(_cnn_module(), torch.tensor(itr), torch.tensor(ltr), torch.nn.functional.cross_entropy,
                 epochs=1 if quick else 8)
    x = torch.tensor(ite[: (2 if quick else 8)])
    with torch.no_grad():
        target = cnn(x).argmax(1)
    out.append({
        "name": "cnn", "title": "small CNN (8x8 digits, 2 conv layers, 50 background rows)",
        "model": cnn, "x": x, "background": torch.tensor(itr[:50]), "target": target,
    })
    return out


# --------------------------------------------------------------------------- reference


def reference(work: dict, steps: int) -> tuple[np.ndarray, dict]:
    """Expected Gradients by a ``steps``-point midpoint rule for every background row, float64.

    Also the variance of one sample ``(x - b) * grad f(b + a (x - b))`` about the mean, and the
    part of it that the choice of background row explains, relative to ``||phi||^2``.
    """
    import copy

    import torch

    model = copy.deepcopy(work["model"]).double().eval()
    x, bg = work["x"].double(), work["background"].double()
    nb = bg.shape[0]
    alphas = (torch.arange(steps, dtype=torch.float64) + 0.5) / steps
    phis, total_var, baseline_var = [], [], []
    for r in range(x.shape[0]):
        diff = x[r : r + 1] - bg  # (nb, *F)
        per_row = torch.zeros_like(bg)  # sum over alphas, per background row
        squares = 0.0
        for a0 in range(0, steps, max(1, 16384 // nb)):
            a = alphas[a0 : a0 + max(1, 16384 // nb)]
            shape = (a.shape[0], 1) + (1,) * (x.dim() - 1)
            points = (bg[None] + a.reshape(shape) * diff[None]).reshape(-1, *x.shape[1:]).requires_grad_(True)
            out = model(points)
            out = out[:, 0] if work["target"] is None else out[:, int(work["target"][r])]
            (grad,) = torch.autograd.grad(out.sum(), points)
            g = grad.reshape(a.shape[0], nb, *x.shape[1:]) * diff[None]
            per_row += g.sum(0)
            squares += float((g**2).sum())
        ig = per_row / steps  # the path integral from each background row
        phi = ig.mean(0)
        norm2 = float((phi**2).sum())
        total_var.append((squares / (steps * nb) - norm2) / norm2)
        baseline_var.append((float((ig**2).sum()) / nb - norm2) / norm2)
        phis.append(phi.numpy())
    decomposition = {"relative_variance_per_sample": float(np.mean(total_var)),
                     "explained_by_background_row": float(np.mean(baseline_var))}
    return np.stack(phis), decomposition


# --------------------------------------------------------------------------- methods


def _gradshap(sampler: str):
    def run(work, n, seed):
        explainer = gradshap.GradientExplainer(work["model"], work["background"])
        exp = explainer(work["x"], target=work["target"], n_samples=n, sampler=sampler, seed=seed)
        return exp.values.numpy(), exp.stderr.numpy()

    return run


def _captum(work, n, seed):
    import torch
    from captum.attr import GradientShap

    # captum draws baselines with torch's global generator and alphas with NumPy's: seed both,
    # and put them back afterwards.
    torch_state, numpy_state = torch.random.get_rng_state(), np.random.get_state()
    torch.manual_seed(seed)
    np.random.seed(seed)
    target = 0 if work["target"] is None else work["target"]
    try:
        attr = GradientShap(work["model"]).attribute(work["x"], baselines=work["background"], n_samples=n,
                                                     stdevs=0.0, target=target)
    finally:
        torch.random.set_rng_state(torch_state)
        np.random.set_state(numpy_state)
    return attr.detach().numpy()


def _shap(work, n, seed):
    import shap

    explainer = shap.GradientExplainer(work["model"], work["background"], batch_size=512)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if work["target"] is None:
            values = explainer.shap_values(work["x"], nsamples=n, rseed=seed)
        else:
            values, _ = explainer.shap_values(work["x"], nsamples=n, rseed=seed, ranked_outputs=1)
    values = np.asarray(values)
    return values.reshape(work["x"].shape)


METHODS = {f"gradshap {s}": _gradshap(s) for s in SAMPLERS}
METHODS.update({"captum GradientShap": _captum, "shap GradientExplainer": _shap})


def relative_errors(estimate: np.ndarray, ref: np.ndarray) -> np.ndarray:
    n = ref.shape[0]
    diff = (estimate.reshape(n, -1) - ref.reshape(n, -1))
    return np.linalg.norm(diff, axis=1) / np.linalg.norm(ref.reshape(n, -1), axis=1)


def study(work: dict, ref: np.ndarray, budgets, seeds: int, shap_max: int) -> dict:
    nb = work["background"].shape[0]
    rows = {}
    for name, fn in METHODS.items():
        curve = {}
        for requested in budgets:
            n = requested
            if name.endswith("exhaustive"):
                # It uses m |B| samples, m = n // |B|: plot it at the budget it used.
                n = (n // nb) * nb
                if n == 0 or n in curve:
                    continue
            if name.startswith("shap") and n > shap_max:
                continue
            deterministic = name.endswith("exhaustive")
            errs, times, dev, se = [], [], [], []
            for seed in range(1 if deterministic else seeds):
                t0 = time.perf_counter()
                est = fn(work, n, seed)
                times.append(time.perf_counter() - t0)
                if isinstance(est, tuple):  # gradshap: also its standard errors
                    est, stderr = est
                    dev.append(est - ref)
                    se.append(stderr)
                errs.append(relative_errors(est, ref))
            curve[n] = {"error": float(np.sqrt(np.mean(np.square(errs)))), "seconds": float(np.median(times)),
                        "requested": requested}
            if se:
                dev, se = np.array(dev), np.array(se)
                # Observed error over reported standard error (1 is honest), and the share of values
                # within 1.96 reported standard errors of the reference (0.95 is honest).
                curve[n]["stderr_ratio"] = float(np.sqrt(np.sum(dev**2) / np.sum(se**2)))
                curve[n]["coverage"] = float(np.mean(np.abs(dev) <= 1.96 * se))
        rows[name] = curve
        print(f"  {name:24s} " + " ".join(f"{n}:{c['error']:.4f}" for n, c in curve.items()), flush=True)
    return rows


def budget_for(curve: dict, target: float) -> float | None:
    """Gradient evaluations per row at which ``curve`` reaches ``target`` (log-log interpolation)."""
    pts = sorted((n, c["error"]) for n, c in curve.items())
    for (n0, e0), (n1, e1) in zip(pts, pts[1:]):
        if e0 > target >= e1:
            t = (math.log(e0) - math.log(target)) / (math.log(e0) - math.log(e1))
            return math.exp(math.log(n0) + t * (math.log(n1) - math.log(n0)))
    if pts and pts[0][1] <= target:
        return float(pts[0][0])
    # Not reached: extrapolate the least-squares line through the budgets from 256 on.
    tail = [(n, e) for n, e in pts if n >= 256] or pts[-2:]
    slope, intercept = np.polyfit(np.log([n for n, _ in tail]), np.log([e for _, e in tail]), 1)
    if slope >= 0:
        return None
    return float(math.exp((math.log(target) - intercept) / slope))


def time_to_target(work: dict, ref: np.ndarray, curves: dict, target: float, names: list[str],
                   repeats: int = 5) -> dict:
    """Wall time of each method at the budget where its error curve crosses ``target``.

    Methods are timed in turns, ``repeats`` rounds, keeping each one's best time, so that
    load from other processes on the machine hits them alike.
    """
    budgets = {}
    for name in names:
        n = budget_for(curves[name], target)
        if n is not None:
            budgets[name] = int(math.ceil(n))
    best = {name: math.inf for name in budgets}
    errors = {}
    for _ in range(repeats):
        for name, n in budgets.items():
            t0 = time.perf_counter()
            est = METHODS[name](work, n, 0)
            est = est[0] if isinstance(est, tuple) else est
            best[name] = min(best[name], time.perf_counter() - t0)
            errors[name] = float(np.sqrt(np.mean(relative_errors(est, ref) ** 2)))
    out = {}
    for name, n in budgets.items():
        out[name] = {"n_samples": n, "seconds": best[name], "error": errors[name]}
        print(f"  {name:24s} 1%: n={n:6d}  {best[name]:7.3f} s  (error at that budget, one seed: {errors[name]:.4f})",
              flush=True)
    return out


# --------------------------------------------------------------------------- EG vs SHAP


def eg_vs_shap(quick: bool) -> list[dict]:
    """Distance between converged Expected Gradients and exact interventional Shapley values."""
    rng = np.random.default_rng(0)
    d = 8
    bg, x = rng.normal(size=(20, d)), rng.normal(size=(6, d))
    w = rng.normal(size=d)
    h = rng.normal(size=(16, d)) / np.sqrt(d)
    c, v = rng.normal(size=16) * 0.3, rng.normal(size=16) / 4.0

    def relu_net(p):
        z = p @ h.T + c
        return np.maximum(z, 0) @ v, ((z > 0) * v) @ h

    models = {
        "linear": lambda p: (p @ w, np.broadcast_to(w, p.shape)),
        "additive (sum of sin)": lambda p: (np.sin(p) @ w, np.cos(p) * w),
        "multilinear (x0 x1 x2 + x3 x4 + x5 x6 x7)": lambda p: (
            p[:, 0] * p[:, 1] * p[:, 2] + p[:, 3] * p[:, 4] + p[:, 5] * p[:, 6] * p[:, 7],
            np.stack([p[:, 1] * p[:, 2], p[:, 0] * p[:, 2], p[:, 0] * p[:, 1], p[:, 4], p[:, 3],
                      p[:, 6] * p[:, 7], p[:, 5] * p[:, 7], p[:, 5] * p[:, 6]], axis=1)),
        "quadratic interaction (x0^2 x1 + x2^2 x3)": lambda p: (
            p[:, 0] ** 2 * p[:, 1] + p[:, 2] ** 2 * p[:, 3],
            np.stack([2 * p[:, 0] * p[:, 1], p[:, 0] ** 2, 2 * p[:, 2] * p[:, 3], p[:, 2] ** 2]
                     + [np.zeros(p.shape[0])] * 4, axis=1)),
        "ReLU network (8-16-1)": relu_net,
    }
    rows = []
    m = 8 if quick else 64
    for name, vg in models.items():
        eg = gradshap.expected_gradients(vg, x, bg, n_samples=bg.shape[0] * m, sampler="exhaustive").values
        sv = exact_shapley(lambda p, vg=vg: vg(p)[0], x, bg).values
        rel = float(np.sqrt(np.mean(relative_errors(eg, sv) ** 2)))
        rows.append({"model": name, "relative_distance": rel})
        print(f"  {name:45s} ||EG - SHAP|| / ||SHAP|| = {rel:.2e}", flush=True)
    return rows


def eg_vs_shap_mlp(work: dict, ref: np.ndarray) -> dict:
    """The study's MLP: Expected Gradients summed over 10 groups of 3 features vs group Shapley values."""
    import torch

    model = work["model"]
    groups = [list(range(3 * g, 3 * g + 3)) for g in range(10)]

    def f(p):
        with torch.no_grad():
            return model(p)[:, 0]

    sv = exact_shapley(f, work["x"], work["background"], groups=groups).values.numpy()
    eg = ref.reshape(ref.shape[0], 10, 3).sum(-1)
    rel = float(np.sqrt(np.mean(relative_errors(eg, sv) ** 2)))
    print(f"  breast-cancer MLP, 10 groups of 3 features: ||EG - SHAP|| / ||SHAP|| = {rel:.3f}", flush=True)
    return {"model": "breast-cancer MLP (10 groups of 3 features)", "relative_distance": rel}


# --------------------------------------------------------------------------- output


def fit_slope(curve: dict, lo: int, hi: int) -> float:
    pts = [(n, c["error"]) for n, c in curve.items() if lo <= n <= hi]
    if len(pts) < 2:
        return float("nan")
    ln = np.log([p[0] for p in pts])
    le = np.log([p[1] for p in pts])
    return float(np.polyfit(ln, le, 1)[0])


def markdown(result: dict) -> str:
    lines = [
        "# Convergence study", "",
        f"Command: `{result['command']}`. Machine: {result['machine']}. Total time {result['seconds']:.0f} s.", "",
        "Relative L2 error of the attributions (root mean square over rows and seeds) against a",
        f"{result['reference_steps']}-point-per-background-row midpoint reference in float64 (plain PyTorch),",
        "by gradient evaluations per row. Models in float32, trained briefly with Adam and fixed seeds",
        f"({result['training']}).", "",
    ]
    for name, work in result["workloads"].items():
        curves = work["curves"]
        budgets = sorted({c["requested"] for curve in curves.values() for c in curve.values()})
        lines += [f"## {work['title']}", "", f"{work['n_rows']} rows explained, {work['seeds']} seeds per cell.", "",
                  "| method | " + " | ".join(str(n) for n in budgets) + " | slope |",
                  "|---|" + "---:|" * (len(budgets) + 1)]
        for method, curve in curves.items():
            by_budget = {c["requested"]: c for c in curve.values()}
            cells = [f"{by_budget[n]['error']:.4f}" if n in by_budget else "" for n in budgets]
            lines.append(f"| {method} | " + " | ".join(cells) + f" | {fit_slope(curve, 256, 4096):.2f} |")
        var = work["variance"]
        lines += ["", "Slope: least-squares log-log slope of error vs budget over 256..4096. `exhaustive` "
                  "uses m |B| samples, m = floor(n / |B|), and appears in the column of its first budget "
                  "with that m (the rest of its cells are left empty).", "",
                  f"Variance of one sample about the mean, relative to ||phi||^2: {var['relative_variance_per_sample']:.3f}; "
                  f"the choice of background row explains {var['explained_by_background_row']:.3f} of it "
                  f"({var['explained_by_background_row'] / var['relative_variance_per_sample']:.0%}), alpha the rest.", "",
                  "Standard errors of gradshap: observed RMS error / RMS reported stderr (1 = honest, < 1 = "
                  "conservative), and the share of values within 1.96 stderr of the reference (0.95 = honest):", "",
                  "| sampler | " + " | ".join(f"{n} ratio | {n} coverage" for n in (200, 1024)) + " |",
                  "|---|" + "---:|" * 4]
        for method, curve in curves.items():
            by_budget = {c["requested"]: c for c in curve.values()}
            if method.startswith("gradshap") and all("stderr_ratio" in by_budget.get(n, {}) for n in (200, 1024)):
                cells = [f"{by_budget[n]['stderr_ratio']:.2f} | {by_budget[n]['coverage']:.3f}" for n in (200, 1024)]
                lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
        if work.get("time_to_1pct"):
            lines += ["Wall time to 1% error (budget read off the curve, then timed: methods in turns, best of 5):", "",
                      "| method | samples per row | seconds | error at that budget |", "|---|---:|---:|---:|"]
            for method, t in work["time_to_1pct"].items():
                lines.append(f"| {method} | {t['n_samples']} | {t['seconds']:.3f} | {t['error']:.4f} |")
            lines.append("")
    lines += ["## Expected Gradients vs exact interventional Shapley values", "",
              "| model | relative L2 distance |", "|---|---:|"]
    for row in result["eg_vs_shap"]:
        lines.append(f"| {row['model']} | {row['relative_distance']:.2e} |")
    lines.append("")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    works = result["workloads"]
    fig, axes = plt.subplots(1, len(works), figsize=(6.2 * len(works), 4.6), squeeze=False)
    styles = {"gradshap lattice": ("C3", "-", "o"), "gradshap balanced": ("C1", "-", "s"),
              "gradshap iid": ("C0", "-", "^"), "gradshap sobol": ("C4", "-", "D"),
              "gradshap exhaustive": ("C2", "-", "v"), "captum GradientShap": ("k", "--", "x"),
              "shap GradientExplainer": ("0.5", ":", "+")}
    for ax, (name, work) in zip(axes[0], works.items()):
        for method, curve in work["curves"].items():
            ns = sorted(curve)
            color, ls, marker = styles.get(method, ("C5", "-", "."))
            label = method + (" (auto)" if method == "gradshap lattice" else "")
            ax.loglog(ns, [curve[n]["error"] for n in ns], ls, color=color, marker=marker, ms=4, label=label)
        ax.axhline(0.01, color="0.8", lw=0.8)
        ax.set_title(work["title"], fontsize=9)
        ax.set_xlabel("gradient evaluations per row")
        ax.set_ylabel("relative L2 error")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny smoke run")
    parser.add_argument("--out", type=Path, default=HERE / "out")
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads for every method (1: timings robust to other load on the machine)")
    args = parser.parse_args(argv)
    quick = args.quick
    seeds = args.seeds or (1 if quick else 3)
    budgets = QUICK_BUDGETS if quick else BUDGETS
    steps = 64 if quick else 2048
    t_start = time.perf_counter()
    import platform

    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)

    result = {"command": "python benchmarks/convergence.py" + (" --quick" if quick else ""),
              "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
                         f"torch {torch.__version__}",
              "workloads": {}, "reference_steps": steps,
              "training": "MLP 3 epochs, CNN 1 epoch" if quick else "MLP 30 epochs, CNN 8 epochs"}
    for work in workloads(quick):
        print(f"{work['title']}: reference ({steps} alphas per background row)", flush=True)
        ref, decomposition = reference(work, steps)
        print(f"  per-sample variance / ||phi||^2 = {decomposition['relative_variance_per_sample']:.3f}, "
              f"of which the background row explains {decomposition['explained_by_background_row']:.3f}", flush=True)
        curves = study(work, ref, budgets, seeds, shap_max=256 if quick else 1024)
        entry = {"title": work["title"], "n_rows": int(work["x"].shape[0]), "seeds": seeds, "curves": curves,
                 "variance": decomposition}
        if not quick:
            names = ["gradshap lattice", "gradshap balanced", "gradshap iid", "captum GradientShap"]
            entry["time_to_1pct"] = time_to_target(work, ref, curves, 0.01, names)
        if work["name"] == "mlp":
            entry["eg_vs_shap_mlp"] = eg_vs_shap_mlp(work, ref)
        result["workloads"][work["name"]] = entry
    print("Expected Gradients vs exact Shapley values", flush=True)
    result["eg_vs_shap"] = eg_vs_shap(quick) + [result["workloads"]["mlp"]["eg_vs_shap_mlp"]]
    result["seconds"] = time.perf_counter() - t_start
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "convergence.json").write_text(json.dumps(result, indent=1))
    (args.out / "convergence.md").write_text(markdown(result))
    plot(result, args.out / "convergence.png")
    print(f"wrote {args.out / 'convergence.md'}, .json and .png in {result['seconds']:.0f} s", flush=True)
    torch.set_num_threads(threads)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
