"""``examq load``: a load scenario for operators, on a local or self-hosted database.

Simulated teachers, spread over the tiers, submit ``exam.grade`` jobs on the bundled
sample exam (``examq/samples``) at a chosen rate for a chosen time, one job per call
as an app would, while worker processes run them (``Worker`` with batched outcomes).
A live display shows what is submitted, running and finished; the report at the end
gives throughput, per-tier latency (enqueue to start, and to finish), retries, dead
letters and refusals. A fraction of the submissions can be malformed on purpose (an
answer key without its ``key`` column): those must end in the dead-letter queue at
once, and nothing else may.

The teachers are users created for the scenario (``load-<n>@examq.invalid``, ids
``00000000-0000-4000-c000-...``) with the tiers' real limits and e-mail notifications
off (they have no mailbox); they and their jobs stay after the run, like any
teacher's, until retention removes the jobs. The scenario writes
rows through a direct connection, so it refuses the Supabase API backend.
"""

from __future__ import annotations

import multiprocessing as mp
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import psycopg

from examq.errors import ExamqError, QuotaExceeded

TIERS = ("free", "pro", "enterprise")


def teacher_id(index: int) -> str:
    """The uuid of load teacher ``index`` (0-based)."""
    return f"00000000-0000-4000-c000-{index + 1:012d}"


@dataclass
class LoadReport:
    """What a load run did and saw."""

    run_id: str
    rate: float
    seconds: float
    teachers: int
    workers: int
    submitted: int = 0
    refused: int = 0
    malformed: int = 0
    elapsed: float = 0.0
    finished_at_seconds: float = 0.0
    statuses: dict[str, int] = field(default_factory=dict)
    tiers: dict[str, dict[str, Any]] = field(default_factory=dict)
    retries: int = 0
    lease_expirations: int = 0
    released: int = 0
    dead: int = 0
    dead_malformed: int = 0

    @property
    def throughput(self) -> float:
        """Jobs succeeded per second, from the first submission to the last finish."""
        done = self.statuses.get("succeeded", 0)
        return done / self.finished_at_seconds if self.finished_at_seconds else 0.0

    def as_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in self.__dict__.items()}
        data["throughput_per_second"] = round(self.throughput, 1)
        return data


def ensure_teachers(url: str, count: int) -> list[tuple[str, str]]:
    """Create (or keep) ``count`` load teachers, tiers in turn; returns (id, tier)."""
    teachers = [(teacher_id(i), TIERS[i % len(TIERS)]) for i in range(count)]
    with psycopg.connect(url, autocommit=True) as conn:
        for user_id, tier in teachers:
            conn.execute(
                "insert into auth.users (id, aud, role, email) values (%s, 'authenticated', "
                "'authenticated', %s) on conflict (id) do nothing",
                (user_id, f"load-{user_id[-6:]}@examq.invalid"),
            )
            conn.execute(
                "insert into public.accounts (user_id, tier) values (%s, %s) "
                "on conflict (user_id) do update set tier = excluded.tier",
                (user_id, tier),
            )
            # Simulated teachers have no mailbox: their jobs' outcomes (the injected
            # failures above all) must not fill the outbox with e-mails to nowhere.
            conn.execute(
                "insert into public.notification_preferences (user_id, email_enabled) "
                "values (%s, false) on conflict (user_id) do update set email_enabled = false",
                (user_id,),
            )
    return teachers


def _worker_process(url: str, batch: int, stop: Any) -> None:
    from examq.db import PsycopgTransport
    from examq.log import configure_logging
    from examq.queue import Queue
    from examq.worker import Worker

    configure_logging("json", "ERROR", force=True)
    queue = Queue(PsycopgTransport(url, application_name="examq-load-worker"))
    worker = Worker(
        queue, batch_size=batch, batch_outcomes=True, job_types=["exam.grade"]
    )
    while not stop.is_set():
        try:
            summary = worker.run_pass(60)
        except ExamqError:
            stop.wait(0.2)
            continue
        if summary.claimed == 0:
            stop.wait(0.05)
    queue.transport.close()


def snapshot(conn: psycopg.Connection, users: list[str], since: Any) -> dict[str, int]:
    """Counts by status of the run's jobs."""
    rows = conn.execute(
        "select status::text, count(*) from public.jobs "
        "where user_id = any(%s::uuid[]) and created_at >= %s group by 1",
        (users, since),
    ).fetchall()
    return dict(rows)


