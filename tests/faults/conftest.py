"""Shared pieces of the fault-injection tests: a side-effect ledger and the invariants.

A job's handler appends one row to ``fault_effects`` (in its own autocommitted
connection, as a real handler's effect in the world would be) when its work is done,
so a test can count how often each job's work ran. After every fault, the same
invariants are checked against the database:

- nothing lost: every job the test enqueued exists and reached the state it expects;
- nothing completed twice: each job has at most one ``running -> succeeded`` event,
  and the attempt that succeeded did its work exactly once; any other effect of the
  same job belongs to an attempt whose lease expired before it could record itself
  (at-least-once delivery, never a silent double completion);
- nothing stuck: no job is ``running`` past its lease;
- the history reconciles: each job's events form a path (every event starts where
  the previous one ended), the last one ends in the job's status, and the job's
  attempt count equals its claims minus its releases.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from itertools import pairwise
from typing import Any

import psycopg

EFFECTS_DDL = """
create table if not exists public.fault_effects (
  id bigint generated always as identity primary key,
  job_id bigint not null,
  attempt integer not null,
  worker text not null,
  at timestamptz not null default clock_timestamp()
)
"""


def create_effects_table(db_url: str) -> None:
    """The ledger of handler side effects (a test-only table, outside the schema's rules)."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(EFFECTS_DDL)


def record_effect(
    conn: psycopg.Connection, job_id: int, attempt: int, worker: str
) -> None:
    """Write one side effect of a job's attempt."""
    conn.execute(
        "insert into public.fault_effects (job_id, attempt, worker) values (%s, %s, %s)",
        (job_id, attempt, worker),
    )


def check_invariants(
    sql: psycopg.Connection,
    job_ids: list[int],
    *,
    expect_status: str | dict[int, str] = "succeeded",
    effects: bool = True,
) -> dict[str, Any]:
    """Assert the invariants above for ``job_ids``; returns a few counts for messages."""
    jobs = {
        row[0]: {
            "status": row[1],
            "attempt": row[2],
            "lease_expires_at": row[3],
            "expired": row[4],
        }
        for row in sql.execute(
            "select id, status::text, attempt, lease_expires_at, "
            "status = 'running' and lease_expires_at < now() "
            "from public.jobs where id = any(%s)",
            (job_ids,),
        ).fetchall()
    }
    missing = sorted(set(job_ids) - set(jobs))
    assert not missing, f"jobs lost: {missing}"

    for job_id, job in jobs.items():
        want = (
            expect_status if isinstance(expect_status, str) else expect_status[job_id]
        )
        assert job["status"] == want, (
            f"job {job_id} is {job['status']}, expected {want}"
        )
        assert not job["expired"], f"job {job_id} is running past its lease"

    events: dict[int, list[tuple]] = defaultdict(list)
    for job_id, from_status, to_status, details in sql.execute(
        "select job_id, from_status::text, to_status::text, details from public.job_events "
        "where job_id = any(%s) order by job_id, id",
        (job_ids,),
    ).fetchall():
        events[job_id].append((from_status, to_status, details or {}))

    for job_id, job in jobs.items():
        path = events[job_id]
        assert path and path[0][0] is None, (
            f"job {job_id}: history does not start at creation"
        )
        for (_, previous_to, _), (current_from, _, _) in pairwise(path):
            assert current_from == previous_to, f"job {job_id}: history jumps {path}"
        assert path[-1][1] == job["status"], (
            f"job {job_id}: last event {path[-1]} vs {job['status']}"
        )
        requeues = [
            i
            for i, (f, t, _) in enumerate(path)
            if f in ("dead", "cancelled") and t == "queued"
        ]
        since = requeues[-1] + 1 if requeues else 0
        claims = sum(1 for f, t, _ in path[since:] if f == "queued" and t == "running")
        releases = sum(
            1 for f, t, d in path[since:] if f == "running" and d.get("released")
        )
        assert job["attempt"] == claims - releases, (
            f"job {job_id}: attempt {job['attempt']} but {claims} claims and {releases} releases"
        )
        successes = sum(1 for f, t, _ in path if f == "running" and t == "succeeded")
        assert successes <= 1, f"job {job_id} completed {successes} times"

    duplicates = 0
    if effects:
        ledger: dict[int, Counter] = defaultdict(Counter)
        for job_id, attempt in sql.execute(
            "select job_id, attempt from public.fault_effects where job_id = any(%s)",
            (job_ids,),
        ).fetchall():
            ledger[job_id][attempt] += 1
        for job_id, job in jobs.items():
            if job["status"] != "succeeded":
                continue
            assert ledger[job_id][job["attempt"]] == 1, (
                f"job {job_id}: the succeeding attempt {job['attempt']} did its work "
                f"{ledger[job_id][job['attempt']]} times"
            )
            for attempt, count in ledger[job_id].items():
                assert count == 1, (
                    f"job {job_id}: attempt {attempt} did its work {count} times"
                )
                if attempt != job["attempt"]:
                    duplicates += 1
                    # An earlier attempt's work is only there if its lease expired.
                    expired = sql.execute(
                        "select count(*) from public.job_events where job_id = %s and from_status = "
                        "'running' and actor = 'system' and details is null and attempt = %s",
                        (job_id, attempt),
                    ).fetchone()[0]
                    assert expired == 1, (
                        f"job {job_id}: attempt {attempt} did its work but was not recorded, "
                        "and its lease never expired"
                    )
    return {"jobs": len(jobs), "repeated_work": duplicates}


def expire_leases_of_dead_workers(
    sql: psycopg.Connection, live_workers: set[str]
) -> int:
    """Move the leases of jobs held by workers that no longer run into the past."""
    cur = sql.execute(
        "update public.jobs set lease_expires_at = now() - interval '1 second' "
        "where status = 'running' and not (worker_id = any(%s))",
        (sorted(live_workers),),
    )
    return cur.rowcount
