"""`examq dev`'s pieces: the app (dashboard, config.js, REST, auth, /api), the local
Supabase Auth stand-in, and the scheduler that fires vercel.json's crons."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import jwt
import pytest
import respx
from starlette.testclient import TestClient

from examq.dev import (
    Cron,
    CronScheduler,
    anon_key,
    create_dev_app,
    http_firer,
    next_fire,
    read_crons,
)
from examq.errors import ConfigError
from tests.conftest import FREE_USER, PRO_USER
from tests.dashboard.conftest import wait_until

SECRET = "examq-dev-test-secret-of-at-least-32-bytes"
CRON_SECRET = "dev-test-cron-secret-0123456789"


@pytest.fixture
def client(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[TestClient]:
    static = tmp_path / "dist"
    static.mkdir()
    (static / "index.html").write_text(
        "<!doctype html><title>examq dashboard</title>", encoding="utf-8"
    )
    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.setenv("CRON_SECRET", CRON_SECRET)
    monkeypatch.setenv("EXAMQ_OUTBOX_DIR", str(tmp_path / "outbox"))
    with TestClient(
        create_dev_app(db_url, jwt_secret=SECRET, static_dir=static)
    ) as test_client:
        yield test_client


def apikey() -> dict[str, str]:
    return {"apikey": anon_key(SECRET)}


def sign_in(client: TestClient, email: str) -> httpx.Response:
    return client.post(
        "/auth/v1/token?grant_type=password",
        json={"email": email, "password": "x"},
        headers=apikey(),
    )


def test_dev_config_js_points_the_page_at_this_server(client: TestClient) -> None:
    response = client.get("/config.js")
    config = json.loads(
        response.text.split("window.EXAMQ_CONFIG = ", 1)[1].rstrip().rstrip(";")
    )
    claims = jwt.decode(config["supabaseAnonKey"], SECRET, algorithms=["HS256"])

    assert response.headers["content-type"].startswith("text/javascript")
    assert config["supabaseUrl"] == "http://testserver"
    assert claims["role"] == "anon"
    assert {u["email"] for u in config["local"]["users"]} >= {
        "free.teacher@example.com",
        "admin@example.com",
    }
    assert CRON_SECRET not in response.text and SECRET not in response.text


def test_dev_serves_the_dashboard_the_api_and_the_cron_function(
    client: TestClient,
) -> None:
    page = client.get("/")
    anonymous_rpc = client.post("/rest/v1/rpc/list_jobs", json={}, headers=apikey())
    cron_without_secret = client.get("/api/cron")
    cron = client.get("/api/cron", headers={"Authorization": f"Bearer {CRON_SECRET}"})

    assert "examq dashboard" in page.text
    assert (anonymous_rpc.status_code, anonymous_rpc.json()["code"]) == (401, "42501")
    assert cron_without_secret.status_code == 401
    assert cron.status_code == 200, cron.text
    assert cron.json()["claimed"] == 0


def test_dev_serves_every_vercel_function(client: TestClient) -> None:
    bearer = {"Authorization": f"Bearer {CRON_SECRET}"}
    health = client.get("/api/health", headers=bearer)
    jobs_without_session = client.post("/api/jobs", json={})
    unknown = client.get("/api/nothing-here", headers=bearer)

    assert health.status_code in (200, 503), health.text
    assert "ok" in health.json()
    # Not 404: the function answers, and refuses a caller without a session.
    assert jobs_without_session.status_code == 401, jobs_without_session.text
    assert unknown.status_code == 404


def test_local_auth_signs_a_seeded_user_in_with_a_supabase_style_jwt(
    client: TestClient, db_url: str
) -> None:
    from examq.db import PsycopgTransport
    from examq.queue import Queue

    queue = Queue(PsycopgTransport(db_url))
    own = queue.enqueue("exam.grade", {}, user_id=FREE_USER).id
    queue.enqueue("exam.grade", {}, user_id=PRO_USER)

    session = sign_in(client, "Free.Teacher@Example.com").json()
    claims = jwt.decode(
        session["access_token"], SECRET, algorithms=["HS256"], audience="authenticated"
    )
    listed = client.post(
        "/rest/v1/rpc/list_jobs",
        json={},
        headers={**apikey(), "Authorization": f"Bearer {session['access_token']}"},
    )

    assert (claims["sub"], claims["role"], claims["email"]) == (
        FREE_USER,
        "authenticated",
        "free.teacher@example.com",
    )
    assert session["token_type"] == "bearer" and session["expires_in"] == 3600
    assert session["user"]["id"] == FREE_USER
    assert [job["id"] for job in listed.json()] == [own]


def test_local_auth_refuses_an_unknown_user_as_gotrue_does(client: TestClient) -> None:
    response = sign_in(client, "nobody@example.com")
    without_key = client.post(
        "/auth/v1/token?grant_type=password",
        json={"email": "admin@example.com", "password": "x"},
    )

    assert response.status_code == 400
    assert response.json() == {
        "code": 400,
        "error_code": "invalid_credentials",
        "msg": "Invalid login credentials",
    }
    assert without_key.status_code == 401


def test_local_auth_refresh_token_works_once(client: TestClient) -> None:
    session = sign_in(client, "admin@example.com").json()
    body = {"refresh_token": session["refresh_token"]}

    refreshed = client.post(
        "/auth/v1/token?grant_type=refresh_token", json=body, headers=apikey()
    )
    reused = client.post(
        "/auth/v1/token?grant_type=refresh_token", json=body, headers=apikey()
    )

    assert refreshed.status_code == 200
    assert refreshed.json()["refresh_token"] != session["refresh_token"]
    assert (reused.status_code, reused.json()["error_code"]) == (
        400,
        "refresh_token_not_found",
    )


def test_local_auth_user_and_logout(client: TestClient) -> None:
    session = sign_in(client, "pro.teacher@example.com").json()
    bearer = {**apikey(), "Authorization": f"Bearer {session['access_token']}"}

    user = client.get("/auth/v1/user", headers=bearer)
    forged = client.get(
        "/auth/v1/user", headers={**apikey(), "Authorization": "Bearer not.a.jwt"}
    )
    logout = client.post("/auth/v1/logout", headers=bearer)
    after = client.post(
        "/auth/v1/token?grant_type=refresh_token",
        json={"refresh_token": session["refresh_token"]},
        headers=apikey(),
    )

    assert user.json()["email"] == "pro.teacher@example.com"
    assert forged.status_code == 403
    assert logout.status_code == 204
    assert after.status_code == 400


def test_read_crons_takes_vercel_json(tmp_path: Path) -> None:
    bad = tmp_path / "vercel.json"
    bad.write_text(
        json.dumps({"crons": [{"path": "/api/cron", "schedule": "every minute"}]})
    )

    assert Cron("/api/cron", "* * * * *") in read_crons()
    with pytest.raises(ConfigError, match="not valid"):
        read_crons(bad)


def test_next_fire_follows_the_schedule_in_utc() -> None:
    after = datetime(2026, 12, 3, 10, 2, 30, tzinfo=UTC)

    assert next_fire(Cron("/api/cron", "* * * * *"), after) == datetime(
        2026, 12, 3, 10, 3, tzinfo=UTC
    )
    assert next_fire(Cron("/api/cron", "0 0 * * *"), after) == datetime(
        2026, 12, 4, 0, 0, tzinfo=UTC
    )


def test_cron_scheduler_fires_each_cron_on_its_schedule() -> None:
    fired: list[str] = []
    lock = threading.Lock()

    def fire(cron: Cron) -> None:
        with lock:
            fired.append(cron.path)

    # croniter's sixth field is seconds: this one is due every second.
    scheduler = CronScheduler([Cron("/api/cron", "* * * * * *")], fire)
    scheduler.start()
    try:
        wait_until(lambda: len(fired) >= 2, timeout=10, message="two cron calls")
    finally:
        scheduler.stop()

    assert set(fired) == {"/api/cron"}


@respx.mock
def test_http_firer_calls_the_path_with_the_cron_secret() -> None:
    route = respx.get("http://127.0.0.1:9/api/cron").mock(
        return_value=httpx.Response(200, json={"claimed": 1})
    )

    http_firer("http://127.0.0.1:9", CRON_SECRET, 5)(Cron("/api/cron", "* * * * *"))

    assert route.called
    assert route.calls.last.request.headers["authorization"] == f"Bearer {CRON_SECRET}"
