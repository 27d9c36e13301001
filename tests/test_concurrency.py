"""Concurrent callers on real connections: the database decides every race once.

Each thread (or simulated worker) talks to the test database over its own
connection, as separate Vercel invocations or worker processes would. Races are
started together by a barrier and never synchronised by sleeping; whatever order
Postgres picks, every caller must be told the truth and every job must end in
exactly one final state.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import psycopg
import pytest

from examq.db import PsycopgTransport
from examq.errors import IdempotencyConflict, InvalidState, LeaseLost, Unavailable
from examq.queue import Queue
from tests.conftest import ENTERPRISE_USER, FREE_USER, PRO_USER

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def open_queue(db_url: str) -> Iterator[Callable[..., Queue]]:
    """A factory of queue clients, each on its own connection, closed after the test."""
    transports: list[PsycopgTransport] = []

    def make(application_name: str = "examq-test") -> Queue:
        transport = PsycopgTransport(db_url, application_name=application_name)
        transports.append(transport)
        return Queue(transport)

    yield make
    for transport in transports:
        transport.close()


def run_together(*calls: Callable[[], Any], timeout_seconds: float = 30.0) -> list[Any]:
    """Run each call in its own thread, released at once by a barrier.

    Returns what each call returned, or the exception it raised, in call order.
    """
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)

    def run(index: int, call: Callable[[], Any]) -> None:
        barrier.wait(timeout_seconds)
        results[index] = capture(call)

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout_seconds)
    assert not any(thread.is_alive() for thread in threads), (
        "a racing call did not return"
    )
    return results


def capture(call: Callable[[], Any]) -> Any:
    """What the call returned, or the exception it raised."""
    try:
        return call()
    except Exception as exc:  # noqa: BLE001 - the caller inspects what was raised
        return exc


def wait_for(
    predicate: Callable[[], Any], timeout_seconds: float = 30.0, what: str = ""
) -> Any:
    """Poll until the predicate is true, or fail after the deadline."""
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def transitions(sql: psycopg.Connection, job_id: int) -> list[tuple[str | None, str]]:
    """The job's history as (from_status, to_status) pairs, in order."""
    rows = sql.execute(
        "select from_status::text, to_status::text from job_events"
        " where job_id = %s order by id",
        (job_id,),
    ).fetchall()
    return [(row[0], row[1]) for row in rows]


def expire_lease(sql: psycopg.Connection, job_id: int) -> None:
    """Move a running job's lease into the past, as if its worker had long stopped."""
    sql.execute(
        "update jobs set lease_expires_at = now() - interval '1 second' where id = %s",
        (job_id,),
    )


def test_claim_never_hands_a_job_to_two_workers(open_queue, sql):
    total, workers, batch = 5000, 8, 10
    sql.execute(
        "select count(public.enqueue_job('system.noop', jsonb_build_object('n', g)))"
        " from generate_series(1, %s) g",
        (total,),
    )
    claims: list[tuple[int, uuid.UUID, str]] = []
    refused: list[tuple[int, str, Exception]] = []
    lock = threading.Lock()
    start = threading.Barrier(workers)
    deadline = time.monotonic() + 60

    def work(worker_id: str) -> None:
        queue = open_queue(worker_id)
        start.wait(30)
        while time.monotonic() < deadline:
            try:
                jobs = queue.claim(worker_id, batch)
            except Exception as exc:  # noqa: BLE001 - reported by the asserts below
                with lock:
                    refused.append((0, worker_id, exc))
                return
            with lock:
                claims.extend((job.id, job.lease_token, worker_id) for job in jobs)
                # Other claims may still hold the last queued rows: poll until every
                # job has been handed out to someone.
                if not jobs and len({c[0] for c in claims}) >= total:
                    return
            for job in jobs:
                try:
                    queue.complete(job, {"by": worker_id})
                except Exception as exc:  # noqa: BLE001 - reported by the asserts below
                    with lock:
                        refused.append((job.id, worker_id, exc))

    with ThreadPoolExecutor(workers) as pool:
        for future in [pool.submit(work, f"w{i}") for i in range(workers)]:
            future.result()

    claimed_twice = [
        job_id for job_id, n in Counter(c[0] for c in claims).items() if n > 1
    ]
    assert claimed_twice == [], f"{len(claimed_twice)} jobs were claimed twice"
    assert len(claims) == total and len({c[1] for c in claims}) == total
    assert refused == []
    assert len({c[2] for c in claims}) > 1, "only one worker ever claimed anything"

    statuses = dict(
        sql.execute("select status::text, count(*) from jobs group by 1").fetchall()
    )
    assert statuses == {"succeeded": total}
    wrong_history = sql.execute(
        """
        select j.id from jobs j left join job_events e on e.job_id = j.id
        group by j.id
        having max(j.attempt) <> 1
            or count(*) filter (where (e.from_status, e.to_status)
                                      = ('running', 'succeeded')) <> 1
            or count(*) filter (where (e.from_status, e.to_status)
                                      = ('queued', 'running')) <> 1
        """
    ).fetchall()
    assert wrong_history == []


