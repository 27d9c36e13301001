"""Rendering: what each message says, and that user text is escaped wherever it lands."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import httpx

from examq.notify.delivery import redact, transport_failure
from examq.notify.outbox import JobFacts, Notification
from examq.notify.render import render_alert_slack, render_job_email, render_job_slack

FINISHED = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
DASHBOARD = "https://exams.example.org/dashboard/"


def words(text: str) -> str:
    """The text with every run of whitespace as one space (the plain text is wrapped)."""
    return " ".join(text.split())


def notification(status: str = "succeeded", **job: object) -> Notification:
    facts = {
        "id": 42,
        "job_type": "exam.grade",
        "status": status,
        "attempt": 1,
        "max_attempts": 3,
        "created_at": FINISHED - timedelta(minutes=5),
        "first_started_at": FINISHED - timedelta(seconds=95),
        "finished_at": FINISHED,
        "title": "Week 3 quiz",
    }
    facts.update(job)
    return Notification(
        id=7,
        lease_token=uuid.uuid4(),
        job_id=42,
        event_id=9,
        audience="owner",
        channel="email",
        kind="job.succeeded",
        attempts=0,
        created_at=FINISHED,
        recipient_name="Priya Pro",
        recipient_email="pro.teacher@example.com",
        job=JobFacts.model_validate(facts),
    )


def test_success_email_has_the_key_figures_run_time_and_link():
    summary = {
        "students": 651,
        "items": 20,
        "mean": 12.2119,
        "sd": 3.64,
        "alpha": 0.71553,
        "max_score": 20,
    }

    content = render_job_email(notification(summary=summary), DASHBOARD)

    assert content.subject == "[examq] Job #42 succeeded: Week 3 quiz"
    for needle in (
        "Hello Priya Pro,",
        'Your "Week 3 quiz" finished successfully.',
        "Students:              651",
        "Mean score:            12.21 of 20",
        "Cronbach's alpha:      0.716",
        "Run time: 1 min 35 s",
        "https://exams.example.org/dashboard/#/jobs/42",
    ):
        assert needle in content.text
    assert "What went wrong" not in content.text
    assert '<td style="padding:4px 0;font-weight:600;">651</td>' in content.html


def test_undefined_statistics_are_said_in_words():
    content = render_job_email(
        notification(summary={"students": 1, "alpha": None}), DASHBOARD
    )

    assert "Cronbach's alpha:      n/a (not defined for this data)" in content.text


def test_failure_reasons_in_plain_words():
    permanent = render_job_email(
        notification("dead", error="no key column", error_kind="permanent"), DASHBOARD
    )
    exhausted = render_job_email(
        notification("dead", attempt=3, error="timeout", error_kind="exhausted"),
        DASHBOARD,
    )
    lost = render_job_email(
        notification(
            "dead", attempt=3, error="lease expired", error_kind="lease_expired"
        ),
        DASHBOARD,
    )
    cancelled = render_job_email(
        notification("cancelled", error="not needed"), DASHBOARD
    )

    assert permanent.subject == "[examq] Job #42 failed: Week 3 quiz"
    assert (
        "could not process its input" in permanent.text
        and "Error message:\n    no key column" in permanent.text
    )
    assert "failed on every one of its 3 attempts" in words(exhausted.text)
    assert "stopped responding during its last attempt (3 of 3)" in words(lost.text)
    assert cancelled.subject == "[examq] Job #42 was cancelled: Week 3 quiz"
    assert "stopped on request" in cancelled.text
    assert "failed for good (in the dead-letter queue)" in permanent.text


def test_user_text_is_escaped_in_html_and_slack_and_kept_off_the_subject_line():
    hostile = notification(
        "dead",
        title="<b>Quiz</b>\nBcc: x@y",
        error="<script>x()</script> & more",
        error_kind="permanent",
    )

    email = render_job_email(hostile, DASHBOARD)
    slack = render_job_slack(hostile, DASHBOARD)

    assert "\n" not in email.subject and "<b>Quiz</b> Bcc: x@y" in email.subject
    assert (
        "<script>" not in email.html
        and "&lt;script&gt;x()&lt;/script&gt; &amp; more" in email.html
    )
    assert "<b>Quiz</b>" not in email.html
    block = slack.blocks[0]["text"]["text"]
    assert (
        "&lt;script&gt;x()&lt;/script&gt; &amp; more" in block
        and "<script>" not in block
    )
    assert "&lt;b&gt;Quiz&lt;/b&gt;" in slack.text
    assert (
        "<https://exams.example.org/dashboard/#/jobs/42|Open job #42 in the dashboard>"
        in block
    )


def test_admin_alerts_render_their_figures():
    alert = notification().model_copy(
        update={
            "audience": "admins",
            "channel": "slack",
            "kind": "alert.failure_rate",
            "job": None,
            "details": {
                "kind": "failure_rate",
                "rate": 0.4,
                "threshold": 0.25,
                "failed": 4,
                "finished": 10,
                "window_seconds": 900,
            },
        }
    )

    content = render_alert_slack(alert, DASHBOARD)

    assert content.text == (
        ":chart_with_downwards_trend: *40% of jobs failed* in the last 15 min "
        "(4 of 10; threshold 25%)."
    )


def test_provider_messages_lose_addresses_and_transport_errors_lose_urls():
    assert (
        redact("The to email a.b+c@example.com is invalid")
        == "The to email <address> is invalid"
    )
    secret = "https://hooks.slack.com/services/T/B/secret"
    request = httpx.Request("POST", secret)

    for exc in (
        httpx.ConnectError(f"cannot connect to {secret}", request=request),
        httpx.ReadTimeout(f"timed out on {secret}", request=request),
    ):
        delivery = transport_failure("Slack", exc)
        assert secret not in (delivery.error or "")
    assert transport_failure("Slack", httpx.ConnectError("x")).outcome == "retry"
    assert transport_failure("Slack", httpx.ConnectTimeout("x")).outcome == "retry"
    assert transport_failure("Slack", httpx.ReadTimeout("x")).outcome == "uncertain"
    assert transport_failure("Slack", httpx.WriteTimeout("x")).outcome == "uncertain"


def test_a_subject_holds_no_control_that_reverses_text():
    content = render_job_email(notification(title="Quiz \u202eevil\u202c 3"), DASHBOARD)

    assert content.subject == "[examq] Job #42 succeeded: Quiz evil 3"
