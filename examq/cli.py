"""The examq command: demo, submit, work, inspect jobs, and manage the local database."""

from __future__ import annotations

import json
import math
import signal
import sys
import time
import uuid
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from loguru import logger
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from examq import local
from examq.config import Backend, Settings, load_settings
from examq.errors import (
    DatabaseError,
    ExamqError,
    JobNotFound,
    PermanentError,
    Unavailable,
    UnknownJobType,
)
from examq.handlers import grade
from examq.handlers.grade import read_text_file
from examq.log import configure_logging
from examq.notify.dispatcher import Dispatcher, DispatchSummary
from examq.notify.outbox import Outbox
from examq.queue import Job, Queue
from examq.worker import PassSummary, Worker, retention_step

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
db_app = typer.Typer(no_args_is_help=True, help="Manage the local database.")
app.add_typer(db_app, name="db")

# Without a terminal (pipes, CI logs) rich would wrap tables at 80 columns.
out = Console(width=None if sys.stdout.isatty() else 120)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 120)

SAMPLES = Path(__file__).resolve().parent / "samples"
FINAL = {"succeeded", "dead", "cancelled"}

# The seeded teachers (supabase/seed.sql), used by the demo when they exist.
DEMO_TEACHERS = {
    "free": "00000000-0000-4000-8000-000000000001",
    "pro": "00000000-0000-4000-8000-000000000002",
    "enterprise": "00000000-0000-4000-8000-000000000003",
}


def _settings(verbose: bool = False, quiet_level: str = "WARNING") -> Settings:
    settings = load_settings()
    # A person reads the CLI's output: readable lines unless JSON is asked for.
    log_format = "text" if settings.log_format == "auto" else settings.log_format
    # Quieter than a function's default unless asked: a level set in the environment
    # (or .env) is the operator's choice, and --verbose shows everything.
    if verbose:
        level = "DEBUG"
    elif "log_level" in settings.model_fields_set:
        level = settings.log_level
    else:
        level = quiet_level
    configure_logging(log_format, level)
    return settings


def _queue(settings: Settings) -> Queue:
    return local.open_queue(settings)


@app.command()
def demo(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show log lines.")] = False,
) -> None:
    """Grade the bundled sample exam through the queue and the worker, as the cron would."""
    # The demo's own table reports each job's outcome; log lines only with -v.
    settings = _settings(verbose, quiet_level="ERROR")
    where = {
        Backend.EMBEDDED: f"embedded PostgreSQL in {settings.data_dir}",
        Backend.POSTGRES: "the database at DATABASE_URL",
        Backend.SUPABASE: "the Supabase project at SUPABASE_URL",
    }[settings.backend]
    err.print(f"[bold]examq demo[/] on {where}")
    queue = _queue(settings)

    _demo_notification_preferences(queue)
    key = read_text_file(SAMPLES / "sample_key.csv")
    responses = read_text_file(SAMPLES / "sample_responses.csv")
    jobs: list[Job] = []
    for tier, user_id in DEMO_TEACHERS.items():
        payload = {"key_csv": key, "responses_csv": responses, "title": f"Sample exam ({tier})"}
        jobs.append(_enqueue_for_demo(queue, payload, user_id, settings))
    broken = {"key_csv": "question,answer\nQ1,A\n", "responses_csv": responses}
    jobs.append(_enqueue_for_demo(queue, broken, DEMO_TEACHERS["pro"], settings))
    err.print(
        f"enqueued {len(jobs)} exam.grade jobs: {', '.join(str(j.id) for j in jobs)} "
        f"(job {jobs[-1].id} has a malformed answer key on purpose: it shows a permanent "
        "failure going straight to the dead-letter queue)"
    )

    summary = _work_with_progress(queue, {job.id for job in jobs}, settings)

    table = Table(title="examq demo: sample exam graded through the queue")
    for column in ("job", "tier", "status", "attempts", "students", "mean", "sd", "alpha", "note"):
        table.add_column(column)
    for job in (queue.get(j.id) for j in jobs):
        s = (job.result or {}).get("summary", {})
        table.add_row(
            str(job.id), job.tier, job.status, str(job.attempt),
            _fmt(s.get("students")), _fmt(s.get("mean")), _fmt(s.get("sd")), _fmt(s.get("alpha")),
            (job.last_error or "")[:200],
        )
    out.print(table)
    out.print(
        f"worker pass: claimed {summary.claimed}, succeeded {summary.succeeded}, "
        f"failed {summary.failed}, retried {summary.retried} in {summary.seconds:.2f} s"
    )

    # The notifications the finished jobs wrote to the outbox, sent as a cron tick
    # would send them after its worker pass.
    sent = Dispatcher(Outbox(queue.transport), settings).run_pass(
        settings.cron_budget_seconds, check_alerts=False
    )
    out.print(_describe_notifications(sent, settings), soft_wrap=True)


