"""``examq submit exam.pipeline``: enqueue the exam chain from two files and follow it."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

from examq.errors import PermanentError
from examq.exam.pipeline import (
    chain_status,
    enqueue_chain,
    get_chain,
    job_summary,
    pipeline_steps,
)
from examq.exam.settings import ExamSettings, load_exam_settings
from examq.exam.text import decode_upload
from examq.queue import Queue
from examq.handlers.grade import read_text_file
from examq.worker import Worker

# A chain is followed while it is one of these (see chain_status).
UNFINISHED = ("queued", "running")


def file_source(path: Path, settings: ExamSettings) -> dict[str, Any]:
    """An input for the payload: the file's text inline, or a local Storage object for binary files.

    A file that is not UTF-8 text (a QTI zip) is copied into the local Storage folder
    (``exam-uploads/cli/<sha256>/<name>``) and referenced from there. Raises
    PermanentError naming the file if it cannot be read, or is binary while inputs
    come from Supabase Storage.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PermanentError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        return {"text": decode_upload(data, path.name), "name": path.name}
    except PermanentError:
        pass  # not text: a binary package, below
    if settings.inputs_in_supabase:
        raise PermanentError(
            f"{path} is not text; upload it to Storage and submit its bucket and path"
        )
    digest = hashlib.sha256(data).hexdigest()[:16]
    object_path = f"cli/{digest}/{path.name}"
    target = settings.local_storage_dir / "exam-uploads" / object_path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    return {"bucket": "exam-uploads", "path": object_path}


def submit_pipeline(
    queue: Queue,
    *,
    exam: Path,
    responses: Path,
    exam_format: str | None,
    title: str | None,
    user: str | None,
    idempotency_key: str | None,
    wait: bool,
    timeout: float,
    budget_seconds: float,
    batch_size: int,
) -> dict[str, Any]:
    """Enqueue the exam chain; with ``wait``, run workers here until every step has finished.

    Returns ``{chain_id, status, jobs, report}``: the chain's status (succeeded,
    failed, cancelled or running), each step's summary, and the report step's result.
    Raises PermanentError for unreadable files or a bad submission, and the queue's
    errors when the chain cannot be enqueued.
    """
    settings = load_exam_settings()
    payload: dict[str, Any] = {
        "exam": file_source(exam, settings),
        # Responses are always a CSV: one that is not text is refused here, before
        # anything is enqueued (an exam file may be a binary QTI package).
        "responses": {"text": read_text_file(responses), "name": responses.name},
    }
    if exam_format:
        payload["format"] = exam_format
    if title:
        payload["title"] = title
    chain = enqueue_chain(
        queue.transport,
        pipeline_steps(payload),
        user_id=user,
        idempotency_key=idempotency_key,
    )

    if wait:
        worker = Worker(queue, batch_size=batch_size)
        deadline = time.monotonic() + timeout
        while chain_status(chain["jobs"]) in UNFINISHED and time.monotonic() < deadline:
            summary = worker.run_pass(
                min(budget_seconds, max(1.0, deadline - time.monotonic()))
            )
            chain = get_chain(queue.transport, chain["chain_id"])
            if chain_status(chain["jobs"]) in UNFINISHED and summary.claimed == 0:
                time.sleep(0.2)

    report = next(
        (job for job in chain["jobs"] if job["job_type"] == "exam.report"), None
    )
    return {
        "chain_id": chain["chain_id"],
        "status": chain_status(chain["jobs"]),
        "report": report.get("result") if report else None,
        "jobs": [job_summary(job) for job in chain["jobs"]],
    }
