"""How fast the dashboard's reads are on a table of 1,000,000 jobs.

Fills a fresh database with a million jobs (set-based SQL: thirty days of history,
newest first by id, a few thousand queued and running now, some dead with errors,
two thousand teachers of three tiers, one of them with a tenth of all jobs), then
times each read exactly as the dashboard makes it: over HTTP to the local Supabase
API stand-in (examq.rest), with a signed-in teacher's or admin's JWT, so role
switching, row-level security and JSON rendering are all included. Prints the
median and slowest of several calls per read. Asserts nothing about time.

    .venv/bin/python bench/dashboard_queries.py [--jobs 1000000] [--runs 7] [--plans]

The database server is EXAMQ_BENCH_DATABASE_URL, else EXAMQ_TEST_DATABASE_URL, else
the local PostgreSQL on 127.0.0.1:5432; the benchmark creates its own database there
and drops it at the end (--keep keeps it). --plans prints the plan of each list_jobs
statement as it runs inside the function (auto_explain, nested statements).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlparse, urlunparse

import httpx
import jwt
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from examq import local
from examq.rest import create_rest_app, serve

SECRET = "examq-bench-jwt-secret-of-at-least-32-bytes"
FREE_USER = "00000000-0000-4000-8000-000000000001"
HEAVY_USER = (
    "00000000-0000-4000-8000-000000000003"  # the enterprise teacher: 10% of jobs
)
ADMIN_USER = "00000000-0000-4000-8000-00000000000a"
SYNTHETIC_TEACHERS = 2000

# Statements separated by blank lines. The jobs are loaded with
# session_replication_role = replica, which skips the foreign-key, notification and
# chain triggers that would take most of the load time; every row refers to existing
# users, tiers and job types.
FILL_SQL = """
insert into auth.users (id, aud, role, email)
select ('10000000-0000-4000-8000-' || lpad(to_hex(u), 12, '0'))::uuid, 'authenticated', 'authenticated',
       format('teacher%%s@example.com', u)
from generate_series(1, %(teachers)s) u;

insert into public.accounts (user_id, tier)
select ('10000000-0000-4000-8000-' || lpad(to_hex(u), 12, '0'))::uuid,
       case when u %% 10 < 6 then 'free' when u %% 10 < 9 then 'pro' else 'enterprise' end
from generate_series(1, %(teachers)s) u;

set session_replication_role = replica;

with numbered as (
  select g,
         now() - make_interval(secs => (%(jobs)s - g) * (30 * 86400.0 / %(jobs)s)) as created_at,
         random() as r_status,
         random() as r_type,
         random() as r_error,
         random() as r_wait,
         random() as r_run
  from generate_series(1, %(jobs)s) g
), shaped as (
  select n.*,
         case
           when n.g %% 10 = 0 then '00000000-0000-4000-8000-000000000003'::uuid
           when n.g %% 997 = 0 then '00000000-0000-4000-8000-000000000001'::uuid
           else ('10000000-0000-4000-8000-' || lpad(to_hex(1 + n.g %% %(teachers)s), 12, '0'))::uuid
         end as user_id,
         case
           when n.created_at > now() - interval '2 hours' then
             case when n.r_status < 0.6 then 'queued' when n.r_status < 0.7 then 'running' else 'succeeded' end
           else
             case when n.r_status < 0.955 then 'succeeded' when n.r_status < 0.985 then 'dead' else 'cancelled' end
         end::public.job_status as status,
         case when n.r_type < 0.8 then 'exam.grade' when n.r_type < 0.95 then 'system.noop' else 'system.sleep' end
           as job_type
  from numbered n
)
insert into public.jobs
  (job_type, user_id, tier, payload, status, run_at, sort_at, attempt, max_attempts, lease_token,
   lease_expires_at, worker_id, progress, progress_message, last_error, error_kind,
   first_started_at, started_at, finished_at, created_at, updated_at)
