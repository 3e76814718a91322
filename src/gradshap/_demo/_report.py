"""A self-contained HTML report: one folder with index.html and the PNGs it shows."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

__all__ = ["Report", "confusion_figure", "finish_axes"]

_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; max-width: 1000px;
       margin: 2em auto; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { margin-top: 1.8em; border-bottom: 1px solid #ddd; }
figure { margin: 1.2em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.92em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.92em; }
td, th { border-bottom: 1px solid #e4e4e4; padding: 0.25em 0.8em; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
code, pre { background: #f6f6f6; border-radius: 3px; } pre { padding: 0.7em; overflow-x: auto; }
.muted { color: #666; }
"""


class Report:
    """Collects headings, text, tables and figures; :meth:`write` produces index.html."""

    def __init__(self, folder: str | Path, title: str):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.title = title
        self.parts: list[str] = []
        self.figures: list[str] = []
        self.files: list[str] = []

    def heading(self, text: str, anchor: str | None = None) -> None:
        ident = f' id="{html.escape(anchor)}"' if anchor else ""
        self.parts.append(f"<h2{ident}>{html.escape(text)}</h2>")

    def text(self, text: str, *, raw: bool = False) -> None:
        self.parts.append(f"<p>{text if raw else html.escape(text)}</p>")

    def html(self, fragment: str) -> None:
        """A fragment of HTML as it is (e.g. :func:`gradshap.plots.text_html`)."""
        self.parts.append(fragment)

    def code(self, text: str) -> None:
        self.parts.append(f"<pre><code>{html.escape(text)}</code></pre>")

    def table(self, header: Sequence[str] | None, rows: Sequence[Sequence[Any]]) -> None:
        """A table; ``header=None`` for a two-column list of settings and values."""
        head = "" if header is None else "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
        body = []
        for row in rows:
            cells = []
            for cell in row:
                numeric = isinstance(cell, (int, float, np.number)) and not isinstance(cell, bool)
                text = f"{cell:.4g}" if isinstance(cell, (float, np.floating)) else str(cell)
                cells.append(f'<td class="num">{html.escape(text)}</td>' if numeric else f"<td>{html.escape(text)}</td>")
            body.append("<tr>" + "".join(cells) + "</tr>")
        thead = f"<thead><tr>{head}</tr></thead>" if head else ""
        self.parts.append(f"<table>{thead}<tbody>{''.join(body)}</tbody></table>")

    def figure(self, fig, name: str, caption: str, *, dpi: int = 110) -> str:
        """Save ``fig`` (a Figure or Axes) as ``name``.png, close it, and show it here."""
        import matplotlib.pyplot as plt

        fig = getattr(fig, "figure", fig)
        filename = f"{name}.png"
        fig.savefig(self.folder / filename, dpi=dpi)
        plt.close(fig)
        self.figures.append(filename)
        alt = html.escape(caption.split(".")[0])
        self.parts.append(
            f'<figure><img src="{filename}" alt="{alt}"><figcaption>{html.escape(caption)}</figcaption></figure>'
        )
        return filename

    def link(self, filename: str, text: str) -> None:
        self.files.append(filename)
        self.parts.append(f'<p><a href="{html.escape(filename)}">{html.escape(text)}</a></p>')

    def write_json(self, name: str, payload: dict) -> str:
        (self.folder / name).write_text(json.dumps(payload, indent=2, default=_json_default) + "\n")
        return name

    def write(self) -> Path:
        page = (
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(self.title)}</title><style>{_CSS}</style></head><body>\n"
            f"<h1>{html.escape(self.title)}</h1>\n" + "\n".join(self.parts) + "\n</body></html>\n"
        )
        path = self.folder / "index.html"
        path.write_text(page, encoding="utf-8")
        return path


def _json_default(obj: Any):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def confusion_figure(y_true: np.ndarray, y_pred: np.ndarray, class_names: Sequence[str], *,
                     title: str, cell_labels: dict | None = None):
    """A confusion matrix with counts (rows: true class, columns: predicted class)."""
    import matplotlib.pyplot as plt

    k = len(class_names)
    counts = np.zeros((k, k), dtype=np.int64)
    np.add.at(counts, (np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)), 1)
    size = 4.2 if k <= 3 else 6.4
    fig, ax = plt.subplots(figsize=(size + 0.8, size), layout="constrained")
    image = ax.imshow(counts, cmap="Blues")
    for i in range(k):
        for j in range(k):
            dark = counts[i, j] > counts.max() * 0.55
            text = str(counts[i, j])
            if cell_labels and (i, j) in cell_labels:
                text = f"{cell_labels[(i, j)]}\n{text}"
            ax.text(j, i, text, ha="center", va="center", fontsize=11 if k <= 3 else 8,
                    color="white" if dark else "#222222")
    ax.set_xticks(range(k), class_names)
    ax.set_yticks(range(k), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    accuracy = np.trace(counts) / max(1, counts.sum())
    ax.set_title(f"{title}: accuracy {accuracy:.3f} on {counts.sum()} rows", fontsize=11)
    fig.colorbar(image, ax=ax, shrink=0.8, label="rows")
    return fig


def finish_axes(ax, *, title: str, xlabel: str, ylabel: str) -> None:
    """The demos' figure style: a left title, the legend outside on the right, no top/right frame."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title(title, loc="left", fontsize=11)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
