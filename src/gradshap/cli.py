"""The ``gradshap`` command: ``gradshap demo``.

The speed benchmark is not a subcommand: it measures a source checkout against captum and
shap and writes next to ``benchmarks/RESULTS.md``, so it runs from a checkout as
``python benchmarks/bench.py`` (``pip install -e ".[bench,torch,jax]"`` first).
"""

from __future__ import annotations

import sys

__all__ = ["main"]

_USAGE = """usage: gradshap demo [options]

  demo    train a small model, explain it and write a report (gradshap demo --help)

The speed benchmark runs from a source checkout: python benchmarks/bench.py --help
"""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] != "demo":
        print(_USAGE, file=sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    from gradshap import _demo

    return int(_demo.main(argv[1:]) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