def test_killed_worker_keeps_its_lease_until_it_expires(open_queue, queue, sql, db_url):
    job = queue.enqueue("system.noop")
    doomed = open_queue("examq-doomed")
    [held] = doomed.claim("doomed", 1)
    assert held.id == job.id
    pid = sql.execute(
        "select pid from pg_stat_activity"
        " where application_name = 'examq-doomed' and datname = current_database()"
    ).fetchone()[0]

    # Kill the worker's connection in the middle of a call: its heartbeat waits on a
    # row lock held by another transaction when the backend is terminated.
    beat: dict[str, Any] = {}
    with psycopg.connect(db_url) as blocker:
        blocker.execute("select 1 from jobs where id = %s for update", (job.id,))
        heartbeat = threading.Thread(
            target=lambda: beat.update(
                result=capture(partial(doomed.heartbeat, held, progress=50))
            )
        )
        heartbeat.start()
        wait_for(
            lambda: sql.execute(
                "select wait_event_type = 'Lock' from pg_stat_activity where pid = %s",
                (pid,),
            ).fetchone()[0],
            what="the heartbeat to wait on the row lock",
        )
        terminate = sql.execute("select pg_terminate_backend(%s, 10000)", (pid,))
        assert terminate.fetchone()[0] is True
        heartbeat.join(30)
        blocker.rollback()
    assert isinstance(beat["result"], Unavailable)

    orphan = queue.get(job.id)
    assert orphan.status == "running" and orphan.worker_id == "doomed"
    assert orphan.lease_token == held.lease_token and orphan.progress == 0
    assert queue.claim("rescuer", 10) == []

    expire_lease(sql, job.id)
    [rescued] = queue.claim("rescuer", 10)
    assert rescued.id == job.id and rescued.attempt == 2
    assert rescued.lease_token != held.lease_token

    # The dead worker's client reconnects, but its lease is gone.
    with pytest.raises(LeaseLost):
        doomed.complete(held, {"from": "doomed"})
    assert queue.complete(rescued, {"from": "rescuer"}).outcome == "completed"
    assert queue.get(job.id).result == {"from": "rescuer"}
    assert transitions(sql, job.id) == [
        (None, "queued"),
        ("queued", "running"),
        ("running", "queued"),
        ("queued", "running"),
        ("running", "succeeded"),
    ]


