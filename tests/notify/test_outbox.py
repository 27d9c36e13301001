"""The outbox: written with the state change by preferences or defaults, claimed with a lease."""

from __future__ import annotations

import uuid

import pytest

from examq.errors import InvalidInput, InvalidState, LeaseLost, NotificationNotFound
from examq.notify.delivery import Delivery
from tests.conftest import ENTERPRISE_USER, PRO_USER
from tests.notify.conftest import (
    USER_WEBHOOK,
    finish_job,
    notify_everything,
    outbox_rows,
)


def test_defaults_email_on_failure_and_on_long_success_only(queue, outbox, sql):
    short = finish_job(queue, "succeeded")
    long = finish_job(queue, "succeeded", sql=sql, ran_seconds=61)
    dead = finish_job(queue, "dead")
    cancelled = finish_job(queue, "cancelled")

    rows = outbox_rows(sql)

    assert [(r["job_id"], r["channel"], r["kind"]) for r in rows] == [
        (long.id, "email", "job.succeeded"),
        (dead.id, "email", "job.failed"),
    ]
    assert short.id not in {r["job_id"] for r in rows} and cancelled.id not in {
        r["job_id"] for r in rows
    }
    assert all(r["status"] == "pending" and r["user_id"] is not None for r in rows)


def test_preferences_choose_events_channels_and_job_types(queue, outbox, sql):
    notify_everything(
        outbox, slack=True, slack_webhook_url=USER_WEBHOOK, job_types=["system.noop"]
    )

    done = finish_job(queue, "succeeded")
    cancelled = finish_job(queue, "cancelled")
    other_type = finish_job(
        queue, "succeeded", job_type="system.sleep", payload={"seconds": 0}
    )

    rows = outbox_rows(sql)
    assert {(r["job_id"], r["channel"], r["kind"]) for r in rows} == {
        (done.id, "email", "job.succeeded"),
        (done.id, "slack", "job.succeeded"),
        (cancelled.id, "email", "job.cancelled"),
        (cancelled.id, "slack", "job.cancelled"),
    }
    assert other_type.id not in {r["job_id"] for r in rows}
    # The webhook is a secret: the outbox never holds it.
    assert all(USER_WEBHOOK not in str(r) for r in rows)


def test_no_notification_when_the_preference_is_off(queue, outbox, sql):
    outbox.set_preferences(PRO_USER, email=False)
    finish_job(queue, "dead")
    outbox.set_preferences(PRO_USER, events=["succeeded"], success_min_seconds=0)
    finish_job(queue, "dead")

    assert outbox_rows(sql) == []


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (
            {"email": False, "slack": True, "slack_webhook_url": USER_WEBHOOK},
            {"email": "turned e-mail notifications off"},
        ),
        ({"email": True, "slack": False}, {"slack": "turned Slack notifications off"}),
        (
            {"slack": True, "slack_webhook_url": USER_WEBHOOK, "events": ["succeeded"]},
            {
                "email": "no longer wants notifications of failed jobs",
                "slack": "no longer wants notifications of failed jobs",
            },
        ),
        (
            {
                "slack": True,
                "slack_webhook_url": USER_WEBHOOK,
                "events": ["failed"],
                "job_types": ["exam.report"],
            },
            {
                "email": "notifications of system.noop jobs",
                "slack": "notifications of system.noop jobs",
            },
        ),
    ],
)
def test_preferences_changed_after_the_row_was_written_are_followed_when_sending(
    queue, outbox, sql, change, reason
):
    notify_everything(outbox, slack=True, slack_webhook_url=USER_WEBHOOK)
    job = finish_job(queue, "dead")
    assert {r["channel"] for r in outbox_rows(sql)} == {"email", "slack"}

    outbox.set_preferences(PRO_USER, **change)
    claimed = outbox.claim("d1", 10)

    assert {n.channel for n in claimed} == {"email", "slack"} - set(reason)
    rows = {r["channel"]: r for r in outbox_rows(sql, "job_id = %s", (job.id,))}
    for channel, why in reason.items():
        assert rows[channel]["status"] == "skipped"
        assert why in rows[channel]["last_error"]
    # A skipped row is finished: no later claim takes it.
    assert outbox.claim("d2", 10) == []


