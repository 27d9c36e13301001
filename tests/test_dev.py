"""`examq dev` as users run it: the jobs API behind its local sign-in, and clear errors
for a port in use or a folder without a built dashboard."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import jwt
import pytest
from starlette.testclient import TestClient

from examq.dev import create_dev_app, listening_socket
from examq.errors import ConfigError
from tests.conftest import PRO_USER, PROJECT_ROOT

EXAMQ = [sys.executable, "-m", "examq"]
# Set in the dev server's environment: a project secret that must not be the one it
# verifies its own sign-ins with.
OTHER_SECRET = "a-real-projects-jwt-secret-0123456789abcdef"


def built_dashboard(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "index.html").write_text("<!doctype html><title>examq dashboard</title>")
    return folder


def dev_env(db_url: str, tmp_path: Path) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if k != "CRON_SECRET"},
        "DATABASE_URL": db_url,
        "SUPABASE_JWT_SECRET": OTHER_SECRET,
        "EXAMQ_LOG_FORMAT": "text",
        "EXAMQ_DATA_DIR": str(tmp_path / "data"),
        "EXAMQ_OUTBOX_DIR": str(tmp_path / "outbox"),
        "EXAMQ_SUBMIT_PASS_SECONDS": "0",
    }


def run_dev(args: list[str], db_url: str, tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*EXAMQ, "dev", "--no-cron", *args],
        env=dev_env(db_url, tmp_path),
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


class DevServer(str):
    """The base URL of a running `examq dev`, with the lines it printed so far."""

    lines: list[str]


@pytest.fixture
def dev_server(db_url: str, tmp_path: Path) -> Iterator[DevServer]:
    """The base URL of a running `examq dev` on a free port."""
    static = built_dashboard(tmp_path / "dist")
    with (tmp_path / "dev.log").open("w") as log:
        process = subprocess.Popen(
            [*EXAMQ, "dev", "--no-cron", "--port", "0", "--static-dir", str(static)],
            env=dev_env(db_url, tmp_path),
            cwd=PROJECT_ROOT,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
        lines: list[str] = []
        reader = threading.Thread(
            target=lambda: lines.extend(iter(process.stdout.readline, "")), daemon=True
        )
        reader.start()
        try:
            deadline = time.monotonic() + 60
            url = None
            while url is None and time.monotonic() < deadline and process.poll() is None:
                found = [m for line in lines if (m := re.search(r"serving (\S+)", line))]
                url = found[0].group(1) if found else None
                time.sleep(0.1)
            assert url, f"examq dev did not start: {(tmp_path / 'dev.log').read_text()}"
            server = DevServer(url)
            server.lines = lines
            yield server
        finally:
            process.terminate()
            process.wait(timeout=30)


def sign_in(base_url: str, email: str) -> str:
    """An access token from the dev server's own Auth stand-in."""
    config = httpx.get(f"{base_url}/config.js").text
    anon_key = re.search(r'"supabaseAnonKey": "([^"]+)"', config).group(1)
    session = httpx.post(
        f"{base_url}/auth/v1/token?grant_type=password",
        json={"email": email, "password": "any"},
        headers={"apikey": anon_key},
    )
    assert session.status_code == 200, session.text
    return session.json()["access_token"]


def user_token(secret: str) -> str:
    now = int(time.time())
    claims = {"sub": PRO_USER, "role": "authenticated", "aud": "authenticated",
              "iat": now, "exp": now + 600}  # fmt: skip
    return jwt.encode(claims, secret, algorithm="HS256")


def submit(base_url: str, token: str, body: object) -> httpx.Response:
    return httpx.post(
        f"{base_url}/api/jobs",
        json=body,
        headers={"Authorization": f"Bearer {token}"},
        timeout=60,
    )


def test_dev_jobs_api_accepts_the_dev_servers_own_sign_in(dev_server, sql) -> None:
    token = sign_in(dev_server, "pro.teacher@example.com")

    response = submit(dev_server, token, {"job_type": "system.noop", "payload": {}})

    assert response.status_code == 202, response.text
    assert response.json()["jobs"][0]["status"] == "queued"
    assert sql.execute("select user_id::text from jobs").fetchall() == [(PRO_USER,)]


