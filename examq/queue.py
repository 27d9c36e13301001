"""The queue client: typed Python calls onto the SQL lifecycle functions.

Every state change is one SQL function call; this module only shapes arguments and
results. It never composes a transition out of several calls.
"""

from __future__ import annotations

import math
import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from examq.db import Transport
from examq.errors import InvalidInput

JobStatus = Literal["queued", "running", "succeeded", "dead", "cancelled"]
FailureKind = Literal["retryable", "permanent", "cancelled"]


class Job(BaseModel):
    """A row of ``public.jobs`` as the SQL functions return it."""

    model_config = ConfigDict(extra="ignore")

    id: int
    job_type: str
    user_id: uuid.UUID | None = None
    tier: str
    payload: dict[str, Any] = {}
    status: JobStatus
    run_at: datetime
    attempt: int
    max_attempts: int
    lease_token: uuid.UUID | None = None
    lease_expires_at: datetime | None = None
    worker_id: str | None = None
    cancel_requested_at: datetime | None = None
    progress: float | None = None
    progress_message: str | None = None
    eta_at: datetime | None = None
    result: Any = None
    last_error: str | None = None
    error_kind: str | None = None
    idempotency_key: str | None = None
    parent_id: int | None = None
    created_at: datetime
    first_started_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    updated_at: datetime

    def summary(self) -> dict[str, Any]:
        """The job as a JSON-ready dict without its payload (which may be large)."""
        return self.model_dump(mode="json", exclude={"payload", "lease_token"})


class Outcome(BaseModel):
    """What a transition call reported: the job's status after it, and what happened."""

    model_config = ConfigDict(extra="ignore")

    job_id: int
    status: JobStatus
    outcome: str
    run_at: datetime | None = None


class Heartbeat(BaseModel):
    """What a heartbeat reported back to the worker."""

    model_config = ConfigDict(extra="ignore")

    job_id: int
    cancel_requested: bool
    lease_expires_at: datetime | None = None
    progress: float | None = None
    eta_at: datetime | None = None


def check_storable(name: str, value: Any) -> None:
    """Raise InvalidInput naming the place where ``value`` holds what PostgreSQL cannot store.

    PostgreSQL text and jsonb refuse NUL characters and unpaired UTF-16 surrogates, and
    JSON has no NaN or infinity; catching them here gives one clear error on both
    transports instead of a driver- or server-specific one.
    """
    stack: list[tuple[str, Any]] = [(name, value)]
    while stack:
        where, item = stack.pop()
        if isinstance(item, str):
            _check_text(where, item)
        elif isinstance(item, float) and not math.isfinite(item):
            raise InvalidInput(f"{where} is {item}, which JSON cannot represent")
        elif isinstance(item, dict):
            for key, child in item.items():
                _check_text(f"{where} key {str(key)[:40]!r}", str(key))
                stack.append((f"{where}.{key}", child))
        elif isinstance(item, list | tuple):
            stack.extend((f"{where}[{i}]", child) for i, child in enumerate(item))


def _check_text(where: str, text: str) -> None:
    if "\x00" in text:
        raise InvalidInput(f"{where} contains a NUL character, which PostgreSQL cannot store")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInput(
            f"{where} contains an unpaired surrogate (U+{ord(text[exc.start]):04X}), which is not valid text"
        ) from exc


def clean_text(text: str, limit: int = 4000) -> str:
    """Make any text storable in PostgreSQL: drop NULs, replace lone surrogates, cap length."""
    text = text.replace("\x00", "")
    text = text.encode("utf-8", errors="replace").decode("utf-8")
    return text[:limit]


