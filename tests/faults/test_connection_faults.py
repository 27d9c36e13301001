"""The database connection terminated mid-claim, mid-complete, and between a provider's
acceptance of a notification and the outbox's record of it.

Each call is made to block on a lock the test holds (an owner's claim advisory lock,
a job's row lock), the blocked backend is found in pg_stat_activity and terminated
with pg_terminate_backend, and the test checks that the call's transaction left
nothing half done, that the client reconnects, and that a stale lease is refused.
No sleeps: every wait is on a thread, or a poll with a deadline.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import psycopg
import pytest
import respx

from examq.db import PsycopgTransport
from examq.errors import Unavailable
from examq.notify.dispatcher import Dispatcher
from examq.notify.email import SENDGRID_MAIL_SEND_URL
from examq.notify.outbox import Outbox
from examq.queue import Queue
from tests.conftest import FREE_USER, PRO_USER
from tests.faults.conftest import check_invariants
from tests.notify.conftest import SENDGRID_KEY, finish_job, make_settings, outbox_rows

pytestmark = pytest.mark.timeout(60)


def poll(predicate: Callable[[], Any], what: str, timeout_seconds: float = 20.0) -> Any:
    """The first truthy value of predicate(), polled until a deadline."""
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def in_thread(call: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    """Run call in a thread; the dict gets its result or its exception."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["result"] = call()
        except Exception as exc:  # noqa: BLE001 - handed to the test
            out["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def blocked_backend(
    sql: psycopg.Connection, application_name: str, wait_event_type: str
) -> int | None:
    row = sql.execute(
        "select pid from pg_stat_activity where application_name = %s and wait_event_type = %s",
        (application_name, wait_event_type),
    ).fetchone()
    return row[0] if row else None


@pytest.mark.parametrize("function", ["claim", "claim_batch"])
def test_connection_terminated_mid_claim_claims_nothing_and_the_client_reconnects(
    db_url, queue: Queue, sql, function
):
    jobs = queue.enqueue_many(
        [{"job_type": "exam.grade", "user_id": FREE_USER} for _ in range(2)]
    )
    job_ids = [j.job_id for j in jobs]
    victim = Queue(PsycopgTransport(db_url, application_name="claim-victim"))
    victim.claim_batch("warm-up", 1, job_types=["none"])  # connected before the fault

    # The claim of the free user's jobs must take the user's claim lock, held here.
    with psycopg.connect(db_url, autocommit=True) as holder:
        holder.execute(
            "select pg_advisory_lock(hashtextextended('examq.claim:' || %s, 0))",
            (FREE_USER,),
        )
        thread, out = in_thread(lambda: getattr(victim, function)("victim", 5))
        pid = poll(
            lambda: blocked_backend(sql, "claim-victim", "Lock"),
            "the claim to block on the lock",
        )
        sql.execute("select pg_terminate_backend(%s)", (pid,))
        thread.join(timeout=20)
        holder.execute("select pg_advisory_unlock_all()")

    assert isinstance(out.get("error"), Unavailable), out
    states = sql.execute(
        "select status::text, attempt, lease_token from jobs where id = any(%s)",
        (job_ids,),
    ).fetchall()
    assert states == [("queued", 0, None)] * 2, "the terminated claim left no trace"
    assert (
        sql.execute(
            "select count(*) from job_events where job_id = any(%s) and to_status = 'running'",
            (job_ids,),
        ).fetchone()[0]
        == 0
    )

    claimed = getattr(victim, function)("victim", 5)
    assert sorted(j.id for j in claimed) == sorted(job_ids), (
        "the same client reconnects and claims"
    )
    assert [o.outcome for o in victim.complete_many([(j, {}) for j in claimed])] == [
        "completed"
    ] * 2
    check_invariants(sql, job_ids, effects=False)
    victim.transport.close()