def test_a_success_notification_follows_a_raised_run_time_threshold(queue, outbox, sql):
    notify_everything(outbox)  # every success, however short
    job = finish_job(queue, "succeeded")
    [row] = outbox_rows(sql, "job_id = %s", (job.id,))
    assert row["status"] == "pending"

    outbox.set_preferences(PRO_USER, events=["succeeded"], success_min_seconds=600)

    assert outbox.claim("d1", 10) == []
    [row] = outbox_rows(sql, "job_id = %s", (job.id,))
    assert row["status"] == "skipped"
    assert "ran 600 seconds or more" in row["last_error"]


def test_admin_alerts_are_not_skipped_by_an_owner_preference(queue, outbox, sql):
    outbox.set_preferences(PRO_USER, email=False)
    sql.execute(
        "insert into notification_outbox (audience, channel, kind, details) "
        "values ('admins', 'slack', 'alert.dead_letter', '{}')"
    )

    [claimed] = outbox.claim("d1", 10)

    assert claimed.audience == "admins"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"events": ["succeeded", "bogus"]}, "events may name succeeded, failed and cancelled, not 'bogus'"),
        ({"job_types": []}, "job_types must name 1 to 100 job types"),
        ({"success_min_seconds": -5}, "success_min_seconds must be between 0 and 604800"),
        ({"slack": True}, "Slack notifications need a webhook URL"),
        (
            {"slack": True, "slack_webhook_url": "https://example.com/hook"},
            "the Slack webhook URL must be an incoming-webhook address",
        ),
    ],
)
def test_refused_preferences_say_which_value_is_wrong(outbox, sql, values, message):
    with pytest.raises(InvalidInput) as refused:
        outbox.set_preferences(PRO_USER, **values)

    assert message in str(refused.value)
    assert refused.value.sqlstate == "EQ007"
    assert "example.com" not in str(refused.value)  # a webhook URL is a secret
    assert sql.execute("select count(*) from notification_preferences").fetchone() == (0,)


def test_a_requeued_jobs_run_time_starts_at_its_new_start(queue, sql):
    # It died after a long first run; requeued, it succeeds at once. Its run time is
    # that of its new life, too short for a success notification by default.
    job = finish_job(queue, "dead", sql=sql, ran_seconds=600)
    queue.requeue(job.id)
    assert queue.get(job.id).first_started_at is None
    [again] = queue.claim("w", 1)
    queue.complete(again, {"ok": True})

    assert [r["kind"] for r in outbox_rows(sql, "job_id = %s", (job.id,))] == ["job.failed"]


def test_system_jobs_notify_nobody(queue, sql):
    finish_job(queue, "dead", user_id=None)

    assert outbox_rows(sql) == []


def test_expired_lease_on_the_last_attempt_notifies_failure_once(queue, sql):
    job = queue.enqueue("system.noop", user_id=PRO_USER, max_attempts=1)
    [claimed] = queue.claim("doomed-worker", 1)
    sql.execute(
        "update jobs set lease_expires_at = now() - interval '1 second' where id = %s",
        (job.id,),
    )

    assert queue.claim("rescuer", 10) == []
    assert queue.claim("rescuer", 10) == []

    assert queue.get(job.id).status == "dead"
    rows = outbox_rows(sql, "job_id = %s", (job.id,))
    assert [(r["kind"], r["channel"]) for r in rows] == [("job.failed", "email")]
    with pytest.raises(LeaseLost):
        queue.fail(claimed, "too late", "retryable")
    assert len(outbox_rows(sql)) == 1


def test_requeued_job_that_dies_again_notifies_again(queue, sql):
    job = finish_job(queue, "dead")
    queue.requeue(job.id)
    [again] = queue.claim("w", 1)
    queue.fail(again, "still bad input", "permanent")

    rows = outbox_rows(sql, "job_id = %s", (job.id,))

    assert [r["kind"] for r in rows] == ["job.failed", "job.failed"]
    assert rows[0]["event_id"] != rows[1]["event_id"]


