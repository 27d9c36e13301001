"""Workers killed with SIGKILL at seeded random points of a job's life lose nothing.

Each round starts one worker process with a kill plan drawn from a seeded generator:
the worker kills itself (SIGKILL, no cleanup) when it starts its k-th job, or right
after that job's work is done and before the outcome is recorded. When it is gone,
the test moves the leases it held into the past (as time would), and starts the
next round, until every job has succeeded. Both worker modes run: one record per
job, and successes recorded per batch (where a kill after the work leaves the whole
pending batch to run again after its leases expire).
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys

import pytest

from examq.queue import Queue
from tests.conftest import ENTERPRISE_USER, FREE_USER, PRO_USER, PROJECT_ROOT
from tests.faults.conftest import (
    check_invariants,
    create_effects_table,
    expire_leases_of_dead_workers,
)

pytestmark = pytest.mark.timeout(120)

WORKER = r"""
import json, os, signal, sys
import psycopg
from examq.db import PsycopgTransport
from examq.log import configure_logging
from examq.queue import Queue
from examq.worker import Worker
from tests.faults.conftest import record_effect

db_url, worker_id, mode, plan = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
configure_logging("json", "ERROR", force=True)
effects = psycopg.connect(db_url, autocommit=True)
started = [0]

def handler(payload, ctx):
    k = started[0]
    started[0] += 1
    if plan.get("index") == k and plan.get("point") == "start":
        os.kill(os.getpid(), signal.SIGKILL)
    record_effect(effects, ctx.job_id, ctx.attempt, worker_id)
    if plan.get("index") == k and plan.get("point") == "after_work":
        os.kill(os.getpid(), signal.SIGKILL)
    return {"done": True}

batched = mode == "batch"
worker = Worker(Queue(PsycopgTransport(db_url)), handlers={"exam.grade": handler}, worker_id=worker_id,
                batch_size=7 if batched else 3, batch_outcomes=batched)
worker.run_pass(60)
"""


@pytest.mark.parametrize("mode", ["per_job", "batch"])
def test_workers_killed_at_seeded_points_lose_nothing_and_complete_nothing_twice(
    db_url, queue: Queue, sql, mode
):
    create_effects_table(db_url)
    owners = [FREE_USER, PRO_USER, ENTERPRISE_USER]
    jobs = queue.enqueue_many(
        # Enough attempts that no job is dead-lettered by the kills it suffers.
        [
            {"job_type": "exam.grade", "user_id": owners[i % 3], "max_attempts": 20}
            for i in range(40)
        ]
    )
    job_ids = [j.job_id for j in jobs]
    sql.execute("update tiers set max_running_per_user = 1000")
    rng = random.Random(20261203 + (mode == "batch"))
    kills = 0

    for round_number in range(60):
        remaining = sql.execute(
            "select count(*) from jobs where id = any(%s) and status <> 'succeeded'",
            (job_ids,),
        ).fetchone()[0]
        if remaining == 0:
            break
        plan = {}
        if kills < 10:
            plan = {
                "index": rng.randrange(0, 4),
                "point": rng.choice(["start", "after_work"]),
            }
        proc = subprocess.run(
            [
                sys.executable,
                "-c",
                WORKER,
                db_url,
                f"w{round_number}",
                mode,
                json.dumps(plan),
            ],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if proc.returncode == -signal.SIGKILL:
            kills += 1
        else:
            assert proc.returncode == 0, proc.stderr
        # The worker is gone: its leases run out (moved into the past, not waited for).
        expire_leases_of_dead_workers(sql, live_workers=set())
        # The next claim reclaims them; a round without a kill plan finishes the rest.
    else:
        pytest.fail("jobs still unfinished after 60 rounds")

    assert kills == 10, f"the seeded plan killed {kills} workers"
    counts = check_invariants(sql, job_ids)
    assert counts["jobs"] == 40
