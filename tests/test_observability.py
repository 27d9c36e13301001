"""Observability: job log lines carry their job's fields, the JSON and file sinks, and
the health report over SQL and GET /api/health."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from loguru import logger
from starlette.testclient import TestClient

import functions.health as health_function
from examq.config import load_settings
from examq.errors import PermissionDenied
from examq.log import configure_logging, json_line
from examq.worker import Worker
from examq.errors import ConfigError
from tests.conftest import PRO_USER, PROJECT_ROOT

JOB_FIELDS = {"job_id", "job_type", "attempt", "worker_id"}


@pytest.fixture
def captured():
    """Every log record emitted during the test, as loguru hands them to a sink."""
    records: list[dict] = []
    sink_id = logger.add(lambda message: records.append(message.record), level="DEBUG")
    yield records
    logger.remove(sink_id)


def job_lines(records: list[dict]) -> list[dict]:
    return [r for r in records if "job_id" in r["extra"]]


@pytest.mark.parametrize("batch_outcomes", [False, True], ids=["per_job", "batch"])
def test_every_log_line_of_a_job_carries_its_id_type_attempt_and_worker(
    queue, captured, batch_outcomes
):
    ok = queue.enqueue("system.noop", {}, user_id=PRO_USER)
    retried = queue.enqueue(
        "system.noop", {"fail": "retryable", "message": "busy"}, user_id=PRO_USER
    )
    dead = queue.enqueue(
        "system.noop", {"fail": "permanent", "message": "bad input"}, user_id=PRO_USER
    )

    Worker(queue, worker_id="obs-worker", batch_outcomes=batch_outcomes).run_pass(10)

    lines = job_lines(captured)
    assert {r["extra"]["job_id"] for r in lines} == {ok.id, retried.id, dead.id}
    for record in lines:
        assert JOB_FIELDS <= set(record["extra"]), record["extra"]
        assert record["extra"]["job_type"] == "system.noop"
        assert record["extra"]["attempt"] == 1
        assert record["extra"]["worker_id"] == "obs-worker"
    outcomes = {r["extra"]["job_id"]: r["message"] for r in lines}
    assert outcomes[ok.id] == "job succeeded"
    assert outcomes[retried.id] == "job failed; retry scheduled"
    assert outcomes[dead.id] == "job ended failed"
    assert all("duration_seconds" in r["extra"] for r in lines), (
        "one line per outcome, with its duration"
    )


def test_json_lines_hold_the_bound_fields_and_nothing_of_the_payload(queue, captured):
    job = queue.enqueue("system.noop", {"secret": "do-not-log-me"}, user_id=PRO_USER)
    Worker(queue, worker_id="json-worker").run_pass(10)

    [record] = [r for r in job_lines(captured) if r["message"] == "job succeeded"]
    line = json.loads(json_line(record))
    assert line["message"] == "job succeeded" and line["level"] == "INFO"
    assert {k: line[k] for k in JOB_FIELDS} == {
        "job_id": job.id,
        "job_type": "system.noop",
        "attempt": 1,
        "worker_id": "json-worker",
    }
    assert "do-not-log-me" not in json_line(record)


def test_the_file_sink_writes_json_lines_and_rotates(tmp_path: Path, monkeypatch):
    log_file = tmp_path / "logs" / "examq.jsonl"
    settings = load_settings(
        {
            "EXAMQ_LOG_FILE": str(log_file),
            "EXAMQ_LOG_ROTATION": "1 KB",
            "EXAMQ_LOG_RETENTION": "3",
        }
    )
    try:
        configure_logging("json", "INFO", force=True, settings=settings)
        for n in range(40):
            logger.bind(job_id=n, job_type="t", attempt=1, worker_id="w").info(
                "job succeeded"
            )
        logger.complete()
    finally:
        configure_logging("text", "WARNING", force=True, settings=load_settings({}))

    files = sorted(log_file.parent.glob("examq*.jsonl"))
    assert 2 <= len(files) <= 4, f"rotated at 1 KB, at most 3 old files kept: {files}"
    lines = [json.loads(line) for f in files for line in f.read_text().splitlines()]
    assert lines and all(JOB_FIELDS <= set(line) for line in lines)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("EXAMQ_LOG_ROTATION", "whenever"),
        ("EXAMQ_LOG_RETENTION", "forever"),
        ("EXAMQ_LOG_RETENTION", "0"),
    ],
)
def test_bad_log_file_settings_name_the_variable(variable, value):
    from examq.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        load_settings({variable: value})
    assert caught.value.variable == variable


def test_queue_health_reports_depth_dead_letters_ticks_and_failure_rate(queue, sql):
    queue.enqueue("exam.grade", {}, user_id=PRO_USER)
    dead = queue.enqueue("system.noop", {"fail": "permanent"}, user_id=PRO_USER)
    Worker(queue, job_types=["system.noop"]).run_pass(10)
    assert queue.get(dead.id).status == "dead"

    report = queue.health()

    assert report["ok"] is False and report["problems"] == [
        "no cron tick has succeeded yet"
    ]
    assert report["queued_by_tier"]["pro"]["queued"] == 1
    assert report["dead_letter"] == 1
    assert (
        report["failure_rate"]["failed"] == 1 and report["failure_rate"]["rate"] == 1.0
    )
    sql.execute("select public.record_cron_tick('cron', '{}')")
    assert queue.health()["ok"] is True
    sql.execute(
        "update jobs set run_at = now() - interval '2 hours' where status = 'queued'"
    )
    assert queue.health(queue_age_seconds=3600)["problems"][0].startswith(
        "the oldest ready job has waited"
    )


@pytest.fixture
def health_client(monkeypatch, db_url):
    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.setenv("CRON_SECRET", "health-secret-for-tests")
    monkeypatch.setattr(health_function, "_queue", None)
    yield TestClient(health_function.app)
    if health_function._queue is not None:
        health_function._queue.transport.close()
    monkeypatch.setattr(health_function, "_queue", None)


def test_health_endpoint_needs_the_cron_secret(health_client):
    assert health_client.get("/api/health").status_code == 401
    assert (
        health_client.get(
            "/api/health", headers={"Authorization": "Bearer wrong"}
        ).status_code
        == 401
    )


def test_health_endpoint_answers_503_until_a_tick_succeeded_then_200(
    health_client, sql
):
    auth = {"Authorization": "Bearer health-secret-for-tests"}

    first = health_client.get("/api/health", headers=auth)
    assert first.status_code == 503 and first.json()["ok"] is False

    sql.execute("select public.record_cron_tick('cron', '{}')")
    second = health_client.get("/api/health", headers=auth)
    assert second.status_code == 200
    body = second.json()
    assert body["ok"] is True and body["last_tick"]["count"] == 1
    assert {
        "queued_by_tier",
        "oldest_ready_seconds",
        "dead_letter",
        "expired_leases",
        "failure_rate",
    } <= set(body)


def test_health_endpoint_answers_503_soon_when_the_database_cannot_answer(
    health_client, db_url, monkeypatch
):
    monkeypatch.setattr(health_function, "HEALTH_TIMEOUT_SECONDS", 0.5)
    auth = {"Authorization": "Bearer health-secret-for-tests"}
    with psycopg.connect(db_url) as holder:
        holder.execute("lock table public.jobs in access exclusive mode")
        response = health_client.get("/api/health", headers=auth)
        holder.rollback()

    assert response.status_code == 503
    assert response.json() == {"error": "database unavailable"}
    # The same connection answers once the database can.
    assert health_client.get("/api/health", headers=auth).status_code in (200, 503)
    assert "error" not in health_client.get("/api/health", headers=auth).json()


def test_health_endpoint_without_a_configured_secret_is_a_clear_500(
    health_client, monkeypatch
):
    monkeypatch.delenv("CRON_SECRET")
    answer = health_client.get("/api/health", headers={"Authorization": "Bearer x"})
    assert answer.status_code == 500 and "CRON_SECRET" in answer.json()["error"]


def test_teachers_may_not_read_the_health_report_admins_may(db_url):
    from examq.queue import Queue
    from tests.conftest import ADMIN_USER
    from tests.test_transports import _psycopg_as_user

    teacher = Queue(_psycopg_as_user(db_url, PRO_USER))
    with pytest.raises(PermissionDenied):
        teacher.health()
    teacher.transport.close()
    admin = Queue(_psycopg_as_user(db_url, ADMIN_USER))
    assert "queued_by_tier" in admin.health()
    admin.transport.close()


def _unopenable_log_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """Log file paths that cannot be created, and the reason the error must give."""
    not_a_folder = tmp_path / "plain-file"
    not_a_folder.write_text("")
    return {
        "missing_parent": (Path("/proc/nope/x.jsonl"), "No such file or directory"),
        "parent_is_a_file": (not_a_folder / "x.jsonl", "cannot create the folder"),
        "is_a_folder": (tmp_path, "Is a directory"),
    }


@pytest.mark.parametrize("case", ["missing_parent", "parent_is_a_file", "is_a_folder"])
def test_a_log_file_that_cannot_be_created_is_a_config_error(tmp_path: Path, case):
    log_file, reason = _unopenable_log_files(tmp_path)[case]
    settings = load_settings({"EXAMQ_LOG_FILE": str(log_file)})
    try:
        with pytest.raises(ConfigError) as caught:
            configure_logging("json", "INFO", force=True, settings=settings)
    finally:
        configure_logging("text", "WARNING", force=True, settings=load_settings({}))

    message = str(caught.value)
    assert caught.value.variable == "EXAMQ_LOG_FILE"
    assert message.startswith("EXAMQ_LOG_FILE: ") and "\n" not in message
    assert reason in message, message


def test_work_with_an_unopenable_log_file_prints_one_error_line(db_url):
    result = subprocess.run(
        [sys.executable, "-m", "examq", "work"],
        env={**os.environ, "DATABASE_URL": db_url, "EXAMQ_LOG_FILE": "/proc/nope/x.jsonl"},
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("error:") and "EXAMQ_LOG_FILE" in result.stderr
    assert "/proc/nope" in result.stderr