def test_one_row_per_event_audience_and_channel(queue, sql):
    job = finish_job(queue, "dead")
    [row] = outbox_rows(sql)

    with pytest.raises(
        Exception, match="notification_outbox_event_id_audience_channel_key"
    ):
        sql.execute(
            "insert into notification_outbox (job_id, event_id, user_id, audience, channel, kind) "
            "values (%s, %s, %s, 'owner', 'email', 'job.failed')",
            (job.id, row["event_id"], PRO_USER),
        )


def test_claim_returns_recipient_and_job_figures(queue, outbox, sql):
    notify_everything(outbox)
    summary = {
        "students": 12,
        "items": 10,
        "mean": 6.25,
        "sd": 1.5,
        "alpha": 0.71,
        "max_score": 10,
    }
    job = finish_job(
        queue,
        "succeeded",
        job_type="exam.grade",
        payload={"title": "Week 3 quiz"},
        result={"summary": summary, "students": [{"student": "s1", "total": 3}]},
    )

    [claimed] = outbox.claim("d1", 10)

    assert claimed.recipient_email.get_secret_value() == "pro.teacher@example.com"
    assert claimed.recipient_name == "Priya Pro"
    assert claimed.job.id == job.id and claimed.job.status == "succeeded"
    assert claimed.job.title == "Week 3 quiz" and claimed.job.summary == summary
    assert "pro.teacher" not in repr(claimed)
    assert outbox.claim("d2", 10) == []


def test_claim_start_finish_round_trip(queue, outbox, sql):
    finish_job(queue, "dead")
    [claimed] = outbox.claim("d1", 10)

    outbox.start(claimed)
    assert outbox_rows(sql)[0]["status"] == "attempting"
    finished = outbox.finish(
        claimed, Delivery("sent", provider_status=202, message_id="m1")
    )

    assert (finished.status, finished.outcome) == ("sent", "sent")
    row = outbox_rows(sql)[0]
    assert (
        row["attempts"] == 1
        and row["sent_at"] is not None
        and row["provider_message_id"] == "m1"
    )
    again = outbox.finish(claimed, Delivery("sent", provider_status=202))
    assert again.outcome == "already_recorded"
    with pytest.raises(LeaseLost):
        outbox.finish(claimed, Delivery("failed", "late"))


def test_expired_claim_goes_back_to_pending_but_expired_attempt_becomes_uncertain(
    queue, outbox, sql
):
    finish_job(queue, "dead")
    finish_job(queue, "dead")
    first, second = outbox.claim("dying", 10)
    outbox.start(second)
    sql.execute(
        "update notification_outbox set lease_expires_at = now() - interval '1 second'"
    )

    [reclaimed] = outbox.claim("rescuer", 10)

    assert reclaimed.id == first.id and reclaimed.attempts == 0
    uncertain = outbox_rows(sql, "id = %s", (second.id,))[0]
    assert (
        uncertain["status"] == "uncertain"
        and "may have delivered" in uncertain["last_error"]
    )
    with pytest.raises(LeaseLost):
        outbox.start(first)


def test_release_hands_back_an_unstarted_claim_without_counting_it(queue, outbox, sql):
    finish_job(queue, "dead")
    [claimed] = outbox.claim("d", 10)

    assert outbox.release(claimed).status == "pending"

    [again] = outbox.claim("d", 10)
    assert again.id == claimed.id and again.attempts == 0


def test_retry_backs_off_then_gives_up_after_max_attempts(queue, outbox, sql):
    finish_job(queue, "dead")
    sql.execute("update notification_outbox set max_attempts = 2")

    for attempt in (1, 2):
        sql.execute(
            "update notification_outbox set run_at = now() where status = 'pending'"
        )
        [claimed] = outbox.claim("d", 10)
        outbox.start(claimed)
        finished = outbox.finish(
            claimed, Delivery("retry", "SendGrid answered 503", provider_status=503)
        )
        if attempt == 1:
            assert finished.status == "pending"
            row = outbox_rows(sql)[0]
            delay = sql.execute(
                "select extract(epoch from %s - now())", (row["run_at"],)
            ).fetchone()[0]
            assert 10 <= float(delay) <= 1800

    row = outbox_rows(sql)[0]
    assert row["status"] == "failed" and row["last_error"].startswith(
        "gave up after 2 attempts"
    )


