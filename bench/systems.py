"""The queues under test, each behind the same small interface.

Every system gets a database of its own on the benchmark server, installs its own
schema there, and is driven through its own public API: examq through
``examq.queue.Queue`` and ``examq.worker.Worker``, PgQueuer through its
``Queries``/``QueueManager``, Procrastinate through its ``App``. The plain-SQL queue
is the floor: one table, a claim of ``update ... where id in (select ... for update
skip locked limit N) returning``, a batched completing update.

The parent process uses a ``System`` to install, enqueue, count and fill; worker
processes (started with ``spawn``, so they share nothing with the parent) run
``worker_main``, which dispatches to the system's worker loop. A job's work is
``time.sleep(work_ms / 1000)``, blocking, in every system: ten milliseconds of work
that no system can overlap with another job's in the same process.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse, urlunparse

import psycopg

# The examq benchmark users: ten per tier, jobs spread over them round robin.
TIERS = ("free", "pro", "enterprise")
USERS_PER_TIER = 10
JOB_TYPE = "exam.grade"  # allowed in every tier; its handler is replaced by the bench's


def bench_user(index: int) -> str:
    """The uuid of benchmark user ``index`` (0-based)."""
    return f"00000000-0000-4000-b000-{index + 1:012d}"


@functools.cache
def bench_users() -> tuple[tuple[str, str], ...]:
    """(user id, tier) of every benchmark user, tiers interleaved.

    Cached: the enqueue workloads ask for a job's owner once per job.
    """
    return tuple(
        (bench_user(i), TIERS[i % len(TIERS)])
        for i in range(USERS_PER_TIER * len(TIERS))
    )


def with_database(url: str, name: str) -> str:
    """``url`` pointing at database ``name``."""
    return urlunparse(urlparse(url)._replace(path=f"/{name}"))


@dataclass
class WorkerConfig:
    """What one worker process does."""

    system: str
    db_url: str
    batch: int = 50
    work_ms: float = 0.0
    transport: str = "direct"  # examq only: direct or http
    api_url: str = ""
    api_key: str = ""
    poll_seconds: float = 0.05
    extra: dict[str, Any] = field(default_factory=dict)


def do_work(payload: Any, work_ms: float, latencies: list[float]) -> None:
    """The job's work: note the enqueue-to-start latency if asked, then sleep."""
    started = time.time()
    if isinstance(payload, dict) and "t" in payload:
        latencies.append(started - float(payload["t"]))
    if work_ms > 0:
        time.sleep(work_ms / 1000)


# --------------------------------------------------------------------------------
# Systems (parent side)
# --------------------------------------------------------------------------------


class System:
    """One queue installed in its own database."""

    name = "?"
    batch_sizes: tuple[int, ...] = (50,)

    def __init__(self, server_url: str, run_id: str) -> None:
        self.server_url = server_url
        self.db_name = f"bench_{self.name}_{run_id}"
        self.db_url = with_database(server_url, self.db_name)
        self.enqueued = 0

    # lifecycle
    def create(self) -> None:
        with psycopg.connect(self.server_url, autocommit=True) as conn:
            conn.execute(f'drop database if exists "{self.db_name}" with (force)')
            conn.execute(f'create database "{self.db_name}"')
        self.install()

    def drop(self) -> None:
        conn = getattr(self, "_poll_conn", None)
        if conn is not None:
            conn.close()
        with psycopg.connect(self.server_url, autocommit=True) as conn:
            conn.execute(f'drop database if exists "{self.db_name}" with (force)')

    def scalar(self, statement: str) -> Any:
        """The one value of a query, over a connection kept for such reads.

        The processing workloads poll a count while the workers run: a connection per
        poll would cost the server a backend start each time, load that falls on the
        systems under test.
        """
        conn = getattr(self, "_poll_conn", None)
        if conn is None or conn.closed:
            conn = self._poll_conn = psycopg.connect(self.db_url, autocommit=True)
        return conn.execute(statement).fetchone()[0]

    def sql(self, statement: str, params: Any = None) -> list[tuple]:
        with psycopg.connect(self.db_url, autocommit=True) as conn:
            cur = conn.execute(statement, params)
            return cur.fetchall() if cur.description else []

    def vacuum(self) -> None:
        with psycopg.connect(self.db_url, autocommit=True) as conn:
            conn.execute("vacuum analyze")

    def enqueue_single(self, payloads: list[dict]) -> None:
        """Enqueue one job per call, over one connection."""
        producer = self.producer()
        try:
            for payload in payloads:
                producer(payload)
        finally:
            producer.close()

    # to implement
    def install(self) -> None: ...
    def reset(self) -> None: ...
    def producer(self) -> Any: ...
    def enqueue_bulk(self, payloads: list[dict], batch: int = 1000) -> None: ...
    def finished(self) -> int: ...
    def fill(self, queued: int, finished: int) -> None: ...
    def claim_once(self, conn_state: dict) -> None: ...

    def worker_config(self, **kwargs: Any) -> WorkerConfig:
        return WorkerConfig(system=self.name, db_url=self.db_url, **kwargs)


