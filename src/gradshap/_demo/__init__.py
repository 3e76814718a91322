"""``gradshap demo``: train a small model, explain it with gradshap, write an HTML report.

Three demos; the first two on PyTorch (default) or JAX (Flax NNX), the third on PyTorch:

- ``tabular`` (default): the MLP of the Gradient SHAP tutorial on scikit-learn's breast
  cancer data; attributions grouped by true/false positives/negatives with 95% intervals.
- ``image``: a small CNN on scikit-learn's 8x8 digits; attribution heatmaps per image,
  per class and for the mistakes.
- ``text``: a one-layer transformer on sentiment sentences generated in code; per-token
  attributions (:func:`gradshap.token_attributions`) coloured over the words, by group.

The datasets ship with scikit-learn or are generated: nothing is downloaded.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["main"]

_DEFAULTS = {"tabular": {"epochs": 20, "background": 100}, "image": {"epochs": 15, "background": 100},
             "text": {"epochs": 20, "background": 20}}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gradshap demo",
        description="Train a small model on data shipped with scikit-learn, explain it with "
        "gradshap.GradientExplainer, print a summary and write an HTML report with figures.",
    )
    p.add_argument("--demo", choices=("tabular", "image", "text"), default="tabular",
                   help="tabular: breast-cancer MLP (default); image: digits CNN; text: tiny transformer (torch)")
    p.add_argument("--framework", choices=("torch", "jax"), default="torch", help="default: torch")
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="report folder (default: ./gradshap-report/<demo>)")
    p.add_argument("--epochs", type=int, metavar="N", default=None,
                   help=f"training epochs (default: {_DEFAULTS['tabular']['epochs']} tabular, "
                        f"{_DEFAULTS['image']['epochs']} image, {_DEFAULTS['text']['epochs']} text)")
    p.add_argument("--n-explain", type=int, metavar="N", default=None, help="test rows to explain (default: all)")
    p.add_argument("--n-samples", type=int, metavar="N", default=200, help="gradient samples per row (default: 200)")
    p.add_argument("--background", type=int, metavar="N", default=None,
                   help="background rows from the training set (default: 100; text: 20 sentences per length)")
    p.add_argument("--seed", type=int, metavar="N", default=0, help="fixes the split, the training and the explanation (default: 0)")
    p.add_argument("--top", type=int, metavar="N", default=5, help="features printed per group (default: 5)")
    p.add_argument("--no-report", action="store_true", help="print the summary only; no figures or HTML")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    for name in ("epochs", "n_explain", "n_samples", "background", "top"):
        value = getattr(args, name)
        if value is not None and value < 1:
            print(f"gradshap demo: --{name.replace('_', '-')} must be a positive integer; got {value}", file=sys.stderr)
            return 2
    for name in ("epochs", "background"):
        if getattr(args, name) is None:
            setattr(args, name, _DEFAULTS[args.demo][name])
    if args.out is None:
        args.out = Path("gradshap-report") / args.demo
    if not args.no_report:
        try:  # before training: a bad --out is found in a second, not after the work
            args.out.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            print(f"gradshap demo: cannot write the report to --out {str(args.out)!r}: {err.strerror or err}",
                  file=sys.stderr)
            return 2
    if not args.no_report and "matplotlib.pyplot" not in sys.modules:
        from gradshap.backends import require

        require("matplotlib", "plots").use("Agg")  # files only: no window, works without a display
    if args.demo == "tabular":
        from gradshap._demo import _tabular as demo
    elif args.demo == "image":
        from gradshap._demo import _image as demo
    else:
        from gradshap._demo import _text as demo
    return int(demo.run(args) or 0)
