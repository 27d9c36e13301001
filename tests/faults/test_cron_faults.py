"""The Vercel cron under faults: two ticks at once, and a tick that overruns its budget.

Ticks are real requests to functions/cron.py's Starlette app (TestClient), each with
its own database connection, as two function instances would have.
"""

from __future__ import annotations

import threading
import types

import psycopg
import pytest
from starlette.testclient import TestClient

import examq.worker as worker_module
from examq.db import PsycopgTransport
from examq.queue import Queue
from functions import cron
from tests.conftest import ENTERPRISE_USER, FREE_USER, PRO_USER
from tests.faults.conftest import check_invariants, create_effects_table, record_effect

pytestmark = pytest.mark.timeout(60)

AUTH = {"Authorization": "Bearer s3cret-for-fault-tests"}


@pytest.fixture
def tick_env(monkeypatch, db_url, tmp_path):
    """The cron's environment; every tick opens its own connection."""
    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.setenv("CRON_SECRET", "s3cret-for-fault-tests")
    monkeypatch.setenv("EXAMQ_CRON_BUDGET_SECONDS", "20")
    monkeypatch.setenv("EXAMQ_WORKER_BATCH_SIZE", "3")
    monkeypatch.setenv("EXAMQ_OUTBOX_DIR", str(tmp_path / "outbox"))
    opened: list[Queue] = []

    def own_queue(settings):
        opened.append(Queue(PsycopgTransport(db_url, application_name="tick")))
        return opened[-1]

    monkeypatch.setattr(cron, "_shared_queue", own_queue)
    create_effects_table(db_url)
    yield db_url
    for queue in opened:
        queue.transport.close()


def effect_handlers(db_url: str, *, on_start=None):
    """exam.grade handlers that record their effect; ``on_start(ctx)`` runs first."""
    local = threading.local()

    def handler(payload, ctx):
        if on_start is not None:
            on_start(ctx)
        if not hasattr(local, "conn"):
            local.conn = psycopg.connect(db_url, autocommit=True)
        record_effect(
            local.conn, ctx.job_id, ctx.attempt, threading.current_thread().name
        )
        return {"done": True}

    return {"exam.grade": handler}


def test_two_cron_ticks_at_once_run_every_job_exactly_once(
    tick_env, queue, sql, monkeypatch
):
    owners = [FREE_USER, PRO_USER, ENTERPRISE_USER]
    job_ids = [
        e.job_id
        for e in queue.enqueue_many(
            [{"job_type": "exam.grade", "user_id": owners[i % 3]} for i in range(30)]
        )
    ]
    sql.execute("update tiers set max_running_per_user = 1000")

    # Both ticks are inside a job at the same moment before either goes on: the two
    # passes overlap for certain, whatever the scheduler does.
    both_running = threading.Barrier(2, timeout=30)
    first_job: set[int] = set()
    lock = threading.Lock()

    def meet(ctx):
        # Each tick has its own connection, so its own queue client.
        tick_id = id(ctx.queue)
        with lock:
            waits = tick_id not in first_job
            first_job.add(tick_id)
        if waits:
            both_running.wait()

    handlers = effect_handlers(tick_env, on_start=meet)
    monkeypatch.setattr(worker_module, "registry", lambda: handlers)
    answers: dict[str, object] = {}

    def tick(name: str) -> None:
        answers[name] = TestClient(cron.app).get("/api/cron", headers=AUTH)

    threads = [
        threading.Thread(target=tick, args=(n,), name=n) for n in ("tick-a", "tick-b")
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=50)

    assert {a.status_code for a in answers.values()} == {200}
    claimed = [a.json()["claimed"] for a in answers.values()]
    assert sum(claimed) == 30 and min(claimed) > 0, (
        f"both ticks worked, no job twice: {claimed}"
    )
    check_invariants(sql, job_ids)


class FakeClock:
    """A monotonic clock the test moves forward."""

    def __init__(self) -> None:
        import time

        self.now = time.monotonic()

    def monotonic(self) -> float:
        return self.now


def test_a_tick_that_overruns_its_budget_leaves_nothing_stuck(
    tick_env, queue, sql, monkeypatch
):
    job_ids = [
        e.job_id
        for e in queue.enqueue_many(
            [{"job_type": "exam.grade", "user_id": PRO_USER} for _ in range(8)]
        )
    ]
    clock = FakeClock()
    fake_time = types.SimpleNamespace(
        **{k: getattr(__import__("time"), k) for k in ("sleep", "time", "perf_counter")}
    )
    fake_time.monotonic = clock.monotonic
    monkeypatch.setattr(worker_module, "time", fake_time)
    overran: list[int] = []

    def overrun_once(ctx):
        # The first job runs far past the tick's 20 s budget.
        if not overran:
            overran.append(ctx.job_id)
            clock.now += 45

    monkeypatch.setattr(
        worker_module,
        "registry",
        lambda: effect_handlers(tick_env, on_start=overrun_once),
    )

    first = TestClient(cron.app).get("/api/cron", headers=AUTH)

    assert first.status_code == 200
    summary = first.json()
    assert (summary["claimed"], summary["succeeded"], summary["released"]) == (
        3,
        1,
        2,
    ), summary
    states = dict(
        sql.execute(
            "select status::text, count(*) from jobs where id = any(%s) group by 1",
            (job_ids,),
        ).fetchall()
    )
    assert states == {"succeeded": 1, "queued": 7}, (
        "the overrun job finished; the rest wait, unleased"
    )
    assert (
        sql.execute(
            "select max(attempt) from jobs where status = 'queued' and id = any(%s)",
            (job_ids,),
        ).fetchone()[0]
        == 0
    ), "released jobs got their attempt back"

    second = TestClient(cron.app).get("/api/cron", headers=AUTH)

    assert second.status_code == 200 and second.json()["succeeded"] == 7
    check_invariants(sql, job_ids)