class ExamqSystem(System):
    """examq with every feature on: users in three tiers, caps, leases, history."""

    name = "examq"
    batch_sizes = (50, 200, 500)

    def install(self) -> None:
        from examq import local

        local.apply_schema(self.db_url, seed=True)
        with psycopg.connect(self.db_url, autocommit=True) as conn:
            # Caps and quotas high enough not to throttle: the benchmark measures the
            # queue, every check still runs.
            conn.execute(
                "update public.tiers set max_running_per_user = 100000, "
                "max_queued_per_user = 100000000"
            )
            for user_id, tier in bench_users():
                conn.execute(
                    "insert into auth.users (id, aud, role, email) "
                    "values (%s, 'authenticated', 'authenticated', %s)",
                    (user_id, f"bench-{user_id[-4:]}@example.com"),
                )
                conn.execute(
                    "insert into public.accounts (user_id, tier) values (%s, %s)",
                    (user_id, tier),
                )
        self._queue = None

    def queue(self):
        from examq.db import PsycopgTransport
        from examq.queue import Queue

        if getattr(self, "_queue", None) is None:
            self._queue = Queue(
                PsycopgTransport(self.db_url, application_name="bench-parent")
            )
        return self._queue

    def reset(self) -> None:
        self.sql(
            "truncate public.jobs, public.job_events, public.notification_outbox cascade"
        )
        self.enqueued = 0

    def _owner(self, i: int) -> str:
        users = bench_users()
        return users[i % len(users)][0]

    def producer(self) -> Any:
        queue = self.queue()
        system = self

        class Producer:
            def __call__(self, payload: dict) -> None:
                queue.enqueue(JOB_TYPE, payload, user_id=system._owner(system.enqueued))
                system.enqueued += 1

            def close(self) -> None:
                pass

        return Producer()

    def enqueue_bulk(self, payloads: list[dict], batch: int = 1000) -> None:
        queue = self.queue()
        for start in range(0, len(payloads), batch):
            chunk = payloads[start : start + batch]
            queue.enqueue_many(
                [
                    {
                        "job_type": JOB_TYPE,
                        "payload": p,
                        "user_id": self._owner(self.enqueued + i),
                    }
                    for i, p in enumerate(chunk)
                ]
            )
            self.enqueued += len(chunk)

    def finished(self) -> int:
        return self.scalar("select count(*) from public.jobs where status = 'succeeded'")

    def fill(self, queued: int, finished: int) -> None:
        # Set-based, without the history rows and foreign-key checks (replica role):
        # this builds the table a claim has to find its way through, quickly.
        users = [u for u, _ in bench_users()]
        with psycopg.connect(self.db_url, autocommit=True) as conn:
            conn.execute("set synchronous_commit = off")
            conn.execute("set session_replication_role = replica")
            conn.execute(
                """
                insert into public.jobs
                  (job_type, user_id, tier, status, run_at, sort_at, attempt, max_attempts,
                   lease_token, worker_id, progress, result, first_started_at, started_at,
                   finished_at, created_at, updated_at)
                select %s, (%s::uuid[])[1 + g %% 30], a.tier, 'succeeded', t, t, 1, 3,
                       gen_random_uuid(), 'w', 100, '{}', t, t, t, t, t
                from generate_series(1, %s) g
                cross join lateral (select now() - interval '20 days' + g * interval '1 ms') x(t)
                join public.accounts a on a.user_id = (%s::uuid[])[1 + g %% 30]
                """,
                (JOB_TYPE, users, finished, users),
            )
            conn.execute(
                """
                insert into public.jobs (job_type, user_id, tier, run_at, sort_at, max_attempts, created_at)
                select %s, (%s::uuid[])[1 + g %% 30], a.tier, t, t - make_interval(secs => tr.head_start_seconds), 3, t
                from generate_series(1, %s) g
                cross join lateral (select now() - interval '1 hour' + g * interval '1 ms') x(t)
                join public.accounts a on a.user_id = (%s::uuid[])[1 + g %% 30]
                join public.tiers tr on tr.name = a.tier
                """,
                (JOB_TYPE, users, queued, users),
            )
            conn.execute("analyze public.jobs")

    def claim_once(self, state: dict) -> None:
        if "conn" not in state:
            state["conn"] = psycopg.connect(self.db_url, autocommit=True)
        state["conn"].execute(
            "select id from public.claim_job_batch('bench-claim', 10, array[%s])",
            (JOB_TYPE,),
        ).fetchall()


