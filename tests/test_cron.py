"""functions/cron.py: authentication and one worker pass, as the Vercel cron calls it."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

import functions.cron as cron


@pytest.fixture
def client(monkeypatch, db_url):
    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.setenv("CRON_SECRET", "s3cret-for-tests")
    monkeypatch.setenv("EXAMQ_CRON_BUDGET_SECONDS", "20")
    monkeypatch.setattr(cron, "_queue", None)
    yield TestClient(cron.app)
    if cron._queue is not None:
        cron._queue.transport.close()
    monkeypatch.setattr(cron, "_queue", None)


def test_cron_accepts_the_bearer_scheme_in_any_case(client):
    response = client.get("/api/cron", headers={"Authorization": "bearer s3cret-for-tests"})

    assert response.status_code == 200


def test_cron_refuses_missing_or_wrong_secret(client):
    assert client.get("/api/cron").status_code == 401
    assert client.get("/api/cron", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/api/cron", headers={"Authorization": "s3cret-for-tests"}).status_code == 401
    assert client.get("/api/cron", headers={"Authorization": "Basic s3cret-for-tests"}).status_code == 401
    assert client.get("/api/cron", headers={"Authorization": "Bearer s3cret-for-tests-and-more"}).status_code == 401


def test_cron_without_configured_secret_is_a_clear_500(client, monkeypatch):
    monkeypatch.delenv("CRON_SECRET")

    response = client.get("/api/cron", headers={"Authorization": "Bearer anything"})

    assert response.status_code == 500
    assert "CRON_SECRET" in response.json()["error"]


def test_cron_with_bad_configuration_names_the_variable(client, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "mysql://nope")

    response = client.get("/api/cron", headers={"Authorization": "Bearer s3cret-for-tests"})

    assert response.status_code == 500
    assert "DATABASE_URL" in response.json()["error"]


def test_cron_runs_a_pass_and_reports_counts(client, queue):
    ok = queue.enqueue("system.noop")
    retry = queue.enqueue("system.noop", {"fail": "retryable"})
    dead = queue.enqueue("system.noop", {"fail": "permanent"})

    response = client.get("/api/cron", headers={"Authorization": "Bearer s3cret-for-tests"})

    assert response.status_code == 200
    body = response.json()
    assert (body["claimed"], body["succeeded"], body["retried"], body["failed"]) == (3, 1, 1, 1)
    assert queue.get(ok.id).status == "succeeded"
    assert queue.get(retry.id).status == "queued"
    assert queue.get(dead.id).status == "dead"


def test_cron_prunes_jobs_past_retention(client, queue, sql, monkeypatch):
    monkeypatch.setenv("EXAMQ_RETENTION_DAYS", "1")
    old = queue.enqueue("system.noop")
    recent = queue.enqueue("system.noop")
    for job in queue.claim("w", 10):
        queue.complete(job, {})
    sql.execute("update jobs set finished_at = now() - interval '2 days' where id = %s", (old.id,))
    # An admin alert sent three days ago, and one sent today: only the old one goes.
    sql.execute(
        "insert into notification_outbox (audience, channel, kind, status, created_at, sent_at) values "
        "('admins', 'slack', 'alert.queue_age', 'sent', now() - interval '3 days', now() - interval '3 days'), "
        "('admins', 'slack', 'alert.dead_letter', 'sent', now(), now())"
    )

    body = client.get("/api/cron", headers={"Authorization": "Bearer s3cret-for-tests"}).json()

    assert body["pruned"] == 1
    assert body["pruned_notifications"] == 1
    kinds = [r[0] for r in sql.execute("select kind from notification_outbox where job_id is null").fetchall()]
    assert kinds == ["alert.dead_letter"]
    remaining = {row[0] for row in sql.execute("select id from jobs").fetchall()}
    assert old.id not in remaining and recent.id in remaining
    assert sql.execute("select count(*) from job_events where job_id = %s", (old.id,)).fetchone()[0] == 0
