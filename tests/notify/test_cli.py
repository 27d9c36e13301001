"""The notification commands as users run them: `examq demo` and `examq notify`."""

from __future__ import annotations

import email
import email.policy
import json
import os
import subprocess
import sys

from tests.conftest import PROJECT_ROOT
from tests.notify.conftest import finish_job


def run_examq_with(
    args: list[str], db_url: str, **env: str
) -> subprocess.CompletedProcess:
    """Run the examq command on the test database, with extra environment variables."""
    environ = {**os.environ, "DATABASE_URL": db_url, "EXAMQ_LOG_FORMAT": "text", **env}
    environ.pop("SENDGRID_API_KEY", None)
    return subprocess.run(
        [sys.executable, "-m", "examq", *args],
        env=environ,
        cwd=PROJECT_ROOT,
        capture_output=True,
        check=False,
        text=True,
        timeout=300,
    )


def test_demo_leaves_a_readable_eml_file_per_finished_job(db_url, tmp_path):
    outbox_dir = tmp_path / "outbox"

    result = run_examq_with(["demo"], db_url, EXAMQ_OUTBOX_DIR=str(outbox_dir))

    assert result.returncode == 0, result.stderr
    assert (
        "notifications: sent 4, failed 0" in result.stdout
        and str(outbox_dir) in result.stdout
    )
    messages = [
        email.message_from_bytes(p.read_bytes(), policy=email.policy.default)
        for p in sorted(outbox_dir.glob("*.eml"))
    ]
    assert len(messages) == 4
    subjects = sorted(m["Subject"] for m in messages)
    assert sum("succeeded: Sample exam" in s for s in subjects) == 3
    assert sum(" failed: exam.grade" in s for s in subjects) == 1
    for message in messages:
        text = message.get_body(("plain",)).get_content()
        assert "http://localhost:8000/#/jobs/" in text
        assert message.get_body(("html",)) is not None
    succeeded = next(m for m in messages if "succeeded" in m["Subject"])
    assert "Cronbach's alpha:" in succeeded.get_body(("plain",)).get_content()
    failed = next(m for m in messages if "failed" in m["Subject"])
    assert "could not process its input" in failed.get_body(("plain",)).get_content()


def test_notify_command_sends_pending_notifications(db_url, tmp_path, queue):
    finish_job(queue, "dead")
    outbox_dir = tmp_path / "outbox"

    result = run_examq_with(
        ["notify", "--budget", "20"], db_url, EXAMQ_OUTBOX_DIR=str(outbox_dir)
    )

    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["sent"] == 1 and summary["alerts"] == ["dead_letter"]
    assert len(list(outbox_dir.glob("*.eml"))) == 1
    assert "pro.teacher@example.com" not in result.stderr
