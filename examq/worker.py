"""The worker: one pass of claim, run, record, within a time budget.

A pass is what a cron tick (or a kick after an enqueue) runs. It claims small
batches while enough of its budget is left, runs each job's handler, and records the
outcome with ``complete_job`` or ``fail_job``. A background thread extends the lease
of the running job, so a long handler keeps it. The jobs of a claim waiting behind a
long one are given back, without using an attempt, once a third of their lease has
gone by or the budget is nearly spent, even while that job still runs. If the process
dies, the lease expires and the next claim takes the job over: nothing is lost.

With ``batch_outcomes`` the worker is built for many short jobs: it claims with
``claim_job_batch`` and records the successes of a batch with one ``complete_jobs``
call (failures are still recorded one by one, at once). A success is recorded at the
latest when its batch ends, ``flush_seconds`` after it, or at the next heartbeat
tick, whichever comes first. Delivery stays at-least-once: a worker that dies after
running jobs and before recording them leaves them ``running``, and once their
leases expire they are claimed and run again. Handlers must tolerate a repeat (as
they must anyway: any worker can die between the work and the record).
"""

from __future__ import annotations

import math
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
    InvalidState,
    JobCancelled,
    LeaseLost,
    PermanentError,
    RetryableError,
    Unavailable,
)
from examq.handlers import Handler, registry
from examq.queue import Heartbeat, Job, Queue, check_storable


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


