"""The queue client: typed Python calls onto the SQL lifecycle functions.

Every state change is one SQL function call; this module only shapes arguments and
results. It never composes a transition out of several calls.
"""

from __future__ import annotations

import json
import math
import uuid
from datetime import datetime
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict

from examq.db import Transport
from examq.errors import InvalidInput

JobStatus = Literal["waiting", "queued", "running", "succeeded", "dead", "cancelled"]
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


class BatchOutcome(NamedTuple):
    """What a batched call reported for one job of its batch.

    ``outcome`` is, from ``complete_jobs``: completed, already_completed, lease_lost,
    invalid_state or not_found; from ``release_jobs``: released, cancelled, lease_lost
    or not_found. A plain tuple: the worker reads thousands per second.
    """

    job_id: int
    status: str | None
    outcome: str


class Enqueued(BaseModel):
    """What ``enqueue_jobs`` reported for one element: its job, and whether it is new."""

    model_config = ConfigDict(extra="ignore")

    job_id: int
    created: bool


class Heartbeat(BaseModel):
    """What a heartbeat reported back to the worker."""

    model_config = ConfigDict(extra="ignore")

    job_id: int
    cancel_requested: bool
    lease_expires_at: datetime | None = None
    progress: float | None = None
    eta_at: datetime | None = None


def check_storable(name: str, value: Any) -> None:
    """Raise InvalidInput naming the place where ``value`` holds what cannot be stored as JSON.

    PostgreSQL text and jsonb refuse NUL characters and unpaired UTF-16 surrogates, JSON
    has no NaN, infinity, bytes or sets, and readers choke on deep nesting and huge
    numbers; catching them here gives one clear error on both transports instead of a
    driver- or server-specific one.
    """
    # Every job's payload and result passes through here, so the walk keeps each
    # place as a (parent, step) pair and spells it out only for the error message.
    stack: list[tuple[Any, Any, int]] = [(None, value, 0)]
    while stack:
        place, item, depth = stack.pop()
        # The value itself is level 1, as PostgreSQL's payload check counts them.
        if depth >= MAX_JSON_DEPTH:
            raise InvalidInput(f"{name} is nested more than {MAX_JSON_DEPTH} levels deep")
        if item is None or isinstance(item, bool):
            continue
        if isinstance(item, str):
            if not storable_text(item):
                _check_text(_spell(name, place), item)
        elif isinstance(item, int):
            if abs(item) >= 10**300:
                where = _spell(name, place)
                raise InvalidInput(f"{where} is a number beyond 1e300, which JSON readers cannot represent")
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise InvalidInput(f"{_spell(name, place)} is {item}, which JSON cannot represent")
        elif isinstance(item, dict):
            for key, child in item.items():
                if not isinstance(key, str):
                    where = _spell(name, place)
                    raise InvalidInput(f"{where} has a key of type {type(key).__name__}; JSON keys are text")
                if not storable_text(key):
                    _check_text(f"{_spell(name, place)} key {key[:40]!r}", key)
                stack.append(((place, "." + key), child, depth + 1))
        elif isinstance(item, list | tuple):
            stack.extend(((place, i), child, depth + 1) for i, child in enumerate(item))
        else:
            raise InvalidInput(f"{_spell(name, place)} is a {type(item).__name__}, which JSON cannot represent")


def _spell(name: str, place: Any) -> str:
    """The place ``check_storable`` kept as (parent, step) pairs, as text: ``name.key[2]``."""
    steps: list[str] = []
    while place is not None:
        place, step = place
        steps.append(f"[{step}]" if isinstance(step, int) else step)
    return name + "".join(reversed(steps))


MAX_JSON_DEPTH = 64
_INT8_MAX = 2**63 - 1
_INT4_MIN, _INT4_MAX = -(2**31), 2**31 - 1


