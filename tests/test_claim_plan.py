"""The claim's plan as it runs inside claim_jobs, on a queue of a million jobs.

A claim must walk ``jobs_sort_at_id_idx`` in order and stop after its batch, however
many jobs are queued or finished. The plan is read with ``auto_explain`` from inside
the function (``log_nested_statements``), because a plpgsql function plans its
statements with its variables as parameters: a plan that looks right as a bare query
can still scan and sort the whole queue there, in particular once Postgres switches
the function's statements to generic plans after a few calls.
"""

from __future__ import annotations

import re
import time

import psycopg
import pytest

from tests.conftest import PRO_USER

pytestmark = pytest.mark.timeout(240)

QUEUED_JOBS = 1_000_000
FINISHED_JOBS = 1_000_000
BATCH = 10
# Enough calls for the plan cache to try the generic plan (after the fifth).
CLAIM_CALLS = 8

AUTO_EXPLAIN = (
    "load 'auto_explain'",
    "set auto_explain.log_min_duration = 0",
    "set auto_explain.log_nested_statements = on",
    "set auto_explain.log_analyze = on",
    "set auto_explain.log_buffers = on",
    "set auto_explain.log_level = 'notice'",
    "set client_min_messages = 'notice'",
)

# A plan node that reads the jobs table, with its actual rows and loops.
SCAN_ON_JOBS = re.compile(
    r"(?P<node>Seq Scan|Index Scan|Index Only Scan|Bitmap Heap Scan)"
    r"(?: using (?P<index>\w+))? on jobs \w+ .*\(actual time=\S+ rows=(?P<rows>\d+) "
    r"loops=(?P<loops>\d+)\)"
)


def fill_queue(db_url: str) -> None:
    """Insert a million finished and a million queued jobs with set-based SQL."""
    with psycopg.connect(db_url, autocommit=True) as loader:
        loader.execute("set synchronous_commit = off")
        # Skips the foreign-key triggers, which would otherwise take most of the load
        # time; every row refers to the seeded job type, tiers and user. Check
        # constraints still apply.
        loader.execute("set session_replication_role = replica")
        loader.execute(
            """
            insert into public.jobs
              (job_type, user_id, tier, status, run_at, sort_at, attempt, max_attempts,
               lease_token, worker_id, progress, result, first_started_at, started_at,
               finished_at, created_at, updated_at)
            select 'system.noop', %s, 'pro', 'succeeded', t, t - interval '60 s', 1, 5,
                   gen_random_uuid(), 'w', 100, '{}', t, t, t + interval '1 s', t, t
            from generate_series(1, %s) g,
                 lateral (select now() - interval '30 days' + g * interval '1 s') x(t)
            """,
            (PRO_USER, FINISHED_JOBS),
        )
        loader.execute(
            """
            insert into public.jobs
              (job_type, tier, run_at, sort_at, max_attempts, created_at)
            select 'system.noop', 'system', t, t - interval '180 s', 10, t
            from generate_series(1, %s) g,
                 lateral (select now() - interval '1 hour' + g * interval '1 ms') x(t)
            """,
            (QUEUED_JOBS,),
        )
        loader.execute("analyze public.jobs")


def scans_of_jobs(plan: str) -> list[tuple[str, str | None, int]]:
    """(node, index, rows read) of every plan node that reads the jobs table.

    The rows read are the rows the node produced plus those its filter removed.
    """
    lines = plan.splitlines()
    scans = []
    for number, line in enumerate(lines):
        match = SCAN_ON_JOBS.search(line)
        if match is None:
            continue
        loops = int(match["loops"])
        rows = int(match["rows"]) * loops
        depth = len(line) - len(line.lstrip())
        for detail in lines[number + 1 :]:
            text = detail.lstrip()
            if text.startswith("->") or len(detail) - len(text) <= depth:
                break
            if text.startswith("Rows Removed by Filter:"):
                # Reported per loop.
                rows += int(text.split(":")[1]) * loops
        scans.append((match["node"], match["index"], rows))
    return scans


def test_claim_plan_walks_the_queue_index_and_stops_after_its_batch(
    db_url, sql, tmp_path
):
    started = time.monotonic()
    fill_queue(db_url)
    load_seconds = time.monotonic() - started
    counts = dict(
        sql.execute("select status::text, count(*) from jobs group by 1").fetchall()
    )
    assert counts == {"queued": QUEUED_JOBS, "succeeded": FINISHED_JOBS}

    calls: list[list[str]] = []
    with psycopg.connect(db_url, autocommit=True) as conn:
        notices: list[str] = []
        conn.add_notice_handler(lambda diag: notices.append(diag.message_primary or ""))
        for statement in AUTO_EXPLAIN:
            conn.execute(statement)

        for _ in range(CLAIM_CALLS):
            notices.clear()
            claimed = conn.execute(
                f"select id from public.claim_jobs('plan-check', {BATCH})"
            )
            assert len(claimed.fetchall()) == BATCH
            calls.append(list(notices))

    report = []
    for number, plans in enumerate(calls, start=1):
        report.append(f"===== claim_jobs call {number} =====")
        report.extend(plans)
    plan_file = tmp_path / "claim_plans.txt"
    plan_file.write_text("\n\n".join(report), encoding="utf-8")

    candidate_plans = []
    for number, plans in enumerate(calls, start=1):
        [candidates] = [
            p for p in plans if "for update skip locked" in p and "array_agg(c.id)" in p
        ]
        candidate_plans.append(candidates)
        # The plan proper starts at its first node, after the statement's text.
        lines = candidates.splitlines()
        plan = "\n".join(
            lines[next(i for i, line in enumerate(lines) if "(cost=" in line) :]
        )

        scans = scans_of_jobs(plan)
        assert [(node, index) for node, index, _ in scans] == [
            ("Index Scan", "jobs_sort_at_id_idx")
        ], f"call {number}: the candidate selection skips the queue index:\n{plan}"
        assert not re.search(r"^\s*(->\s+)?(Incremental )?Sort\b", plan, re.M), (
            f"call {number}: the candidate selection sorts the queue:\n{plan}"
        )
        assert scans[0][2] <= 4 * BATCH, (
            f"call {number}: the candidate selection read more than its batch:\n{plan}"
        )

        # No statement of the claim scans the whole table, and none reads more rows
        # than the reclaim's limit.
        for other in plans:
            assert "Seq Scan on jobs" not in other, f"call {number}:\n{other}"
            assert all(rows <= 1000 for _, _, rows in scans_of_jobs(other)), (
                f"call {number}:\n{other}"
            )

    print(
        f"\nloaded {QUEUED_JOBS} queued and {FINISHED_JOBS} finished jobs"
        f" in {load_seconds:.1f} s; all plans in {plan_file}\n"
        f"--- candidate selection, call 1 ---\n{candidate_plans[0]}\n"
        f"--- candidate selection, call {CLAIM_CALLS} ---\n{candidate_plans[-1]}"
    )