def retention_step(queue: Queue, retention_days: float, limit: int = 1000) -> dict[str, int]:
    """Delete up to ``limit`` finished jobs and as many admin notifications past retention.

    Bounded, so no tick or loop iteration is ever long: a backlog of old jobs drains
    over a few steps. A failure is logged and counts as nothing deleted; the rows it
    would delete are finished and wait for the next step.
    """
    pruned = {"pruned": 0, "pruned_notifications": 0}
    try:
        pruned["pruned"] = queue.prune(retention_days, limit=limit)
        pruned["pruned_notifications"] = queue.prune_notifications(retention_days, limit=limit)
    except DatabaseError as exc:
        logger.warning("retention step failed ({}): {}", type(exc).__name__, exc)
    return pruned


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
        try:
            value: float | None = float(percent)
        except (TypeError, ValueError):
            value = None
        if value is not None and not math.isfinite(value):
            value = None  # a NaN or infinite figure says nothing; the lease is still extended
        self._beat(
            progress=None if value is None else max(0.0, min(100.0, value)), message=message or None
        )
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
            except Unavailable as exc:
                # A lost heartbeat costs nothing while the lease lasts; the next one
                # reconnects. Only a lost lease stops the job.
                logger.bind(job_id=self.job_id).warning("heartbeat not delivered: {}", type(exc).__name__)
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
        batch_outcomes: bool = False,
        flush_seconds: float = 0.25,
    ) -> None:
        self.batch_outcomes = batch_outcomes
        self.flush_seconds = flush_seconds
        self.queue = queue
        self.handlers = handlers if handlers is not None else registry()
        self.worker_id = worker_id or default_worker_id()
        self.batch_size = batch_size
        self.job_types = job_types if job_types is not None else sorted(self.handlers)
        self.progress_interval_seconds = progress_interval_seconds
        self.on_progress = on_progress

    def run_pass(self, budget_seconds: float, *, max_jobs: int | None = None) -> PassSummary:
        """Claim and run jobs until the queue is empty or the budget is nearly spent."""
        if self.batch_outcomes:
            return self._run_batched_pass(budget_seconds, max_jobs=max_jobs)
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
            # their turn are kept alive too until they start or go back to the queue.
            contexts = {job.id: self._context(job) for job in jobs}
            stop_beating = self._keep_alive(list(contexts.values()))
            backlog = _Backlog(
                self,
                jobs,
                release_at=self._release_moment(jobs, deadline, budget_seconds),
                log=log,
                on_release=lambda released: [
                    setattr(contexts[job.id], "finished", True) for job in released
                ],
            )
            running: Job | None = None
            started_any = False
            try:
                while True:
                    # The first job of a claim always runs; the others only in time.
                    if started_any and backlog.overdue():
                        backlog.release_now()
                        break
                    running = backlog.take()
                    if running is None:
                        break
                    started_any = True
                    self.run_job(running, summary, context=contexts[running.id])
                    running = None
            except KeyboardInterrupt:
                # Stopped (Ctrl-C, SIGTERM): the interrupted job and those not started
                # go back to the queue at once instead of waiting out their leases.
                if running is not None:
                    contexts[running.id].finished = True
                    backlog.put_back(running)
                backlog.release_now()
                raise
            finally:
                backlog.close(summary)
                stop_beating()

        summary.seconds = time.monotonic() - started
        log.info("worker pass finished", **summary.as_dict())
        return summary

    @staticmethod
    def _claim_margin(budget_seconds: float) -> float:
        # Stop claiming when less than a fifth of the budget (at most 10 s) is left, so
        # the last job has time to finish before the function is stopped.
        return min(10.0, budget_seconds / 5)

    def _release_moment(self, jobs: list[Job], deadline: float, budget_seconds: float) -> float:
        """When the unstarted jobs of a claim go back: the budget nearly spent, or a third
        of their shortest lease gone by, whichever comes first (monotonic time)."""
        lease_seconds = min(_lease_seconds(job) for job in jobs)
        return min(deadline - self._claim_margin(budget_seconds), time.monotonic() + lease_seconds / 3)

    def _release_rest(self, jobs: list[Job], summary: PassSummary, log: Any) -> None:
        # One call for the whole rest of a batch: hundreds of short jobs given back one
        # transaction each would take longer than running them.
        for start in range(0, len(jobs), 1000):
            for outcome in self.queue.release_many(jobs[start : start + 1000]):
                if outcome.outcome == "released":
                    summary.released += 1
                elif outcome.outcome == "cancelled":
                    summary.cancelled += 1
                else:
                    summary.lease_lost += 1
        log.info("released unstarted jobs", released=len(jobs))

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
                    answer = _with_reconnects(lambda: self.queue.complete(job, result))
                except InvalidInput as exc:
                    # The handler finished but its result cannot be stored: retrying
                    # would produce the same result, so the job fails for good.
                    how, error = "permanent", f"the job's result cannot be stored: {exc}"
                    answer = _with_reconnects(lambda: self.queue.fail(job, error or "", "permanent"))
            else:
                answer = _with_reconnects(lambda: self.queue.fail(job, error or "", how))  # type: ignore[arg-type]
        except LeaseLost:
            log.warning("lease lost before the outcome was recorded", duration_seconds=duration)
            return "lease_lost"
        except InvalidState as exc:
            # An earlier call whose answer was lost already ended the job (the
            # connection broke after the commit): the job's state stands as it is.
            log.warning("outcome already recorded: {}", exc, duration_seconds=duration)
            return "succeeded" if "succeeded" in str(exc) else "failed"

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

    def _run_batched_pass(self, budget_seconds: float, *, max_jobs: int | None) -> PassSummary:
        """run_pass for many short jobs: large claims, successes recorded per batch."""
        started = time.monotonic()
        deadline = started + budget_seconds
        margin = self._claim_margin(budget_seconds)
        summary = PassSummary()
        log = logger.bind(worker_id=self.worker_id)
        recorder = _BatchRecorder(self, summary)

        try:
            while time.monotonic() < deadline - margin:
                want = self.batch_size
                if max_jobs is not None:
                    want = min(want, max_jobs - summary.claimed)
                    if want <= 0:
                        break
                jobs = self.queue.claim_batch(self.worker_id, want, job_types=self.job_types)
                if not jobs:
                    break
                summary.claimed += len(jobs)
                lease_seconds = min(_lease_seconds(job) for job in jobs)
                recorder.set_tick(lease_seconds / 3)
                backlog = _Backlog(
                    self, jobs, release_at=self._release_moment(jobs, deadline, budget_seconds), log=log
                )
                running: Job | None = None
                started_any = False
                try:
                    while True:
                        # Jobs not started within a third of their lease, or once the
                        # budget is nearly spent, go back to the queue unused.
                        if started_any and backlog.overdue():
                            recorder.flush()
                            backlog.release_now()
                            break
                        running = backlog.take()
                        if running is None:
                            break
                        started_any = True
                        recorder.run(running)
                        running = None
                except KeyboardInterrupt:
                    # Stopped: record what finished, give back the rest at once.
                    recorder.flush()
                    if running is not None:
                        backlog.put_back(running)
                    backlog.release_now()
                    raise
                finally:
                    backlog.close(summary)
                recorder.flush()
        finally:
            recorder.close()

        summary.seconds = time.monotonic() - started
        log.info("worker pass finished", **summary.as_dict())
        return summary


