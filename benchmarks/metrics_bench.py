"""Deletion AUC for images of the CNN workload: gradshap.metrics batched against the same curve
computed row by row, and against Quantus' PixelFlipping, timed in one process.

Usage: ``python benchmarks/metrics_bench.py [--rows 100] [--steps 20] [--repeats 3] [--out DIR]``

Rows timed (torch, CPU, the workload's CNN 1x28x28 -> 10 classes, its target class):

- ``forward floor``: the model's forward pass over ``rows * (S + 1)`` images in chunks of
  gradshap's default batch size, no curve built: what any batched implementation pays;
- ``gradshap``: ``gradshap.metrics.deletion(model, x, attributions, background, steps=S)``,
  all ``rows * (S + 1)`` points through the adapter's forward pass in chunks of the default
  batch size;
- ``row-by-row``: the same curves (the same fill, order and steps, checked equal), one row
  and one step at a time, one forward pass of one image each, the way pixel-flipping
  metrics ran before they were batched (Quantus #96: 45 minutes where the user's own loop
  took 2);
- ``quantus``: ``quantus.PixelFlipping(features_in_step=k, perturb_baseline="mean")`` (its
  curves: ``return_auc_per_sample=True`` fails under the pinned numpy 2.4, which removed
  ``np.trapz``) at ``batch_size=rows``, where ``k`` divides the 784 pixels
  (28 here: 28 steps; Quantus needs ``k`` to divide the feature count, so 20 steps is not
  possible) and, beside it, ``gradshap`` at the same 28 steps. Quantus fills removed
  pixels with each image's own mean, gradshap with the background mean: same work, other
  values. Quantus also normalises the attributions (its default); the order is the same.

The rows are interleaved (round r runs each once) after a warm-up of each; the median of
``--repeats`` rounds is reported, and the ratios of medians. Outputs:
``metrics_bench.json`` and ``metrics_bench.md`` in ``--out`` (default ``benchmarks/results``).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import workloads  # noqa: E402


def _row_by_row(model, x, attributions, fill, target: int, steps: int) -> np.ndarray:
    """Deletion curves one row and one step at a time (fill: the background mean)."""
    import torch

    n, f = x.shape[0], int(np.prod(x.shape[1:]))
    order = np.argsort(-attributions.reshape(n, f), axis=1, kind="stable")
    flat_fill = fill.reshape(-1)
    curves = np.empty((n, steps + 1))
    with torch.no_grad():
        for r in range(n):
            row = x[r].reshape(-1)
            for k in range(steps + 1):
                point = row.clone()
                removed = torch.from_numpy(order[r, : (k * f) // steps])
                point[removed] = flat_fill[removed]
                curves[r, k] = float(model(point.reshape(1, *x.shape[1:]))[0, target])
    return curves


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    parser.add_argument("--no-quantus", action="store_true")
    args = parser.parse_args(argv)

    import torch

    import gradshap
    from gradshap import _tiling, metrics

    torch.set_num_threads(max(1, torch.get_num_threads()))
    work = workloads.get("cnn")
    model = work.build("torch")
    x_np, bg_np = work.data(args.rows)
    x, bg = torch.from_numpy(x_np), torch.from_numpy(bg_np)
    target = work.target
    exp = gradshap.GradientExplainer(model, bg)(x, target=target, n_samples=32, seed=0)
    attributions = exp.values.numpy()
    fill = bg.mean(dim=0)

    # The floor: the model's own forward pass over as many points, in chunks of the size
    # gradshap uses by default (the points' values do not change the cost).
    points = x.repeat_interleave(args.steps + 1, dim=0)
    chunk = _tiling.default_batch_size(int(np.prod(x_np.shape[1:])), device="cpu")

    def floor():
        with torch.no_grad():
            return [model(points[i : i + chunk]) for i in range(0, points.shape[0], chunk)]

    runs: dict[str, callable] = {
        "forward floor": floor,
        "gradshap": lambda: metrics.deletion(model, x, attributions, bg, target=target, steps=args.steps).outputs,
        "row-by-row": lambda: _row_by_row(model, x, attributions, fill, target, args.steps),
    }
    quantus_note = None
    if not args.no_quantus:
        try:
            import quantus
        except ImportError as err:
            quantus_note = f"not timed: {err}"
        else:
            k = 28
            q_steps = int(np.prod(x_np.shape[1:])) // k
            # return_auc_per_sample=True calls np.trapz, which numpy 2.4 (pinned here) no longer
            # has: the curves are timed, their areas (a negligible sum) are not.
            flip = quantus.PixelFlipping(features_in_step=k, perturb_baseline="mean", disable_warnings=True)
            y = np.full(args.rows, target)
            runs["quantus"] = lambda: np.asarray(flip(model=model, x_batch=x_np, y_batch=y, a_batch=attributions,
                                                      device="cpu", batch_size=args.rows))
            runs[f"gradshap-{q_steps}"] = lambda: metrics.deletion(model, x, attributions, bg, target=target,
                                                                   steps=q_steps).outputs
            quantus_note = f"quantus {quantus.__version__}, features_in_step={k} ({q_steps} steps)"

    # Same numbers first: the batched curves against the loop's.
    batched, looped = runs["gradshap"](), runs["row-by-row"]()
    max_diff = float(np.max(np.abs(batched - looped)))
    times: dict[str, list[float]] = {name: [] for name in runs}
    for fn in runs.values():  # warm-up
        fn()
    for _ in range(args.repeats):
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(t) for name, t in times.items()}
    ratios = {"row-by-row / gradshap": median["row-by-row"] / median["gradshap"],
              "gradshap / forward floor": median["gradshap"] / median["forward floor"]}
    if "quantus" in median:
        q = [n for n in median if n.startswith("gradshap-")][0]
        ratios[f"quantus / {q}"] = median["quantus"] / median[q]
    result = {
        "workload": work.title, "rows": args.rows, "steps": args.steps, "repeats": args.repeats,
        "seconds": times, "median_seconds": median, "ratios": ratios, "max_abs_difference_batched_vs_loop": max_diff,
        "quantus": quantus_note, "torch": torch.__version__, "threads": torch.get_num_threads(),
        "machine": platform.platform(),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics_bench.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"# Deletion AUC, {args.rows} images of the {work.title}, torch CPU", "",
             f"{args.repeats} interleaved rounds after a warm-up, median seconds; {torch.get_num_threads()} torch "
             "threads on a shared machine (other jobs ran beside it).", "",
             "| run | median s | per image ms |", "|---|---|---|"]
    lines += [f"| {name} | {m:.3f} | {1e3 * m / args.rows:.2f} |" for name, m in median.items()]
    lines += ["", *(f"- {k}: **{v:.1f}x**" for k, v in ratios.items()),
              f"- batched and row-by-row curves agree to {max_diff:.2g} (max abs difference)",
              f"- quantus: {quantus_note}", ""]
    (out / "metrics_bench.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