def test_requeue_notification_resets_an_uncertain_row(queue, outbox, sql):
    finish_job(queue, "dead")
    [claimed] = outbox.claim("d", 10)
    outbox.start(claimed)
    outbox.finish(claimed, Delivery("uncertain", "read timeout"))

    assert outbox.requeue(claimed.id)["outcome"] == "requeued"

    [again] = outbox.claim("d", 10)
    assert again.id == claimed.id and again.attempts == 0
    with pytest.raises(InvalidState):
        outbox.requeue(claimed.id)
    with pytest.raises(NotificationNotFound):
        outbox.requeue(10**12)


def test_preferences_refuse_bad_values_without_echoing_them(outbox):
    with pytest.raises(InvalidInput, match="must be an incoming-webhook address") as info:
        outbox.set_preferences(
            PRO_USER, slack=True, slack_webhook_url="https://evil.example/hook"
        )
    assert "evil.example" not in str(info.value)
    with pytest.raises(InvalidInput, match="not 'exploded'"):
        outbox.set_preferences(PRO_USER, events=["exploded"])  # type: ignore[list-item]
    with pytest.raises(InvalidInput, match="need a webhook URL"):
        outbox.set_preferences(ENTERPRISE_USER, slack=True)


def test_preferences_of_an_unknown_user_are_refused(outbox):
    with pytest.raises(Exception, match="foreign key|violates"):
        outbox.set_preferences(uuid.uuid4())


def test_a_failed_chain_step_sends_one_notice_not_one_per_cancelled_child(
    queue, outbox, sql
):
    notify_everything(outbox)
    steps = [
        {"job_type": "system.noop", "payload": {}, "max_attempts": 1} for _ in range(3)
    ]
    chain = queue.transport.call(
        "enqueue_chain", {"p_steps": steps, "p_user_id": PRO_USER}
    )
    [first] = queue.claim("w", 1)
    queue.fail(first, "bad input", "permanent")

    statuses = [queue.get(job["id"]).status for job in chain["jobs"]]
    assert statuses == ["dead", "cancelled", "cancelled"]
    assert [(r["job_id"], r["kind"]) for r in outbox_rows(sql)] == [
        (first.id, "job.failed")
    ]


def test_a_late_answer_still_settles_a_row_marked_uncertain(queue, outbox, sql):
    finish_job(queue, "dead")
    [slow] = outbox.claim("slow", 10)
    outbox.start(slow)
    sql.execute(
        "update notification_outbox set lease_expires_at = now() - interval '1 second'"
    )
    assert outbox.claim("other", 10) == []
    assert outbox_rows(sql)[0]["status"] == "uncertain"

    finished = outbox.finish(slow, Delivery("sent", provider_status=202))

    assert finished.status == "sent" and outbox_rows(sql)[0]["sent_at"] is not None
    with pytest.raises(LeaseLost):
        outbox.finish(
            slow.model_copy(update={"lease_token": uuid.uuid4()}), Delivery("failed")
        )


def _run_chain(queue, sql, steps: int, *, root_started_seconds_ago: int = 0) -> list[int]:
    chain = queue.transport.call(
        "enqueue_chain",
        {"p_steps": [{"job_type": "system.noop", "payload": {}} for _ in range(steps)],
         "p_user_id": PRO_USER},
    )
    ids = [job["id"] for job in chain["jobs"]]
    for index in range(steps):
        [job] = queue.claim("w", 1)
        assert job.id == ids[index]
        if index == 0 and root_started_seconds_ago:
            sql.execute(
                "update jobs set first_started_at = now() - make_interval(secs => %s) where id = %s",
                (root_started_seconds_ago, job.id),
            )
        queue.complete(job, {})
    return ids