def _demo_notification_preferences(queue: Queue) -> None:
    # The demo's jobs finish in well under the default 60 s after which a success is
    # e-mailed, so the seeded teachers ask for an e-mail on every outcome.
    outbox = Outbox(queue.transport)
    for user_id in DEMO_TEACHERS.values():
        try:
            outbox.set_preferences(
                user_id, events=["succeeded", "failed", "cancelled"], success_min_seconds=0
            )
        except ExamqError:
            return  # a database without the seeded teachers: their jobs are system jobs


def _describe_notifications(summary: DispatchSummary, settings: Settings) -> str:
    where = (
        "e-mail sent through SendGrid"
        if settings.sendgrid_api_key is not None
        else f"e-mail written as .eml files to {settings.outbox_path}"
    )
    return (
        f"notifications: sent {summary.sent}, failed {summary.failed}, "
        f"retried {summary.retried}, uncertain {summary.uncertain} ({where})"
    )


def _enqueue_for_demo(queue: Queue, payload: dict[str, Any], user_id: str, settings: Settings) -> Job:
    try:
        return queue.enqueue("exam.grade", payload, user_id=user_id)
    except ExamqError:
        if settings.backend is Backend.EMBEDDED:
            raise
        # A database without the seeded teachers: run the demo as system jobs.
        return queue.enqueue("exam.grade", payload)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _work_with_progress(queue: Queue, job_ids: set[int], settings: Settings) -> PassSummary:
    total = PassSummary()
    with Progress(
        TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>5.1f}%"),
        TextColumn("{task.fields[message]}"), TimeElapsedColumn(), console=err,
    ) as progress:
        bars: dict[int, TaskID] = {}

        def on_progress(job: Job, percent: float, message: str) -> None:
            if job.id not in bars:
                bars[job.id] = progress.add_task(f"job {job.id} {job.job_type}", total=100, message="")
            progress.update(bars[job.id], completed=percent, message=message[:40])

        worker = Worker(queue, batch_size=settings.worker_batch_size, on_progress=on_progress,
                        progress_interval_seconds=0.2)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            summary = worker.run_pass(settings.cron_budget_seconds)
            for field in ("claimed", "succeeded", "failed", "retried", "cancelled", "released", "lease_lost"):
                setattr(total, field, getattr(total, field) + getattr(summary, field))
            total.seconds += summary.seconds
            if all(queue.get(i).status in FINAL for i in job_ids):
                break
            if summary.claimed == 0:
                time.sleep(0.5)
        # Each bar ends with its job's outcome, not where its progress stopped.
        for job_id, bar in bars.items():
            progress.update(bar, message=queue.get(job_id).status)
    return total


