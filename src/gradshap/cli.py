"""The ``gradshap`` command: ``gradshap demo`` and ``gradshap bench``."""

from __future__ import annotations

import sys
from pathlib import Path

__all__ = ["main"]


def _benchmarks_dir() -> Path:
    """The source checkout's benchmarks/ folder (bench runs from a checkout, not a wheel)."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        candidate = parent / "benchmarks"
        if (candidate / "bench.py").is_file():
            return candidate
    msg = "gradshap bench runs from a source checkout of gradshap (benchmarks/bench.py not found)"
    raise SystemExit(msg)


_USAGE = """usage: gradshap {demo,bench} [options]

  demo    train a small model, explain it and write a report (gradshap demo --help)
  bench   cross-framework speed and memory benchmark (gradshap bench --help)
"""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in ("demo", "bench"):
        print(_USAGE, file=sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    command, rest = argv[0], argv[1:]
    if command == "demo":
        from gradshap import _demo

        return int(_demo.main(rest) or 0)
    sys.path.insert(0, str(_benchmarks_dir()))
    import bench as bench_module  # benchmarks/bench.py

    return int(bench_module.main(rest) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
