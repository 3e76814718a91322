"""The README's fenced ``python`` code blocks, with what each one needs to run.

Used by tests/test_readme.py (every block runs) and tests/test_packaging.py (the torch
quickstart runs in a fresh virtual environment that installed the built wheel).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"

_FENCE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
#: Top-level modules a block may import, each with the framework it stands for.
_FRAMEWORKS = ("torch", "jax", "tensorflow", "keras", "flax", "equinox", "matplotlib", "shap")
#: Words that mark a block as needing a GPU: such a block is skipped on a machine without one.
_GPU_WORDS = ("cuda", "device=\"gpu\"", "jax.devices(\"gpu\")", "/GPU:")


@dataclass(frozen=True)
class Block:
    line: int  # 1-based line of the block's first code line in README.md
    code: str

    @property
    def needs(self) -> tuple[str, ...]:
        """The optional packages the block imports, in the order of :data:`_FRAMEWORKS`."""
        imported = set()
        for match in re.finditer(r"^\s*(?:import|from)\s+([\w., ]+)", self.code, re.M):
            for name in match.group(1).split(","):
                imported.add(name.strip().split(" ")[0].split(".")[0])
        return tuple(f for f in _FRAMEWORKS if f in imported)

    @property
    def needs_gpu(self) -> bool:
        return any(word in self.code for word in _GPU_WORDS)

    @property
    def name(self) -> str:
        return f"README.md:{self.line}[{'+'.join(self.needs) or 'numpy'}]"


def python_blocks(text: str | None = None) -> list[Block]:
    """Every fenced ``python`` block of the README (or of ``text``), in order."""
    text = README.read_text(encoding="utf-8") if text is None else text
    return [Block(text.count("\n", 0, m.start(1)) + 1, m.group(1)) for m in _FENCE.finditer(text)]
