"""The worker: one pass of claim, run, record, within a time budget.

A pass is what a cron tick (or a kick after an enqueue) runs. It claims small
batches while enough of its budget is left, runs each job's handler, and records the
outcome with ``complete_job`` or ``fail_job``. A background thread extends the lease
of the running job, so a long handler keeps it; a claimed job that cannot be started
before the deadline is released without using an attempt. If the process dies, the
lease expires and the next claim takes the job over: nothing is lost.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import traceback
import uuid
from dataclasses import asdict, dataclass
from typing import Any

from loguru import logger

from examq.errors import (
    DatabaseError,
    InvalidInput,
    JobCancelled,
    LeaseLost,
    PermanentError,
    RetryableError,
)
from examq.handlers import Handler, registry
from examq.queue import Heartbeat, Job, Queue


@dataclass
class PassSummary:
    """Counts of what one worker pass did."""

    claimed: int = 0
    succeeded: int = 0
    failed: int = 0
    retried: int = 0
    cancelled: int = 0
    released: int = 0
    lease_lost: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """The summary as a JSON-ready dict."""
        data = asdict(self)
        data["seconds"] = round(self.seconds, 3)
        return data


def default_worker_id() -> str:
    """A worker id unique to this process: host, pid and a random suffix."""
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class _RunningJob:
    """The context a handler sees: its job, progress reporting, and cancel checks."""

    def __init__(self, queue: Queue, job: Job, min_interval_seconds: float) -> None:
        self.queue = queue
        self.job = job
        self.job_id = job.id
        self.job_type = job.job_type
        self.attempt = job.attempt
        self._min_interval = min_interval_seconds
        self._last_sent = 0.0
        self._lock = threading.Lock()
        self.cancel_requested = False
        self.lease_lost: LeaseLost | None = None
        self.finished = False

    def report_progress(self, percent: float, message: str = "") -> None:
        """Record progress (throttled); raises JobCancelled once a cancel was requested."""
        now = time.monotonic()
        if percent < 100 and now - self._last_sent < self._min_interval:
            self._raise_if_stopped()
            return
        self._beat(progress=max(0.0, min(100.0, float(percent))), message=message or None)
        self._raise_if_stopped()

    def keep_alive(self) -> None:
        """Extend the lease without touching progress (called from the heartbeat thread)."""
        self._beat()

    def _beat(self, **fields: Any) -> None:
        with self._lock:
            if self.lease_lost is not None:
                return
            try:
                answer: Heartbeat = self.queue.heartbeat(self.job, **fields)
            except LeaseLost as exc:
                self.lease_lost = exc
                return
            self._last_sent = time.monotonic()
            self.cancel_requested = self.cancel_requested or answer.cancel_requested

    def _raise_if_stopped(self) -> None:
        if self.lease_lost is not None:
            raise self.lease_lost
        if self.cancel_requested:
            raise JobCancelled(f"job {self.job_id} was cancelled")


class Worker:
    """Runs jobs from the queue with the registered handlers."""

    def __init__(
        self,
        queue: Queue,
        *,
        handlers: dict[str, Handler] | None = None,
        worker_id: str | None = None,
        batch_size: int = 5,
        job_types: list[str] | None = None,
        progress_interval_seconds: float = 1.0,
        on_progress: Any = None,
    ) -> None:
        self.queue = queue
        self.handlers = handlers if handlers is not None else registry()
        self.worker_id = worker_id or default_worker_id()
        self.batch_size = batch_size
        self.job_types = job_types if job_types is not None else sorted(self.handlers)
        self.progress_interval_seconds = progress_interval_seconds
        self.on_progress = on_progress

    def run_pass(self, budget_seconds: float, *, max_jobs: int | None = None) -> PassSummary:
        """Claim and run jobs until the queue is empty or the budget is nearly spent."""
        started = time.monotonic()
        deadline = started + budget_seconds
        summary = PassSummary()
        log = logger.bind(worker_id=self.worker_id)

        while time.monotonic() < deadline - self._claim_margin(budget_seconds):
            want = self.batch_size
            if max_jobs is not None:
                want = min(want, max_jobs - summary.claimed)
                if want <= 0:
                    break
            jobs = self.queue.claim(self.worker_id, want, job_types=self.job_types)
            if not jobs:
                break
            summary.claimed += len(jobs)

            # Every lease of the batch started at the claim: the jobs still waiting
            # their turn are kept alive too, or a slow first job would let the
            # leases of the later ones expire before they start.
            contexts = [self._context(job) for job in jobs]
            stop_beating = self._keep_alive(contexts)
            try:
                for index, (job, context) in enumerate(zip(jobs, contexts)):
                    if time.monotonic() >= deadline - self._claim_margin(budget_seconds) and index > 0:
                        for waiting in contexts[index:]:
                            waiting.finished = True
                        self._release_rest(jobs[index:], summary, log)
                        break
                    self.run_job(job, summary, context=context)
            finally:
                stop_beating()

        summary.seconds = time.monotonic() - started
        log.info("worker pass finished", **summary.as_dict())
        return summary

    @staticmethod
    def _claim_margin(budget_seconds: float) -> float:
        # Stop claiming when less than a fifth of the budget (at most 10 s) is left, so
        # the last job has time to finish before the function is stopped.
        return min(10.0, budget_seconds / 5)

    def _release_rest(self, jobs: list[Job], summary: PassSummary, log: Any) -> None:
        for job in jobs:
            try:
                answer = self.queue.release(job)
            except LeaseLost:
                summary.lease_lost += 1
                continue
            if answer.outcome == "released":
                summary.released += 1
            else:
                summary.cancelled += 1
        log.info("budget spent; released unstarted jobs", released=len(jobs))

    def _context(self, job: Job) -> Any:
        context: Any = _RunningJob(self.queue, job, self.progress_interval_seconds)
        if self.on_progress is not None:
            context = _ProgressRelay(context, self.on_progress)
        return context

    def run_job(self, job: Job, summary: PassSummary | None = None, *, context: Any = None) -> str:
        """Run one claimed job and record its outcome; returns the outcome name."""
        summary = summary if summary is not None else PassSummary()
        log = logger.bind(
            job_id=job.id, job_type=job.job_type, attempt=job.attempt, worker_id=self.worker_id
        )
        stop_beating = (lambda: None) if context is not None else None
        if context is None:
            context = self._context(job)
            stop_beating = self._keep_alive([context])
        handler = self.handlers.get(job.job_type)
        started = time.monotonic()

        try:
            if handler is None:
                raise PermanentError(f"no handler for job type {job.job_type!r} in this worker")
            result = handler(dict(job.payload), context)
            outcome = self._record(log, job, started, "complete", result=result)
        except JobCancelled as exc:
            outcome = self._record(log, job, started, "cancelled", error=str(exc))
        except LeaseLost:
            outcome = "lease_lost"
            log.warning("lease lost while running; another worker owns the job now")
        except PermanentError as exc:
            outcome = self._record(log, job, started, "permanent", error=str(exc))
        except RetryableError as exc:
            outcome = self._record(log, job, started, "retryable", error=str(exc))
        except Exception as exc:  # noqa: BLE001 - any handler crash is a retryable failure
            detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            outcome = self._record(log, job, started, "retryable", error=detail)
        finally:
            context.finished = True
            stop_beating()

        _count(summary, outcome)
        return outcome

    def _keep_alive(self, contexts: list[Any]) -> Any:
        """Extend the leases of the given jobs every third of the shortest lease until stopped."""
        leases = [
            (c.job.lease_expires_at - c.job.started_at).total_seconds()
            for c in contexts
            if c.job.lease_expires_at is not None and c.job.started_at is not None
        ]
        interval = max(5.0, min(leases, default=60.0)) / 3
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(interval):
                for context in contexts:
                    if context.finished:
                        continue
                    try:
                        context.keep_alive()
                    except DatabaseError as exc:
                        logger.bind(job_id=context.job_id, worker_id=self.worker_id).warning(
                            "heartbeat failed: {}", type(exc).__name__
                        )

        thread = threading.Thread(target=beat, name="examq-heartbeat", daemon=True)
        thread.start()

        def stop_beating() -> None:
            stop.set()
            thread.join(timeout=5)

        return stop_beating

    def _record(
        self,
        log: Any,
        job: Job,
        started: float,
        how: str,
        *,
        result: Any = None,
        error: str | None = None,
    ) -> str:
        duration = round(time.monotonic() - started, 3)
        try:
            if how == "complete":
                try:
                    answer = self.queue.complete(job, result)
                except InvalidInput as exc:
                    # The handler finished but its result cannot be stored: retrying
                    # would produce the same result, so the job fails for good.
                    how, error = "permanent", f"the job's result cannot be stored: {exc}"
                    answer = self.queue.fail(job, error, "permanent")
            else:
                answer = self.queue.fail(job, error or "", how)  # type: ignore[arg-type]
        except LeaseLost:
            log.warning("lease lost before the outcome was recorded", duration_seconds=duration)
            return "lease_lost"

        outcome = {
            "completed": "succeeded",
            "already_completed": "succeeded",
            "retry_scheduled": "retried",
            "dead": "failed",
            "cancelled": "cancelled",
            "already_failed": "failed",
        }.get(answer.outcome, answer.outcome)
        if outcome == "succeeded":
            log.info("job succeeded", duration_seconds=duration)
        elif outcome == "retried":
            log.warning(
                "job failed; retry scheduled",
                duration_seconds=duration,
                run_at=answer.run_at.isoformat() if answer.run_at else None,
                kind=how,
            )
        else:
            log.warning("job ended {}", outcome, duration_seconds=duration, kind=how)
        return outcome


class _ProgressRelay:
    """Wraps a job context to also tell a local observer (the CLI's progress bar)."""

    def __init__(self, inner: _RunningJob, observer: Any) -> None:
        self._inner = inner
        self._observer = observer
        self.job = inner.job
        self.finished = False
        self.job_id = inner.job_id
        self.job_type = inner.job_type
        self.attempt = inner.attempt

    def report_progress(self, percent: float, message: str = "") -> None:
        self._observer(self._inner.job, percent, message)
        self._inner.report_progress(percent, message)

    def keep_alive(self) -> None:
        self._inner.keep_alive()


def _count(summary: PassSummary, outcome: str) -> None:
    if outcome == "succeeded":
        summary.succeeded += 1
    elif outcome == "retried":
        summary.retried += 1
    elif outcome == "cancelled":
        summary.cancelled += 1
    elif outcome == "lease_lost":
        summary.lease_lost += 1
    else:
        summary.failed += 1