def test_cancel_racing_complete_tells_both_callers_the_truth(open_queue, queue, sql):
    canceller, worker = open_queue("canceller"), open_queue("worker")
    seen = Counter()

    for _ in range(50):
        queue.enqueue("system.noop")
        [job] = queue.claim("w1", 1)

        cancel, complete = run_together(
            partial(canceller.cancel, job.id, "teacher pressed cancel"),
            partial(worker.complete, job, {"done": True}),
        )

        assert not isinstance(cancel, Exception), cancel
        assert not isinstance(complete, Exception), complete
        seen[cancel.outcome] += 1
        # A running job's cancel is only a request: the completion always wins.
        assert complete.outcome == "completed"
        assert cancel.outcome in {"cancel_requested", "already_finished"}
        final = queue.get(job.id)
        assert final.status == "succeeded" and final.result == {"done": True}
        history = transitions(sql, job.id)
        if cancel.outcome == "cancel_requested":
            assert final.cancel_requested_at is not None
            assert history[2:] == [("running", "running"), ("running", "succeeded")]
        else:
            assert final.cancel_requested_at is None
            assert history[2:] == [("running", "succeeded")]

    print(f"cancel outcomes over 50 races: {dict(seen)}")


def test_cancel_racing_claim_has_one_winner(open_queue, queue, sql):
    canceller, claimer = open_queue("canceller"), open_queue("claimer")
    seen = Counter()

    for _ in range(50):
        job = queue.enqueue("system.noop")

        cancel, claimed = run_together(
            partial(canceller.cancel, job.id),
            partial(claimer.claim, "w1", 1),
        )

        assert not isinstance(cancel, Exception), cancel
        assert not isinstance(claimed, Exception), claimed
        history = transitions(sql, job.id)
        if cancel.outcome == "cancelled":
            seen["cancelled"] += 1
            assert claimed == []
            assert queue.get(job.id).status == "cancelled"
            assert history == [(None, "queued"), ("queued", "cancelled")]
        else:
            seen["claimed"] += 1
            assert cancel.outcome == "cancel_requested"
            assert [j.id for j in claimed] == [job.id]
            assert history == [
                (None, "queued"),
                ("queued", "running"),
                ("running", "running"),
            ]
            # The worker learns of the request and acknowledges it.
            assert claimer.heartbeat(claimed[0]).cancel_requested is True
            assert (
                claimer.fail(claimed[0], "stopped", "cancelled").status == "cancelled"
            )

    print(f"cancel vs claim winners over 50 races: {dict(seen)}")


def test_reclaim_racing_late_complete_has_one_owner(open_queue, queue, sql):
    rescuer, stale_worker = open_queue("rescuer"), open_queue("stale-worker")
    seen = Counter()

    for _ in range(40):
        job = queue.enqueue("system.noop")
        [stale] = queue.claim("stale", 1)
        expire_lease(sql, job.id)

        claimed, late = run_together(
            partial(rescuer.claim, "rescuer", 1),
            partial(stale_worker.complete, stale, {"by": "stale"}),
        )

        assert not isinstance(claimed, Exception), claimed
        if claimed:
            seen["reclaimed"] += 1
            assert [j.id for j in claimed] == [job.id] and claimed[0].attempt == 2
            assert isinstance(late, LeaseLost), late
            assert (
                rescuer.complete(claimed[0], {"by": "rescuer"}).outcome == "completed"
            )
            assert queue.get(job.id).result == {"by": "rescuer"}
        else:
            seen["late complete"] += 1
            assert not isinstance(late, Exception), late
            assert late.outcome == "completed"
            assert queue.get(job.id).result == {"by": "stale"}
        history = transitions(sql, job.id)
        assert history.count(("running", "succeeded")) == 1
        assert queue.get(job.id).status == "succeeded"

    print(f"reclaim vs late complete over 40 races: {dict(seen)}")


