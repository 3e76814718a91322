"""Every ``python`` code block of the README runs as written, each in a fresh process.

A block runs in its own interpreter (Keras picks its backend once per process, and the
blocks must not lean on each other's imports) from an empty folder, with this checkout's
``src`` first on the path. A block that names a GPU is skipped on a machine without one.
A block whose framework is missing is skipped locally and fails under CI (import_or_fail).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import import_or_fail
from readme import ROOT, python_blocks

BLOCKS = python_blocks()


def test_the_readme_has_a_block_per_framework():
    needs = {need for block in BLOCKS for need in block.needs}
    assert {"torch", "jax", "keras", "tensorflow"} <= needs, [b.name for b in BLOCKS]


def test_blocks_are_found_with_their_lines():
    text = "intro\n\n```python\nx = 1\n```\n\ntext\n```python\nimport torch, gradshap\n```\n"
    blocks = [(b.line, b.code, b.needs) for b in python_blocks(text)]
    assert blocks == [(4, "x = 1\n", ()), (9, "import torch, gradshap\n", ("torch",))]


def _has_gpu() -> bool:
    code = "import torch; raise SystemExit(0 if torch.cuda.is_available() else 1)"
    return subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


@pytest.mark.parametrize("block", BLOCKS, ids=[b.name for b in BLOCKS])
def test_readme_block_runs(block, tmp_path):
    if block.needs_gpu and not _has_gpu():
        pytest.skip(f"{block.name} needs a GPU and this machine has none")
    for module in block.needs:
        import_or_fail(module)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    env.pop("JAX_ENABLE_X64", None)  # as a user runs it: JAX at its float32 default
    done = subprocess.run([sys.executable, "-c", block.code], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{block.name} failed:\n{block.code}\n{done.stderr[-3000:]}"
