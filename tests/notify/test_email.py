"""E-mail through SendGrid (faked at the HTTP layer) and as local .eml files."""

from __future__ import annotations

import email
import email.policy
import threading
import time

import httpx
import pytest

from examq.notify.dispatcher import Dispatcher
from tests.conftest import FREE_USER, PRO_USER
from tests.notify.conftest import (
    PRO_EMAIL,
    SENDGRID_KEY,
    assert_no_secrets,
    dispatch,
    finish_job,
    make_settings,
    notify_everything,
    outbox_rows,
    sendgrid_accepts,
    sendgrid_error,
    sent_bodies,
)

GRADE_SUMMARY = {
    "students": 12,
    "items": 10,
    "mean": 6.25,
    "sd": 1.5,
    "kr20": 0.7,
    "alpha": 0.712,
    "max_score": 10,
}


def test_one_email_per_finished_job(
    queue, outbox, sql, sendgrid, sendgrid_settings, log_lines
):
    notify_everything(outbox)
    jobs = [
        finish_job(queue, "succeeded"),
        finish_job(queue, "dead"),
        finish_job(queue, "cancelled"),
    ]

    summary = dispatch(outbox, sendgrid_settings)
    again = dispatch(outbox, sendgrid_settings)

    assert (summary.claimed, summary.sent) == (3, 3) and again.claimed == 0
    bodies = sent_bodies(sendgrid)
    assert sorted(b["subject"].split(":")[0] for b in bodies) == sorted(
        f"[examq] Job #{job.id} {verb}"
        for job, verb in zip(jobs, ["succeeded", "failed", "was cancelled"])
    )
    assert all(
        b["personalizations"][0]["to"] == [{"email": PRO_EMAIL, "name": "Priya Pro"}]
        for b in bodies
    )
    assert all(
        call.request.headers["authorization"] == f"Bearer {SENDGRID_KEY}"
        for call in sendgrid.calls
    )
    rows = outbox_rows(sql)
    assert {r["status"] for r in rows} == {"sent"} and {
        r["provider_message_id"] for r in rows
    } == {"sg-message-id-1"}
    assert_no_secrets(log_lines, SENDGRID_KEY, PRO_EMAIL)


def test_no_email_when_the_preference_is_off(
    queue, outbox, sendgrid, sendgrid_settings
):
    outbox.set_preferences(PRO_USER, email=False)
    finish_job(queue, "dead")

    summary = dispatch(outbox, sendgrid_settings)

    assert summary.claimed == 0 and not sendgrid.called


def test_message_tells_what_finished_with_figures_and_link(
    queue, outbox, sql, sendgrid, sendgrid_settings
):
    notify_everything(outbox)
    job = finish_job(
        queue,
        "succeeded",
        job_type="exam.grade",
        payload={"title": "Week 3 quiz"},
        result={"summary": GRADE_SUMMARY, "items": [], "students": []},
    )

    dispatch(outbox, sendgrid_settings)

    [body] = sent_bodies(sendgrid)
    assert body["subject"] == f"[examq] Job #{job.id} succeeded: Week 3 quiz"
    assert body["from"] == {"email": "notifications@examq.local", "name": "examq"}
    text, html = (c["value"] for c in body["content"])
    assert [c["type"] for c in body["content"]] == ["text/plain", "text/html"]
    for needle in (
        "Students:",
        "12",
        "Mean score:",
        "6.25 of 10",
        "Cronbach's alpha:",
        "0.712",
        f"http://localhost:8000/#/jobs/{job.id}",
    ):
        assert needle in text
    assert f'href="http://localhost:8000/#/jobs/{job.id}"' in html and "0.712" in html
    [row] = outbox_rows(sql)
    assert body["custom_args"] == {"examq_notification_id": str(row["id"])}


def test_failure_email_explains_the_error_and_escapes_user_text(
    queue, outbox, sendgrid, sendgrid_settings, sql
):
    job = queue.enqueue(
        "exam.grade",
        {"title": "<script>alert(1)</script> & co"},
        user_id=PRO_USER,
        max_attempts=1,
    )
    [claimed] = queue.claim("w", 1)
    queue.fail(
        claimed,
        "exam.grade: responses_csv has student id '<img src=x>' twice",
        "permanent",
    )

    dispatch(outbox, sendgrid_settings)

    [body] = sent_bodies(sendgrid)
    text, html = (c["value"] for c in body["content"])
    assert (
        "could not process its input" in text
        and "student id '<img src=x>' twice" in text
    )
    assert "<script>" not in html and "<img src=x>" not in html
    assert (
        "&lt;script&gt;alert(1)&lt;/script&gt; &amp; co" in html
        and "&lt;img src=x&gt;" in html
    )
    assert "\n" not in body["subject"] and str(job.id) in body["subject"]


