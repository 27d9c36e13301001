"""The exam pipeline: a submission split into a chain of jobs, and calls on chains.

``exam.pipeline`` checks the inputs, ``exam.import`` reads the exam file into the
model, ``exam.grade`` scores the responses against it and analyses them, and
``exam.report`` renders and stores the report. Each is its own job with its own
retries and progress; ``public.enqueue_chain`` enqueues them at once, the later ones
waiting, and the database starts each when the one before it succeeds (see
supabase/migrations/20261203000510_exam_chain.sql).
"""

from __future__ import annotations

from typing import Any

from examq.db import Transport
from examq.errors import PermanentError
from examq.exam.importers import FORMATS
from examq.exam.statistics import MISSING_RULES
from examq.exam.storage import check_source
from examq.queue import check_int4, check_storable

PIPELINE = "exam.pipeline"
STEPS = ("exam.pipeline", "exam.import", "exam.grade", "exam.report")
FINAL = {"succeeded", "dead", "cancelled"}

_FIELDS = {"exam", "responses", "format", "title", "missing_policy"}


def pipeline_steps(payload: Any) -> list[dict[str, Any]]:
    """Check a pipeline submission and return the chain's steps for ``enqueue_chain``.

    The submission is ``{"exam": source, "responses": source, "format": optional,
    "title": optional, "missing_policy": "zero" | "listwise"}``, each source inline
    (``{"text", "name"}``) or in Storage (``{"bucket", "path"}``). Raises
    PermanentError saying what is wrong.
    """
    if not isinstance(payload, dict):
        raise PermanentError("the payload must be a JSON object")
    unknown = sorted(set(payload) - _FIELDS)
    if unknown:
        raise PermanentError(
            f"unknown field(s) {', '.join(unknown)}; a pipeline takes {', '.join(sorted(_FIELDS))}"
        )
    for field in ("exam", "responses"):
        if field not in payload:
            raise PermanentError(f"the payload has no {field}")
        check_source(payload[field], field)

    exam_format = payload.get("format")
    if exam_format is not None and exam_format not in FORMATS:
        raise PermanentError(
            f"format must be one of {', '.join(FORMATS)}, not {exam_format!r}"
        )
    title = payload.get("title")
    if title is not None and (not isinstance(title, str) or len(title) > 200):
        raise PermanentError("title must be text of at most 200 characters")
    missing_policy = payload.get("missing_policy", "zero")
    if missing_policy not in MISSING_RULES:
        raise PermanentError(
            f"missing_policy must be one of {', '.join(MISSING_RULES)}, not {missing_policy!r}"
        )

    # The first step only needs to know where the inputs are, not their text.
    root = {
        "exam": _descriptor(payload["exam"]),
        "responses": _descriptor(payload["responses"]),
    }
    options = {
        key: value
        for key, value in (("format", exam_format), ("title", title))
        if value is not None
    }
    return [
        {"job_type": "exam.pipeline", "payload": {**root, **options}},
        {"job_type": "exam.import", "payload": {"exam": payload["exam"], **options}},
        {
            "job_type": "exam.grade",
            "payload": {
                "responses": payload["responses"],
                "missing_policy": missing_policy,
            },
        },
        {
            "job_type": "exam.report",
            "payload": {k: v for k, v in options.items() if k == "title"},
        },
    ]


def _descriptor(source: dict[str, Any]) -> dict[str, Any]:
    if "text" in source:
        return {
            "inline": True,
            "name": source.get("name"),
            "bytes": len(source["text"].encode("utf-8")),
        }
    return {"bucket": source["bucket"], "path": source["path"]}


def enqueue_chain(
    transport: Transport,
    steps: list[dict[str, Any]],
    *,
    user_id: str | None = None,
    idempotency_key: str | None = None,
) -> dict[str, Any]:
    """Enqueue a chain through ``public.enqueue_chain``; returns ``{chain_id, jobs}``.

    Raises the queue's errors: InvalidInput, UnknownJobType, PayloadTooLarge,
    QuotaExceeded, PermissionDenied.
    """
    # Each payload is checked on its own: its nesting limit is the payload's, not
    # counted from the list of steps around it.
    for index, step in enumerate(steps, start=1):
        check_storable(f"step {index}", {k: v for k, v in step.items() if k != "payload"})
        check_storable(f"step {index} payload", step.get("payload", {}))
        if step.get("max_attempts") is not None:
            check_int4(f"step {index} max_attempts", step["max_attempts"])
    params: dict[str, Any] = {"p_steps": steps}
    if user_id is not None:
        params["p_user_id"] = str(user_id)
    if idempotency_key is not None:
        params["p_idempotency_key"] = idempotency_key
    return dict(transport.call("enqueue_chain", params))


def get_chain(transport: Transport, job_id: int) -> dict[str, Any]:
    """The chain a job belongs to: ``{chain_id, jobs}`` in step order; raises JobNotFound."""
    return dict(transport.call("get_chain", {"p_job_id": job_id}))


def chain_status(jobs: list[dict[str, Any]]) -> str:
    """One word for a chain: succeeded, failed, cancelled, queued until a step has
    started, else running while any step is unfinished."""
    statuses = [job["status"] for job in jobs]
    if any(status == "dead" for status in statuses):
        return "failed"
    if all(job["status"] in ("queued", "waiting") and not job.get("attempt") for job in jobs):
        return "queued"
    if any(status not in FINAL for status in statuses):
        return "running"
    if all(status == "succeeded" for status in statuses):
        return "succeeded"
    return "cancelled"


def job_summary(job: dict[str, Any]) -> dict[str, Any]:
    """A chain step as clients are shown it: no payload, no lease token."""
    keep = (
        "id", "job_type", "status", "attempt", "max_attempts", "parent_id", "progress",
        "progress_message", "last_error", "error_kind", "created_at", "started_at", "finished_at",
    )  # fmt: skip
    return {key: job.get(key) for key in keep}