class Queue:
    """Typed access to the queue's SQL functions over one transport."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport

    def enqueue(
        self,
        job_type: str,
        payload: dict[str, Any] | None = None,
        *,
        user_id: uuid.UUID | str | None = None,
        run_at: datetime | None = None,
        delay_seconds: float | None = None,
        idempotency_key: str | None = None,
        parent_id: int | None = None,
        max_attempts: int | None = None,
    ) -> Job:
        """Add a job; raises InvalidInput, UnknownJobType, PayloadTooLarge, QuotaExceeded."""
        params: dict[str, Any] = {"p_job_type": job_type, "p_payload": payload or {}}
        optional = {
            "p_user_id": str(user_id) if user_id is not None else None,
            "p_run_at": run_at.isoformat() if run_at is not None else None,
            "p_delay_seconds": delay_seconds,
            "p_idempotency_key": idempotency_key,
            "p_parent_id": parent_id,
            "p_max_attempts": max_attempts,
        }
        params.update({k: v for k, v in optional.items() if v is not None})
        for key in ("p_job_type", "p_payload", "p_idempotency_key"):
            if key in params:
                check_storable(key.removeprefix("p_"), params[key])
        return Job.model_validate(self.transport.call("enqueue_job", params))

    def claim(
        self,
        worker_id: str,
        limit: int = 10,
        *,
        job_types: list[str] | None = None,
        lease_seconds: int | None = None,
    ) -> list[Job]:
        """Lease up to ``limit`` ready jobs for ``worker_id``."""
        check_storable("worker_id", worker_id)
        params: dict[str, Any] = {"p_worker_id": worker_id, "p_limit": limit}
        if job_types is not None:
            params["p_job_types"] = job_types
        if lease_seconds is not None:
            params["p_lease_seconds"] = lease_seconds
        return [Job.model_validate(row) for row in self.transport.call("claim_jobs", params)]

    def heartbeat(
        self,
        job: Job,
        *,
        progress: float | None = None,
        message: str | None = None,
        extend_seconds: int | None = None,
    ) -> Heartbeat:
        """Extend the lease and record progress; raises LeaseLost when the lease is gone."""
        params: dict[str, Any] = {"p_job_id": job.id, "p_lease_token": str(job.lease_token)}
        if progress is not None:
            params["p_progress"] = progress
        if message is not None:
            params["p_message"] = clean_text(message, 500)
        if extend_seconds is not None:
            params["p_extend_seconds"] = extend_seconds
        return Heartbeat.model_validate(self.transport.call("heartbeat_job", params))

    def complete(self, job: Job, result: dict[str, Any] | None = None) -> Outcome:
        """Mark the job succeeded; raises LeaseLost or InvalidState when it is no longer ours."""
        check_storable("result", result)
        params = {"p_job_id": job.id, "p_lease_token": str(job.lease_token), "p_result": result}
        return Outcome.model_validate(self.transport.call("complete_job", params))

    def fail(self, job: Job, error: str, kind: FailureKind = "retryable") -> Outcome:
        """Record a failed attempt; raises LeaseLost or InvalidState when it is no longer ours."""
        params = {
            "p_job_id": job.id,
            "p_lease_token": str(job.lease_token),
            "p_error": clean_text(error),
            "p_kind": kind,
        }
        return Outcome.model_validate(self.transport.call("fail_job", params))

    def release(self, job: Job) -> Outcome:
        """Give back a claimed job that was not started, without using an attempt."""
        params = {"p_job_id": job.id, "p_lease_token": str(job.lease_token)}
        return Outcome.model_validate(self.transport.call("release_job", params))

    def cancel(self, job_id: int, reason: str | None = None) -> Outcome:
        """Cancel a queued job, or request a running job to stop; raises JobNotFound."""
        params: dict[str, Any] = {"p_job_id": job_id}
        if reason is not None:
            params["p_reason"] = clean_text(reason, 500)
        return Outcome.model_validate(self.transport.call("cancel_job", params))

    def requeue(self, job_id: int, reason: str | None = None) -> Outcome:
        """Return a dead or cancelled job to the queue; raises JobNotFound, InvalidState."""
        params: dict[str, Any] = {"p_job_id": job_id}
        if reason is not None:
            params["p_reason"] = clean_text(reason, 500)
        return Outcome.model_validate(self.transport.call("requeue_job", params))

    def get(self, job_id: int) -> Job:
        """Read one job; raises JobNotFound."""
        return Job.model_validate(self.transport.call("get_job", {"p_job_id": job_id}))

    def stats(self, window_hours: float = 24, bucket_minutes: float = 60) -> dict[str, Any]:
        """Dashboard figures for the caller's visible jobs (see ``public.queue_stats``)."""
        params = {"p_window": f"{window_hours} hours", "p_bucket": f"{bucket_minutes} minutes"}
        return dict(self.transport.call("queue_stats", params))

    def prune(self, older_than_days: float = 30, limit: int = 10000) -> int:
        """Delete up to ``limit`` jobs finished more than ``older_than_days`` ago."""
        params = {"p_older_than": f"{older_than_days} days", "p_limit": limit}
        return int(self.transport.call("prune_jobs", params))