def test_racing_enqueues_with_one_idempotency_key_make_one_job(open_queue, sql):
    first, second = open_queue("enqueuer-1"), open_queue("enqueuer-2")

    for n in range(30):
        key = f"upload-{n}"
        # The same request twice (a retry racing the original), then two different
        # requests under one key: one job either way, and a conflict for the second.
        same = run_together(
            *(
                partial(q.enqueue, "system.noop", {"upload": n}, user_id=PRO_USER, idempotency_key=key)
                for q in (first, second)
            )
        )
        other_key = f"other-{n}"
        different = run_together(
            *(
                partial(q.enqueue, "system.noop", {"from": i}, user_id=PRO_USER, idempotency_key=other_key)
                for i, q in enumerate((first, second))
            )
        )

        assert not any(isinstance(r, Exception) for r in same), same
        assert same[0].id == same[1].id
        made = [r for r in different if not isinstance(r, Exception)]
        refused = [r for r in different if isinstance(r, Exception)]
        assert len(made) == 1 and len(refused) == 1
        assert isinstance(refused[0], IdempotencyConflict), refused[0]
        for k in (key, other_key):
            count = sql.execute("select count(*) from jobs where idempotency_key = %s", (k,)).fetchone()[0]
            assert count == 1


def test_racing_chains_with_one_idempotency_key_make_one_chain(open_queue, sql):
    first, second = open_queue("chainer-1"), open_queue("chainer-2")

    def chain(q: Queue, key: str, last: dict) -> dict:
        steps = [{"job_type": "system.noop", "payload": {}}, {"job_type": "system.noop", "payload": last}]
        return q.transport.call(
            "enqueue_chain", {"p_steps": steps, "p_idempotency_key": key, "p_user_id": PRO_USER}
        )

    for n in range(15):
        same = run_together(*(partial(chain, q, f"same-{n}", {"n": n}) for q in (first, second)))
        # Only the later step differs: the first steps alone would look alike.
        different = run_together(
            *(partial(chain, q, f"diff-{n}", {"from": i}) for i, q in enumerate((first, second)))
        )

        assert not any(isinstance(r, Exception) for r in same), same
        assert same[0]["chain_id"] == same[1]["chain_id"]
        made = [r for r in different if not isinstance(r, Exception)]
        refused = [r for r in different if isinstance(r, Exception)]
        assert len(made) == 1 and len(refused) == 1
        assert isinstance(refused[0], IdempotencyConflict), refused[0]
        for key in (f"same-{n}", f"diff-{n}"):
            (root,) = sql.execute("select id from jobs where idempotency_key = %s", (key,)).fetchone()
            steps = sql.execute("select count(*) from jobs where parent_id = %s", (root,)).fetchone()[0]
            assert steps == 1


def test_racing_enqueues_of_two_users_with_one_key_make_two_jobs(open_queue, sql):
    first, second = open_queue("enqueuer-1"), open_queue("enqueuer-2")

    for n in range(10):
        key = f"upload-{n}"
        a, b = run_together(
            partial(
                first.enqueue, "system.noop", user_id=PRO_USER, idempotency_key=key
            ),
            partial(
                second.enqueue,
                "system.noop",
                user_id=ENTERPRISE_USER,
                idempotency_key=key,
            ),
        )

        assert not isinstance(a, Exception), a
        assert not isinstance(b, Exception), b
        assert a.id != b.id
        assert (str(a.user_id), str(b.user_id)) == (PRO_USER, ENTERPRISE_USER)
        count = sql.execute(
            "select count(*) from jobs where idempotency_key = %s", (key,)
        ).fetchone()[0]
        assert count == 2