class PlainSystem(System):
    """The floor: one table, skip locked claim, batched completing update."""

    name = "plain_sql"
    batch_sizes = (10, 50, 200)

    def install(self) -> None:
        self.sql(
            """
            create table plain_jobs (
              id bigint generated always as identity primary key,
              status smallint not null default 0,
              payload jsonb not null default '{}',
              created_at timestamptz not null default now(),
              started_at timestamptz,
              finished_at timestamptz
            );
            create index plain_jobs_queued_idx on plain_jobs (id) where status = 0;
            """
        )

    def reset(self) -> None:
        self.sql("truncate plain_jobs")
        self.enqueued = 0

    def producer(self) -> Any:
        from psycopg.types.json import Jsonb

        conn = psycopg.connect(self.db_url, autocommit=True)
        system = self

        class Producer:
            def __call__(self, payload: dict) -> None:
                conn.execute(
                    "insert into plain_jobs (payload) values (%s)", (Jsonb(payload),)
                )
                system.enqueued += 1

            def close(self) -> None:
                conn.close()

        return Producer()

    def enqueue_bulk(self, payloads: list[dict], batch: int = 1000) -> None:
        with psycopg.connect(self.db_url, autocommit=True) as conn:
            for start in range(0, len(payloads), batch):
                chunk = [json.dumps(p) for p in payloads[start : start + batch]]
                conn.execute(
                    "insert into plain_jobs (payload) select unnest(%s::text[])::jsonb",
                    (chunk,),
                )
        self.enqueued += len(payloads)

    def finished(self) -> int:
        return self.scalar("select count(*) from plain_jobs where status = 2")

    def fill(self, queued: int, finished: int) -> None:
        with psycopg.connect(self.db_url, autocommit=True) as conn:
            conn.execute("set synchronous_commit = off")
            conn.execute(
                "insert into plain_jobs (status, started_at, finished_at) "
                "select 2, now(), now() from generate_series(1, %s)",
                (finished,),
            )
            conn.execute(
                "insert into plain_jobs (status) select 0 from generate_series(1, %s)",
                (queued,),
            )
            conn.execute("analyze plain_jobs")

    def claim_once(self, state: dict) -> None:
        if "conn" not in state:
            state["conn"] = psycopg.connect(self.db_url, autocommit=True)
        state["conn"].execute(PLAIN_CLAIM, (10,)).fetchall()


PLAIN_CLAIM = """
update plain_jobs set status = 1, started_at = now()
where id in (select id from plain_jobs where status = 0 order by id limit %s for update skip locked)
returning id, payload
"""
PLAIN_COMPLETE = (
    "update plain_jobs set status = 2, finished_at = now() where id = any(%s)"
)


