"""Job handlers: the functions that do a job's work, looked up by job type.

A handler is ``handler(payload: dict, ctx: JobContext) -> dict``. It returns the job's
result (a JSON-serialisable dict), reports progress through ``ctx.report_progress``,
and signals failures with the exceptions of ``examq.errors``: ``PermanentError`` for
bad input, ``RetryableError`` (or any other exception) for transient trouble, and
``JobCancelled`` when ``ctx.report_progress`` says the job was cancelled.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol


class JobContext(Protocol):
    """What a running handler may know and do about its job."""

    job_id: int
    job_type: str
    attempt: int

    def report_progress(self, percent: float, message: str = "") -> None:
        """Record progress (0-100); raises JobCancelled if a cancel was requested."""


Handler = Callable[[dict[str, Any], JobContext], dict[str, Any]]


def registry() -> dict[str, Handler]:
    """Return the built-in handlers by job type."""
    from examq.handlers import grade, import_exam, report, system

    return {
        "exam.grade": grade.grade_exam,
        "exam.import": import_exam.import_exam_file,
        "exam.pipeline": import_exam.check_inputs,
        "exam.report": report.report_exam,
        "system.noop": system.noop,
        "system.sleep": system.sleep,
    }