def test_connection_terminated_mid_complete_records_nothing_and_stale_leases_are_refused(
    db_url, queue: Queue, sql
):
    jobs = queue.enqueue_many(
        [{"job_type": "exam.grade", "user_id": PRO_USER} for _ in range(3)]
    )
    job_ids = [j.job_id for j in jobs]
    victim = Queue(PsycopgTransport(db_url, application_name="complete-victim"))
    claimed = victim.claim_batch("victim", 3)
    assert len(claimed) == 3

    # complete_jobs must lock the first job's row, held here by another transaction.
    with psycopg.connect(db_url) as holder:
        holder.execute("select id from jobs where id = %s for update", (job_ids[0],))
        thread, out = in_thread(
            lambda: victim.complete_many([(j, {"ok": 1}) for j in claimed])
        )
        pid = poll(
            lambda: blocked_backend(sql, "complete-victim", "Lock"),
            "the completion to block",
        )
        sql.execute("select pg_terminate_backend(%s)", (pid,))
        thread.join(timeout=20)
        holder.rollback()

    assert isinstance(out.get("error"), Unavailable), out
    assert (
        sql.execute(
            "select array_agg(status::text) from jobs where id = any(%s)", (job_ids,)
        ).fetchone()[0]
        == ["running"] * 3
    ), "one statement: none of the three was completed"

    # The victim's leases run out (moved into the past); another worker takes the jobs.
    sql.execute(
        "update jobs set lease_expires_at = now() - interval '1 second' where id = any(%s)",
        (job_ids,),
    )
    rescuer = Queue(PsycopgTransport(db_url, application_name="rescuer"))
    rescued = rescuer.claim_batch("rescuer", 3)
    assert sorted(j.id for j in rescued) == sorted(job_ids)

    # The victim reconnects and retries with its old leases while the rescuer holds
    # the jobs: each is refused, nothing changes.
    late = victim.complete_many([(j, {"ok": 1}) for j in claimed])
    assert [o.outcome for o in late] == ["lease_lost"] * 3
    assert (
        sql.execute(
            "select array_agg(status::text) from jobs where id = any(%s)", (job_ids,)
        ).fetchone()[0]
        == ["running"] * 3
    )
    assert {
        o.outcome for o in rescuer.complete_many([(j, {"ok": 2}) for j in rescued])
    } == {"completed"}
    assert [
        o.outcome for o in victim.complete_many([(j, {"ok": 1}) for j in claimed])
    ] == ["lease_lost"] * 3
    assert (
        sql.execute(
            "select array_agg(result ->> 'ok') from jobs where id = any(%s)", (job_ids,)
        ).fetchone()[0]
        == ["2"] * 3
    )
    check_invariants(sql, job_ids, effects=False)
    victim.transport.close()
    rescuer.transport.close()


def test_connection_terminated_after_the_provider_accepted_sends_nothing_twice(
    db_url, queue: Queue, sql, tmp_path
):
    job = finish_job(queue, "dead", user_id=PRO_USER)
    settings = make_settings(db_url, tmp_path, SENDGRID_API_KEY=SENDGRID_KEY)
    posts: list[int] = []

    def accept_then_cut(request: httpx.Request) -> httpx.Response:
        posts.append(1)
        # SendGrid has accepted the message; now the dispatcher's database connection
        # dies before it can record that.
        sql.execute(
            "select pg_terminate_backend(pid) from pg_stat_activity where application_name = 'outbox-victim'"
        )
        return httpx.Response(202, headers={"X-Message-Id": "accepted"})

    transport = PsycopgTransport(db_url, application_name="outbox-victim")
    with respx.mock:
        respx.post(SENDGRID_MAIL_SEND_URL).mock(side_effect=accept_then_cut)
        with pytest.raises(Unavailable):
            Dispatcher(Outbox(transport), settings, dispatcher_id="victim").run_pass(
                30, check_alerts=False
            )
    transport.close()

    [row] = outbox_rows(sql, "job_id = %s", (job.id,))
    assert posts == [1] and row["status"] == "attempting", "accepted once, not recorded"

    # The dispatcher's lease runs out; the next pass must not send it again.
    sql.execute(
        "update notification_outbox set lease_expires_at = now() - interval '1 second'"
    )
    rescuer = PsycopgTransport(db_url, application_name="outbox-rescuer")
    with respx.mock:
        respx.post(SENDGRID_MAIL_SEND_URL).mock(side_effect=accept_then_cut)
        Dispatcher(Outbox(rescuer), settings, dispatcher_id="rescuer").run_pass(
            30, check_alerts=False
        )
    rescuer.close()

    [row] = outbox_rows(sql, "job_id = %s", (job.id,))
    assert posts == [1], "the message was not sent a second time"
    assert row["status"] == "uncertain", "left for an admin to check, as documented"