class PgQueuerSystem(System):
    """PgQueuer, its own schema, driven through psycopg's async driver."""

    name = "pgqueuer"
    batch_sizes = (50, 200, 500)

    async def _queries(self):
        from pgqueuer.queries import Queries

        conn = await psycopg.AsyncConnection.connect(self.db_url, autocommit=True)
        return conn, Queries.from_psycopg_connection(conn)

    def install(self) -> None:
        async def go() -> None:
            conn, queries = await self._queries()
            await queries.install()
            await conn.close()

        asyncio.run(go())

    def reset(self) -> None:
        self.sql("truncate pgqueuer, pgqueuer_log, pgqueuer_statistics")
        self.enqueued = 0

    def producer(self) -> Any:
        from pgqueuer.adapters.drivers.psycopg import SyncPsycopgDriver
        from pgqueuer.queries import SyncQueries

        conn = psycopg.connect(self.db_url, autocommit=True)
        queries = SyncQueries(SyncPsycopgDriver(conn))
        system = self

        class Producer:
            def __call__(self, payload: dict) -> None:
                queries.enqueue("bench", json.dumps(payload).encode())
                system.enqueued += 1

            def close(self) -> None:
                conn.close()

        return Producer()

    def enqueue_bulk(self, payloads: list[dict], batch: int = 1000) -> None:
        async def go() -> None:
            conn, queries = await self._queries()
            for start in range(0, len(payloads), batch):
                chunk = payloads[start : start + batch]
                await queries.enqueue(
                    ["bench"] * len(chunk),
                    [json.dumps(p).encode() for p in chunk],
                    [0] * len(chunk),
                )
            await conn.close()

        asyncio.run(go())
        self.enqueued += len(payloads)

    def finished(self) -> int:
        # Finished jobs leave the queue table (and are logged in pgqueuer_log).
        queued = self.scalar("select count(*) from pgqueuer")
        return self.enqueued - queued

    def fill(self, queued: int, finished: int) -> None:
        with psycopg.connect(self.db_url, autocommit=True) as conn:
            conn.execute("set synchronous_commit = off")
            conn.execute(
                "insert into pgqueuer (priority, entrypoint, payload, status) "
                "select 0, 'bench', '{}'::bytea, 'queued' from generate_series(1, %s)",
                (queued,),
            )
            conn.execute(
                "insert into pgqueuer_log (job_id, status, priority, entrypoint) "
                "select g, 'successful', 0, 'bench' from generate_series(1, %s) g",
                (finished,),
            )
            conn.execute("analyze")
        self.enqueued += queued

    def claim_once(self, state: dict) -> None:
        from datetime import timedelta

        from pgqueuer.queries import EntrypointExecutionParameter

        async def go() -> None:
            if "queries" not in state:
                state["conn"], state["queries"] = await self._queries()
            await state["queries"].dequeue(
                batch_size=10,
                entrypoints={
                    "bench": EntrypointExecutionParameter(concurrency_limit=0)
                },
                queue_manager_id=state.setdefault("qm_id", uuid.uuid4()),
                global_concurrency_limit=None,
                heartbeat_timeout=timedelta(seconds=30),
            )

        loop = state.setdefault("loop", asyncio.new_event_loop())
        loop.run_until_complete(go())


class ProcrastinateSystem(System):
    """Procrastinate, its own schema, one job per fetch (its model)."""

    name = "procrastinate"
    batch_sizes = (1,)

    def app(self):
        import procrastinate

        app = procrastinate.App(
            connector=procrastinate.PsycopgConnector(conninfo=self.db_url)
        )
        register_procrastinate_task(app, 0.0, [])
        return app

    def install(self) -> None:
        app = self.app()
        with app.open():
            app.schema_manager.apply_schema()

    def reset(self) -> None:
        self.sql("truncate procrastinate_jobs cascade")
        self.enqueued = 0

    def producer(self) -> Any:
        app = self.app()
        app.open()
        task = app.tasks["bench"]
        system = self

        class Producer:
            def __call__(self, payload: dict) -> None:
                task.defer(payload=payload)
                system.enqueued += 1

            def close(self) -> None:
                app.close()

        return Producer()

    def enqueue_bulk(self, payloads: list[dict], batch: int = 1000) -> None:
        app = self.app()
        with app.open():
            task = app.tasks["bench"]
            for start in range(0, len(payloads), batch):
                task.batch_defer(
                    *({"payload": p} for p in payloads[start : start + batch])
                )
        self.enqueued += len(payloads)

    def finished(self) -> int:
        return self.scalar("select count(*) from procrastinate_jobs where status = 'succeeded'")

    def fill(self, queued: int, finished: int) -> None:
        with psycopg.connect(self.db_url, autocommit=True) as conn:
            conn.execute("set synchronous_commit = off")
            conn.execute("set session_replication_role = replica")
            conn.execute(
                "insert into procrastinate_jobs (queue_name, task_name, args, status, attempts) "
                "select 'default', 'bench', '{}', 'succeeded', 1 from generate_series(1, %s)",
                (finished,),
            )
            conn.execute(
                "insert into procrastinate_jobs (queue_name, task_name, args, status) "
                "select 'default', 'bench', '{}', 'todo' from generate_series(1, %s)",
                (queued,),
            )
            conn.execute("analyze")

    def claim_once(self, state: dict) -> None:
        if "conn" not in state:
            state["conn"] = psycopg.connect(self.db_url, autocommit=True)
            state["worker_id"] = (
                state["conn"]
                .execute("select procrastinate_register_worker_v1()")
                .fetchone()[0]
            )
        state["conn"].execute(
            "select * from procrastinate_fetch_job_v2(null, %s)", (state["worker_id"],)
        ).fetchall()


SYSTEMS: dict[str, type[System]] = {
    s.name: s for s in (ExamqSystem, PlainSystem, PgQueuerSystem, ProcrastinateSystem)
}


def register_procrastinate_task(
    app: Any, work_ms: float, latencies: list[float]
) -> None:
    """The benchmark's Procrastinate task, named ``bench``."""

    @app.task(name="bench", queue="default")
    def bench(payload: dict | None = None) -> None:
        do_work(payload or {}, work_ms, latencies)


