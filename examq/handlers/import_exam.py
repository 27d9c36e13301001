"""The ``exam.import`` and ``exam.pipeline`` handlers: check inputs, import an exam file.

``exam.pipeline`` is the first step of the exam chain. It checks that both inputs
can be read by this job (right owner, present, within the size limit) and says
which format the exam file is in, so a bad submission fails at once with the
reason, before any other step runs. ``exam.import`` reads the exam file (inline or
from Storage) and imports it (``format``: gift, moodle_xml, qti or key_csv; detected
when absent) into the exam model, which it returns as ``exam_model`` for the
``exam.grade`` step after it.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from examq.errors import PermanentError
from examq.exam.grading import job_owner
from examq.exam.importers import detect_format, import_exam
from examq.exam.settings import load_exam_settings
from examq.exam.storage import describe_source, read_input
from examq.handlers import JobContext


def check_inputs(payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """Check a pipeline's inputs; returns where they are, their sizes and the exam format.

    Raises PermanentError naming an input that is missing, not the owner's or too
    large, and RetryableError when Storage cannot be reached.
    """
    settings = load_exam_settings()
    owner = job_owner(ctx)
    checked: dict[str, Any] = {}

    for index, field in enumerate(("exam", "responses")):
        ctx.report_progress(10 + 40 * index, f"checking the {field} input")
        source = payload.get(field)
        if not isinstance(source, dict):
            raise PermanentError(f"exam.pipeline: the payload has no {field}")
        if source.get("inline"):
            checked[field] = {
                "where": describe_source(source, field),
                "name": source.get("name"),
                "bytes": source.get("bytes"),
            }
            continue
        data = read_input(source, field, settings, owner=owner)
        checked[field] = {
            "where": describe_source(source, field),
            "name": data.name,
            "bytes": len(data.data),
        }
        if field == "exam":
            checked[field]["format"] = payload.get("format") or detect_format(
                data.data, data.name
            )

    ctx.report_progress(100, "inputs checked")
    return checked


def import_exam_file(payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """Import the exam file into the exam model.

    Raises PermanentError (ExamInputError) naming the file, the question and the
    rule it breaks; RetryableError when Storage cannot be reached.
    """
    if "exam" not in payload:
        raise PermanentError("exam.import: the payload has no exam")
    ctx.report_progress(5, "reading the exam file")
    source = read_input(
        payload["exam"], "exam", load_exam_settings(), owner=job_owner(ctx)
    )

    ctx.report_progress(30, "importing")
    parent = (
        payload.get("parent_result")
        if isinstance(payload.get("parent_result"), dict)
        else {}
    )
    exam_format = payload.get("format") or (parent.get("exam") or {}).get("format")
    exam = import_exam(
        source.data, source.name, exam_format=exam_format, title=payload.get("title")
    )

    ctx.report_progress(100, f"imported {len(exam.questions)} questions")
    return {
        "name": source.name,
        "format": exam.source_format,
        "questions": len(exam.questions),
        "by_type": dict(Counter(q.type for q in exam.questions)),
        "warnings": exam.warnings,
        "exam_model": exam.model_dump(mode="json", exclude_none=True),
    }