def test_a_chain_that_succeeds_sends_one_notice_for_its_last_step(queue, outbox, sql):
    notify_everything(outbox)

    ids = _run_chain(queue, sql, 3)

    assert [queue.get(i).status for i in ids] == ["succeeded"] * 3
    assert [(r["job_id"], r["kind"]) for r in outbox_rows(sql)] == [(ids[-1], "job.succeeded")]


def test_a_long_chain_with_a_short_last_step_is_reported_by_default(queue, outbox, sql):
    long_ids = _run_chain(queue, sql, 2, root_started_seconds_ago=61)
    short_ids = _run_chain(queue, sql, 2)

    assert [(r["job_id"], r["kind"]) for r in outbox_rows(sql)] == [
        (long_ids[-1], "job.succeeded")
    ]
    assert short_ids[-1] not in {r["job_id"] for r in outbox_rows(sql)}
    # Sending applies the same rule: the row is still wanted, not skipped.
    assert [n.job_id for n in outbox.claim("d", 10)] == [long_ids[-1]]


def _enqueue_chain(queue, *types: str) -> list[int]:
    steps = [
        {"job_type": t, "payload": {"seconds": 0} if t == "system.sleep" else {}}
        for t in types
    ]
    chain = queue.transport.call("enqueue_chain", {"p_steps": steps, "p_user_id": PRO_USER})
    return [job["id"] for job in chain["jobs"]]


def test_a_step_that_succeeds_after_its_chain_was_cancelled_reports_its_success(
    queue, outbox, sql
):
    notify_everything(outbox)
    ids = _enqueue_chain(queue, "system.noop", "system.noop", "system.noop")
    [first] = queue.claim("w", 1)
    assert queue.cancel(ids[0]).outcome == "cancel_requested"

    queue.complete(first, {})

    assert [queue.get(i).status for i in ids] == ["succeeded", "cancelled", "cancelled"]
    assert [(r["job_id"], r["kind"]) for r in outbox_rows(sql)] == [(ids[0], "job.succeeded")]


def test_a_chain_cancelled_part_way_reports_once_for_the_step_where_it_stopped(
    queue, outbox, sql
):
    notify_everything(outbox)
    ids = _enqueue_chain(queue, "system.noop", "system.noop", "system.noop", "system.noop")
    [first] = queue.claim("w", 1)
    queue.complete(first, {})
    [second] = queue.claim("w", 1)

    queue.cancel(ids[0])
    queue.fail(second, "cancelled by the user", "cancelled")

    assert [queue.get(i).status for i in ids] == ["succeeded", "cancelled", "cancelled", "cancelled"]
    assert [(r["job_id"], r["kind"]) for r in outbox_rows(sql)] == [(ids[1], "job.cancelled")]


def test_a_job_type_filter_hears_of_a_chain_through_an_earlier_step(queue, outbox, sql):
    notify_everything(outbox, job_types=["system.noop"])
    ids = _enqueue_chain(queue, "system.noop", "system.sleep")
    for _ in ids:
        [job] = queue.claim("w", 1)
        queue.complete(job, {})

    assert [(r["job_id"], r["kind"]) for r in outbox_rows(sql)] == [(ids[1], "job.succeeded")]


def test_a_chain_step_requeued_days_later_is_timed_by_its_runs_not_the_days_between(
    queue, outbox, sql
):
    first_id, second_id = _enqueue_chain(queue, "system.noop", "system.noop")
    [first] = queue.claim("w", 1)
    queue.complete(first, {})
    sql.execute(
        "update jobs set first_started_at = now() - interval '2 days 1 second',"
        " finished_at = now() - interval '2 days' where id = %s",
        (first_id,),
    )
    [second] = queue.claim("w", 1)
    queue.fail(second, "bad input", "permanent")
    queue.requeue(second_id)
    [again] = queue.claim("w", 1)
    queue.complete(again, {})

    # Default preferences: a failure is worth a message, a 1-second chain is not.
    assert [(r["job_id"], r["kind"]) for r in outbox_rows(sql)] == [(second_id, "job.failed")]
