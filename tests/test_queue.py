"""The queue's lifecycle through the Python client on a real PostgreSQL."""

from __future__ import annotations

import functools
import uuid
from datetime import datetime, timedelta, timezone

import psycopg
import pytest

from examq.errors import (
    IdempotencyConflict,
    InvalidInput,
    InvalidState,
    JobNotFound,
    LeaseLost,
    PayloadTooLarge,
    UnknownJobType,
)
from tests.conftest import ENTERPRISE_USER, FREE_USER, PRO_USER


def expire_lease(sql, job_id: int) -> None:
    """Move a running job's lease into the past, as if its worker had stopped long ago."""
    sql.execute(
        "update jobs set lease_expires_at = now() - interval '1 second' where id = %s", (job_id,)
    )


def test_enqueue_claim_complete_round_trip(queue):
    job = queue.enqueue("system.noop", {"n": 1}, user_id=PRO_USER)
    assert job.status == "queued" and job.tier == "pro" and job.attempt == 0

    [claimed] = queue.claim("w1", 10)
    assert claimed.id == job.id and claimed.status == "running" and claimed.attempt == 1
    assert claimed.lease_token is not None and claimed.worker_id == "w1"

    outcome = queue.complete(claimed, {"ok": True})
    assert (outcome.status, outcome.outcome) == ("succeeded", "completed")
    done = queue.get(job.id)
    assert done.result == {"ok": True} and done.finished_at is not None


def test_complete_repeated_with_same_lease_is_a_no_op(queue):
    queue.enqueue("system.noop")
    [job] = queue.claim("w1")
    queue.complete(job, {"first": True})

    again = queue.complete(job, {"second": True})

    assert again.outcome == "already_completed"
    assert queue.get(job.id).result == {"first": True}


def test_late_complete_after_takeover_raises_lease_lost(queue, sql):
    queue.enqueue("system.noop")
    [stale] = queue.claim("w1")
    expire_lease(sql, stale.id)
    [fresh] = queue.claim("w2")
    assert fresh.id == stale.id and fresh.attempt == 2

    with pytest.raises(LeaseLost):
        queue.complete(stale, {"from": "stale"})

    assert queue.complete(fresh, {"from": "fresh"}).outcome == "completed"
    assert queue.get(stale.id).result == {"from": "fresh"}


def test_retryable_failure_is_scheduled_later(queue):
    queue.enqueue("system.noop", max_attempts=3)
    [job] = queue.claim("w1")

    outcome = queue.fail(job, "connection reset", "retryable")

    assert outcome.outcome == "retry_scheduled" and outcome.status == "queued"
    retried = queue.get(job.id)
    assert retried.run_at > job.started_at
    assert retried.last_error == "connection reset" and retried.error_kind == "retryable"
    assert queue.claim("w1") == []  # not before its run_at


def test_permanent_failure_goes_dead_at_once(queue):
    queue.enqueue("system.noop", max_attempts=5)
    [job] = queue.claim("w1")

    outcome = queue.fail(job, "bad input: no key column", "permanent")

    assert outcome.status == "dead"
    dead = queue.get(job.id)
    assert dead.attempt == 1 and dead.error_kind == "permanent"
    assert dead.last_error == "bad input: no key column"


def test_last_attempt_failure_goes_dead(queue):
    queue.enqueue("system.noop", max_attempts=1)
    [job] = queue.claim("w1")

    assert queue.fail(job, "timeout").status == "dead"
    assert queue.get(job.id).error_kind == "exhausted"


def test_expired_last_attempt_goes_dead_once(queue, sql):
    queue.enqueue("system.noop", max_attempts=1)
    [job] = queue.claim("w1")
    expire_lease(sql, job.id)

    assert queue.claim("w2") == []

    dead = queue.get(job.id)
    assert dead.status == "dead" and dead.error_kind == "lease_expired"
    events = sql.execute(
        "select count(*) from job_events where job_id = %s and to_status = 'dead'", (job.id,)
    ).fetchone()[0]
    assert events == 1


def test_fail_accepts_any_error_text(queue):
    queue.enqueue("system.noop", max_attempts=1)
    [job] = queue.claim("w1")

    queue.fail(job, "nul\x00 and lone surrogate \ud800 and " + "x" * 10000)

    error = queue.get(job.id).last_error
    assert error.startswith("nul and lone surrogate") and len(error) <= 4000