@app.command()
def submit(
    job_type: Annotated[str, typer.Argument(help="Job type, e.g. exam.grade.")],
    key: Annotated[Optional[Path], typer.Option(help="Answer key CSV (item,key) for exam.grade.")] = None,
    responses: Annotated[Optional[Path], typer.Option(help="Student responses CSV for exam.grade.")] = None,
    exam: Annotated[Optional[Path], typer.Option(help="Exam file (GIFT, Moodle XML, QTI, key CSV) for exam.pipeline.")] = None,
    exam_format: Annotated[Optional[str], typer.Option("--format", help="Exam format for exam.pipeline (default: detected).")] = None,
    title: Annotated[Optional[str], typer.Option(help="Report title for exam.pipeline.")] = None,
    payload: Annotated[Optional[str], typer.Option(help="Payload as a JSON object.")] = None,
    user: Annotated[Optional[str], typer.Option(help="Owner's user id (default: a system job).")] = None,
    idempotency_key: Annotated[Optional[str], typer.Option(help="Enqueue at most once per key.")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Process jobs here until this one finishes.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the job as JSON.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait with --wait.")] = 600.0,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show debug log lines.")] = False,
) -> None:
    """Enqueue one job; with --wait, run the worker here until it finishes."""
    if not math.isfinite(timeout) or timeout <= 0:
        raise typer.BadParameter("must be a positive number of seconds", param_hint="--timeout")
    if user is not None:
        try:
            uuid.UUID(user)
        except ValueError:
            raise typer.BadParameter(f"must be a user id (a uuid), not {user!r}", param_hint="--user") from None
    settings = _settings(verbose)
    if job_type == "exam.pipeline":
        _submit_pipeline(settings, exam, responses, exam_format, title, user, idempotency_key, wait, as_json, timeout)
        return
    body = _build_payload(job_type, key, responses, payload)
    queue = _queue(settings)
    job = queue.enqueue(job_type, body, user_id=user, idempotency_key=idempotency_key)

    if wait:
        worker = Worker(queue, batch_size=settings.worker_batch_size)
        deadline = time.monotonic() + timeout
        while job.status not in FINAL and time.monotonic() < deadline:
            summary = worker.run_pass(min(settings.cron_budget_seconds, max(1.0, deadline - time.monotonic())))
            job = queue.get(job.id)
            if job.status not in FINAL and summary.claimed == 0:
                time.sleep(0.2)
        if job.status not in FINAL:
            err.print(f"job {job.id} is still {job.status} after {timeout:.0f} s")

    _print_job(job, as_json)
    if wait and job.status != "succeeded":
        raise typer.Exit(1)


def _submit_pipeline(
    settings: Settings, exam: Path | None, responses: Path | None, exam_format: str | None, title: str | None,
    user: str | None, idempotency_key: str | None, wait: bool, as_json: bool, timeout: float,
) -> None:
    """Enqueue the exam chain (check, import, grade, report) and print it; see examq/exam/pipeline_cli.py."""
    from examq.exam.pipeline_cli import submit_pipeline

    if exam is None or responses is None:
        raise typer.BadParameter("exam.pipeline needs --exam and --responses")
    try:
        chain = submit_pipeline(
            _queue(settings), exam=exam, responses=responses, exam_format=exam_format, title=title, user=user,
            idempotency_key=idempotency_key, wait=wait, timeout=timeout,
            budget_seconds=settings.cron_budget_seconds, batch_size=settings.worker_batch_size,
        )
    except PermanentError as exc:
        raise typer.BadParameter(str(exc)) from exc
    if as_json:
        out.print_json(json.dumps(chain))
    else:
        out.print(f"chain {chain['chain_id']}: {chain['status']}")
        for job in chain["jobs"]:
            out.print(f"  job {job['id']} {job['job_type']}: {job['status']}" + (f" ({job['last_error']})" if job["last_error"] else ""))
        if chain["report"]:
            out.print(f"report: {chain['report']['links']['html']}")
    if wait and chain["status"] != "succeeded":
        raise typer.Exit(1)


