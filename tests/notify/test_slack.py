"""Slack incoming webhooks (faked at the HTTP layer): users' webhooks and the admins' channel."""

from __future__ import annotations

import json
import time

import pytest
import respx

from tests.notify.conftest import (
    ADMIN_WEBHOOK,
    USER_WEBHOOK,
    assert_no_secrets,
    dispatch,
    finish_job,
    make_settings,
    notify_everything,
    outbox_rows,
    slack_answer,
)


@pytest.fixture
def slack():
    """The user's and the admins' webhooks, faked; both answer 200 ok unless told otherwise."""
    with respx.mock(assert_all_called=False) as mock:
        user = mock.post(USER_WEBHOOK).mock(return_value=slack_answer(200, "ok"))
        admin = mock.post(ADMIN_WEBHOOK).mock(return_value=slack_answer(200, "ok"))
        yield user, admin


@pytest.fixture
def slack_settings(db_url, tmp_path):
    return make_settings(db_url, tmp_path, EXAMQ_SLACK_ADMIN_WEBHOOK_URL=ADMIN_WEBHOOK)


def slack_only(outbox) -> None:
    notify_everything(outbox, email=False, slack=True, slack_webhook_url=USER_WEBHOOK)


def test_user_webhook_gets_text_and_blocks(
    queue, outbox, sql, slack, slack_settings, log_lines
):
    slack_only(outbox)
    job = finish_job(
        queue,
        "succeeded",
        job_type="exam.grade",
        payload={"title": "Quiz <b>&</b>"},
        result={
            "summary": {"students": 12, "mean": 6.25, "alpha": 0.71, "max_score": 10}
        },
    )
    user, _ = slack

    summary = dispatch(outbox, slack_settings, check_alerts=False)

    assert summary.sent == 1 and user.call_count == 1
    payload = json.loads(user.calls[0].request.content)
    assert set(payload) == {"text", "blocks"}
    block_text = payload["blocks"][0]["text"]["text"]
    assert payload["blocks"][0]["text"]["type"] == "mrkdwn"
    assert "Quiz &lt;b&gt;&amp;&lt;/b&gt;" in block_text and "<b>" not in block_text
    assert (
        f"<http://localhost:8000/#/jobs/{job.id}|Open job #{job.id} in the dashboard>"
        in block_text
    )
    assert "Students: *12*" in block_text
    assert outbox_rows(sql)[0]["status"] == "sent"
    assert_no_secrets(log_lines, USER_WEBHOOK, ADMIN_WEBHOOK, "user-secret-path")


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (400, "invalid_payload"),
        (403, "invalid_token"),
        (404, "no_service"),
        (410, "channel_is_archived"),
    ],
)
def test_slack_4xx_is_permanent_with_its_error_code(
    queue, outbox, sql, slack, slack_settings, log_lines, status, code
):
    slack_only(outbox)
    finish_job(queue, "dead")
    user, _ = slack
    user.return_value = slack_answer(status, code)

    summary = dispatch(outbox, slack_settings, check_alerts=False)

    assert summary.failed == 1
    [row] = outbox_rows(sql)
    assert (
        row["status"] == "failed"
        and row["last_error"] == f"Slack answered {status}: {code}"
    )
    assert USER_WEBHOOK not in row["last_error"]
    assert_no_secrets(log_lines, USER_WEBHOOK, "user-secret-path")


def test_slack_429_waits_for_retry_after_then_delivers_once(
    queue, outbox, sql, slack, slack_settings
):
    slack_only(outbox)
    finish_job(queue, "dead")
    user, _ = slack
    user.side_effect = [
        slack_answer(429, "rate_limited", **{"Retry-After": "30"}),
        slack_answer(200, "ok"),
    ]
    before = time.time()

    first = dispatch(outbox, slack_settings, check_alerts=False)

    assert first.retried == 1
    [row] = outbox_rows(sql)
    assert (
        row["status"] == "pending"
        and row["last_error"] == "Slack answered 429: rate_limited"
    )
    assert row["run_at"].timestamp() >= before + 30, "Slack's Retry-After is honoured"
    assert dispatch(outbox, slack_settings, check_alerts=False).claimed == 0

    sql.execute("update notification_outbox set run_at = now()")
    assert dispatch(outbox, slack_settings, check_alerts=False).sent == 1
    assert user.call_count == 2 and outbox_rows(sql)[0]["status"] == "sent"


def test_slack_5xx_is_retried(queue, outbox, sql, slack, slack_settings):
    slack_only(outbox)
    finish_job(queue, "dead")
    user, _ = slack
    user.return_value = slack_answer(500, "rollup_error")

    assert dispatch(outbox, slack_settings, check_alerts=False).retried == 1
    assert outbox_rows(sql)[0]["status"] == "pending"


def test_dead_letter_alert_reaches_the_admins_channel_once_per_window(
    queue, outbox, sql, slack, slack_settings, log_lines
):
    first_dead = finish_job(queue, "dead", user_id=None)
    _, admin = slack

    summary = dispatch(outbox, slack_settings)
    finish_job(queue, "dead", user_id=None)
    again = dispatch(outbox, slack_settings)

    assert (
        summary.alerts == ["dead_letter"] and summary.sent == 1 and again.alerts == []
    )
    assert admin.call_count == 1
    text = json.loads(admin.calls[0].request.content)["blocks"][0]["text"]["text"]
    assert (
        "1 job entered the dead-letter queue" in text
        and f"job #{first_dead.id}" in text
    )
    assert_no_secrets(log_lines, ADMIN_WEBHOOK, "admin-secret-path", "key has no")

    # After the window, the next alert reports every job that died meanwhile.
    sql.execute(
        "update admin_alerts set last_raised_at = now() - interval '31 minutes'"
    )
    later = dispatch(outbox, slack_settings)
    assert later.alerts == ["dead_letter"] and admin.call_count == 2
    text = json.loads(admin.calls[1].request.content)["blocks"][0]["text"]["text"]
    assert "1 job entered" in text and f"job #{first_dead.id}" not in text


def test_alerts_without_an_admin_webhook_are_recorded_but_not_sent(
    queue, outbox, sql, db_url, tmp_path
):
    finish_job(queue, "dead", user_id=None)

    summary = dispatch(outbox, make_settings(db_url, tmp_path))

    assert summary.alerts == ["dead_letter"] and summary.claimed == 0
    assert (
        sql.execute(
            "select raised_count from admin_alerts where kind = 'dead_letter'"
        ).fetchone()[0]
        == 1
    )
