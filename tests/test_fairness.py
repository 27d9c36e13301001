"""Fairness: tiers are preferred within a bounded head start, and retries spread out.

The claim order is ``(sort_at, id)`` with ``sort_at = run_at - head start of the
tier``. A job can therefore be overtaken only by jobs of a tier with a larger head
start enqueued less than the difference after it; these tests hold the queue to that
bound under load, and check that jobs failing together do not all come back at once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import psycopg
import pytest

from examq.db import PsycopgTransport
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


def test_free_job_is_overtaken_only_within_the_head_start_difference(
    open_queue, queue, sql, db_url
):
    # Small head starts keep the test short; the bound scales with them.
    sql.execute(
        """
        update tiers set head_start_seconds = case name
          when 'free' then 0 when 'pro' then 1 when 'enterprise' then 2 end
        where name in ('free', 'pro', 'enterprise')
        """
    )
    head_start_difference = 2.0
    produce_seconds = 8.0
    free_job = queue.enqueue("exam.grade", user_id=FREE_USER)

    progress = threading.Condition()
    counts = {"produced": 0, "completed": 0}
    first_jobs_queued = threading.Event()
    stop = threading.Event()
    errors: list[BaseException] = []
    # Claims are taken one at a time (the work runs in parallel), so that the order of
    # first_started_at is the claim order. Overlapping claims are checked separately
    # in test_claim_does_not_skip_jobs_a_concurrent_claim_leaves_queued.
    claim_lock = threading.Lock()

    def produce() -> None:
        # Enqueue enterprise jobs faster than the workers drain them: always keep the
        # number produced ahead of twice the number completed, so the backlog grows
        # at the workers' own pace, whatever the machine's speed.
        try:
            with psycopg.connect(db_url, autocommit=True) as conn:
                deadline = time.monotonic() + produce_seconds
                while time.monotonic() < deadline:
                    with progress:
                        wanted = 2 * counts["completed"] + 50 - counts["produced"]
                        if wanted <= 0:
                            progress.wait(0.05)
                            continue
                    batch = min(wanted, 20)
                    conn.execute(
                        "select count(public.enqueue_job('system.noop',"
                        " p_user_id => %s)) from generate_series(1, %s)",
                        (ENTERPRISE_USER, batch),
                    )
                    with progress:
                        counts["produced"] += batch
                    first_jobs_queued.set()
        except BaseException as exc:
            errors.append(exc)
        finally:
            first_jobs_queued.set()
            stop.set()

    def work(worker_id: str) -> None:
        worker = open_queue(worker_id)
        first_jobs_queued.wait(30)
        try:
            while not stop.is_set():
                with claim_lock:
                    jobs = worker.claim(worker_id, 5)
                for job in jobs:
                    time.sleep(0.003)  # the job's work
                    worker.complete(job)
                    with progress:
                        counts["completed"] += 1
                        progress.notify_all()
        except BaseException as exc:
            errors.append(exc)
            stop.set()

    threads = [threading.Thread(target=produce)]
    threads += [threading.Thread(target=work, args=(f"w{i}",)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []

    free = queue.get(free_job.id)
    last_enqueue = sql.execute(
        "select max(created_at) from jobs where tier = 'enterprise'"
    ).fetchone()[0]
    assert free.first_started_at is not None, "the free job never started"
    assert free.first_started_at < last_enqueue, (
        "the free job started only after the load stopped"
    )

    overtook, overtook_too_late, beaten_by_free, queued_at_end = sql.execute(
        """
        select
          count(*) filter (where first_started_at < %(started)s),
          count(*) filter (
            where first_started_at < %(started)s
              and created_at >= %(created)s + %(bound)s * interval '1 second'),
          count(*) filter (
            where created_at < %(started)s
              and (first_started_at is null or first_started_at > %(started)s)),
          count(*) filter (where status = 'queued')
        from jobs where tier = 'enterprise'
        """,
        {
            "started": free.first_started_at,
            "created": free.created_at,
            "bound": head_start_difference,
        },
    ).fetchone()
    print(
        f"produced {counts['produced']}, completed {counts['completed']}, "
        f"queued at end {queued_at_end}; free job waited "
        f"{(free.first_started_at - free.created_at).total_seconds():.2f} s, "
        f"overtaken by {overtook}, ahead of {beaten_by_free} waiting enterprise jobs"
    )
    assert overtook > 0, (
        "no enterprise job overtook the free job: the test did not load the queue"
    )
    assert beaten_by_free > 0, (
        "the free job started before any enterprise job had to wait for it"
    )
    assert overtook_too_late == 0, (
        f"{overtook_too_late} enterprise jobs enqueued {head_start_difference} s or "
        "more after the free job started before it"
    )
    assert queued_at_end > 50, "the producer did not outpace the workers"


def test_claim_prefers_higher_tiers_among_jobs_enqueued_together(queue, sql):
    # One statement, one transaction: the three jobs share created_at and run_at,
    # and the free job has the smallest id.
    rows = sql.execute(
        """
        select u.tier, j.id, j.created_at
        from (values (1, 'free', %s::uuid), (2, 'pro', %s::uuid),
                     (3, 'enterprise', %s::uuid)) as u(ord, tier, user_id),
             lateral public.enqueue_job('exam.grade', p_user_id => u.user_id) j
        order by u.ord
        """,
        (FREE_USER, PRO_USER, ENTERPRISE_USER),
    ).fetchall()
    assert len({row[2] for row in rows}) == 1
    assert [row[1] for row in rows] == sorted(row[1] for row in rows)

    order = [queue.claim("w1", 1)[0].tier for _ in range(3)]

    assert order == ["enterprise", "pro", "free"]


def test_claim_does_not_skip_jobs_a_concurrent_claim_leaves_queued(queue, sql, db_url):
    ids = [
        row[0]
        for row in sql.execute(
            "select (public.enqueue_job('system.noop')).id from generate_series(1, 6)"
        ).fetchall()
    ]

    # Hold a claim of two jobs open while another worker claims two.
    with psycopg.connect(db_url) as holder:
        first = [
            row[0]
            for row in holder.execute(
                "select id from public.claim_jobs('w1', 2)"
            ).fetchall()
        ]
        second = [job.id for job in queue.claim("w2", 2)]
        holder.commit()

    assert first == ids[0:2]
    # Jobs 3 and 4 were not taken by w1: taking 5 and 6 instead lets later jobs
    # overtake them, beyond the bound the tiers' head starts document.
    assert second == ids[2:4]


def test_retries_of_jobs_failing_together_are_spread_out(queue, sql):
    base = sql.execute(
        "select retry_base_seconds from job_types where name = 'system.noop'"
    ).fetchone()[0]
    assert base == 10
    sql.execute(
        "select count(public.enqueue_job('system.noop')) from generate_series(1, 500)"
    )
    assert len(queue.claim("w1", 500)) == 500

    # Every job fails in one statement: they share now(), so only jitter spreads them.
    outcomes = sql.execute(
        """
        select f ->> 'outcome', count(*)
        from (select public.fail_job(j.id, j.lease_token, 'upstream timeout') as f
              from jobs j where j.status = 'running') s
        group by 1
        """
    ).fetchall()
    assert outcomes == [("retry_scheduled", 500)]

    seconds, shortest, longest = sql.execute(
        """
        select count(distinct date_trunc('second', run_at)),
               extract(epoch from min(run_at - updated_at)),
               extract(epoch from max(run_at - updated_at))
        from jobs where status = 'queued' and attempt = 1
        """
    ).fetchone()
    assert seconds >= 8, f"500 retries come back within only {seconds} distinct seconds"
    assert base <= shortest and longest <= 2 * base


def test_retry_delay_is_finite_and_within_bounds_for_any_attempt(sql):
    attempts = [-1, 0, 1, 2, 30, 64, 1000, 1000000, 2147483647]
    rows = sql.execute(
        """
        select a, min(d), max(d)
        from unnest(%s::integer[]) a,
             lateral (select examq_internal.retry_delay_seconds(a, 10, 3600) as d
                      from generate_series(1, 200)) s
        group by a order by a
        """,
        (attempts,),
    ).fetchall()

    assert [row[0] for row in rows] == attempts
    for attempt, shortest, longest in rows:
        assert 10 <= shortest <= longest <= 3600, (attempt, shortest, longest)
        if attempt >= 9:
            # Past the cap the delay is jittered over [max / 2, max].
            assert shortest >= 1800, (attempt, shortest)
    # Attempt 2: d = min(3600, 10 * 2^2) = 40, jittered over [20, 40].
    shortest, longest = {row[0]: row[1:] for row in rows}[2]
    assert 20 <= shortest and longest <= 40