def test_dev_prints_the_cron_secret_it_made_up(dev_server) -> None:
    said = [m for line in dev_server.lines if (m := re.search(r"Bearer (\S+)'", line))]
    assert said, dev_server.lines

    wrong = httpx.get(f"{dev_server}/api/cron", headers={"Authorization": "Bearer guess"})
    right = httpx.get(
        f"{dev_server}/api/cron",
        headers={"Authorization": f"Bearer {said[0].group(1)}"},
        timeout=120,
    )

    assert wrong.status_code == 401
    assert right.status_code == 200, right.text


def test_dev_jobs_api_refuses_a_token_signed_with_another_secret(dev_server, sql) -> None:
    # Not even with the SUPABASE_JWT_SECRET of the environment: the dev server's
    # sign-in is the only one it trusts.
    for secret in (OTHER_SECRET, "some-other-secret-of-sufficient-length-0000"):
        response = submit(
            dev_server, user_token(secret), {"job_type": "system.noop", "payload": {}}
        )
        assert response.status_code == 401, response.text
    assert sql.execute("select count(*) from jobs").fetchone() == (0,)


@pytest.mark.parametrize("body", [{}, {"job_type": ""}, [1], "not an object"])
def test_dev_jobs_api_authenticates_before_reading_the_body(dev_server, body) -> None:
    junk = submit(dev_server, "junk", body)
    missing = httpx.post(f"{dev_server}/api/jobs", json=body)

    assert junk.status_code == 401, junk.text
    assert missing.status_code == 401, missing.text


def test_dev_jobs_api_checks_the_body_once_the_user_is_signed_in(dev_server) -> None:
    token = sign_in(dev_server, "pro.teacher@example.com")

    response = submit(dev_server, token, {})

    assert response.status_code == 400
    assert "job_type must be a job type name" in response.json()["error"]


def test_dev_app_gives_the_jobs_function_its_jwt_secret(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "dev-app-secret-for-this-test-0123456789abcdef"
    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.delenv("SUPABASE_JWT_SECRET", raising=False)
    monkeypatch.setenv("EXAMQ_SUBMIT_PASS_SECONDS", "0")
    monkeypatch.setenv("EXAMQ_DATA_DIR", str(tmp_path / "data"))
    app = create_dev_app(
        db_url, jwt_secret=secret, static_dir=built_dashboard(tmp_path / "dist")
    )
    body = {"job_type": "system.noop", "payload": {}}

    with TestClient(app) as client:
        accepted = client.post(
            "/api/jobs", json=body, headers={"Authorization": f"Bearer {user_token(secret)}"}
        )
        forged = client.post(
            "/api/jobs",
            json=body,
            headers={"Authorization": f"Bearer {user_token(OTHER_SECRET)}"},
        )

    assert accepted.status_code == 202, accepted.text
    assert forged.status_code == 401, forged.text


def test_dev_on_a_port_in_use_is_one_clear_line(db_url, tmp_path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_dev(
            ["--port", str(port), "--static-dir", str(built_dashboard(tmp_path / "d"))],
            db_url,
            tmp_path,
        )

    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert errors == [
        f"error: --port: cannot listen on 127.0.0.1:{port}: address "
        "already in use; choose another --port"
    ]


def test_listening_socket_explains_what_it_cannot_bind() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match="address already in use") as in_use:
            listening_socket("127.0.0.1", port)
    with pytest.raises(ConfigError, match="between 0 and 65535"):
        listening_socket("127.0.0.1", 70000)

    free = listening_socket("127.0.0.1", 0)
    try:
        assert free.getsockname()[1] > 0
    finally:
        free.close()
    assert in_use.value.variable == "--port"


@pytest.mark.parametrize("build", ["--build", "--no-build"])
def test_dev_static_dir_without_a_dashboard_names_static_dir(
    db_url, tmp_path, build
) -> None:
    empty = tmp_path / "nope"
    empty.mkdir()

    result = run_dev(["--static-dir", str(empty), build], db_url, tmp_path)

    assert result.returncode == 2
    said = " ".join(result.stderr.replace("│", " ").split())
    assert "Invalid value for --static-dir" in said, result.stderr
    assert "index.html" in said and "Traceback" not in said