select s.job_type,
       s.user_id,
       coalesce(a.tier, 'free'),
       jsonb_build_object('title', 'Exam ' || s.g),
       s.status,
       s.created_at,
       s.created_at - make_interval(secs => t.head_start_seconds),
       case when s.status = 'queued' then 0 when s.status = 'dead' then 3 else 1 end,
       3,
       case when s.status in ('running', 'succeeded', 'dead', 'cancelled') and s.status <> 'cancelled'
            then gen_random_uuid() end,
       case when s.status = 'running' then now() + interval '5 minutes' end,
       case when s.status = 'running' then 'bench-worker' end,
       case when s.status = 'running' then round((s.r_run * 100)::numeric, 2)
            when s.status = 'succeeded' then 100 end,
       case when s.status = 'running' then 'grading' end,
       case
         when s.status = 'dead' then (array[
           'responses.csv is missing item Q' || (s.g %% 40),
           'answer key has no column "key"',
           'timeout reading responses from storage after 30 s',
           'exam definition is not valid GIFT: line ' || (s.g %% 200),
           'connection reset by peer while fetching the upload',
           'student id column is empty in row ' || (s.g %% 500)
         ])[1 + (s.r_error * 6)::int %% 6]
         when s.status = 'succeeded' and s.r_error < 0.05 then 'timeout reading responses from storage after 30 s'
         when s.status = 'cancelled' then 'cancelled on request'
       end,
       case
         when s.status = 'dead' then case when s.r_error < 0.5 then 'permanent' else 'exhausted' end
         when s.status = 'succeeded' and s.r_error < 0.05 then 'retryable'
         when s.status = 'cancelled' then 'cancelled'
       end,
       case when s.status in ('running', 'succeeded', 'dead') then s.created_at + make_interval(secs => s.r_wait * 120) end,
       case when s.status in ('running', 'succeeded', 'dead') then s.created_at + make_interval(secs => s.r_wait * 120) end,
       case when s.status in ('succeeded', 'dead', 'cancelled')
            then s.created_at + make_interval(secs => s.r_wait * 120 + 0.5 + s.r_run * 30) end,
       s.created_at,
       s.created_at
from shaped s
left join public.accounts a on a.user_id = s.user_id
join public.tiers t on t.name = coalesce(a.tier, 'free');

