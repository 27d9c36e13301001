"""The outbox functions through the Supabase API (supabase-py and PostgREST's roles) too."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from examq.db import SupabaseTransport
from examq.errors import PermissionDenied
from examq.notify.dispatcher import Dispatcher
from examq.notify.outbox import Outbox
from examq.rest import create_rest_app, serve
from tests.conftest import FREE_USER, PRO_USER
from tests.notify.conftest import (
    finish_job,
    make_settings,
    notify_everything,
    outbox_rows,
)
from tests.test_transports import SECRET, SERVICE_KEY, _supabase_as_user


@pytest.fixture
def api_url(db_url: str) -> Iterator[str]:
    """Base URL of the local Supabase stand-in (examq.rest) for this test's database."""
    with serve(create_rest_app(db_url, SECRET)) as url:
        yield url


def test_dispatcher_works_with_the_service_role_over_the_api(
    api_url, queue, outbox, sql, db_url, tmp_path
):
    notify_everything(outbox)
    finish_job(queue, "succeeded")
    finish_job(queue, "dead")
    transport = SupabaseTransport(api_url, SERVICE_KEY)
    try:
        summary = Dispatcher(
            Outbox(transport), make_settings(db_url, tmp_path)
        ).run_pass(30)
        Outbox(transport).record_cron_tick({"claimed": 2})
    finally:
        transport.close()

    assert summary.sent == 2 and summary.alerts == ["dead_letter"]
    assert {r["status"] for r in outbox_rows(sql)} == {"sent"}
    assert len(list((tmp_path / "outbox").glob("*.eml"))) == 2
    assert sql.execute("select succeeded_count from cron_runs").fetchone()[0] == 1


def test_users_set_their_own_preferences_and_nothing_else(api_url, sql):
    transport = _supabase_as_user(api_url, PRO_USER)
    try:
        user = Outbox(transport)
        row = user.set_preferences(
            slack=True,
            slack_webhook_url="https://hooks.slack.com/services/T/B/c",
            events=["failed"],
        )
        assert row["user_id"] == PRO_USER and row["has_slack_webhook"] is True
        assert "slack_webhook_url" not in row
        with pytest.raises(PermissionDenied):
            user.set_preferences(FREE_USER, email=False)
        with pytest.raises(PermissionDenied):
            user.claim("sneaky", 10)
        with pytest.raises(PermissionDenied):
            user.check_alerts(
                window_seconds=1800,
                queue_age_seconds=900,
                failure_rate=0.25,
                failure_min_jobs=10,
                failure_window_seconds=900,
                cron_silence_seconds=300,
                notify=True,
            )
        with pytest.raises(PermissionDenied):
            user.record_cron_tick()
    finally:
        transport.close()

    assert [
        r[0] for r in sql.execute("select user_id::text from notification_preferences")
    ] == [PRO_USER]