def test_enqueue_refuses_bad_input_naming_the_problem(queue):
    with pytest.raises(UnknownJobType, match="no.such"):
        queue.enqueue("no.such")
    with pytest.raises(UnknownJobType, match="free tier"):
        queue.enqueue("system.noop", user_id=FREE_USER)
    with pytest.raises(PayloadTooLarge, match="free tier"):
        queue.enqueue("exam.grade", {"blob": "x" * 300_000}, user_id=FREE_USER)
    with pytest.raises(InvalidInput, match="delay_seconds"):
        queue.enqueue("system.noop", delay_seconds=-1)
    with pytest.raises(InvalidInput):
        queue.enqueue("system.noop", {"text": "nul\x00"})


def test_idempotency_key_returns_the_same_job(queue):
    first = queue.enqueue("system.noop", {"v": 1}, user_id=PRO_USER, idempotency_key="k1")
    # A retried request: the same job, whatever its scheduling options say now.
    second = queue.enqueue("system.noop", {"v": 1}, user_id=PRO_USER, idempotency_key="k1", delay_seconds=5)

    assert second.id == first.id and second.payload == {"v": 1}
    assert queue.enqueue("system.noop", {"v": 1}, user_id=ENTERPRISE_USER, idempotency_key="k1").id != first.id


@pytest.mark.parametrize(
    ("job_type", "payload"), [("system.noop", {"v": 2}), ("system.sleep", {"v": 1})]
)
def test_an_idempotency_key_reused_for_another_job_is_refused(queue, sql, job_type, payload):
    first = queue.enqueue("system.noop", {"v": 1}, user_id=PRO_USER, idempotency_key="k1")

    with pytest.raises(IdempotencyConflict) as refused:
        queue.enqueue(job_type, payload, user_id=PRO_USER, idempotency_key="k1")
    with pytest.raises(IdempotencyConflict) as refused_in_bulk:
        queue.enqueue_many(
            [{"job_type": "system.noop"}, {"job_type": job_type, "payload": payload, "user_id": PRO_USER,
                                          "idempotency_key": "k1"}]
        )

    assert f'"k1" is already used by job {first.id} (system.noop)' in str(refused.value)
    assert str(refused_in_bulk.value).startswith("job 2: ")
    assert sql.execute("select count(*) from jobs").fetchone() == (1,)


def test_an_idempotency_key_repeated_within_a_batch_must_name_the_same_job(queue, sql):
    same = queue.enqueue_many([{"job_type": "system.noop", "idempotency_key": "b"}] * 2)
    assert same[0].job_id == same[1].job_id and [e.created for e in same] == [True, False]

    with pytest.raises(IdempotencyConflict, match="job 2: .* used by job 1 of this batch"):
        queue.enqueue_many(
            [{"job_type": "system.noop", "idempotency_key": "c"},
             {"job_type": "system.noop", "payload": {"other": True}, "idempotency_key": "c"}]
        )
    assert sql.execute("select count(*) from jobs").fetchone() == (1,)


def test_cancel_queued_and_running(queue):
    queued = queue.enqueue("system.noop")
    assert queue.cancel(queued.id).outcome == "cancelled"
    assert queue.get(queued.id).status == "cancelled"

    queue.enqueue("system.noop")
    [running] = queue.claim("w1")
    assert queue.cancel(running.id).outcome == "cancel_requested"
    assert queue.heartbeat(running, progress=10).cancel_requested is True
    assert queue.fail(running, "stopped", "cancelled").status == "cancelled"


def test_requeue_dead_job(queue):
    queue.enqueue("system.noop", max_attempts=1)
    [job] = queue.claim("w1")
    queue.fail(job, "boom", "permanent")

    assert queue.requeue(job.id).status == "queued"
    [again] = queue.claim("w1")
    assert again.id == job.id and again.attempt == 1

    with pytest.raises(InvalidState):
        queue.requeue(job.id)


def test_unknown_job_raises_not_found(queue):
    with pytest.raises(JobNotFound):
        queue.get(10**12)
    with pytest.raises(JobNotFound):
        queue.cancel(10**12)


def test_heartbeat_records_progress_and_eta(queue):
    queue.enqueue("system.noop")
    [job] = queue.claim("w1")

    beat = queue.heartbeat(job, progress=50, message="half way")

    assert beat.cancel_requested is False and beat.progress == 50
    current = queue.get(job.id)
    assert current.progress_message == "half way" and current.eta_at is not None
    with pytest.raises(InvalidInput):
        queue.heartbeat(job, progress=101)
    with pytest.raises(LeaseLost):
        queue.heartbeat(job.model_copy(update={"lease_token": uuid.uuid4()}), progress=60)


