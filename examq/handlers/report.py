"""The ``exam.report`` handler: render a graded exam's report and store it.

The payload carries the grading result as ``grade_result``, or, in the exam chain,
as ``parent_result`` (the ``exam.grade`` step's result); ``title`` is optional. The
HTML report and the scores CSV are stored under ``<owner>/<job id>/`` in the reports
folder or bucket (``examq.exam.storage``). The result holds their links, the
headline figures and the flagged items, which is what a notification or the
dashboard shows.
"""

from __future__ import annotations

from typing import Any

from examq.errors import PermanentError
from examq.exam.grading import job_owner
from examq.exam.report import render_html, render_scores_csv
from examq.exam.settings import load_exam_settings
from examq.exam.storage import store_report
from examq.handlers import JobContext

_REQUIRED = ("summary", "items", "distribution", "students")


def report_exam(payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """Render and store the report; returns its links, summary and flagged items.

    Raises PermanentError when the payload holds no grading result, and
    RetryableError when Storage cannot store the files.
    """
    result = payload.get("grade_result", payload.get("parent_result"))
    if not isinstance(result, dict) or any(key not in result for key in _REQUIRED):
        raise PermanentError(
            "exam.report: the payload needs a grading result with an exam model's item table"
            " (grade_result, or parent_result from exam.grade)"
        )

    ctx.report_progress(10, "rendering the report")
    title = payload.get("title") or (result.get("exam") or {}).get("title")
    html = render_html(result, title=title)
    scores = render_scores_csv(result)

    ctx.report_progress(60, "storing the report")
    prefix = f"{job_owner(ctx) or 'system'}/{ctx.job_id}"
    files = store_report(
        load_exam_settings(),
        prefix,
        {
            "report.html": (html.encode("utf-8"), "text/html; charset=utf-8"),
            "scores.csv": (scores.encode("utf-8"), "text/csv; charset=utf-8"),
        },
    )

    ctx.report_progress(100, "report stored")
    summary = result["summary"]
    return {
        "title": title,
        "links": {
            "html": files["report.html"]["url"],
            "csv": files["scores.csv"]["url"],
        },
        "files": files,
        "summary": {
            key: summary.get(key)
            for key in ("students", "items", "max_score", "mean", "sd", "alpha", "kr20")
        },
        "flagged": [
            {
                "item": item["item"],
                "flag": item["flag"],
                "item_rest_r": item["item_rest_r"],
            }
            for item in result["items"]
            if item.get("flag")
        ],
    }
