"""Checks of the built site that Sphinx's -W cannot make (``make docs`` runs it after the
build): every public name has its API entry, every executed page shows the output of each
of its code cells, and the figures of the plotting page are in the page.

Usage: ``python docs/check_build.py [docs/_build/html]``; exits 1 with a list of problems.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

import gradshap  # noqa: E402
import gradshap.plots  # noqa: E402
import gradshap.reference  # noqa: E402

#: Names of ``gradshap.__all__`` documented in the text of api/index.md, not as pages.
_IN_TEXT = {"SAMPLERS", "__version__", "plots", "reference"}


def api_problems(html: Path) -> list[str]:
    problems = []
    for name in sorted(set(gradshap.__all__) - _IN_TEXT):
        if not (html / "api" / "generated" / f"gradshap.{name}.html").is_file():
            problems.append(f"no API page for gradshap.{name}")
    for module in (gradshap.plots, gradshap.reference):
        page = html / "api" / "generated" / f"{module.__name__}.html"
        text = page.read_text(encoding="utf-8") if page.is_file() else ""
        problems += [f"{module.__name__}.{name} is not documented in {page.name}"
                     for name in module.__all__ if f'id="{module.__name__}.{name}"' not in text]
    index = (HERE / "api" / "index.md").read_text(encoding="utf-8")
    problems += [f"gradshap.{name} is not described in api/index.md" for name in sorted(_IN_TEXT)
                 if f"gradshap.{name}" not in index and name not in ("plots", "reference")]
    return problems


def execution_problems(html: Path) -> list[str]:
    problems = []
    for source in sorted(HERE.rglob("*.md")):
        if "_build" in source.parts or "file_format: mystnb" not in source.read_text(encoding="utf-8"):
            continue
        n_cells = source.read_text(encoding="utf-8").count("```{code-cell}")
        page = html / source.relative_to(HERE).with_suffix(".html")
        text = page.read_text(encoding="utf-8")
        n_outputs = len(re.findall(r'class="cell_output', text))
        if n_outputs < n_cells:
            problems.append(f"{page.relative_to(html)}: {n_outputs} outputs for {n_cells} code cells")
    plots = (html / "guide" / "plots.html").read_text(encoding="utf-8")
    n_images = len(re.findall(r"<img [^>]*src=\"[^\"]+\.png\"", plots))
    if n_images < 4:
        problems.append(f"guide/plots.html shows {n_images} figures, expected 4")
    return problems


def main(argv: list[str]) -> int:
    html = Path(argv[0]) if argv else HERE / "_build" / "html"
    problems = api_problems(html) + execution_problems(html)
    for problem in problems:
        print("docs check:", problem, file=sys.stderr)
    print(f"docs check: {'ok' if not problems else f'{len(problems)} problem(s)'}")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
