"""``exam.grade`` with an exam model: score responses by each question type's rules.

The payload carries the exam as ``exam_model`` (or as ``parent_result.exam_model``,
the result of the ``exam.import`` step before it in a chain) and the responses as
``responses_csv`` (text) or ``responses`` (an inline or Storage source, see
``examq.exam.storage``), either at most ``EXAMQ_MAX_INPUT_BYTES`` long, with an
optional ``missing_policy`` (``zero`` or ``listwise``, see
``examq.exam.statistics``). The result has the exam's outline, the
summary, the item table with distractors, the distribution of totals, the rules
used, and each student's total and per-question points.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from examq.errors import PermanentError
from examq.exam.importers import decode_text
from examq.exam.model import Exam
from examq.exam.scoring import score_responses
from examq.exam.settings import load_exam_settings
from examq.exam.statistics import analyse
from examq.exam.storage import check_text_size, read_input
from examq.handlers import JobContext

JOB_TYPE = "exam.grade"


def has_exam_model(payload: dict[str, Any]) -> bool:
    """True when an ``exam.grade`` payload carries an exam model rather than a plain key."""
    parent = payload.get("parent_result")
    return "exam_model" in payload or (
        isinstance(parent, dict) and "exam_model" in parent
    )


def grade_with_model(payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """Grade the responses against the exam model and analyse the result.

    Raises PermanentError naming the problem for a malformed model or responses,
    and RetryableError when Storage cannot be reached; JobCancelled from
    ``ctx.report_progress`` propagates unchanged.
    """
    ctx.report_progress(2, "reading the exam")
    exam = _exam(payload)

    ctx.report_progress(5, "reading the responses")
    text, name = _responses(payload, ctx)
    missing_policy = payload.get("missing_policy", "zero")
    if missing_policy not in ("zero", "listwise"):
        raise PermanentError(
            f"{JOB_TYPE}: missing_policy must be zero or listwise, not {missing_policy!r}"
        )

    ctx.report_progress(10, "scoring")
    scored = score_responses(
        exam,
        text,
        name=name,
        on_progress=lambda done, total: ctx.report_progress(
            10 + 60 * done / total, f"scored {done} of {total} students"
        ),
    )

    ctx.report_progress(75, "computing item statistics")
    analysed = analyse(scored, missing_policy=missing_policy)

    ctx.report_progress(95, "assembling the result")
    students = [
        {
            "student": student,
            "total": _compact(float(total)),
            "scores": [_compact(float(p)) for p in row],
        }
        for student, total, row in zip(
            scored.student_ids, scored.points.sum(axis=1), scored.points, strict=True
        )
    ]
    result = {
        "exam": {
            "title": payload.get("title") or exam.title,
            "source_format": exam.source_format,
            "name": (payload.get("parent_result") or {}).get("name"),
            "questions": len(exam.questions),
            "scored": len(scored.questions),
            "ungraded": len(exam.questions) - len(scored.questions),
        },
        **analysed,
        "students": students,
    }

    ctx.report_progress(100, "graded")
    return result


def _exam(payload: dict[str, Any]) -> Exam:
    model = payload.get("exam_model")
    if model is None:
        parent = payload.get("parent_result")
        model = parent.get("exam_model") if isinstance(parent, dict) else None
    if not isinstance(model, dict):
        raise PermanentError(
            f"{JOB_TYPE}: exam_model must be an exam model object, not {type(model).__name__}"
        )
    try:
        return Exam.model_validate(model)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ()))
        raise PermanentError(
            f"{JOB_TYPE}: the exam model is invalid at {where or 'top level'}: {first.get('msg')}"
        ) from exc


def _responses(payload: dict[str, Any], ctx: JobContext) -> tuple[str, str]:
    if "responses_csv" in payload:
        value = payload["responses_csv"]
        if not isinstance(value, str):
            raise PermanentError(
                f"{JOB_TYPE}: responses_csv must be CSV text, not {type(value).__name__}"
            )
        check_text_size(value, f"{JOB_TYPE}: responses_csv")
        return value, "responses_csv"
    if "responses" not in payload:
        raise PermanentError(
            f"{JOB_TYPE}: the payload has no responses (or responses_csv)"
        )
    source = read_input(
        payload["responses"], "responses", load_exam_settings(), owner=job_owner(ctx)
    )
    return decode_text(source.data, source.name), source.name


def job_owner(ctx: Any) -> str | None:
    """The user id of the job a handler runs, or None for a system job (or when unknown)."""
    user_id = getattr(getattr(ctx, "job", None), "user_id", None)
    return str(user_id) if user_id is not None else None


def _compact(value: float) -> float | int:
    """Whole numbers as ints (12 rather than 12.0), others rounded to 6 places."""
    return int(value) if value.is_integer() else round(value, 6)
