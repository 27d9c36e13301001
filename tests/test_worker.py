"""The worker: handler outcomes, retries, budget, and concurrent passes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter

import pytest

from examq.db import PsycopgTransport
from examq.errors import Unavailable
from examq.queue import Queue
from examq.worker import Worker
from tests.conftest import PROJECT_ROOT


def test_handler_success_completes_the_job(queue):
    job = queue.enqueue("system.noop")
    summary = Worker(queue).run_pass(10)

    assert (summary.claimed, summary.succeeded) == (1, 1)
    assert queue.get(job.id).status == "succeeded"


def test_retryable_error_is_retried_later(queue):
    job = queue.enqueue("system.noop", {"fail": "retryable", "message": "service busy"})

    summary = Worker(queue).run_pass(10)

    assert summary.retried == 1
    after = queue.get(job.id)
    assert after.status == "queued" and after.attempt == 1
    assert after.last_error == "service busy" and after.run_at > after.started_at


def test_unexpected_exception_counts_as_retryable(queue):
    def crash(payload, ctx):
        raise ZeroDivisionError("division by zero")

    job = queue.enqueue("system.noop")
    Worker(queue, handlers={"system.noop": crash}).run_pass(10)

    after = queue.get(job.id)
    assert after.status == "queued" and "ZeroDivisionError" in after.last_error


def test_permanent_error_fails_at_once_with_its_message(queue):
    job = queue.enqueue("system.noop", {"fail": "permanent", "message": "key has no item column"})

    summary = Worker(queue).run_pass(10)

    assert summary.failed == 1 and summary.retried == 0
    after = queue.get(job.id)
    assert after.status == "dead" and after.attempt == 1
    assert after.last_error == "key has no item column"


def test_progress_reaches_the_database_and_cancel_stops_the_handler(queue):
    seen = []
    job = queue.enqueue("system.sleep")

    def handler(payload, ctx):
        ctx.report_progress(25, "quarter")
        seen.append(queue.get(ctx.job_id).progress)
        queue.cancel(ctx.job_id)
        ctx.report_progress(100, "done")  # raises JobCancelled
        raise AssertionError("the handler should have been stopped")

    summary = Worker(queue, handlers={"system.sleep": handler}, progress_interval_seconds=0).run_pass(10)

    assert seen == [25.0]
    assert summary.cancelled == 1
    assert queue.get(job.id).status == "cancelled"


def test_pass_stops_claiming_when_budget_is_spent(queue):
    for _ in range(5):
        queue.enqueue("system.noop")
    calls = []

    def slow(payload, ctx):
        calls.append(ctx.job_id)
        return {}

    # A zero budget leaves no time to claim at all.
    summary = Worker(queue, handlers={"system.noop": slow}).run_pass(0)

    assert summary.claimed == 0 and calls == []


def test_two_concurrent_passes_never_run_a_job_twice(db_url):
    queue = Queue(PsycopgTransport(db_url))
    ids = {queue.enqueue("system.noop").id for _ in range(60)}
    runs: Counter[int] = Counter()
    lock = threading.Lock()
    start = threading.Barrier(2)

    def handler(payload, ctx):
        with lock:
            runs[ctx.job_id] += 1
        return {}

    def one_pass(name):
        worker_queue = Queue(PsycopgTransport(db_url))
        start.wait()
        Worker(worker_queue, handlers={"system.noop": handler}, worker_id=name, batch_size=3).run_pass(30)

    threads = [threading.Thread(target=one_pass, args=(f"w{i}",)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert set(runs) == ids
    assert max(runs.values()) == 1
    assert all(queue.get(i).status == "succeeded" for i in ids)


def test_unstorable_result_fails_the_job_permanently(queue):
    job = queue.enqueue("system.noop")

    Worker(queue, handlers={"system.noop": lambda payload, ctx: {"text": "nul\x00"}}).run_pass(10)

    after = queue.get(job.id)
    assert after.status == "dead" and "result cannot be stored" in after.last_error


def _long_job_first(queue, worker):
    """A long job with two jobs behind it in one claim; the long one runs until the
    worker gives the others back (bounded), and notes what they looked like then."""
    long = queue.enqueue("system.noop", {"long": True})
    behind = [queue.enqueue("system.noop") for _ in range(2)]
    given_back = threading.Event()
    seen: dict = {}
    release_rest = worker._release_rest

    def releasing(jobs, summary, log):
        release_rest(jobs, summary, log)
        given_back.set()

    def handler(payload, ctx):
        if payload.get("long"):
            seen["given_back"] = given_back.wait(30)
            seen["behind"] = [
                (job.status, job.attempt, job.lease_token) for job in map(queue.get, [b.id for b in behind])
            ]
        return {}

    worker._release_rest = releasing
    worker.handlers = {"system.noop": handler}
    return long, behind, seen


@pytest.mark.parametrize("batch_outcomes", [False, True])
def test_jobs_waiting_behind_a_long_job_go_back_with_their_attempt(queue, sql, batch_outcomes):
    # A third of a 6 s lease: the jobs behind go back 2 s after the claim, while the
    # long job still runs, and other workers (here, this pass once the long job ends)
    # take them.
    sql.execute("update job_types set lease_seconds = 6 where name = 'system.noop'")
    worker = Worker(queue, batch_size=3, batch_outcomes=batch_outcomes)
    long, behind, seen = _long_job_first(queue, worker)

    summary = worker.run_pass(30)

    assert seen["given_back"] is True
    assert seen["behind"] == [("queued", 0, None)] * 2
    assert (summary.claimed, summary.released, summary.succeeded) == (5, 2, 3)
    assert [queue.get(job.id).attempt for job in [long, *behind]] == [1, 1, 1]


@pytest.mark.parametrize("batch_outcomes", [False, True])
def test_jobs_waiting_behind_a_long_job_go_back_before_the_budget_ends(queue, batch_outcomes):
    # A function stopped at its maximum duration while the long job runs must not take
    # the jobs behind it down too: they are given back once the budget is nearly spent
    # (here 2 s, less a fifth), not when the long job ends.
    worker = Worker(queue, batch_size=3, batch_outcomes=batch_outcomes)
    long, behind, seen = _long_job_first(queue, worker)

    summary = worker.run_pass(2)

    assert seen["given_back"] is True
    assert seen["behind"] == [("queued", 0, None)] * 2
    assert (summary.claimed, summary.released, summary.succeeded) == (3, 2, 1)
    assert [queue.get(job.id).status for job in behind] == ["queued", "queued"]


class BlipAfterCommit:
    """A transport whose connection breaks once, right after a call has committed."""

    def __init__(self, inner, function):
        self.inner = inner
        self.function = function
        self.blipped = False

    def call(self, function, params):
        answer = self.inner.call(function, params)
        if function == self.function and not self.blipped:
            self.blipped = True
            raise Unavailable("connection lost after the commit")
        return answer

    def close(self):
        self.inner.close()


def test_a_completion_whose_answer_was_lost_is_still_a_success(db_url, queue):
    job = queue.enqueue("system.noop")
    flaky = Queue(BlipAfterCommit(PsycopgTransport(db_url), "complete_job"))

    summary = Worker(flaky).run_pass(10)

    assert summary.succeeded == 1 and summary.retried == 0
    assert queue.get(job.id).status == "succeeded"


def test_a_lost_heartbeat_does_not_fail_the_job(db_url, queue):
    job = queue.enqueue("system.sleep", {"seconds": 0.05, "steps": 2})
    flaky = Queue(BlipAfterCommit(PsycopgTransport(db_url), "heartbeat_job"))

    summary = Worker(flaky, progress_interval_seconds=0).run_pass(10)

    assert summary.succeeded == 1
    assert queue.get(job.id).status == "succeeded"


@pytest.mark.parametrize("batch_outcomes", ["false", "true"])
def test_sigterm_gives_running_and_waiting_jobs_back(db_url, queue, batch_outcomes):
    jobs = [queue.enqueue("system.sleep", {"seconds": 60, "steps": 600}) for _ in range(3)]
    env = {
        **os.environ,
        "DATABASE_URL": db_url,
        "EXAMQ_WORKER_BATCH_SIZE": "3",
        "EXAMQ_WORKER_BATCH_OUTCOMES": batch_outcomes,
    }
    worker = subprocess.Popen(
        [sys.executable, "-m", "examq", "work", "--loop"], env=env, cwd=PROJECT_ROOT,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while (queue.get(jobs[0].id).progress or 0) == 0:
            assert time.monotonic() < deadline, "the worker never started the first job"
            time.sleep(0.05)
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=30)
    finally:
        if worker.poll() is None:
            worker.kill()

    after = [queue.get(job.id) for job in jobs]
    assert [job.status for job in after] == ["queued"] * 3
    assert [job.attempt for job in after] == [0, 0, 0]


def test_a_worker_loop_prunes_and_records_its_tick_as_the_cron_does(db_url, queue, sql, tmp_path):
    old = queue.enqueue("system.noop")
    recent = queue.enqueue("system.noop")
    for job in queue.claim("w", 10):
        queue.complete(job, {})
    sql.execute("update jobs set finished_at = now() - interval '2 days' where id = %s", (old.id,))
    env = {**os.environ, "DATABASE_URL": db_url, "EXAMQ_RETENTION_DAYS": "1"}
    printed = tmp_path / "stdout"
    with printed.open("w") as stdout:
        worker = subprocess.Popen(
            [sys.executable, "-m", "examq", "work", "--loop"], env=env, cwd=PROJECT_ROOT,
            stdout=stdout, stderr=subprocess.DEVNULL,
        )
    try:
        deadline = time.monotonic() + 60
        check = (
            "select exists (select from jobs where id = %s)"
            " or not exists (select from cron_runs where name = 'cron')"
        )
        while sql.execute(check, (old.id,)).fetchone()[0]:
            assert worker.poll() is None, "the worker loop stopped"
            assert time.monotonic() < deadline, "the worker loop never pruned and recorded its tick"
            time.sleep(0.05)
    finally:
        worker.terminate()
        worker.wait(timeout=30)

    remaining = {row[0] for row in sql.execute("select id from jobs").fetchall()}
    assert remaining == {recent.id}
    # One JSON line for what it did (the queue was empty, so no pass line).
    assert [json.loads(line) for line in printed.read_text().splitlines()] == [
        {"pruned": 1, "pruned_notifications": 0}
    ]
    # Its pass counts as a tick for health and the cron-silence alert.
    [(by,)] = sql.execute("select last_summary ->> 'by' from cron_runs where name = 'cron'").fetchall()
    assert by == "examq work --loop"