@pytest.mark.parametrize(
    ("payload", "named"),
    [
        ({"text": "a\x00b"}, "payload.text"),
        ({"a\x00": 1}, "payload key"),
        ({"text": "lone \ud800"}, "payload.text"),
        ({"nested": [1, {"x": float("nan")}]}, "payload.nested[1].x"),
    ],
)
def test_unstorable_payload_is_refused_naming_where(queue, payload, named):
    with pytest.raises(InvalidInput) as info:
        queue.enqueue("system.noop", payload)
    assert named in str(info.value)


def test_unstorable_text_arguments_are_refused(queue):
    with pytest.raises(InvalidInput, match="job_type"):
        queue.enqueue("system\x00noop")
    with pytest.raises(InvalidInput, match="idempotency_key"):
        queue.enqueue("system.noop", idempotency_key="k\x00")


@pytest.mark.parametrize("result", [["a", "b"], [], {"nested": ["x"]}])
def test_any_json_result_is_stored_as_given(queue, result):
    queue.enqueue("system.noop")
    [job] = queue.claim("w1")

    queue.complete(job, result)

    assert queue.get(job.id).result == result


def test_past_run_at_does_not_jump_the_queue(queue):
    first = queue.enqueue("system.noop")
    backdated = queue.enqueue(
        "system.noop", run_at=datetime.now(timezone.utc) - timedelta(days=300)
    )

    assert backdated.run_at >= first.run_at
    assert [job.id for job in queue.claim("w1", 2)] == [first.id, backdated.id]


def test_naive_run_at_is_refused(queue):
    with pytest.raises(InvalidInput, match="time zone"):
        queue.enqueue("system.noop", run_at=datetime.now())


@pytest.mark.parametrize(
    ("payload", "named"),
    [
        ({"deep": functools.reduce(lambda inner, _: [inner], range(80), 0)}, "nested"),
        ({"n": 10**400}, "1e300"),
        ({"b": b"bytes"}, "bytes"),
        ({"s": {1, 2}}, "set"),
    ],
)
def test_payloads_readers_would_choke_on_are_refused(queue, payload, named):
    with pytest.raises(InvalidInput, match=named):
        queue.enqueue("system.noop", payload)


def test_sql_refuses_payloads_readers_would_choke_on(sql):
    for payload in ('{"a":' + "[" * 70 + "]" * 70 + "}", '{"n": 1' + "0" * 5000 + "}"):
        with pytest.raises(psycopg.Error) as info:
            sql.execute("select public.enqueue_job('system.noop', %s::jsonb)", (payload,))
        assert info.value.sqlstate == "EQ007"


def test_an_unreadable_claimed_row_fails_alone(queue, sql):
    bad = queue.enqueue("system.noop")
    good = queue.enqueue("system.noop")
    sql.execute("update jobs set payload = '[1, 2]' where id = %s", (bad.id,))

    claimed = queue.claim("w1", 10)

    assert [job.id for job in claimed] == [good.id]
    failed = sql.execute("select status, last_error from jobs where id = %s", (bad.id,)).fetchone()
    assert failed[0] == "dead" and "cannot be read" in failed[1]


def test_tiny_progress_gives_no_eta_and_no_error(queue):
    queue.enqueue("system.noop")
    [job] = queue.claim("w1")

    beat = queue.heartbeat(job, progress=1e-10)

    assert beat.eta_at is None
    assert queue.heartbeat(job, progress=99.999).progress == 99.99


@pytest.mark.parametrize("job_id", [0, -1, 2**70, True, 1.5])
def test_job_ids_out_of_range_are_refused_by_name(queue, job_id):
    with pytest.raises(InvalidInput, match="job_id"):
        queue.get(job_id)


def test_whole_numbers_beyond_an_integer_are_refused_by_name(queue):
    with pytest.raises(InvalidInput, match="max_attempts"):
        queue.enqueue("system.noop", max_attempts=2**40)
    with pytest.raises(InvalidInput, match="limit"):
        queue.claim("w", 2**40)
    with pytest.raises(InvalidInput, match="limit"):
        queue.claim_batch("w", 2**40)
    with pytest.raises(InvalidInput, match="job 2 max_attempts"):
        queue.enqueue_many([{"job_type": "system.noop"}, {"job_type": "system.noop", "max_attempts": 2**40}])


def test_enqueue_many_refuses_a_naive_run_at_as_enqueue_does(queue):
    naive = datetime(2030, 1, 1, 12)
    with pytest.raises(InvalidInput, match="naive datetime"):
        queue.enqueue("system.noop", run_at=naive)
    with pytest.raises(InvalidInput, match="job 1 run_at needs a time zone"):
        queue.enqueue_many([{"job_type": "system.noop", "run_at": naive}])