def test_429_then_202_delivers_once_after_the_rate_limit_reset(
    queue, outbox, sql, sendgrid, sendgrid_settings
):
    finish_job(queue, "dead")
    reset_at = int(time.time()) + 120
    sendgrid.side_effect = [
        sendgrid_error(
            429,
            "too many requests",
            **{
                "X-RateLimit-Limit": "600",
                "X-RateLimit-Remaining": "0",
                "X-RateLimit-Reset": str(reset_at),
            },
        ),
        httpx.Response(202, headers={"X-Message-Id": "after-reset"}),
    ]

    first = dispatch(outbox, sendgrid_settings)

    assert (first.sent, first.retried) == (0, 1)
    [row] = outbox_rows(sql)
    assert row["status"] == "pending" and row["provider_status"] == 429
    assert "too many requests" in row["last_error"]
    wait = sql.execute(
        "select extract(epoch from run_at - to_timestamp(%s)) from notification_outbox",
        (reset_at,),
    ).fetchone()[0]
    assert abs(float(wait)) < 1, (
        "the retry is scheduled at SendGrid's X-RateLimit-Reset"
    )
    assert dispatch(outbox, sendgrid_settings).claimed == 0, "not before the reset"

    sql.execute("update notification_outbox set run_at = now()")
    second = dispatch(outbox, sendgrid_settings)

    assert second.sent == 1 and sendgrid.call_count == 2
    [row] = outbox_rows(sql)
    assert (
        row["status"] == "sent"
        and row["attempts"] == 2
        and row["provider_message_id"] == "after-reset"
    )
    assert dispatch(outbox, sendgrid_settings).claimed == 0 and sendgrid.call_count == 2


def test_400_is_recorded_as_failed_with_sendgrids_reason(
    queue, outbox, sql, sendgrid, sendgrid_settings, log_lines
):
    finish_job(queue, "dead")
    sendgrid.side_effect = [
        sendgrid_error(
            400,
            f"The to email {PRO_EMAIL} does not contain a valid address.",
            "personalizations.0.to.0.email",
        )
    ]

    summary = dispatch(outbox, sendgrid_settings)

    assert summary.failed == 1 and sendgrid.call_count == 1
    [row] = outbox_rows(sql)
    assert row["status"] == "failed" and row["provider_status"] == 400
    assert row["last_error"] == (
        "SendGrid answered 400: The to email <address> does not contain a valid "
        "address. (field personalizations.0.to.0.email)"
    )
    assert dispatch(outbox, sendgrid_settings).claimed == 0
    assert_no_secrets(log_lines, PRO_EMAIL, SENDGRID_KEY)


@pytest.mark.parametrize(
    ("status", "message"),
    [
        (401, "The provided authorization grant is invalid, expired, or revoked"),
        (403, "The from address does not match a verified Sender Identity."),
        (413, "The JSON payload you have included in your request is too large."),
    ],
)
def test_other_4xx_are_permanent(
    queue, outbox, sql, sendgrid, sendgrid_settings, status, message
):
    finish_job(queue, "dead")
    sendgrid.side_effect = [sendgrid_error(status, message)]

    dispatch(outbox, sendgrid_settings)

    [row] = outbox_rows(sql)
    assert (
        row["status"] == "failed"
        and row["last_error"] == f"SendGrid answered {status}: {message}"
    )


def test_5xx_and_connect_errors_are_retried(
    queue, outbox, sql, sendgrid, sendgrid_settings
):
    finish_job(queue, "dead")
    sendgrid.side_effect = [
        sendgrid_error(503, "The SendGrid v3 Web API is not available."),
        httpx.ConnectError("connection refused"),
        httpx.Response(202),
    ]

    for _ in range(3):
        dispatch(outbox, sendgrid_settings)
        sql.execute(
            "update notification_outbox set run_at = now() where status = 'pending'"
        )

    [row] = outbox_rows(sql)
    assert row["status"] == "sent" and row["attempts"] == 3 and sendgrid.call_count == 3


@pytest.mark.parametrize(
    "error",
    [
        httpx.ReadTimeout("timed out"),
        httpx.WriteTimeout("timed out"),
        httpx.RemoteProtocolError("server disconnected"),
    ],
)
def test_no_answer_after_sending_is_uncertain_and_not_resent(
    queue, outbox, sql, sendgrid, sendgrid_settings, error
):
    finish_job(queue, "dead")
    sendgrid.side_effect = [error]

    summary = dispatch(outbox, sendgrid_settings)
    sql.execute("update notification_outbox set run_at = now()")
    dispatch(outbox, sendgrid_settings)

    assert summary.uncertain == 1 and sendgrid.call_count == 1
    [row] = outbox_rows(sql)
    assert row["status"] == "uncertain" and type(error).__name__ in row["last_error"]


