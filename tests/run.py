"""Run the whole suite: the main pytest process, then one process per Keras backend.

The main process deselects the Keras tests (``tests/test_keras_*.py``, marked
``keras_backend``): Keras picks its backend once per process, so they run again in one
process per backend with ``KERAS_BACKEND`` set. (Plain ``pytest`` collects them too, on the
default backend.)

Exits non-zero if any run fails, and also if a run collected no test (pytest's exit code 5),
or if no Keras test file is found, so that a filtered or broken run never looks like a pass.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KERAS_BACKENDS = ("tensorflow", "jax", "torch")


def _pytest(args: list[str], env: dict | None = None) -> int:
    cmd = [sys.executable, "-m", "pytest", *args]
    print("+", " ".join(cmd), flush=True)
    code = subprocess.call(cmd, cwd=ROOT, env={**os.environ, **(env or {})})
    if code == 5:
        print("pytest collected no test: treated as a failure", flush=True)
        return 1
    return code


def main(argv: list[str]) -> int:
    failures = 0
    failures += _pytest(["tests", "-m", "not keras_backend", *argv]) != 0
    keras_tests = sorted((ROOT / "tests").glob("test_keras_*.py"))
    if not keras_tests:
        print("no tests/test_keras_*.py found: treated as a failure", flush=True)
        failures += 1
    else:
        for backend in KERAS_BACKENDS:
            failures += _pytest(
                [*(str(p.relative_to(ROOT)) for p in keras_tests), "-p", "no:cacheprovider", *argv],
                env={"KERAS_BACKEND": backend},
            ) != 0
    print("all test runs passed" if failures == 0 else f"{failures} test run(s) failed", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