def test_running_cap_holds_under_concurrent_claims(open_queue, sql, db_url):
    cap = sql.execute(
        "select max_running_per_user from tiers where name = 'free'"
    ).fetchone()[0]
    assert cap == 2
    total, claimers = 50, 6
    sql.execute(
        "select count(public.enqueue_job('exam.grade', p_user_id => %s))"
        " from generate_series(1, %s)",
        (FREE_USER, total),
    )
    lock = threading.Lock()
    start = threading.Barrier(claimers)
    deadline = time.monotonic() + 60
    running_after_claim: list[int] = []
    completed: list[int] = []
    errors: list[Exception] = []

    with psycopg.connect(db_url, autocommit=True) as observer:

        def running_now() -> int:
            return observer.execute(
                "select count(*) from jobs where user_id = %s and status = 'running'",
                (FREE_USER,),
            ).fetchone()[0]

        def claim_and_finish(worker_id: str) -> None:
            queue = open_queue(worker_id)
            start.wait(30)
            while time.monotonic() < deadline:
                jobs = queue.claim(worker_id, 3)
                with lock:
                    if jobs:
                        running_after_claim.append(running_now())
                    elif len(completed) >= total:
                        return
                for job in jobs:
                    try:
                        queue.complete(job)
                    except Exception as exc:  # noqa: BLE001 - reported below
                        with lock:
                            errors.append(exc)
                    with lock:
                        completed.append(job.id)

        with ThreadPoolExecutor(claimers) as pool:
            for future in [
                pool.submit(claim_and_finish, f"c{i}") for i in range(claimers)
            ]:
                future.result()

    assert errors == []
    assert sorted(completed) == sorted(set(completed)) and len(completed) == total
    assert max(running_after_claim) <= cap, (
        f"counts seen after claims: {running_after_claim}"
    )

    # Replay the history in event order: +1 per claim, -1 per finish. A claim counts
    # running jobs only after the finishes that made room for it committed, so
    # those finishes carry smaller event ids; the replay can only over-count.
    running, peak = 0, 0
    for from_status, to_status in sql.execute(
        "select from_status::text, to_status::text from job_events"
        " where user_id = %s order by id",
        (FREE_USER,),
    ).fetchall():
        if (from_status, to_status) == ("queued", "running"):
            running += 1
        elif from_status == "running" and to_status != "running":
            running -= 1
        peak = max(peak, running)
    assert peak <= cap, f"{peak} jobs of one free user were running at once"


def test_requeuing_a_chain_step_while_its_parent_is_requeued_does_not_deadlock(
    open_queue, sql
):
    # A two-step chain whose first step died: the second was cancelled with it.
    steps = [{"job_type": "system.noop"}, {"job_type": "system.noop"}]
    chain = sql.execute(
        "select enqueue_chain(%s::jsonb, null, %s)", (psycopg.types.json.Jsonb(steps), PRO_USER)
    ).fetchone()[0]
    parent, step = (job["id"] for job in chain["jobs"])
    worker = open_queue("worker")
    [claimed] = worker.claim("w", 1)
    worker.fail(claimed, "bad input", "permanent")
    assert [worker.get(i).status for i in (parent, step)] == ["dead", "cancelled"]

    # The parent's requeue is under way: its row is locked in an open transaction.
    admin = psycopg.connect(sql.info.dsn, autocommit=False, application_name="parent-requeue")
    try:
        admin.execute("select 1 from jobs where id = %s for update", (parent,))
        step_requeuer = open_queue("step-requeue")
        outcome: list[Any] = []
        thread = threading.Thread(target=lambda: outcome.append(capture(partial(step_requeuer.requeue, step))))
        thread.start()
        # The step's requeue waits for the parent's row; it must hold no lock the
        # parent's requeue needs, or finishing that requeue (which revives the step)
        # deadlocks.
        wait_for(
            lambda: sql.execute(
                "select count(*) from pg_stat_activity"
                " where application_name = 'step-requeue' and wait_event_type = 'Lock'"
            ).fetchone()[0],
            what="the step's requeue to wait for the parent's row",
        )
        admin.execute("select requeue_job(%s)", (parent,))
        admin.commit()
    finally:
        admin.close()
    thread.join(30)

    [answer] = outcome
    # The step was revived with its parent, so there is nothing left to requeue.
    assert isinstance(answer, InvalidState), answer
    assert "waiting" in str(answer)
    assert [worker.get(i).status for i in (parent, step)] == ["queued", "waiting"]