def _stop_on_sigterm() -> None:
    # SIGTERM (systemd, docker stop) stops a worker like Ctrl-C: the pass gives its
    # unfinished jobs back to the queue before the process exits.
    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def _build_payload(job_type: str, key: Path | None, responses: Path | None, payload: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if payload is not None:
        try:
            body = json.loads(payload)
        except json.JSONDecodeError as exc:
            raise typer.BadParameter(f"not valid JSON: {exc}", param_hint="--payload") from exc
        if not isinstance(body, dict):
            raise typer.BadParameter("must be a JSON object", param_hint="--payload")
    if job_type == "exam.grade":
        missing = [
            name
            for name, flag, given in (("key_csv", "--key", key), ("responses_csv", "--responses", responses))
            if name not in body and given is None
        ]
        if missing:
            raise typer.BadParameter(
                "exam.grade needs --key and --responses (CSV files), or a --payload with "
                f"key_csv and responses_csv (the CSV texts); missing: {', '.join(missing)}"
            )
    try:
        if key is not None:
            body["key_csv"] = read_text_file(key)
        if responses is not None:
            body["responses_csv"] = read_text_file(responses)
    except PermanentError as exc:
        raise typer.BadParameter(str(exc)) from exc
    if job_type == grade.JOB_TYPE and (problem := grade.payload_problem(body)):
        raise typer.BadParameter(problem, param_hint="--payload")
    return body


def _print_line(data: dict[str, Any]) -> None:
    """One compact JSON line on stdout, flushed: a loop's record of a pass."""
    print(json.dumps(data), flush=True)


def _print_job(job: Job, as_json: bool) -> None:
    data = job.summary()
    if as_json:
        out.print_json(json.dumps(data))
        return
    out.print(f"job {job.id} ({job.job_type}): {job.status}, attempt {job.attempt}/{job.max_attempts}")
    if job.status == "running" and job.progress is not None:
        line = f"progress: {job.progress:g}%"
        if job.progress_message:
            line += f" ({job.progress_message})"
        if job.eta_at is not None:
            line += f", expected to finish at {job.eta_at.isoformat(timespec='seconds')}"
        out.print(line, markup=False)
    if job.last_error:
        out.print(f"last error: {job.last_error}")
    if job.result is None:
        return
    summary = job.result.get("summary") if isinstance(job.result, dict) else None
    if isinstance(summary, dict):
        out.print("summary: " + ", ".join(f"{k} {_fmt(v)}" for k, v in summary.items()))
        out.print(f"(the whole result: examq status {job.id} --json)")
        return
    text = json.dumps(job.result, indent=2)
    # Cut the text, not the JSON: a cut document would not parse.
    out.print(text if len(text) <= 4000 else text[:4000] + f"\n... (examq status {job.id} --json shows all)", markup=False)


@app.command()
def work(
    budget: Annotated[float, typer.Option(help="Seconds this pass may take.")] = 50.0,
    loop: Annotated[bool, typer.Option("--loop", help="Keep running passes until interrupted.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show debug log lines.")] = False,
) -> None:
    """Run worker passes, as the cron does (once, or in a loop for a self-hosted worker).

    In a loop, once a minute, it also deletes jobs past retention and records its
    pass as a cron tick (for health and the cron-silence alert), as each cron tick
    does; run `examq notify --loop` beside it for notifications and alerts.
    """
    if not math.isfinite(budget) or budget <= 0:
        raise typer.BadParameter("must be a positive number of seconds", param_hint="--budget")
    settings = _settings(verbose)
    _stop_on_sigterm()
    worker = Worker(
        _queue(settings),
        batch_size=settings.worker_batch_size,
        batch_outcomes=settings.worker_batch_outcomes,
    )
    failures = 0
    next_retention = time.monotonic()
    while True:
        try:
            summary = worker.run_pass(budget)
            failures = 0
        except Unavailable as exc:
            if not loop:
                raise
            # A long-running worker outlives database restarts and network blips:
            # it waits, with backoff, and reconnects on the next pass.
            failures += 1
            pause = min(30.0, 2.0**failures)
            err.print(f"[yellow]database unavailable ({exc}); retrying in {pause:.0f} s[/]")
            time.sleep(pause)
            continue
        if not loop:
            out.print_json(json.dumps(summary.as_dict()))
            return
        # In a loop, one JSON line per pass that did something, as a log reads it;
        # idle passes print nothing.
        if summary.claimed:
            _print_line(summary.as_dict())
        if time.monotonic() >= next_retention:
            next_retention = time.monotonic() + 60
            pruned = retention_step(worker.queue, settings.retention_days)
            if any(pruned.values()):
                _print_line(pruned)
            # A worker loop stands in for the cron: health and the cron-silence
            # alert read its passes as ticks.
            try:
                Outbox(worker.queue.transport).record_cron_tick(
                    {**summary.as_dict(), "by": "examq work --loop"}
                )
            except DatabaseError as exc:
                logger.warning("recording the tick failed: {}", type(exc).__name__)
        if summary.claimed == 0:
            time.sleep(1.0)


@app.command()
def notify(
    budget: Annotated[float, typer.Option(help="Seconds this pass may take.")] = 50.0,
    loop: Annotated[
        bool, typer.Option("--loop", help="Keep running passes until interrupted.")
    ] = False,
    alerts: Annotated[
        bool, typer.Option("--alerts/--no-alerts", help="Check the admin alerts first.")
    ] = True,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show debug log lines.")] = False,
) -> None:
    """Send pending notifications and check the admin alerts, as each cron tick does."""
    # Each notification sent, refused or retried is an INFO line worth seeing here.
    settings = _settings(verbose, quiet_level="INFO")
    dispatcher = Dispatcher(Outbox(_queue(settings).transport), settings)
    failures = 0
    while True:
        try:
            summary = dispatcher.run_pass(budget, check_alerts=alerts)
            failures = 0
        except Unavailable as exc:
            if not loop:
                raise
            failures += 1
            pause = min(30.0, 2.0**failures)
            err.print(f"[yellow]database unavailable ({exc}); retrying in {pause:.0f} s[/]")
            time.sleep(pause)
            continue
        if not loop:
            out.print_json(json.dumps(summary.as_dict()))
            return
        if summary.claimed:
            _print_line(summary.as_dict())
        if summary.claimed == 0:
            time.sleep(1.0)


@app.command()
def status(job_id: int, as_json: Annotated[bool, typer.Option("--json", help="Print the job as JSON.")] = False) -> None:
    """Show one job."""
    _print_job(_queue(_settings()).get(job_id), as_json)


@app.command()
def cancel(
    job_id: int,
    reason: Annotated[Optional[str], typer.Option()] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the answer as JSON.")] = False,
) -> None:
    """Cancel a queued job, or ask a running one to stop."""
    _print_outcome(_queue(_settings()).cancel(job_id, reason), as_json)


@app.command()
def requeue(
    job_id: int,
    as_json: Annotated[bool, typer.Option("--json", help="Print the answer as JSON.")] = False,
) -> None:
    """Put a dead or cancelled job back in the queue."""
    _print_outcome(_queue(_settings()).requeue(job_id), as_json)


# What each outcome of cancel_job and requeue_job means, in a line.
_OUTCOME_TEXT = {
    "cancelled": "cancelled",
    "cancel_requested": "asked to stop; its worker sees it at the next heartbeat",
    "chain_cancelled": "its chain's waiting and queued steps are cancelled",
    "already_finished": "had already finished; nothing to cancel",
    "requeued": "back in the queue",
}


def _print_outcome(answer: Any, as_json: bool) -> None:
    if as_json:
        out.print_json(answer.model_dump_json())
        return
    said = _OUTCOME_TEXT.get(answer.outcome, answer.outcome.replace("_", " "))
    if answer.outcome == "requeued" and answer.status == "waiting":
        said = "requeued; it waits for the step before it in its chain"
    out.print(f"job {answer.job_id}: {said} (status {answer.status})")


@app.command()
def dev(
    host: Annotated[str, typer.Option(help="Interface to listen on (loopback by default).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port; 0 picks a free one.")] = 8000,
    cron: Annotated[bool, typer.Option("--cron/--no-cron", help="Fire vercel.json's crons on schedule.")] = True,
    build: Annotated[bool, typer.Option("--build/--no-build", help="Build the dashboard first.")] = True,
    static_dir: Annotated[
        Optional[Path], typer.Option(help="Serve this built dashboard instead of dashboard/dist.")
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show debug log lines.")] = False,
) -> None:
    """Serve the dashboard, a local Supabase API stand-in and /api/cron, and fire the crons."""
    from examq import dev as dev_server

    settings = load_settings()
    log_format = "text" if settings.log_format == "auto" else settings.log_format
    configure_logging(log_format, "DEBUG" if verbose else "INFO")
    url = local.database_url(settings)
    # The message names the option that chose the folder: --static-dir when given,
    # else --no-build (dashboard/dist served as it is), else the build itself.
    build_it = "build it with `npm ci --prefix dashboard` and `examq dev` (without --no-build)"
    if static_dir is not None:
        hint, fix = "--static-dir", "point it at the folder the dashboard was built into"
    elif build:
        hint, fix = None, build_it
        static_dir = dev_server.build_dashboard()
    else:
        hint, fix = "--no-build", build_it
        static_dir = dev_server.DASHBOARD_DIR / "dist"
    if not (static_dir / "index.html").is_file():
        raise typer.BadParameter(f"{static_dir} holds no built dashboard (index.html); {fix}", param_hint=hint)
    dev_server.run(
        url,
        host=host,
        port=port,
        cron_secret=settings.cron_secret.get_secret_value() if settings.cron_secret else None,
        cron_budget_seconds=settings.cron_budget_seconds,
        fire_crons=cron,
        static_dir=static_dir,
    )


@app.command()
def load(
    rate: Annotated[float, typer.Option(help="Jobs submitted per second.")] = 50.0,
    seconds: Annotated[float, typer.Option(help="How long to submit.")] = 30.0,
    teachers: Annotated[int, typer.Option(help="Simulated teachers, spread over the tiers.")] = 30,
    workers: Annotated[int, typer.Option(help="Worker processes.")] = 2,
    batch: Annotated[int, typer.Option(help="Jobs each worker claims per round trip.")] = 20,
    failures: Annotated[float, typer.Option(help="Fraction of submissions made malformed on purpose.")] = 0.0,
    drain: Annotated[float, typer.Option(help="Seconds to wait for the backlog after submitting.")] = 120.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Load test: simulated teachers submit exam.grade jobs while workers run them."""
    from rich.live import Live

    from examq.load import run_load

    if not 0 <= failures <= 1:
        raise typer.BadParameter("must be between 0 and 1", param_hint="--failures")
    checks = (
        ("--rate", rate > 0 and math.isfinite(rate), "must be a positive number of jobs per second"),
        ("--seconds", seconds > 0 and math.isfinite(seconds), "must be a positive number of seconds"),
        ("--drain", drain >= 0 and math.isfinite(drain), "must be zero or a positive number of seconds"),
        ("--workers", workers >= 1, "needs at least one worker process"),
        ("--batch", 1 <= batch <= 1000, "must be between 1 and 1000"),
        # One teacher per tier at least: the run checks that every tier is served.
        ("--teachers", teachers >= 3, "needs at least 3 teachers, one per tier"),
    )
    for hint, ok, message in checks:
        if not ok:
            raise typer.BadParameter(message, param_hint=hint)
    settings = _settings()
    url = local.database_url(settings)
    err.print(
        f"[bold]examq load[/]: {rate:g} jobs/s for {seconds:g} s from {teachers} teachers, "
        f"{workers} worker processes, {failures:.0%} malformed"
    )

    def view(report: Any, statuses: dict[str, int], elapsed: float) -> Table:
        table = Table(title=f"examq load {report.run_id}: {elapsed:5.1f} s")
        for column in ("submitted", "refused", "queued", "running", "succeeded", "dead", "rate/s"):
            table.add_column(column, justify="right")
        table.add_row(
            str(report.submitted), str(report.refused), str(statuses.get("queued", 0)),
            str(statuses.get("running", 0)), str(statuses.get("succeeded", 0)),
            str(statuses.get("dead", 0)), f"{statuses.get('succeeded', 0) / max(elapsed, 0.001):.1f}",
        )
        return table

    with Live(console=err, refresh_per_second=4, transient=True) as live:
        report = run_load(
            url, rate=rate, seconds=seconds, teachers=teachers, workers=workers, batch=batch,
            failure_fraction=failures, drain_seconds=drain,
            on_tick=lambda r, s, e: live.update(view(r, s, e)),
        )

    if as_json:
        out.print_json(json.dumps(report.as_dict(), default=str))
        return
    _print_load_report(report)
    unserved = [t for t in ("free", "pro", "enterprise") if report.tiers.get(t, {}).get("succeeded", 0) == 0]
    problems = []
    if unserved:
        problems.append(f"no job of the {', '.join(unserved)} tier succeeded")
    if report.dead != report.dead_malformed:
        problems.append(
            f"{report.dead - report.dead_malformed} dead letters besides the malformed submissions"
        )
    if problems:
        err.print(f"[red]load check failed:[/] {'; '.join(problems)}")
        raise typer.Exit(1)


def _print_load_report(report: Any) -> None:
    done = report.statuses.get("succeeded", 0)
    out.print(
        f"submitted {report.submitted} jobs in {report.elapsed:.1f} s "
        f"({report.submitted / max(report.elapsed, 0.001):.1f}/s offered), refused {report.refused} "
        f"(quota), {report.malformed} malformed on purpose"
    )
    out.print(
        f"succeeded {done}, throughput {report.throughput:.1f} jobs/s "
        f"(first submission to last finish: {report.finished_at_seconds:.1f} s); "
        f"retries {report.retries} (handler failures), lease expirations {report.lease_expirations}, "
        f"released unstarted at a pass's end {report.released}; dead letters {report.dead} "
        f"({report.dead_malformed} of them the malformed ones); "
        f"left unfinished {report.statuses.get('queued', 0) + report.statuses.get('running', 0)}"
    )
    table = Table(title="Latency by tier, seconds (wait = enqueue to start; total = enqueue to finish)")
    for column in ("tier", "jobs", "succeeded", "wait p50", "wait p95", "wait p99", "wait max",
                   "total p50", "total p95", "total p99"):
        table.add_column(column, justify="right" if column != "tier" else "left")
    for tier, row in report.tiers.items():
        wait, total = row["wait_s"] or [None] * 4, row["total_s"] or [None] * 4
        table.add_row(tier, str(row["jobs"]), str(row["succeeded"]), *(_fmt(x) for x in wait),
                      *(_fmt(x) for x in total[:3]))
    out.print(table)


@db_app.command("reset")
def db_reset(
    yes: Annotated[bool, typer.Option("--yes", help="Confirm resetting the DATABASE_URL database.")] = False,
) -> None:
    """Recreate the database: drop its public schema, then migrations (and the seed, embedded only)."""
    settings = _settings()
    if settings.backend is Backend.POSTGRES and not yes:
        err.print(
            "[red]error:[/] db reset drops the public schema (every job) of the database at "
            "DATABASE_URL; run it again with --yes if that is what you want"
        )
        raise typer.Exit(2)
    url = local.database_url(settings, prepare=False)
    # As everywhere else: the demo users only ever go into the embedded database.
    seed = settings.backend is Backend.EMBEDDED
    applied = local.reset_database(url, seed=seed)
    out.print(f"database reset: {len(applied)} migrations applied" + (", seed loaded" if seed else ""))


@db_app.command("migrate")
def db_migrate() -> None:
    """Apply the migrations not yet applied to the configured database."""
    settings = _settings()
    url = local.database_url(settings, prepare=False)
    applied = local.apply_schema(url, seed=settings.backend is Backend.EMBEDDED)
    out.print(f"{len(applied)} migrations applied" + (f": {', '.join(applied)}" if applied else ""))


@db_app.command("url")
def db_url() -> None:
    """Print the connection URL of the configured local database."""
    out.print(local.database_url(_settings(), prepare=False), soft_wrap=True)


@db_app.command("stop")
def db_stop() -> None:
    """Stop the embedded PostgreSQL server."""
    stopped = local.stop_embedded(_settings())
    out.print("embedded server stopped" if stopped else "no embedded server was running")


def _known_job_types_hint(message: str) -> str:
    """What to say after an unknown job type: the closest built-in type, and all of them."""
    import difflib
    import re

    from examq.handlers import registry

    if not message.startswith("unknown job type"):
        return ""  # a known type this tier may not use: the message says so
    known = sorted(registry())
    named = re.search(r"'((?:[^']|'')*)'", message)
    close = difflib.get_close_matches(named.group(1).replace("''", "'"), known, n=1) if named else []
    hint = f"; did you mean {close[0]}?" if close else ""
    return f"{hint} (built-in job types: {', '.join(known)})"


def main() -> None:
    """Entry point: run the CLI, turning examq's errors into one clear line."""
    try:
        app()
    except JobNotFound as exc:
        err.print(f"[red]error:[/] {exc}")
        sys.exit(1)
    except UnknownJobType as exc:
        err.print(f"[red]error:[/] {exc}{_known_job_types_hint(str(exc))}")
        sys.exit(2)
    except ExamqError as exc:
        err.print(f"[red]error:[/] {exc}")
        sys.exit(2)
