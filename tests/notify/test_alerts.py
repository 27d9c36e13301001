"""Admin alerts: each condition, once per window, and the cron ticks that feed the silence check."""

from __future__ import annotations

import threading

import pytest
import respx
from starlette.testclient import TestClient

from examq.db import PsycopgTransport
from examq.errors import InvalidInput
from examq.notify.alerts import check_admin_alerts
from examq.notify.email import SENDGRID_MAIL_SEND_URL
from examq.notify.outbox import Outbox
from functions import cron
from tests.notify.conftest import (
    finish_job,
    make_settings,
    notify_everything,
    outbox_rows,
)

AUTH = {"Authorization": "Bearer s3cret-for-tests"}


@pytest.fixture
def settings(db_url, tmp_path):
    return make_settings(
        db_url,
        tmp_path,
        EXAMQ_SLACK_ADMIN_WEBHOOK_URL="https://hooks.slack.com/services/T/B/x",
    )


def kinds(alerts) -> list[str]:
    return [alert["kind"] for alert in alerts]


def test_queue_age_alert_when_the_oldest_ready_job_waits_too_long(
    queue, outbox, sql, settings
):
    job = queue.enqueue("system.noop")
    assert kinds(check_admin_alerts(outbox, settings)) == []

    sql.execute(
        "update jobs set run_at = now() - interval '20 minutes' where id = %s",
        (job.id,),
    )
    [alert] = check_admin_alerts(outbox, settings)

    assert (
        alert["kind"] == "queue_age"
        and alert["oldest_seconds"] >= 1200
        and alert["ready"] == 1
    )
    assert [r["kind"] for r in outbox_rows(sql)] == ["alert.queue_age"]
    assert check_admin_alerts(outbox, settings) == [], "once per window"


def test_failure_rate_alert_needs_enough_jobs_over_the_threshold(
    queue, outbox, settings
):
    for _ in range(6):
        finish_job(queue, "succeeded", user_id=None)
    for _ in range(3):
        finish_job(queue, "dead", user_id=None)
    check_admin_alerts(outbox, settings)  # the dead-letter alert, not under test here

    assert "failure_rate" not in kinds(check_admin_alerts(outbox, settings)), (
        "9 jobs: fewer than 10"
    )

    finish_job(queue, "dead", user_id=None)
    alerts = check_admin_alerts(outbox, settings)

    [alert] = [a for a in alerts if a["kind"] == "failure_rate"]
    assert alert["rate"] == 0.4 and (alert["failed"], alert["finished"]) == (4, 10)


def test_cron_silence_alert_measures_the_gap_since_the_last_tick(outbox, sql, settings):
    assert check_admin_alerts(outbox, settings) == [], (
        "a cron that never ran is not silent"
    )
    outbox.record_cron_tick({"claimed": 0})
    assert check_admin_alerts(outbox, settings) == []

    sql.execute(
        "update cron_runs set last_succeeded_at = now() - interval '10 minutes'"
    )
    [alert] = check_admin_alerts(outbox, settings)

    assert alert["kind"] == "cron_silent" and alert["silent_seconds"] >= 600


def test_concurrent_checks_raise_an_alert_once(queue, db_url, sql, settings):
    finish_job(queue, "dead", user_id=None)
    start = threading.Barrier(4, timeout=30)
    raised: list[str] = []

    def check() -> None:
        transport = PsycopgTransport(db_url)
        try:
            start.wait()
            raised.extend(kinds(check_admin_alerts(Outbox(transport), settings)))
        finally:
            transport.close()

    threads = [threading.Thread(target=check) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert raised == ["dead_letter"]
    assert len(outbox_rows(sql, "audience = 'admins'")) == 1


def test_bad_thresholds_are_refused(outbox):
    with pytest.raises(InvalidInput, match="thresholds"):
        outbox.check_alerts(
            window_seconds=1,
            queue_age_seconds=1,
            failure_rate=0.5,
            failure_min_jobs=1,
            failure_window_seconds=60,
            cron_silence_seconds=60,
            notify=False,
        )


@pytest.fixture
def client(monkeypatch, db_url, tmp_path):
    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.setenv("CRON_SECRET", "s3cret-for-tests")
    monkeypatch.setenv("EXAMQ_CRON_BUDGET_SECONDS", "20")
    monkeypatch.setenv("SENDGRID_API_KEY", "SG.cron-key")
    monkeypatch.setenv("EXAMQ_OUTBOX_DIR", str(tmp_path / "outbox"))
    monkeypatch.setattr(cron, "_queue", None)
    yield TestClient(cron.app)
    if cron._queue is not None:
        cron._queue.transport.close()
    monkeypatch.setattr(cron, "_queue", None)


def test_cron_tick_sends_notifications_after_the_worker_pass_and_records_itself(
    client, queue, outbox, sql
):
    notify_everything(outbox)
    ok = queue.enqueue("system.noop", user_id="00000000-0000-4000-8000-000000000002")

    with respx.mock:
        route = respx.post(SENDGRID_MAIL_SEND_URL).respond(202)
        response = client.get("/api/cron", headers=AUTH)

    assert response.status_code == 200
    body = response.json()
    assert (
        body["succeeded"] == 1
        and body["notifications"]["sent"] == 1
        and route.call_count == 1
    )
    assert [(r["job_id"], r["status"]) for r in outbox_rows(sql)] == [(ok.id, "sent")]
    [(count, summary)] = sql.execute(
        "select succeeded_count, last_summary from cron_runs where name = 'cron'"
    )
    assert count == 1 and summary["succeeded"] == 1


def test_next_tick_notices_that_the_cron_was_silent(client, sql):
    assert client.get("/api/cron", headers=AUTH).json()["notifications"]["alerts"] == []
    sql.execute("update cron_runs set last_succeeded_at = now() - interval '1 hour'")

    body = client.get("/api/cron", headers=AUTH).json()

    assert body["notifications"]["alerts"] == ["cron_silent"]
    assert (
        sql.execute(
            "select raised_count from admin_alerts where kind = 'cron_silent'"
        ).fetchone()[0]
        == 1
    )