def check_id(name: str, value: Any) -> int:
    """Return ``value`` as a job id, or raise InvalidInput naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= _INT8_MAX:
        raise InvalidInput(f"{name} must be a positive whole number below 2^63, not {value!r}")
    return value


def check_int4(name: str, value: Any) -> int:
    """Return ``value`` if it is a whole number PostgreSQL's integer holds, else raise.

    The SQL functions check their own ranges and say so; a value beyond an integer
    would instead make the call name a function that does not exist.
    """
    if isinstance(value, bool) or not isinstance(value, int) or not _INT4_MIN <= value <= _INT4_MAX:
        raise InvalidInput(f"{name} must be a whole number between -2^31 and 2^31-1, not {value!r}")
    return value


def _check_finite(name: str, value: float, low: float, high: float) -> float:
    if not isinstance(value, int | float) or not math.isfinite(value) or not low <= value <= high:
        raise InvalidInput(f"{name} must be a number between {low:g} and {high:g}, not {value!r}")
    return float(value)


def storable_text(text: str) -> bool:
    """Whether PostgreSQL can store ``text``; ASCII, the common case, needs no encoding."""
    if "\x00" in text:
        return False
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


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
        if run_at is not None and run_at.utcoffset() is None:
            raise InvalidInput("run_at needs a time zone (a naive datetime is ambiguous)")
        for key in ("p_parent_id",):
            if optional[key] is not None:
                check_id(key.removeprefix("p_"), optional[key])
        if max_attempts is not None:
            check_int4("max_attempts", max_attempts)
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
        check_int4("limit", limit)
        if lease_seconds is not None:
            check_int4("lease_seconds", lease_seconds)
        params: dict[str, Any] = {"p_worker_id": worker_id, "p_limit": limit}
        if job_types is not None:
            params["p_job_types"] = job_types
        if lease_seconds is not None:
            params["p_lease_seconds"] = lease_seconds
        return self._readable_jobs(self._rows("claim_jobs", params))

    def claim_batch(
        self,
        worker_id: str,
        limit: int = 100,
        *,
        job_types: list[str] | None = None,
        lease_seconds: int | None = None,
    ) -> list[Job]:
        """Lease up to ``limit`` jobs with ``claim_job_batch`` (claim_jobs for large batches)."""
        check_storable("worker_id", worker_id)
        check_int4("limit", limit)
        if lease_seconds is not None:
            check_int4("lease_seconds", lease_seconds)
        params: dict[str, Any] = {"p_worker_id": worker_id, "p_limit": limit}
        if job_types is not None:
            params["p_job_types"] = job_types
        if lease_seconds is not None:
            params["p_lease_seconds"] = lease_seconds
        return self._readable_jobs(self._rows("claim_job_batch", params))

    def complete_many(
        self, done: list[tuple[Job, dict[str, Any] | None]], *, checked: bool = False
    ) -> list[BatchOutcome]:
        """Mark many jobs succeeded in one call; one outcome per job, in order.

        A job whose lease is gone is reported (``lease_lost``), not raised: the others
        are still recorded. Raises InvalidInput when a result cannot be stored, unless
        ``checked`` says every result already passed ``check_storable``.
        """
        if not done:
            return []
        items = []
        for job, result in done:
            if not checked:
                check_storable("result", result)
            items.append({"job_id": job.id, "lease_token": str(job.lease_token), "result": result})
        answer = self.transport.call("complete_jobs", {"p_jobs": items})
        return [BatchOutcome(e["job_id"], e["status"], e["outcome"]) for e in answer]

    def enqueue_many(self, jobs: list[dict[str, Any]]) -> list[Enqueued]:
        """Add many jobs in one call, all or none, with ``enqueue_job``'s rules.

        Each element is a dict with ``job_type`` and optionally ``payload``,
        ``user_id``, ``idempotency_key``, ``run_at``, ``delay_seconds``,
        ``max_attempts``, ``parent_id``. Raises what ``enqueue`` raises, naming the
        first element at fault.
        """
        if not jobs:
            return []
        items = []
        for index, spec in enumerate(jobs, start=1):
            item = {k: v for k, v in spec.items() if v is not None}
            run_at = item.get("run_at")
            if isinstance(run_at, datetime) and run_at.utcoffset() is None:
                raise InvalidInput(f"job {index} run_at needs a time zone (a naive datetime is ambiguous)")
            if "max_attempts" in item:
                check_int4(f"job {index} max_attempts", item["max_attempts"])
            if "parent_id" in item:
                check_id(f"job {index} parent_id", item["parent_id"])
            for key in ("user_id", "run_at"):
                if key in item and not isinstance(item[key], str):
                    item[key] = item[key].isoformat() if key == "run_at" else str(item[key])
            for key in ("job_type", "payload", "idempotency_key"):
                if key in item:
                    check_storable(f"job {index} {key}", item[key])
            items.append(item)
        answer = self.transport.call("enqueue_jobs", {"p_jobs": items})
        return [Enqueued.model_validate(entry) for entry in answer]

    def health(
        self,
        *,
        window_seconds: int = 900,
        tick_stale_seconds: int = 300,
        queue_age_seconds: int = 900,
    ) -> dict[str, Any]:
        """The operators' health report (see ``public.queue_health``); raises PermissionDenied."""
        params = {
            "p_window_seconds": window_seconds,
            "p_tick_stale_seconds": tick_stale_seconds,
            "p_queue_age_seconds": queue_age_seconds,
        }
        return dict(self.transport.call("queue_health", params))

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
            params["p_extend_seconds"] = check_int4("extend_seconds", extend_seconds)
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

    def release_many(self, jobs: list[Job]) -> list[BatchOutcome]:
        """Give back many claimed, unstarted jobs in one call; one outcome per job, in order.

        Each outcome is ``released``, ``cancelled`` (a cancel was requested meanwhile),
        ``lease_lost`` or ``not_found``; none of them raises.
        """
        if not jobs:
            return []
        items = [{"job_id": job.id, "lease_token": str(job.lease_token)} for job in jobs]
        answer = self.transport.call("release_jobs", {"p_jobs": items})
        return [BatchOutcome(e["job_id"], e["status"], e["outcome"]) for e in answer]

    def _rows(self, function: str, params: dict[str, Any]) -> list[Any]:
        """The rows ``function`` returns: JSON text where the transport offers it, else dicts."""
        as_text = getattr(self.transport, "call_rows_as_text", None)
        if as_text is not None:
            return list(as_text(function, params))
        return list(self.transport.call(function, params))

    def _readable_jobs(self, rows: list[Any]) -> list[Job]:
        # One claimed row that cannot be read must not hold up the others of its batch:
        # it fails permanently under its own lease, and the rest are returned.
        jobs = []
        for row in rows:
            try:
                if isinstance(row, str):
                    jobs.append(Job.model_validate_json(row))
                else:
                    jobs.append(Job.model_validate(row))
            except (ValueError, TypeError) as exc:
                fields = row
                if isinstance(row, str):
                    try:
                        fields = json.loads(row)
                    except ValueError:
                        raise exc from None
                job_id = fields.get("id") if isinstance(fields, dict) else None
                token = fields.get("lease_token") if isinstance(fields, dict) else None
                if job_id is None or token is None:
                    raise
                self.transport.call(
                    "fail_job",
                    {
                        "p_job_id": job_id,
                        "p_lease_token": str(token),
                        "p_error": clean_text(f"the job's row cannot be read: {exc}"),
                        "p_kind": "permanent",
                    },
                )
        return jobs

    def cancel(self, job_id: int, reason: str | None = None) -> Outcome:
        """Cancel a queued job, or request a running job to stop; raises JobNotFound."""
        params: dict[str, Any] = {"p_job_id": check_id("job_id", job_id)}
        if reason is not None:
            params["p_reason"] = clean_text(reason, 500)
        return Outcome.model_validate(self.transport.call("cancel_job", params))

    def requeue(self, job_id: int, reason: str | None = None) -> Outcome:
        """Return a dead or cancelled job to the queue; raises JobNotFound, InvalidState."""
        params: dict[str, Any] = {"p_job_id": check_id("job_id", job_id)}
        if reason is not None:
            params["p_reason"] = clean_text(reason, 500)
        return Outcome.model_validate(self.transport.call("requeue_job", params))

    def get(self, job_id: int) -> Job:
        """Read one job; raises JobNotFound."""
        return Job.model_validate(self.transport.call("get_job", {"p_job_id": check_id("job_id", job_id)}))

    def stats(self, window_hours: float = 24, bucket_minutes: float = 60) -> dict[str, Any]:
        """Dashboard figures for the caller's visible jobs (see ``public.queue_stats``)."""
        _check_finite("window_hours", window_hours, 1 / 60, 744)
        _check_finite("bucket_minutes", bucket_minutes, 1 / 60, 44640)
        params = {"p_window": f"{window_hours} hours", "p_bucket": f"{bucket_minutes} minutes"}
        return dict(self.transport.call("queue_stats", params))

    def prune(self, older_than_days: float = 30, limit: int = 10000) -> int:
        """Delete up to ``limit`` jobs finished more than ``older_than_days`` ago."""
        _check_finite("older_than_days", older_than_days, 1 / 24, 36500)
        params = {"p_older_than": f"{older_than_days} days", "p_limit": limit}
        return int(self.transport.call("prune_jobs", params))

    def prune_notifications(self, older_than_days: float = 30, limit: int = 10000) -> int:
        """Delete up to ``limit`` finished admin notifications older than ``older_than_days``.

        A job's notifications are deleted with the job (``prune``).
        """
        _check_finite("older_than_days", older_than_days, 1 / 24, 36500)
        params = {"p_older_than": f"{older_than_days} days", "p_limit": limit}
        return int(self.transport.call("prune_notifications", params))
