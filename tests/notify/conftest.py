"""Fixtures for the notification tests: settings, the outbox client, finished jobs, fakes.

SendGrid and Slack are faked at the HTTP layer with respx, answering the way the real
services do (status codes, headers and bodies taken from their documentation).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import respx
from loguru import logger

from examq.config import Settings, load_settings
from examq.db import PsycopgTransport
from examq.notify.dispatcher import Dispatcher
from examq.notify.email import SENDGRID_MAIL_SEND_URL
from examq.notify.outbox import Outbox
from examq.queue import Job, Queue
from tests.conftest import PRO_USER

SENDGRID_KEY = "SG.test-key-that-must-never-be-logged"
ADMIN_WEBHOOK = "https://hooks.slack.com/services/TADMIN/BADMIN/admin-secret-path"
USER_WEBHOOK = "https://hooks.slack.com/services/TUSER/BUSER/user-secret-path"
PRO_EMAIL = "pro.teacher@example.com"


def make_settings(db_url: str, tmp_path: Path, **extra: str) -> Settings:
    """Settings for a test: its database, its own outbox folder, and any extra variables."""
    env = {
        "DATABASE_URL": db_url,
        "EXAMQ_OUTBOX_DIR": str(tmp_path / "outbox"),
        **extra,
    }
    return load_settings(env)


@pytest.fixture
def outbox(db_url: str) -> Iterator[Outbox]:
    """The outbox client over a direct connection to the test database."""
    transport = PsycopgTransport(db_url)
    yield Outbox(transport)
    transport.close()


@pytest.fixture
def sendgrid_settings(db_url: str, tmp_path: Path) -> Settings:
    """Settings that send e-mail through (faked) SendGrid."""
    return make_settings(db_url, tmp_path, SENDGRID_API_KEY=SENDGRID_KEY)


def dispatch(outbox: Outbox, settings: Settings, **kwargs: Any):
    """Run one dispatcher pass and return its summary."""
    return Dispatcher(outbox, settings).run_pass(30, **kwargs)


def finish_job(
    queue: Queue,
    outcome: str,
    *,
    user_id: str | None = PRO_USER,
    job_type: str = "system.noop",
    payload: dict[str, Any] | None = None,
    result: dict[str, Any] | None = None,
    sql: psycopg.Connection | None = None,
    ran_seconds: float | None = None,
) -> Job:
    """Enqueue one job and bring it to ``outcome``: succeeded, dead or cancelled."""
    job = queue.enqueue(job_type, payload or {}, user_id=user_id, max_attempts=1)
    if outcome == "cancelled":
        queue.cancel(job.id, "not needed any more")
        return queue.get(job.id)

    [claimed] = queue.claim("test-worker", 1)
    assert claimed.id == job.id
    if ran_seconds is not None:
        assert sql is not None
        sql.execute(
            "update jobs set first_started_at = now() - make_interval(secs => %s), "
            "started_at = now() - make_interval(secs => %s) where id = %s",
            (ran_seconds, ran_seconds, job.id),
        )
    if outcome == "succeeded":
        queue.complete(claimed, result if result is not None else {"ok": True})
    elif outcome == "dead":
        queue.fail(claimed, "bad input: the key has no 'key' column", "permanent")
    else:
        raise ValueError(outcome)
    return queue.get(job.id)


def notify_everything(outbox: Outbox, user_id: str = PRO_USER, **kwargs: Any) -> None:
    """Ask for an e-mail on every outcome of every job, however short."""
    options: dict[str, Any] = {
        "events": ["succeeded", "failed", "cancelled"],
        "success_min_seconds": 0,
    }
    options.update(kwargs)
    outbox.set_preferences(user_id, **options)


def outbox_rows(
    sql: psycopg.Connection, where: str = "true", params: tuple = ()
) -> list[dict[str, Any]]:
    """Rows of public.notification_outbox as dicts, oldest first."""
    with sql.cursor(row_factory=psycopg.rows.dict_row) as cur:
        return cur.execute(
            f"select * from notification_outbox where {where} order by id", params
        ).fetchall()


def sendgrid_accepts(request: httpx.Request) -> httpx.Response:
    """SendGrid's answer to an accepted message: 202, empty body, an X-Message-Id."""
    return httpx.Response(202, headers={"X-Message-Id": "sg-message-id-1"})


def sendgrid_error(
    status: int, message: str, field: str | None = None, **headers: str
) -> httpx.Response:
    """SendGrid's error answer: ``{"errors": [{"message", "field", "help"}]}``."""
    body = {"errors": [{"message": message, "field": field, "help": None}]}
    return httpx.Response(status, json=body, headers=headers)


def slack_answer(status: int, text: str, **headers: str) -> httpx.Response:
    """An incoming webhook's answer: a short plain-text body such as ``ok``."""
    return httpx.Response(
        status, text=text, headers={"content-type": "text/html", **headers}
    )


@pytest.fixture
def sendgrid() -> Iterator[respx.Route]:
    """The SendGrid mail-send endpoint, faked; accepts every message unless told otherwise."""
    with respx.mock(assert_all_called=False) as mock:
        route = mock.post(SENDGRID_MAIL_SEND_URL).mock(side_effect=sendgrid_accepts)
        yield route


def sent_bodies(route: respx.Route) -> list[dict[str, Any]]:
    """The JSON bodies POSTed to a faked route, in order."""
    return [json.loads(call.request.content) for call in route.calls]


@pytest.fixture
def log_lines() -> Iterator[list[str]]:
    """Every log line examq writes during the test, serialised with its bound fields."""
    lines: list[str] = []
    sink = logger.add(
        lambda message: lines.append(str(message)), level="TRACE", serialize=True
    )
    yield lines
    logger.remove(sink)


def assert_no_secrets(lines: list[str], *secrets: str) -> None:
    """Fail when any log line shows a secret or an address."""
    for line in lines:
        for secret in secrets:
            assert secret not in line, (
                f"a log line shows {secret[:12]}...: {line[:200]}"
            )
