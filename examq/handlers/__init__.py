"""Job handlers: the functions that do a job's work, looked up by job type.

A handler is ``handler(payload: dict, ctx: JobContext) -> dict``. It returns the job's
result (a JSON-serialisable dict), reports progress through ``ctx.report_progress``,
and signals failures with the exceptions of ``examq.errors``: ``PermanentError`` for
bad input, ``RetryableError`` (or any other exception) for transient trouble, and
``JobCancelled`` when ``ctx.report_progress`` says the job was cancelled.

Your own job types run beside the built-in ones: put a table of handlers in a module
(``HANDLERS = {"reports.pdf": render_pdf}``) and name it
in ``EXAMQ_HANDLERS`` as ``module:attribute`` (several, comma-separated). Every worker
that examq starts (the cron function, ``examq work``, the pass after a submission)
then runs them; a table may also replace a built-in handler. The job type itself is a
row of ``public.job_types``, added by a migration of your own.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from typing import Any, Protocol

from examq.errors import ConfigError

# public.job_types' rule for a name (its check constraint).
JOB_TYPE_NAME = re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*\Z")


class JobContext(Protocol):
    """What a running handler may know and do about its job."""

    job_id: int
    job_type: str
    attempt: int

    def report_progress(self, percent: float, message: str = "") -> None:
        """Record progress (0-100); raises JobCancelled if a cancel was requested."""


Handler = Callable[[dict[str, Any], JobContext], dict[str, Any]]


def registry(extra: str | None = None) -> dict[str, Handler]:
    """The handlers by job type: the built-in ones, then those of ``EXAMQ_HANDLERS``.

    ``extra`` stands in for ``EXAMQ_HANDLERS``. Raises ConfigError naming the table
    that cannot be loaded, or the entry that is not a handler.
    """
    from examq.handlers import grade, import_exam, report, system

    handlers: dict[str, Handler] = {
        "exam.grade": grade.grade_exam,
        "exam.import": import_exam.import_exam_file,
        "exam.pipeline": import_exam.check_inputs,
        "exam.report": report.report_exam,
        "system.noop": system.noop,
        "system.sleep": system.sleep,
    }
    if extra is None:
        from examq.config import load_settings

        extra = load_settings().handlers
    for spec in (extra or "").split(","):
        if spec.strip():
            handlers.update(load_handlers(spec.strip()))
    return handlers


def load_handlers(spec: str) -> dict[str, Handler]:
    """The handler table (a dict of job type to handler) that ``module:attribute`` names."""
    module_name, _, attribute = spec.partition(":")
    def refuse(message: str) -> ConfigError:
        return ConfigError("EXAMQ_HANDLERS", f"{spec!r}: {message}")

    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise refuse(f"cannot import {module_name!r} ({exc})") from exc
    try:
        table = getattr(module, attribute)
    except AttributeError:
        raise refuse(f"module {module_name!r} has no {attribute!r}") from None
    if not isinstance(table, dict):
        raise refuse(f"must be a dict of job type to handler, not {type(table).__name__}")
    for job_type, handler in table.items():
        if not isinstance(job_type, str) or not JOB_TYPE_NAME.match(job_type) or len(job_type) > 100:
            raise refuse(
                f"{job_type!r} is not a job type name"
                " (lowercase words of a-z 0-9 _ joined by dots, e.g. reports.pdf)"
            )
        if not callable(handler):
            raise refuse(f"the handler of {job_type!r} is not callable")
    return dict(table)
