"""examq against PgQueuer, Procrastinate and a plain-SQL ``skip locked`` queue.

Run ``.venv/bin/python -m bench`` (about 12 minutes) or ``.venv/bin/python -m bench
--quick`` (about 3 minutes) from the repository root. Each system gets its own
database on the server (default: the local PostgreSQL at 127.0.0.1:5432), created at
the start and dropped at the end. Workloads run one after another, and within each
the systems take turns, so that load from whatever else shares the machine falls on
all of them alike; figures are quoted as ratios to examq.

Workloads: enqueue (one job per call, and in bulk); processing rate of no-op and
10 ms jobs with 1 and 4 worker processes (examq also over HTTP through the local RPC
endpoint, examq.rest); enqueue-to-start latency at a steady offered load; claim
latency as the table grows (up to 1,000,000 queued plus 1,000,000 finished jobs, or
100,000 each with --quick); and examq's fairness under saturation. The table is
printed; JSON and a PNG are written to bench/results/.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from bench.systems import (
    JOB_TYPE,
    SYSTEMS,
    ExamqSystem,
    System,
    WorkerConfig,
    worker_main,
)

RESULTS_DIR = Path(__file__).resolve().parent / "results"
DEFAULT_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"
CTX = mp.get_context("spawn")


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0-100) of values, by linear interpolation; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------
# Running workers
# ------------------------------------------------------------------------------


class Workers:
    """``count`` worker processes of one system, started together by a barrier."""

    def __init__(self, cfg: WorkerConfig, count: int) -> None:
        self.start = CTX.Barrier(count + 1)
        self.stop = CTX.Event()
        self.results = CTX.Queue()
        self.procs = [
            CTX.Process(
                target=worker_main,
                args=(cfg, self.start, self.stop, self.results),
                daemon=True,
            )
            for _ in range(count)
        ]
        for proc in self.procs:
            proc.start()

    def go(self) -> None:
        self.start.wait(timeout=120)

    def finish(self) -> list[float]:
        self.stop.set()
        latencies: list[float] = []
        for _ in self.procs:
            try:
                latencies.extend(self.results.get(timeout=20)["latencies"])
            except Exception:  # noqa: BLE001 - a worker that died or hangs reports nothing
                break
        for proc in self.procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
        return latencies


def measure_processing(
    system: System,
    *,
    procs: int,
    work_ms: float,
    batch: int,
    seconds: float,
    jobs: int,
    transport: str = "direct",
    api: tuple[str, str] = ("", ""),
) -> dict[str, Any]:
    """Jobs finished per second by ``procs`` workers over at most ``seconds``."""
    system.reset()
    system.enqueue_bulk([{} for _ in range(jobs)])
    system.vacuum()
    cfg = system.worker_config(
        batch=batch,
        work_ms=work_ms,
        transport=transport,
        api_url=api[0],
        api_key=api[1],
    )
    workers = Workers(cfg, procs)
    before = system.finished()
    workers.go()
    started = time.perf_counter()
    done, elapsed = 0, 0.0
    while True:
        time.sleep(0.1)
        done = system.finished() - before
        elapsed = time.perf_counter() - started
        if done >= jobs or elapsed >= seconds:
            break
    workers.finish()
    return {
        "system": system.name,
        "procs": procs,
        "work_ms": work_ms,
        "batch": batch,
        "transport": transport,
        "jobs": done,
        "seconds": round(elapsed, 3),
        "rate": round(done / elapsed, 1) if elapsed else 0.0,
    }


def measure_latency(
    system: System, *, rate: float, seconds: float, batch: int, procs: int = 4
) -> dict[str, Any]:
    """Enqueue-to-start latency of no-op jobs enqueued one by one at ``rate`` per second."""
    system.reset()
    system.vacuum()
    cfg = system.worker_config(batch=batch, work_ms=0.0)
    workers = Workers(cfg, procs)
    producer = system.producer()
    workers.go()
    total = int(rate * seconds)
    started = time.perf_counter()
    before = system.finished()
    try:
        for i in range(total):
            delay = started + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            producer({"t": time.time()})
        deadline = time.perf_counter() + 30
        while system.finished() - before < total and time.perf_counter() < deadline:
            time.sleep(0.1)
    finally:
        producer.close()
    latencies = workers.finish()
    ms = [x * 1000 for x in latencies]
    return {
        "system": system.name,
        "offered_per_second": rate,
        "jobs": total,
        "started": len(ms),
        "p50_ms": _r(percentile(ms, 50)),
        "p95_ms": _r(percentile(ms, 95)),
        "p99_ms": _r(percentile(ms, 99)),
        "max_ms": _r(max(ms) if ms else None),
    }


def _r(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


def measure_enqueue(system: System, single: int, bulk: int) -> dict[str, Any]:
    """Jobs enqueued per second, one per call and in batches of 1,000."""
    system.reset()
    started = time.perf_counter()
    system.enqueue_single([{} for _ in range(single)])
    single_rate = single / (time.perf_counter() - started)
    system.reset()
    started = time.perf_counter()
    system.enqueue_bulk([{} for _ in range(bulk)])
    bulk_rate = bulk / (time.perf_counter() - started)
    return {
        "system": system.name,
        "single": round(single_rate, 1),
        "bulk": round(bulk_rate, 1),
    }


def measure_growth(
    system: System, steps: list[int], samples: int
) -> list[dict[str, Any]]:
    """Claim latency (a batch of 10; Procrastinate: its one-job fetch) as the table grows."""
    system.reset()
    rows = []
    have = 0
    for size in steps:
        if size > have:
            system.fill(size - have, size - have)
            have = size
        system.vacuum()
        state: dict[str, Any] = {}
        times = []
        for i in range(samples + 3):
            started = time.perf_counter()
            system.claim_once(state)
            if i >= 3:
                times.append((time.perf_counter() - started) * 1000)
        if "loop" in state:
            state["loop"].run_until_complete(state["conn"].close())
            state["loop"].close()
        elif "conn" in state:
            state["conn"].close()
        rows.append(
            {
                "system": system.name,
                "queued": size,
                "finished": size,
                "p50_ms": _r(percentile(times, 50), 3),
                "p95_ms": _r(percentile(times, 95), 3),
            }
        )
        log(
            f"  {system.name}: claim at {size:,} queued + {size:,} finished: p50 {rows[-1]['p50_ms']} ms"
        )
    return rows


def measure_fairness(
    system: ExamqSystem, *, rate: float, seconds: float
) -> dict[str, Any]:
    """Per-tier waits when 10 ms jobs arrive faster than 4 workers can run them."""
    from bench.systems import bench_users

    system.reset()
    cfg = system.worker_config(batch=10, work_ms=10.0)
    workers = Workers(cfg, 4)
    queue = system.queue()
    users = bench_users()
    workers.go()
    started = time.perf_counter()
    sent = 0
    chunk = 10
    total = int(rate * seconds)
    while sent < total:
        delay = started + sent / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        queue.enqueue_many(
            [
                {
                    "job_type": JOB_TYPE,
                    "payload": {},
                    "user_id": users[(sent + i) % len(users)][0],
                }
                for i in range(chunk)
            ]
        )
        sent += chunk
    deadline = time.perf_counter() + 180
    while system.finished() < sent and time.perf_counter() < deadline:
        time.sleep(0.25)
    workers.finish()
    rows = system.sql(
        """
        select tier,
               percentile_cont(array[0.5, 0.95, 0.99]) within group
                 (order by extract(epoch from first_started_at - created_at)),
               max(extract(epoch from first_started_at - created_at)),
               count(*) filter (where status = 'succeeded'), count(*)
        from public.jobs group by tier order by tier
        """
    )
    tiers = {
        tier: {
            "p50_s": round(p[0], 3),
            "p95_s": round(p[1], 3),
            "p99_s": round(p[2], 3),
            "max_s": round(float(mx), 3),
            "succeeded": ok,
            "jobs": n,
        }
        for tier, p, mx, ok, n in rows
    }
    return {
        "offered_per_second": rate,
        "seconds": seconds,
        "jobs": sent,
        "tiers": tiers,
        "worst_free_wait_s": tiers.get("free", {}).get("max_s"),
    }


# ------------------------------------------------------------------------------
# The local RPC endpoint for examq's HTTP transport
# ------------------------------------------------------------------------------

JWT_SECRET = "examq-bench-jwt-secret-of-at-least-32-bytes"


def _serve_rest(db_url: str, ready: Any, stop: Any) -> None:
    from examq.log import configure_logging
    from examq.rest import create_rest_app, serve

    configure_logging("json", "WARNING", force=True)
    with serve(create_rest_app(db_url, JWT_SECRET)) as url:
        ready.put(url)
        stop.wait()


class RestServer:
    """examq.rest served by uvicorn in a process of its own."""

    def __init__(self, db_url: str) -> None:
        import jwt

        self.stop = CTX.Event()
        ready = CTX.Queue()
        self.proc = CTX.Process(
            target=_serve_rest, args=(db_url, ready, self.stop), daemon=True
        )
        self.proc.start()
        self.url = ready.get(timeout=60)
        now = int(time.time())
        self.key = jwt.encode(
            {"role": "service_role", "iat": now, "exp": now + 86400},
            JWT_SECRET,
            algorithm="HS256",
        )

    def close(self) -> None:
        self.stop.set()
        self.proc.join(timeout=15)


# ------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------


def plan(quick: bool) -> dict[str, Any]:
    """Sizes and durations of each workload."""
    if quick:
        return dict(  # noqa: C408 - keyword form reads as the list of settings it is
            single=300,
            bulk=10000,
            jobs=30000,
            seconds=4.0,
            short_seconds=3.0,
            latency_rate=100.0,
            latency_seconds=4.0,
            growth=[10_000, 100_000],
            growth_samples=20,
            fair_rate=450.0,
            fair_seconds=5.0,
        )
    return dict(  # noqa: C408 - keyword form reads as the list of settings it is
        single=1500,
        bulk=50000,
        jobs=60000,
        seconds=8.0,
        short_seconds=6.0,
        latency_rate=200.0,
        latency_seconds=8.0,
        growth=[10_000, 100_000, 1_000_000],
        growth_samples=30,
        fair_rate=600.0,
        fair_seconds=15.0,
    )


def rotate(items: list[Any], k: int) -> list[Any]:
    k %= len(items)
    return items[k:] + items[:k]


def run(args: argparse.Namespace) -> dict[str, Any]:
    p = plan(args.quick)
    run_id = datetime.now().strftime("%H%M%S")
    systems = [SYSTEMS[name](args.server, run_id) for name in args.systems]
    by_name = {s.name: s for s in systems}
    results: dict[str, Any] = {
        "meta": {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "quick": args.quick,
            "plan": p,
            "host": platform.node(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "server": _server_version(args.server),
            "versions": _versions(),
        },
        "enqueue": [],
        "processing": [],
        "latency": [],
        "growth": [],
        "fairness": None,
    }
    started = time.perf_counter()
    try:
        for system in systems:
            log(f"installing {system.name} in {system.db_name}")
            system.create()

        if "enqueue" in args.workloads:
            for i, system in enumerate(rotate(systems, 0)):
                row = measure_enqueue(system, p["single"], p["bulk"])
                results["enqueue"].append(row)
                log(
                    f"enqueue {system.name}: single {row['single']}/s, bulk {row['bulk']}/s"
                )

        if "processing" in args.workloads:
            cases = []
            # The headline: no-op jobs, 4 processes, direct, at each system's batch sizes.
            for system in systems:
                for batch in system.batch_sizes:
                    cases.append((system.name, 4, 0.0, batch, "direct"))
            for procs, work_ms in ((1, 0.0), (1, 10.0), (4, 10.0)):
                for system in systems:
                    cases.append(
                        (
                            system.name,
                            procs,
                            work_ms,
                            _default_batch(system, work_ms),
                            "direct",
                        )
                    )
            # Interleave: round-robin over systems within each (procs, work) group.
            for name, procs, work_ms, batch, transport in _interleave(cases):
                system = by_name[name]
                row = measure_processing(
                    system,
                    procs=procs,
                    work_ms=work_ms,
                    batch=batch,
                    seconds=p["seconds"] if work_ms == 0 else p["short_seconds"],
                    jobs=p["jobs"],
                    transport=transport,
                )
                results["processing"].append(row)
                log(
                    f"process {name} procs={procs} work={work_ms}ms batch={batch}: {row['rate']}/s"
                )
            if "examq" in by_name and not args.no_http:
                examq = by_name["examq"]
                server = RestServer(examq.db_url)
                try:
                    for procs, work_ms in ((1, 0.0), (4, 0.0), (4, 10.0)):
                        row = measure_processing(
                            examq,
                            procs=procs,
                            work_ms=work_ms,
                            batch=200 if work_ms == 0 else 50,
                            seconds=p["short_seconds"],
                            jobs=min(p["jobs"], 20000),
                            transport="http",
                            api=(server.url, server.key),
                        )
                        results["processing"].append(row)
                        log(
                            f"process examq over HTTP procs={procs} work={work_ms}ms: {row['rate']}/s"
                        )
                finally:
                    server.close()

        if "latency" in args.workloads:
            for system in rotate(systems, 1):
                row = measure_latency(
                    system,
                    rate=p["latency_rate"],
                    seconds=p["latency_seconds"],
                    batch=_default_batch(system, 0.0, latency=True),
                )
                results["latency"].append(row)
                log(
                    f"latency {system.name}: p50 {row['p50_ms']} ms, p99 {row['p99_ms']} ms"
                )

        if "fairness" in args.workloads and "examq" in by_name:
            results["fairness"] = measure_fairness(
                by_name["examq"], rate=p["fair_rate"], seconds=p["fair_seconds"]
            )
            log(f"fairness: {json.dumps(results['fairness']['tiers'])}")

        if "growth" in args.workloads:
            for system in rotate(systems, 2):
                results["growth"].extend(
                    measure_growth(system, p["growth"], p["growth_samples"])
                )
    finally:
        for system in systems:
            try:
                system.drop()
            except Exception as exc:  # noqa: BLE001 - report and go on dropping the others
                log(f"could not drop {system.db_name}: {exc}")
    results["meta"]["seconds"] = round(time.perf_counter() - started, 1)
    results["ratios"] = ratios(results)
    return results


def _default_batch(system: System, work_ms: float, latency: bool = False) -> int:
    if system.name == "procrastinate":
        return 1
    if latency:
        return 10
    if system.name == "examq":
        return 200 if work_ms == 0 else 50
    return 50


def _interleave(cases: list[tuple]) -> list[tuple]:
    """Cases reordered so that consecutive runs belong to different systems."""
    groups: dict[tuple, list[tuple]] = {}
    for case in cases:
        groups.setdefault((case[1], case[2]), []).append(case)
    ordered = []
    for group in groups.values():
        buckets: dict[str, list[tuple]] = {}
        for case in group:
            buckets.setdefault(case[0], []).append(case)
        while any(buckets.values()):
            for name in list(buckets):
                if buckets[name]:
                    ordered.append(buckets[name].pop(0))
    return ordered


def ratios(results: dict[str, Any]) -> dict[str, Any]:
    """Each system's figures as ratios to examq's, and examq's to the plain-SQL floor."""
    out: dict[str, Any] = {}
    proc = results["processing"]

    def best(
        name: str, procs: int, work_ms: float, transport: str = "direct"
    ) -> dict | None:
        rows = [
            r
            for r in proc
            if r["system"] == name
            and r["procs"] == procs
            and r["work_ms"] == work_ms
            and r["transport"] == transport
        ]
        return max(rows, key=lambda r: r["rate"]) if rows else None

    examq_best = best("examq", 4, 0.0)
    plain_best = best("plain_sql", 4, 0.0)
    if examq_best and plain_best:
        out["examq_vs_plain_sql_noop_4"] = round(
            examq_best["rate"] / plain_best["rate"], 3
        )
    for name in ("plain_sql", "pgqueuer", "procrastinate"):
        for procs, work_ms in ((4, 0.0), (1, 0.0), (1, 10.0), (4, 10.0)):
            peer, ours = best(name, procs, work_ms), best("examq", procs, work_ms)
            if peer and ours:
                out[f"{name}_over_examq_process_p{procs}_w{int(work_ms)}"] = round(
                    peer["rate"] / ours["rate"], 3
                )
    enq = {r["system"]: r for r in results["enqueue"]}
    if "examq" in enq:
        for name, row in enq.items():
            if name != "examq":
                out[f"{name}_over_examq_enqueue_single"] = round(
                    row["single"] / enq["examq"]["single"], 3
                )
                out[f"{name}_over_examq_enqueue_bulk"] = round(
                    row["bulk"] / enq["examq"]["bulk"], 3
                )
    return out