def test_without_a_sendgrid_key_email_is_written_as_eml_files(
    queue, outbox, db_url, tmp_path
):
    notify_everything(outbox)
    job = finish_job(queue, "succeeded", payload={"title": "Quiz <1>"})
    settings = make_settings(db_url, tmp_path)

    summary = Dispatcher(outbox, settings).run_pass(30)

    [path] = sorted((tmp_path / "outbox").glob("*.eml"))
    assert summary.sent == 1
    message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    assert message["To"] == f"Priya Pro <{PRO_EMAIL}>"
    assert message["Subject"] == f"[examq] Job #{job.id} succeeded: Quiz <1>"
    assert message.get_content_type() == "multipart/alternative"
    text = message.get_body(("plain",)).get_content()
    html = message.get_body(("html",)).get_content()
    assert "finished successfully" in text and "Quiz <1>" in text
    assert "Quiz &lt;1&gt;" in html


def test_owner_without_an_address_fails_without_calling_sendgrid(
    queue, outbox, sql, sendgrid, sendgrid_settings
):
    sql.execute("update auth.users set email = null where id = %s", (FREE_USER,))
    finish_job(queue, "dead", user_id=FREE_USER, job_type="exam.grade")

    dispatch(outbox, sendgrid_settings)

    [row] = outbox_rows(sql)
    assert (
        row["status"] == "failed"
        and row["last_error"] == "the owner has no e-mail address"
    )
    assert row["attempts"] == 0 and not sendgrid.called


def test_a_pass_without_time_for_one_send_sends_nothing(
    queue, outbox, sql, sendgrid, sendgrid_settings
):
    finish_job(queue, "dead")

    # Less than the HTTP timeout (10 s) is left: a send could overrun the budget.
    summary = Dispatcher(outbox, sendgrid_settings).run_pass(1.0)

    assert summary.claimed == 0 and not sendgrid.called
    assert outbox_rows(sql)[0]["status"] == "pending"


def test_a_notification_deleted_while_it_is_sent_does_not_stop_the_pass(
    queue, outbox, sql, sendgrid, sendgrid_settings
):
    notify_everything(outbox)
    first, second, third = (finish_job(queue, "succeeded") for _ in range(3))

    def delete_the_first_then_accept(request: httpx.Request) -> httpx.Response:
        # The first job is pruned while its message is in flight.
        sql.execute("delete from jobs where id = %s", (first.id,))
        sendgrid.side_effect = sendgrid_accepts
        return sendgrid_accepts(request)

    sendgrid.side_effect = delete_the_first_then_accept
    summary = dispatch(outbox, sendgrid_settings)

    assert summary.claimed == 3 and summary.sent == 2
    rows = outbox_rows(sql)
    assert [(r["job_id"], r["status"]) for r in rows] == [(second.id, "sent"), (third.id, "sent")]


def test_summary_figures_cannot_make_an_email_huge(queue, outbox, sql, sendgrid, sendgrid_settings):
    notify_everything(outbox)
    hostile = "<b>x</b>" * 200_000
    finish_job(queue, "succeeded", result={"summary": {"students": hostile, "max_score": hostile}})

    dispatch(outbox, sendgrid_settings)

    [body] = sent_bodies(sendgrid)
    assert sum(len(c["value"]) for c in body["content"]) < 50_000
    assert "<b>" not in next(c["value"] for c in body["content"] if c["type"] == "text/html")


def test_a_provider_that_never_finishes_answering_cannot_hold_the_pass(
    queue, outbox, sql, sendgrid, db_url, tmp_path
):
    settings = make_settings(db_url, tmp_path, SENDGRID_API_KEY=SENDGRID_KEY, EXAMQ_NOTIFY_TIMEOUT_SECONDS="0.5")
    notify_everything(outbox)
    stuck, fine = finish_job(queue, "succeeded"), finish_job(queue, "succeeded")
    calls: list[httpx.Request] = []
    next_send_started = threading.Event()

    def first_one_trickles(request: httpx.Request) -> httpx.Response:
        # The first answer trickles in (no single read ever times out) until the
        # dispatcher has moved on to the next notification.
        calls.append(request)
        if len(calls) == 1:
            next_send_started.wait(30)
        else:
            next_send_started.set()
        return sendgrid_accepts(request)

    sendgrid.side_effect = first_one_trickles
    summary = dispatch(outbox, settings)

    assert next_send_started.is_set(), "the pass waited for the trickling answer"
    assert (summary.sent, summary.uncertain) == (1, 1)
    rows = {r["job_id"]: r for r in outbox_rows(sql)}
    assert rows[stuck.id]["status"] == "uncertain" and "may have been delivered" in rows[stuck.id]["last_error"]
    assert rows[fine.id]["status"] == "sent"