# --------------------------------------------------------------------------------
# Workers (child processes)
# --------------------------------------------------------------------------------


def worker_main(cfg: WorkerConfig, start: Any, stop: Any, results: Any) -> None:
    """Entry point of a worker process: wait for ``start``, work until ``stop``."""
    latencies: list[float] = []
    runner = {
        "examq": _examq_worker,
        "plain_sql": _plain_worker,
        "pgqueuer": _pgqueuer_worker,
        "procrastinate": _procrastinate_worker,
    }[cfg.system]
    try:
        runner(cfg, start, stop, latencies)
    finally:
        results.put({"pid": os.getpid(), "latencies": latencies})


def _examq_worker(
    cfg: WorkerConfig, start: Any, stop: Any, latencies: list[float]
) -> None:
    from examq.db import PsycopgTransport, SupabaseTransport
    from examq.log import configure_logging
    from examq.queue import Queue
    from examq.worker import Worker

    # Per-job lines are INFO; the peers' per-job logs are off by default too.
    configure_logging("json", cfg.extra.get("log_level", "WARNING"), force=True)
    if cfg.transport == "http":
        transport: Any = SupabaseTransport(cfg.api_url, cfg.api_key)
    else:
        transport = PsycopgTransport(cfg.db_url, application_name="bench-examq")
    queue = Queue(transport)

    def handler(payload: dict, ctx: Any) -> dict:
        do_work(payload, cfg.work_ms, latencies)
        return {}

    worker = Worker(
        queue,
        handlers={JOB_TYPE: handler},
        batch_size=cfg.batch,
        batch_outcomes=cfg.extra.get("batch_outcomes", True),
    )
    queue.claim_batch(
        worker.worker_id, 1, job_types=["none"]
    )  # connect before the start
    start.wait()
    while not stop.is_set():
        summary = worker.run_pass(5.0)  # short passes, so that a stop is seen soon
        if summary.claimed == 0:
            stop.wait(cfg.poll_seconds)
    transport.close()


def _plain_worker(
    cfg: WorkerConfig, start: Any, stop: Any, latencies: list[float]
) -> None:
    conn = psycopg.connect(cfg.db_url, autocommit=True)
    start.wait()
    while not stop.is_set():
        rows = conn.execute(PLAIN_CLAIM, (cfg.batch,)).fetchall()
        if not rows:
            stop.wait(cfg.poll_seconds)
            continue
        for _id, payload in rows:
            do_work(payload, cfg.work_ms, latencies)
        conn.execute(PLAIN_COMPLETE, ([r[0] for r in rows],))
    conn.close()


def _pgqueuer_worker(
    cfg: WorkerConfig, start: Any, stop: Any, latencies: list[float]
) -> None:
    from pgqueuer.qm import QueueManager
    from pgqueuer.queries import Queries

    async def go() -> None:
        conn = await psycopg.AsyncConnection.connect(cfg.db_url, autocommit=True)
        qm = QueueManager(Queries.from_psycopg_connection(conn))

        @qm.entrypoint("bench")
        async def bench(job: Any) -> None:
            do_work(
                json.loads(job.payload) if job.payload else {}, cfg.work_ms, latencies
            )

        await asyncio.to_thread(start.wait)

        async def watch() -> None:
            while not stop.is_set():
                await asyncio.sleep(0.05)
            qm.shutdown.set()

        watcher = asyncio.create_task(watch())
        from datetime import timedelta

        await qm.run(
            batch_size=cfg.batch,
            dequeue_timeout=timedelta(seconds=cfg.poll_seconds * 20),
        )
        watcher.cancel()
        await conn.close()

    asyncio.run(go())


def _procrastinate_worker(
    cfg: WorkerConfig, start: Any, stop: Any, latencies: list[float]
) -> None:
    import procrastinate

    app = procrastinate.App(
        connector=procrastinate.PsycopgConnector(conninfo=cfg.db_url)
    )
    register_procrastinate_task(app, cfg.work_ms, latencies)

    async def go() -> None:
        async with app.open_async():
            await asyncio.to_thread(start.wait)
            task = asyncio.create_task(
                app.run_worker_async(
                    queues=["default"],
                    concurrency=1,
                    wait=True,
                    install_signal_handlers=False,
                    delete_jobs="never",
                    fetch_job_polling_interval=cfg.poll_seconds * 20,
                )
            )
            while not stop.is_set():
                await asyncio.sleep(0.05)
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    asyncio.run(go())