set session_replication_role = origin;
"""


def _with_database(url: str, name: str) -> str:
    return urlunparse(urlparse(url)._replace(path=f"/{name}"))


def token(role: str, sub: str | None = None) -> str:
    now = int(time.time())
    claims: dict[str, Any] = {"role": role, "iat": now, "exp": now + 3600}
    if sub:
        claims.update(sub=sub, aud="authenticated")
    return jwt.encode(claims, SECRET, algorithm="HS256")


def fill(db_url: str, jobs: int) -> float:
    started = time.perf_counter()
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("set synchronous_commit = off")
        # One statement per execute: psycopg binds parameters server-side.
        for statement in FILL_SQL.split(";\n\n"):
            if statement.strip():
                conn.execute(statement, {"jobs": jobs, "teachers": SYNTHETIC_TEACHERS})
        conn.execute("vacuum analyze public.jobs")
        conn.execute("analyze")
    return time.perf_counter() - started


def time_call(call, runs: int) -> tuple[float, float, float, Any]:
    """First call, median and slowest of the others, in milliseconds; and the last answer."""
    timings = []
    answer = None
    for _ in range(runs + 1):
        started = time.perf_counter()
        answer = call()
        timings.append((time.perf_counter() - started) * 1000)
    rest = timings[1:]
    return timings[0], statistics.median(rest), max(rest), answer


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument(
        "--plans", action="store_true", help="print list_jobs plans (auto_explain)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the database")
    args = parser.parse_args()

    server = os.environ.get("EXAMQ_BENCH_DATABASE_URL") or os.environ.get(
        "EXAMQ_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
    )
    name = f"examq_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'create database "{name}"')
    db_url = _with_database(server, name)

    try:
        local.apply_schema(db_url, seed=True)
        seconds = fill(db_url, args.jobs)
        with psycopg.connect(db_url) as conn:
            (count,) = conn.execute("select count(*) from public.jobs").fetchone()
            (size,) = conn.execute(
                "select pg_size_pretty(pg_total_relation_size('public.jobs'))"
            ).fetchone()
        print(f"filled {count:,} jobs in {seconds:.1f} s (table and indexes: {size})")
        run_reads(db_url, args.runs, args.plans, args.jobs)
    finally:
        if not args.keep:
            with psycopg.connect(server, autocommit=True) as conn:
                conn.execute(f'drop database if exists "{name}" with (force)')
        else:
            print(f"kept database {db_url}")


def run_reads(db_url: str, runs: int, plans: bool, jobs: int) -> None:
    anon = token("anon")
    headers = {
        "admin": {
            "apikey": anon,
            "Authorization": f"Bearer {token('authenticated', ADMIN_USER)}",
        },
        "teacher": {
            "apikey": anon,
            "Authorization": f"Bearer {token('authenticated', FREE_USER)}",
        },
        "heavy teacher": {
            "apikey": anon,
            "Authorization": f"Bearer {token('authenticated', HEAVY_USER)}",
        },
    }
    with psycopg.connect(db_url) as conn:
        (middle_created, middle_id) = conn.execute(
            "select created_at, id from public.jobs order by created_at desc, id desc offset %s limit 1",
            (jobs // 2,),
        ).fetchone()
        (dead_id,) = conn.execute(
            "select id from public.jobs where status = 'dead' order by id desc limit 1"
        ).fetchone()
        ten_days_ago = conn.execute(
            "select date_trunc('day', now() - interval '10 days')"
        ).fetchone()[0]

    def rpc(who: str, function: str, body: dict[str, Any]):
        return lambda: client.post(f"/rpc/{function}", json=body, headers=headers[who])

    def table(who: str, path: str, params: dict[str, str], prefer: str | None = None):
        extra = {"Prefer": prefer} if prefer else {}
        return lambda: client.get(
            f"/{path}", params=params, headers={**headers[who], **extra}
        )

    page = {"p_limit": 51}
    reads = [
        ("list: first page", "admin", rpc("admin", "list_jobs", page)),
        ("list: first page", "teacher", rpc("teacher", "list_jobs", page)),
        ("list: first page", "heavy teacher", rpc("heavy teacher", "list_jobs", page)),
        (
            f"list: page after the {jobs // 2:,}th job",
            "admin",
            rpc(
                "admin",
                "list_jobs",
                {
                    **page,
                    "p_before_created_at": middle_created.isoformat(),
                    "p_before_id": middle_id,
                },
            ),
        ),
        (
            "list: status = dead",
            "admin",
            rpc("admin", "list_jobs", {**page, "p_statuses": ["dead"]}),
        ),
        (
            "list: status = cancelled",
            "admin",
            rpc("admin", "list_jobs", {**page, "p_statuses": ["cancelled"]}),
        ),
        (
            "list: status = queued",
            "admin",
            rpc("admin", "list_jobs", {**page, "p_statuses": ["queued"]}),
        ),
        (
            "list: status = dead",
            "heavy teacher",
            rpc("heavy teacher", "list_jobs", {**page, "p_statuses": ["dead"]}),
        ),
        (
            "list: type = system.sleep",
            "admin",
            rpc("admin", "list_jobs", {**page, "p_job_type": "system.sleep"}),
        ),
        (
            "list: tier = enterprise",
            "admin",
            rpc("admin", "list_jobs", {**page, "p_tier": "enterprise"}),
        ),
        (
            "list: one day, 10 days ago",
            "admin",
            rpc(
                "admin",
                "list_jobs",
                {
                    **page,
                    "p_created_from": ten_days_ago.isoformat(),
                    "p_created_to": (
                        ten_days_ago.replace(hour=23, minute=59)
                    ).isoformat(),
                },
            ),
        ),
        (
            "list: search 'missing item Q7' (rare)",
            "admin",
            rpc("admin", "list_jobs", {**page, "p_search": "missing item Q7"}),
        ),
        (
            "list: search 'timeout' (common)",
            "admin",
            rpc("admin", "list_jobs", {**page, "p_search": "timeout"}),
        ),
        (
            "list: search 'no such text'",
            "admin",
            rpc("admin", "list_jobs", {**page, "p_search": "no such text"}),
        ),
        (
            "list: search 'sleep' (a type)",
            "admin",
            rpc("admin", "list_jobs", {**page, "p_search": "sleep"}),
        ),
        (
            "list: search a job id",
            "admin",
            rpc("admin", "list_jobs", {**page, "p_search": str(dead_id)}),
        ),
        (
            "list: search 'timeout'",
            "heavy teacher",
            rpc("heavy teacher", "list_jobs", {**page, "p_search": "timeout"}),
        ),
        (
            "overview: queue_stats 24 h",
            "admin",
            rpc("admin", "queue_stats", {"p_window": "24 hours", "p_bucket": "1 hour"}),
        ),
        (
            "overview: queue_stats 7 d",
            "admin",
            rpc("admin", "queue_stats", {"p_window": "7 days", "p_bucket": "6 hours"}),
        ),
        (
            "overview: queue_stats 24 h",
            "teacher",
            rpc(
                "teacher", "queue_stats", {"p_window": "24 hours", "p_bucket": "1 hour"}
            ),
        ),
        (
            "overview: queue_stats 24 h",
            "heavy teacher",
            rpc(
                "heavy teacher",
                "queue_stats",
                {"p_window": "24 hours", "p_bucket": "1 hour"},
            ),
        ),
        (
            "overview: queue_depth view",
            "admin",
            table(
                "admin", "queue_depth", {"select": "tier,job_type,queued,ready,running"}
            ),
        ),
        (
            "dead letters: page 1, count=exact",
            "admin",
            table(
                "admin",
                "dead_letter_jobs",
                {"select": "*", "order": "finished_at.desc,id.desc", "limit": "50"},
                "count=exact",
            ),
        ),
        (
            "job page: the job",
            "admin",
            table("admin", "jobs", {"select": "*", "id": f"eq.{dead_id}"}),
        ),
        (
            "job page: its events",
            "admin",
            table(
                "admin",
                "job_events",
                {"select": "*", "job_id": f"eq.{dead_id}", "order": "id.asc"},
            ),
        ),
    ]

    with (
        serve(create_rest_app(db_url, SECRET)) as url,
        httpx.Client(base_url=f"{url}/rest/v1", timeout=120) as client,
    ):
        # One call to warm the server and the connection path before any timing.
        client.post("/rpc/list_jobs", json=page, headers=headers["admin"])
        print(
            f"\n{'read':44} {'as':14} {'first ms':>9} {'median ms':>10} {'max ms':>8} {'rows':>6}"
        )
        for label, who, call in reads:
            first, median, slowest, answer = time_call(call, runs)
            assert answer.status_code in (200, 206), (
                label,
                answer.status_code,
                answer.text[:300],
            )
            body = answer.json()
            rows = len(body) if isinstance(body, list) else 1
            print(
                f"{label:44} {who:14} {first:9.1f} {median:10.1f} {slowest:8.1f} {rows:6}"
            )

    if plans:
        print_plans(db_url, middle_created, middle_id)


def print_plans(db_url: str, middle_created, middle_id) -> None:
    cases = {
        "admin first page": {},
        "admin keyset page": {
            "p_before_created_at": middle_created,
            "p_before_id": middle_id,
        },
        "admin dead": {"p_statuses": ["dead"]},
        "admin search rare": {"p_search": "missing item Q7"},
        "admin search none": {"p_search": "no such text"},
    }
    with psycopg.connect(db_url, autocommit=True) as conn:
        for statement in (
            "load 'auto_explain'",
            "set auto_explain.log_min_duration = 0",
            "set auto_explain.log_nested_statements = on",
            "set auto_explain.log_analyze = on",
            "set auto_explain.log_level = 'notice'",
            "set client_min_messages = 'notice'",
        ):
            conn.execute(statement)
        notices: list[str] = []
        conn.add_notice_handler(lambda diag: notices.append(diag.message_primary or ""))
        conn.execute("set role authenticated")
        conn.execute(
            "select set_config('request.jwt.claims', %s, false)",
            (f'{{"sub": "{ADMIN_USER}", "role": "authenticated"}}',),
        )
        for label, args in cases.items():
            notices.clear()
            names = ", ".join(f"{k} => %({k})s" for k in args)
            conn.execute(
                f"select count(*) from public.list_jobs({names}{', ' if names else ''}p_limit => 51)",
                args,
            )
            listing = [n for n in notices if "from public.jobs j where true" in n]
            print(f"\n-- {label}\n{listing[0] if listing else '(no plan logged)'}")


if __name__ == "__main__":
    main()