class _Backlog:
    """The jobs of one claim that have not started, given back if they wait too long.

    A pass runs the jobs of a claim one after another, so a long job holds the jobs
    behind it: they stay ``running``, counted against their owners' caps and out of
    every other worker's reach, and if the process is stopped meanwhile (a function
    past its maximum duration) their leases expire and each loses an attempt it never
    used. A timer gives back, with their attempts, the jobs still waiting at
    ``release_at``: when the pass's budget is nearly spent or a third of their lease
    has gone by. The pass takes its jobs from here, so a job is either started or
    given back, never both.
    """

    def __init__(
        self,
        worker: Worker,
        jobs: list[Job],
        *,
        release_at: float,
        log: Any,
        on_release: Any = None,
    ) -> None:
        self._worker = worker
        self._waiting = list(reversed(jobs))  # popped from the end: claim order
        self._release_at = release_at
        self._log = log
        self._on_release = on_release
        self._lock = threading.Lock()
        self._closed = threading.Event()
        # The timer's own counts, added to the pass's by close(): two threads must not
        # update one summary.
        self._released = PassSummary()
        self._thread: threading.Thread | None = None
        if len(jobs) > 1:
            self._thread = threading.Thread(target=self._wait, name="examq-backlog", daemon=True)
            self._thread.start()

    def take(self) -> Job | None:
        """The next job to start, or None when none is left (or they were given back)."""
        with self._lock:
            return self._waiting.pop() if self._waiting else None

    def put_back(self, job: Job) -> None:
        """Return a taken job, to be released with the rest."""
        with self._lock:
            self._waiting.append(job)

    def overdue(self) -> bool:
        return time.monotonic() >= self._release_at

    def release_now(self, summary: PassSummary | None = None) -> None:
        """Give back every job still waiting, in one call."""
        with self._lock:
            jobs, self._waiting = list(reversed(self._waiting)), []
        if not jobs:
            return
        if self._on_release is not None:
            self._on_release(jobs)
        self._worker._release_rest(jobs, summary or self._released, self._log)

    def _wait(self) -> None:
        if self._closed.wait(max(0.0, self._release_at - time.monotonic())):
            return
        try:
            self.release_now()
        except DatabaseError as exc:
            # Their leases run out instead, and the jobs are claimed again then.
            self._log.warning("giving back unstarted jobs failed: {}", type(exc).__name__)

    def close(self, summary: PassSummary) -> None:
        """Stop the timer and add what it gave back to ``summary``."""
        self._closed.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        summary.released += self._released.released
        summary.cancelled += self._released.cancelled
        summary.lease_lost += self._released.lease_lost


def _lease_seconds(job: Job) -> float:
    if job.lease_expires_at is not None and job.started_at is not None:
        return max(5.0, (job.lease_expires_at - job.started_at).total_seconds())
    return 60.0


