"""A worker killed in the middle of a job loses nothing: the job is claimed again."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from examq.worker import Worker
from tests.conftest import PROJECT_ROOT

WORKER_SCRIPT = """
import sys
from examq.db import PsycopgTransport
from examq.queue import Queue
from examq.worker import Worker
queue = Queue(PsycopgTransport(sys.argv[1]))
Worker(queue, worker_id="doomed", progress_interval_seconds=0).run_pass(120)
"""


def wait_for(predicate, timeout_seconds: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_worker_killed_mid_job_loses_nothing(db_url, queue, sql):
    job = queue.enqueue("system.sleep", {"seconds": 60, "steps": 600})
    worker = subprocess.Popen([sys.executable, "-c", WORKER_SCRIPT, db_url], cwd=PROJECT_ROOT)
    try:
        wait_for(lambda: (queue.get(job.id).progress or 0) > 0, what="the job to make progress")
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(timeout=10)
    finally:
        if worker.poll() is None:
            worker.kill()

    orphan = queue.get(job.id)
    assert orphan.status == "running" and orphan.worker_id == "doomed"

    # Until the lease expires nobody else may take the job.
    assert queue.claim("rescuer", 10) == []

    # Let the lease run out (moved into the past rather than waited for).
    sql.execute("update jobs set lease_expires_at = now() - interval '1 second' where id = %s", (job.id,))
    finished = {}

    def quick_sleep(payload, ctx):
        ctx.report_progress(100, "done")
        finished["attempt"] = ctx.attempt
        return {"resumed": True}

    summary = Worker(queue, handlers={"system.sleep": quick_sleep}, worker_id="rescuer").run_pass(10)

    assert summary.succeeded == 1 and finished["attempt"] == 2
    done = queue.get(job.id)
    assert done.status == "succeeded" and done.result == {"resumed": True}
    history = sql.execute(
        "select from_status, to_status, actor from job_events where job_id = %s order by id", (job.id,)
    ).fetchall()
    assert [(h[0], h[1]) for h in history] == [
        (None, "queued"), ("queued", "running"), ("running", "queued"),
        ("queued", "running"), ("running", "succeeded"),
    ]
