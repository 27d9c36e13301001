"""The exam report: an HTML page with the histogram and the item table, and a CSV of scores.

Both are rendered from an ``exam.grade`` result, so the report job needs nothing but
its parent's result. The HTML is one self-contained file (inline CSS, the histogram
as inline SVG drawn by matplotlib) that opens from a folder, a Storage link or an
e-mail attachment alike. Templates are Jinja2 with autoescaping, so question texts,
student ids and titles from uploaded files can never inject markup.
"""

from __future__ import annotations

import csv
import io
import os
import re
import tempfile
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup

_TEMPLATES = Path(__file__).with_name("templates")

TYPE_NAMES = {
    "single_choice": "single choice",
    "multiple_response": "multiple response",
    "true_false": "true/false",
    "short_answer": "short answer",
    "numerical": "numerical",
    "matching": "matching",
    "essay": "essay",
}


@lru_cache(maxsize=1)
def _environment() -> Environment:
    environment = Environment(
        loader=FileSystemLoader(_TEMPLATES),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["num"] = _number
    environment.filters["pct"] = _percent
    environment.globals["type_names"] = TYPE_NAMES
    return environment


def render_html(
    result: dict[str, Any],
    *,
    title: str | None = None,
    generated_at: datetime | None = None,
) -> str:
    """The report page for a grading result."""
    generated = (generated_at or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M UTC")
    exam = result.get("exam") or {}
    flagged = [item for item in result["items"] if item.get("flag")]
    return (
        _environment()
        .get_template("report.html.j2")
        .render(
            title=title or exam.get("title") or "Exam report",
            exam=exam,
            summary=result["summary"],
            items=result["items"],
            flagged=flagged,
            rules=result.get("rules") or {},
            histogram=Markup(histogram_svg(result["distribution"])),
            generated_at=generated,
        )
    )


def render_scores_csv(result: dict[str, Any]) -> str:
    """One row per student: id, total, then the points of each gradable question.

    Every cell goes through ``_csv_safe``: item names and student ids come from
    uploaded files, and a spreadsheet opening the CSV must not run them as formulas.
    Rows end in CRLF, so the writer quotes a cell holding a bare CR too; with LF
    endings it would not, and a spreadsheet would start a new row at the CR, the
    rest of the cell unescaped.
    """
    items = [item["item"] for item in result["items"]]
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow([_csv_safe(cell) for cell in ("student", "total", *items)])
    for student in result["students"]:
        scores = student.get("scores") or []
        row = [student["student"], _number(student["total"]), *map(_number, scores)]
        writer.writerow([_csv_safe(cell) for cell in row])
    return buffer.getvalue()


def histogram_svg(distribution: dict[str, Any]) -> str:
    """The histogram of totals as an SVG document (no text from uploads goes into it)."""
    os.environ.setdefault(
        "MPLCONFIGDIR", os.path.join(tempfile.gettempdir(), "examq-matplotlib")
    )
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    bins = distribution["bins"]
    lows = [b["low"] for b in bins]
    widths = [b["high"] - b["low"] for b in bins]
    counts = [b["count"] for b in bins]

    with matplotlib.rc_context(
        {"svg.hashsalt": "examq", "svg.fonttype": "none", "font.size": 9}
    ):
        figure, axes = plt.subplots(figsize=(7.0, 2.8), dpi=100)
        try:
            axes.bar(
                lows,
                counts,
                width=widths,
                align="edge",
                color="#3b6ea5",
                edgecolor="white",
                linewidth=0.6,
            )
            if distribution.get("whole_points"):
                centres = [
                    low + width / 2 for low, width in zip(lows, widths, strict=True)
                ]
                step = max(1, len(centres) // 20)
                axes.set_xticks(centres[::step], [f"{c:g}" for c in centres[::step]])
            axes.set_xlabel("Total score")
            axes.set_ylabel("Students")
            axes.spines[["top", "right"]].set_visible(False)
            axes.yaxis.get_major_locator().set_params(integer=True)
            figure.tight_layout()
            buffer = io.StringIO()
            figure.savefig(buffer, format="svg", metadata={"Date": None})
        finally:
            plt.close(figure)
    svg = buffer.getvalue()
    # Inline SVG needs no XML prolog or DOCTYPE.
    return svg[svg.index("<svg") :]


def _number(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _percent(value: Any) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


# A cell a spreadsheet reads as a plain number: it cannot hold a formula, and a
# negative score must stay a number.
_PLAIN_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)


def _csv_safe(value: Any) -> str:
    """Keep a spreadsheet from running a cell as a formula (CSV injection).

    A cell that starts with ``= + - @``, a tab or a carriage return (after any
    spaces, which some spreadsheets skip) gets a leading apostrophe, unless it is
    a plain number.
    """
    text = str(value)
    if _PLAIN_NUMBER.fullmatch(text):
        return text
    starts_formula = text.lstrip(" ")[:1] in ("=", "+", "-", "@", "\t", "\r")
    return "'" + text if starts_formula else text