def _server_version(url: str) -> str:
    with psycopg.connect(url) as conn:
        return conn.execute("show server_version").fetchone()[0]


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("examq", "pgqueuer", "procrastinate", "psycopg"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--quick", action="store_true", help="about 3 minutes instead of about 12"
    )
    parser.add_argument(
        "--server",
        default=os.environ.get("EXAMQ_BENCH_DATABASE_URL", DEFAULT_SERVER),
        help="maintenance database URL of the server to use",
    )
    parser.add_argument(
        "--systems", nargs="+", default=list(SYSTEMS), choices=list(SYSTEMS)
    )
    parser.add_argument(
        "--workloads",
        nargs="+",
        default=["enqueue", "processing", "latency", "fairness", "growth"],
        choices=["enqueue", "processing", "latency", "fairness", "growth"],
    )
    parser.add_argument("--no-http", action="store_true", help="skip examq over HTTP")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)

    missing = [
        n
        for n in args.systems
        if n in ("pgqueuer", "procrastinate") and not _installed(n)
    ]
    if missing:
        parser.error(
            f"not installed: {', '.join(missing)} (pip install 'examq[bench]')"
        )

    results = run(args)
    from bench.report import print_table, write_outputs

    paths = write_outputs(results, args.out)
    print_table(results)
    for path in paths:
        print(f"wrote {path}")
    return 0


def _installed(name: str) -> bool:
    from importlib.util import find_spec

    return find_spec(name) is not None


if __name__ == "__main__":
    sys.exit(main())