class _BatchRecorder:
    """Runs a batched pass's jobs and records their successes together.

    Successes wait in ``pending`` until ``flush`` sends them with one
    ``complete_jobs`` call; failures are recorded at once with ``fail_job``. A
    background thread ticks every third of the shortest lease of the batch: it
    records what is pending and extends the lease of a job that is still running, so
    neither a slow job nor the successes waiting behind it lose their leases.
    """

    def __init__(self, worker: Worker, summary: PassSummary) -> None:
        self.worker = worker
        self.summary = summary
        self.pending: list[tuple[Job, Any, Any, float, float]] = []
        self._lock = threading.Lock()
        self._current: Any = None
        self._current_since = 0.0
        self._tick = 20.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="examq-batch-heartbeat", daemon=True)
        self._thread.start()

    def set_tick(self, seconds: float) -> None:
        self._tick = max(1.0, seconds)

    def run(self, job: Job) -> None:
        """Run one job: its success joins ``pending``, its failure is recorded now."""
        worker = self.worker
        log = logger.bind(
            job_id=job.id, job_type=job.job_type, attempt=job.attempt, worker_id=worker.worker_id
        )
        context: Any = _RunningJob(worker.queue, job, worker.progress_interval_seconds)
        if worker.on_progress is not None:
            context = _ProgressRelay(context, worker.on_progress)
        handler = worker.handlers.get(job.job_type)
        started = time.monotonic()
        with self._lock:
            self._current, self._current_since = context, started

        try:
            if handler is None:
                raise PermanentError(f"no handler for job type {job.job_type!r} in this worker")
            result = handler(dict(job.payload), context)
            check_storable("result", result)
        except InvalidInput as exc:
            self._fail(log, job, started, "permanent", f"the job's result cannot be stored: {exc}")
        except JobCancelled as exc:
            self._fail(log, job, started, "cancelled", str(exc))
        except LeaseLost:
            log.warning("lease lost while running; another worker owns the job now")
            self._count("lease_lost")
        except PermanentError as exc:
            self._fail(log, job, started, "permanent", str(exc))
        except RetryableError as exc:
            self._fail(log, job, started, "retryable", str(exc))
        except Exception as exc:  # noqa: BLE001 - any handler crash is a retryable failure
            detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            self._fail(log, job, started, "retryable", detail)
        else:
            finished = time.monotonic()
            with self._lock:
                self.pending.append((job, result, log, finished - started, finished))
                oldest = self.pending[0][4]
            if finished - oldest >= self.worker.flush_seconds:
                self.flush()
        finally:
            with self._lock:
                self._current = None

    def _fail(self, log: Any, job: Job, started: float, how: str, error: str) -> None:
        outcome = self.worker._record(log, job, started, how, error=error)
        self._count(outcome)

    def _count(self, outcome: str) -> None:
        with self._lock:
            _count(self.summary, outcome)

    def flush(self) -> None:
        """Record every pending success with one complete_jobs call."""
        with self._lock:
            items, self.pending = self.pending, []
        if not items:
            return
        # complete_jobs is idempotent under a lease (a repeat says already_completed), so
        # a call cut off by a lost connection is simply made again, after a reconnect.
        # If the database stays away the jobs stay running, and their leases expire.
        for delay in (0.2, 1.0, 3.0, None):
            try:
                answers = self.worker.queue.complete_many(
                    [(job, result) for job, result, *_ in items], checked=True
                )
                break
            except Unavailable:
                if delay is None:
                    raise
                logger.bind(worker_id=self.worker.worker_id).warning(
                    "recording {} successes failed; retrying in {} s", len(items), delay
                )
                time.sleep(delay)

        for (_job, _result, log, duration, _at), answer in zip(items, answers, strict=True):
            if answer.outcome in ("completed", "already_completed"):
                log.info("job succeeded", duration_seconds=round(duration, 3))
                self._count("succeeded")
            else:
                log.warning(
                    "lease lost before the outcome was recorded",
                    duration_seconds=round(duration, 3),
                    outcome=answer.outcome,
                    status=answer.status,
                )
                self._count("lease_lost")

    def _beat(self) -> None:
        while not self._stop.wait(self._tick):
            try:
                self.flush()
                with self._lock:
                    context, since = self._current, self._current_since
                if context is not None and time.monotonic() - since >= self._tick:
                    context.keep_alive()
            except DatabaseError as exc:
                logger.bind(worker_id=self.worker.worker_id).warning(
                    "batch heartbeat failed: {}", type(exc).__name__
                )

    def close(self) -> None:
        """Stop the heartbeat thread; whatever is still pending is recorded first."""
        self._stop.set()
        self._thread.join(timeout=10)
        self.flush()


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


def _with_reconnects(call: Any, attempts: int = 3) -> Any:
    """Run a recording call, retrying on a broken connection.

    Every recording call is a compare-and-set under the lease, so repeating one whose
    answer was lost is safe: the repeat reports what the first one did.
    """
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except Unavailable:
            if attempt == attempts:
                raise
            time.sleep(0.2 * 2**attempt)


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