def run_load(
    url: str,
    *,
    rate: float,
    seconds: float,
    teachers: int,
    workers: int,
    batch: int,
    failure_fraction: float,
    drain_seconds: float,
    seed: int = 1,
    on_tick: Any = None,
) -> LoadReport:
    """Submit, work and wait; returns the report. ``on_tick(report, statuses)`` shows progress."""
    from pathlib import Path

    from examq.db import PsycopgTransport
    from examq.handlers.grade import read_text_file
    from examq.queue import Queue

    samples = Path(__file__).resolve().parent / "samples"
    key = read_text_file(samples / "sample_key.csv")
    responses = read_text_file(samples / "sample_responses.csv")
    broken_key = "question,answer\nq01,A\n"
    people = ensure_teachers(url, teachers)
    users = [u for u, _ in people]
    rng = random.Random(seed)
    report = LoadReport(
        run_id=uuid.uuid4().hex[:8],
        rate=rate,
        seconds=seconds,
        teachers=teachers,
        workers=workers,
    )

    with psycopg.connect(url, autocommit=True) as watch:
        since = watch.execute("select now()").fetchone()[0]
        ctx = mp.get_context("spawn")
        stop = ctx.Event()
        procs = [
            ctx.Process(target=_worker_process, args=(url, batch, stop), daemon=True)
            for _ in range(workers)
        ]
        for proc in procs:
            proc.start()

        queue = Queue(PsycopgTransport(url, application_name="examq-load-submit"))
        started = time.monotonic()
        total = int(rate * seconds)
        next_tick = started
        try:
            for n in range(total):
                due = started + n / rate
                now = time.monotonic()
                if due > now:
                    time.sleep(due - now)
                user_id, _tier = people[rng.randrange(len(people))]
                malformed = rng.random() < failure_fraction
                payload = {
                    "key_csv": broken_key if malformed else key,
                    "responses_csv": responses,
                    "title": f"load {report.run_id} #{n}",
                    "load_run": report.run_id,
                }
                if malformed:
                    payload["load_malformed"] = True
                try:
                    queue.enqueue("exam.grade", payload, user_id=user_id)
                    report.submitted += 1
                    report.malformed += malformed
                except QuotaExceeded:
                    report.refused += 1
                if on_tick is not None and time.monotonic() >= next_tick:
                    next_tick = time.monotonic() + 0.5
                    on_tick(
                        report,
                        snapshot(watch, users, since),
                        time.monotonic() - started,
                    )

            report.elapsed = time.monotonic() - started
            deadline = time.monotonic() + drain_seconds
            while time.monotonic() < deadline:
                statuses = snapshot(watch, users, since)
                if on_tick is not None:
                    on_tick(report, statuses, time.monotonic() - started)
                if statuses.get("queued", 0) + statuses.get("running", 0) == 0:
                    break
                time.sleep(0.5)
        finally:
            stop.set()
            for proc in procs:
                proc.join(timeout=30)
                if proc.is_alive():
                    proc.kill()
            queue.transport.close()

        report.statuses = snapshot(watch, users, since)
        report.finished_at_seconds = (
            watch.execute(
                "select extract(epoch from max(finished_at) - min(created_at)) from public.jobs "
                "where user_id = any(%s::uuid[]) and created_at >= %s",
                (users, since),
            ).fetchone()[0]
            or 0.0
        )
        report.finished_at_seconds = float(report.finished_at_seconds)
        for tier, n, ok, wait, total_time in watch.execute(
            """
            select j.tier, count(*), count(*) filter (where j.status = 'succeeded'),
                   percentile_cont(array[0.5, 0.95, 0.99, 1.0]) within group
                     (order by extract(epoch from j.first_started_at - j.created_at)),
                   percentile_cont(array[0.5, 0.95, 0.99, 1.0]) within group
                     (order by extract(epoch from j.finished_at - j.created_at))
            from public.jobs j
            where j.user_id = any(%s::uuid[]) and j.created_at >= %s
            group by j.tier order by j.tier
            """,
            (users, since),
        ).fetchall():
            report.tiers[tier] = {
                "jobs": n,
                "succeeded": ok,
                "wait_s": [
                    round(x, 3) if x is not None else None for x in (wait or [])
                ],
                "total_s": [
                    round(x, 3) if x is not None else None for x in (total_time or [])
                ],
            }
        report.retries, report.lease_expirations, report.released = watch.execute(
            "select count(*) filter (where e.details ->> 'kind' = 'retryable'), "
            "count(*) filter (where e.actor = 'system' and e.details is null), "
            "count(*) filter (where e.details ? 'released') "
            "from public.job_events e join public.jobs j on j.id = e.job_id "
            "where j.user_id = any(%s::uuid[]) and j.created_at >= %s "
            "and e.from_status = 'running' and e.to_status = 'queued'",
            (users, since),
        ).fetchone()
        report.dead, report.dead_malformed = watch.execute(
            "select count(*), count(*) filter (where payload ? 'load_malformed') from public.jobs "
            "where user_id = any(%s::uuid[]) and created_at >= %s and status = 'dead'",
            (users, since),
        ).fetchone()
    return report
