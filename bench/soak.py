"""A soak test: one examq worker process runs for 10 minutes while its RSS is sampled.

Run ``.venv/bin/python -m bench.soak`` (``--minutes 10`` by default). A database of
its own gets a steady stream of no-op jobs (``--rate`` per second, enqueued in bulk
by this process) and one worker process (batched outcomes, the benchmark's
configuration) runs them; psutil samples the worker's resident memory every
``--every`` seconds. The curve is printed, and written as JSON next to the benchmark
results. Memory is flat when the last samples stay within a few MB of the samples
after warm-up (the first minute, when caches and pools fill).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import psutil

from bench.run import DEFAULT_SERVER, RESULTS_DIR, Workers
from bench.systems import ExamqSystem


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument(
        "--rate", type=float, default=500.0, help="jobs enqueued per second"
    )
    parser.add_argument(
        "--every", type=float, default=15.0, help="seconds between samples"
    )
    parser.add_argument("--server", default=DEFAULT_SERVER)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)

    system = ExamqSystem(args.server, "soak" + datetime.now().strftime("%H%M%S"))
    system.create()
    samples = []
    try:
        workers = Workers(system.worker_config(batch=100, work_ms=0.0), 1)
        worker = psutil.Process(workers.procs[0].pid)
        workers.go()
        started = time.monotonic()
        end = started + args.minutes * 60
        next_sample = started
        sent = 0
        while time.monotonic() < end:
            now = time.monotonic()
            due = int((now - started) * args.rate) - sent
            if due > 0:
                system.enqueue_bulk([{} for _ in range(due)], batch=1000)
                sent += due
            if now >= next_sample:
                rss = worker.memory_info().rss / 2**20
                done = system.finished()
                samples.append(
                    {
                        "seconds": round(now - started, 1),
                        "rss_mb": round(rss, 2),
                        "enqueued": sent,
                        "succeeded": done,
                    }
                )
                print(
                    f"{now - started:7.1f} s  worker RSS {rss:7.2f} MB  enqueued {sent:8d}  "
                    f"succeeded {done:8d}",
                    flush=True,
                )
                next_sample += args.every
            time.sleep(0.2)
        workers.finish()
    finally:
        system.drop()

    warm = [s["rss_mb"] for s in samples if s["seconds"] >= 60] or [
        s["rss_mb"] for s in samples
    ]
    first, last = warm[0], warm[-1]
    verdict = {
        "minutes": args.minutes,
        "rate": args.rate,
        "rss_after_warmup_mb": first,
        "rss_at_end_mb": last,
        "growth_mb": round(last - first, 2),
        "max_mb": max(warm),
        "min_mb": min(warm),
        "jobs": samples[-1]["succeeded"] if samples else 0,
    }
    print(
        f"RSS after the first minute {first:.2f} MB, at the end {last:.2f} MB "
        f"(growth {last - first:+.2f} MB; range {min(warm):.2f}-{max(warm):.2f} MB) "
        f"over {verdict['jobs']} jobs"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"soak-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}.json"
    path.write_text(
        json.dumps({"verdict": verdict, "samples": samples}, indent=2), encoding="utf-8"
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    mp.freeze_support()
    sys.exit(main())
