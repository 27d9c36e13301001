"""The ``examq`` command: demo, submit, work, inspect jobs, and manage the local database."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from examq import local
from examq.config import Backend, Settings, load_settings
from examq.errors import ExamqError, JobNotFound, PermanentError
from examq.handlers.grade import read_text_file
from examq.log import configure_logging
from examq.queue import Job, Queue
from examq.worker import PassSummary, Worker

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
db_app = typer.Typer(no_args_is_help=True, help="Manage the local database.")
app.add_typer(db_app, name="db")

out = Console()
err = Console(stderr=True)

SAMPLES = Path(__file__).resolve().parent / "samples"
FINAL = {"succeeded", "dead", "cancelled"}

# The seeded teachers (supabase/seed.sql), used by the demo when they exist.
DEMO_TEACHERS = {
    "free": "00000000-0000-4000-8000-000000000001",
    "pro": "00000000-0000-4000-8000-000000000002",
    "enterprise": "00000000-0000-4000-8000-000000000003",
}


def _settings(verbose: bool = False) -> Settings:
    settings = load_settings()
    # A person reads the CLI's output: readable lines unless JSON is asked for.
    log_format = "text" if settings.log_format == "auto" else settings.log_format
    configure_logging(log_format, "DEBUG" if verbose else "WARNING")
    return settings


def _queue(settings: Settings) -> Queue:
    return local.open_queue(settings)


@app.command()
def demo(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show log lines.")] = False,
) -> None:
    """Grade the bundled sample exam through the queue and the worker, as the cron would."""
    settings = _settings(verbose)
    where = {
        Backend.EMBEDDED: f"embedded PostgreSQL in {settings.data_dir}",
        Backend.POSTGRES: "the database at DATABASE_URL",
        Backend.SUPABASE: "the Supabase project at SUPABASE_URL",
    }[settings.backend]
    err.print(f"[bold]examq demo[/] on {where}")
    queue = _queue(settings)

    key = read_text_file(SAMPLES / "sample_key.csv")
    responses = read_text_file(SAMPLES / "sample_responses.csv")
    jobs: list[Job] = []
    for tier, user_id in DEMO_TEACHERS.items():
        payload = {"key_csv": key, "responses_csv": responses, "title": f"Sample exam ({tier})"}
        jobs.append(_enqueue_for_demo(queue, payload, user_id, settings))
    broken = {"key_csv": "question,answer\nQ1,A\n", "responses_csv": responses}
    jobs.append(_enqueue_for_demo(queue, broken, DEMO_TEACHERS["pro"], settings))
    err.print(f"enqueued {len(jobs)} exam.grade jobs: {', '.join(str(j.id) for j in jobs)}")

    summary = _work_with_progress(queue, {job.id for job in jobs}, settings)

    table = Table(title="examq demo: sample exam graded through the queue")
    for column in ("job", "tier", "status", "attempts", "students", "mean", "sd", "alpha", "note"):
        table.add_column(column)
    for job in (queue.get(j.id) for j in jobs):
        s = (job.result or {}).get("summary", {})
        table.add_row(
            str(job.id), job.tier, job.status, str(job.attempt),
            _fmt(s.get("students")), _fmt(s.get("mean")), _fmt(s.get("sd")), _fmt(s.get("alpha")),
            (job.last_error or "")[:60],
        )
    out.print(table)
    out.print(
        f"worker pass: claimed {summary.claimed}, succeeded {summary.succeeded}, "
        f"failed {summary.failed}, retried {summary.retried} in {summary.seconds:.2f} s"
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
    return total


@app.command()
def submit(
    job_type: Annotated[str, typer.Argument(help="Job type, e.g. exam.grade.")],
    key: Annotated[Optional[Path], typer.Option(help="Answer key CSV (item,key) for exam.grade.")] = None,
    responses: Annotated[Optional[Path], typer.Option(help="Student responses CSV for exam.grade.")] = None,
    payload: Annotated[Optional[str], typer.Option(help="Payload as a JSON object.")] = None,
    user: Annotated[Optional[str], typer.Option(help="Owner's user id (default: a system job).")] = None,
    idempotency_key: Annotated[Optional[str], typer.Option(help="Enqueue at most once per key.")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Process jobs here until this one finishes.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the job as JSON.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait with --wait.")] = 600.0,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Enqueue one job; with --wait, run the worker here until it finishes."""
    settings = _settings(verbose)
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


def _build_payload(job_type: str, key: Path | None, responses: Path | None, payload: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if payload is not None:
        try:
            body = json.loads(payload)
        except json.JSONDecodeError as exc:
            raise typer.BadParameter(f"not valid JSON: {exc}", param_hint="--payload") from exc
        if not isinstance(body, dict):
            raise typer.BadParameter("must be a JSON object", param_hint="--payload")
    if job_type == "exam.grade" and "key_csv" not in body:
        if key is None or responses is None:
            raise typer.BadParameter("exam.grade needs --key and --responses (or --payload)")
    try:
        if key is not None:
            body["key_csv"] = read_text_file(key)
        if responses is not None:
            body["responses_csv"] = read_text_file(responses)
    except PermanentError as exc:
        raise typer.BadParameter(str(exc)) from exc
    return body


def _print_job(job: Job, as_json: bool) -> None:
    data = job.summary()
    if as_json:
        out.print_json(json.dumps(data))
        return
    out.print(f"job {job.id} ({job.job_type}): {job.status}, attempt {job.attempt}/{job.max_attempts}")
    if job.last_error:
        out.print(f"last error: {job.last_error}")
    if job.result is not None:
        out.print_json(json.dumps(job.result)[:4000])


@app.command()
def work(
    budget: Annotated[float, typer.Option(help="Seconds this pass may take.")] = 50.0,
    loop: Annotated[bool, typer.Option("--loop", help="Keep running passes until interrupted.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = True,
) -> None:
    """Run worker passes, as the cron does (once, or in a loop for a self-hosted worker)."""
    settings = _settings(verbose)
    worker = Worker(_queue(settings), batch_size=settings.worker_batch_size)
    while True:
        summary = worker.run_pass(budget)
        out.print_json(json.dumps(summary.as_dict()))
        if not loop:
            return
        if summary.claimed == 0:
            time.sleep(1.0)


@app.command()
def status(job_id: int, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Show one job."""
    _print_job(_queue(_settings()).get(job_id), as_json)


@app.command()
def cancel(job_id: int, reason: Annotated[Optional[str], typer.Option()] = None) -> None:
    """Cancel a queued job, or ask a running one to stop."""
    answer = _queue(_settings()).cancel(job_id, reason)
    out.print_json(answer.model_dump_json())


@app.command()
def requeue(job_id: int) -> None:
    """Put a dead or cancelled job back in the queue."""
    answer = _queue(_settings()).requeue(job_id)
    out.print_json(answer.model_dump_json())


@db_app.command("reset")
def db_reset() -> None:
    """Recreate examq's schema (stand-in, migrations, seed) on the configured local database."""
    settings = _settings()
    url = local.database_url(settings, prepare=False)
    applied = local.reset_database(url)
    out.print(f"database reset: {len(applied)} migrations applied, seed loaded")


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


def main() -> None:
    """Entry point: run the CLI, turning examq's errors into one clear line."""
    try:
        app()
    except JobNotFound as exc:
        err.print(f"[red]error:[/] {exc}")
        sys.exit(1)
    except ExamqError as exc:
        err.print(f"[red]error:[/] {type(exc).__name__}: {exc}")
        sys.exit(2)
