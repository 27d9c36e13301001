"""functions/jobs.py: submitting as the signed-in teacher, errors as HTTP statuses, the kick."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import jwt
import pytest
import respx
from starlette.testclient import TestClient

import functions.jobs as jobs_function
from tests.conftest import FREE_USER, PRO_USER, PROJECT_ROOT, shared_data

SECRET = "super-secret-jwt-token-for-tests-only-0123456789"
PROJECT = "https://proj.supabase.co"
ANON_KEY = jwt.encode({"role": "anon", "iss": "supabase"}, SECRET, algorithm="HS256")
SERVICE_KEY = jwt.encode(
    {"role": "service_role", "iss": "supabase"}, SECRET, algorithm="HS256"
)


def token(user: str = FREE_USER, *, secret: str = SECRET, **overrides: Any) -> str:
    claims = {
        "sub": user,
        "role": "authenticated",
        "aud": "authenticated",
        "exp": int(time.time()) + 3600,
    }
    claims.update(overrides)
    return jwt.encode(
        {k: v for k, v in claims.items() if v is not None}, secret, algorithm="HS256"
    )


def pipeline(exam: dict | None = None, responses: dict | None = None) -> dict:
    return {
        "job_type": "exam.pipeline",
        "payload": {
            "exam": exam
            or {
                "text": shared_data("responses", "HCIkey.csv").read_text(),
                "name": "HCIkey.csv",
            },
            "responses": responses
            or {
                "text": shared_data("responses", "HCItest.csv").read_text(),
                "name": "HCItest.csv",
            },
            "title": "HCI",
        },
    }


@pytest.fixture
def client(monkeypatch, db_url, tmp_path):
    for name in (
        "SUPABASE_URL",
        "SUPABASE_SERVICE_ROLE_KEY",
        "SUPABASE_ANON_KEY",
        "EXAMQ_REPORTS_DIR",
        "EXAMQ_STORAGE_DIR",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.setenv("SUPABASE_JWT_SECRET", SECRET)
    monkeypatch.setenv("EXAMQ_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("EXAMQ_SUBMIT_PASS_SECONDS", "20")
    monkeypatch.setattr(jobs_function, "_queue", None)
    yield TestClient(jobs_function.app)
    if jobs_function._queue is not None:
        jobs_function._queue.transport.close()
    monkeypatch.setattr(jobs_function, "_queue", None)


def post(client: TestClient, body: Any, bearer: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
    return client.post("/api/jobs", json=body, headers=headers)


def test_jobs_api_runs_the_pipeline_as_the_teacher_before_answering(
    client, sql
) -> None:
    response = post(client, pipeline(), token())

    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status"] == "succeeded" and body["pass"]["succeeded"] == 4
    assert [(j["job_type"], j["status"]) for j in body["jobs"]] == [
        ("exam.pipeline", "succeeded"), ("exam.import", "succeeded"), ("exam.grade", "succeeded"), ("exam.report", "succeeded"),
    ]  # fmt: skip
    assert round(body["report"]["summary"]["alpha"], 4) == 0.7155 and body["report"][
        "links"
    ]["html"].startswith("file://")
    owners = sql.execute("select distinct user_id::text, tier from jobs").fetchall()
    assert owners == [(FREE_USER, "free")]
    actor = sql.execute(
        "select actor from job_events where job_id = %s order by id limit 1",
        (body["chain_id"],),
    ).fetchone()
    assert actor == (f"user:{FREE_USER}",)


def test_jobs_api_enqueues_a_single_job_and_skips_the_pass_when_told(
    client, monkeypatch, sql
) -> None:
    monkeypatch.setenv("EXAMQ_SUBMIT_PASS_SECONDS", "0")

    response = post(
        client,
        {"job_type": "system.noop", "payload": {}, "idempotency_key": "once"},
        token(PRO_USER),
    )
    again = post(
        client,
        {"job_type": "system.noop", "payload": {}, "idempotency_key": "once"},
        token(PRO_USER),
    )

    assert response.status_code == again.status_code == 202
    assert response.json()["chain_id"] == again.json()["chain_id"]
    assert (
        response.json()["jobs"][0]["status"] == "queued"
        and response.json()["pass"] is None
    )
    assert sql.execute("select count(*) from jobs").fetchone() == (1,)
    conflict = post(
        client,
        {"job_type": "system.noop", "payload": {"other": 1}, "idempotency_key": "once"},
        token(PRO_USER),
    )
    assert conflict.status_code == 409
    assert '"once" is already used by job' in conflict.json()["error"]
    assert sql.execute("select count(*) from jobs").fetchone() == (1,)


@pytest.mark.parametrize(
    "bearer",
    [
        None,
        "not-a-jwt",
        token(secret="another-secret-of-sufficient-length-000000"),
        token(exp=int(time.time()) - 120),
        token(aud="something-else"),
        token(role="service_role"),
        token(role="anon"),
        token(sub="not-a-uuid"),
        token(exp=None),
    ],
    ids=[
        "missing",
        "garbage",
        "wrong-secret",
        "expired",
        "audience",
        "service-role",
        "anon",
        "bad-subject",
        "no-expiry",
    ],
)
def test_jobs_api_refuses_a_bad_token_with_401(client, sql, bearer) -> None:
    response = post(client, pipeline(), bearer)

    assert response.status_code == 401, response.text
    assert sql.execute("select count(*) from jobs").fetchone() == (0,)


def nested(levels: int) -> dict[str, Any]:
    """A payload whose innermost value lies ``levels`` levels below the payload itself."""
    value: Any = 0
    for _ in range(levels - 1):
        value = [value]
    return {"x": value}


def test_jobs_api_counts_a_payloads_nesting_from_the_payload(client, monkeypatch, sql) -> None:
    monkeypatch.setenv("EXAMQ_SUBMIT_PASS_SECONDS", "0")

    deepest = post(client, {"job_type": "system.noop", "payload": nested(63)}, token(PRO_USER))
    too_deep = post(client, {"job_type": "system.noop", "payload": nested(64)}, token(PRO_USER))

    assert deepest.status_code == 202, deepest.text
    assert too_deep.status_code == 400
    assert "step 1 payload is nested more than 64 levels deep" in too_deep.json()["error"]
    assert sql.execute("select count(*) from jobs").fetchone() == (1,)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ("not json", "must be JSON: Expecting value at line 1 column 1"),
        (b'{"job_type": "\xff"}', "not UTF-8"),
        ('{"job_type": "system.noop", "payload": {"n": ' + "7" * 5000 + "}}", "number too long"),
        ([1, 2], "JSON object"),
        ({"payload": {}}, "job_type"),
        ({"job_type": "exam.grade", "payload": [1]}, "payload must be a JSON object"),
        ({"job_type": "exam.grade", "surprise": 1}, "unknown field(s): surprise"),
        (
            {"job_type": "exam.pipeline", "payload": {"exam": {"text": "Q {=a ~b}"}}},
            "the payload has no responses",
        ),
        (
            {
                "job_type": "exam.pipeline",
                "payload": {
                    "exam": {"text": "x"},
                    "responses": {"bucket": "b", "path": "../x"},
                },
            },
            "responses.bucket",
        ),
        ({"job_type": "system.sleep", "payload": {}}, "not available in the free tier"),
        ({"job_type": "exam.grade", "payload": {}}, "the payload has no key_csv"),
        (
            {"job_type": "exam.grade", "payload": {"key_csv": 1, "responses_csv": "s,1"}},
            "key_csv must be CSV text, not int",
        ),
        (
            {"job_type": "exam.grade", "payload": {"key_csv": " ", "responses_csv": "s,1"}},
            "key_csv is empty",
        ),
        ({"job_type": "exam.grade", "payload": {"exam_model": None}}, "exam_model must be an exam model"),
        ({"job_type": "no.such.type", "payload": {}}, "unknown job type"),
        ({"job_type": "system.noop", "idempotency_key": "a\u0000b"}, "idempotency_key"),
        ('{"job_type": "system.noop", "idempotency_key": "\\ud800"}', "idempotency_key"),
        ('{"job_type": "system.noop", "payload": {"x": ' + "[" * 100000 + "]" * 100000 + "}}",
         "nested too deeply"),
    ],
)
def test_jobs_api_refuses_bad_input_with_400_and_the_reason(
    client, body, fragment
) -> None:
    if isinstance(body, str | bytes):
        response = client.post(
            "/api/jobs", content=body, headers={"Authorization": f"Bearer {token()}"}
        )
    else:
        response = post(client, body, token())

    assert response.status_code == 400, response.text
    assert fragment in response.json()["error"]


def test_jobs_api_answers_429_over_the_quota(client, sql) -> None:
    sql.execute("update tiers set max_queued_per_user = 3 where name = 'free'")

    response = post(client, pipeline(), token())

    assert response.status_code == 429
    assert "quota" in response.json()["error"]


def test_jobs_api_answers_413_for_a_payload_over_the_tier_limit(client) -> None:
    big = {
        "text": "student,Item1\n" + "".join(f"s{i},A\n" for i in range(40000)),
        "name": "big.csv",
    }

    response = post(client, pipeline(responses=big), token())

    assert response.status_code == 413
    assert "the free tier accepts at most" in response.json()["error"]


def test_jobs_api_refuses_a_body_over_the_input_limit(client, monkeypatch, sql) -> None:
    monkeypatch.setenv("EXAMQ_MAX_INPUT_BYTES", "4096")
    body = {"job_type": "system.noop", "payload": {"x": "y" * 5000}}

    response = post(client, body, token())

    assert response.status_code == 413, response.text
    assert "over 4096 bytes" in response.json()["error"]
    assert "EXAMQ_MAX_INPUT_BYTES" in response.json()["error"]
    assert sql.execute("select count(*) from jobs").fetchone() == (0,)


@pytest.mark.parametrize("declared", [True, False])
def test_an_oversized_body_is_not_read_past_the_limit(declared: bool) -> None:
    from starlette.requests import Request

    chunk = b"x" * 1024
    received: list[int] = []

    async def receive() -> dict:
        received.append(len(chunk))
        return {"type": "http.request", "body": chunk, "more_body": len(received) < 100}

    headers = [(b"content-length", b"102400")] if declared else []
    request = Request({"type": "http", "method": "POST", "headers": headers}, receive)

    # In a thread of its own: a test before may have left this thread's event loop running.
    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(asyncio.run, jobs_function._read_body(request, 4096)).result()

    assert answer.status_code == 413
    # A declared length says it all; otherwise reading stops at the first chunk past it.
    assert len(received) == (0 if declared else 5)


def test_jobs_api_without_a_jwt_secret_is_a_500_naming_it(client, monkeypatch) -> None:
    monkeypatch.delenv("SUPABASE_JWT_SECRET")

    response = post(client, pipeline(), token())

    assert (
        response.status_code == 500
        and "SUPABASE_JWT_SECRET" in response.json()["error"]
    )


@pytest.fixture
def supabase_client(monkeypatch, tmp_path):
    for name in ("DATABASE_URL", "SUPABASE_JWT_SECRET"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SUPABASE_URL", PROJECT)
    monkeypatch.setenv("SUPABASE_SERVICE_ROLE_KEY", SERVICE_KEY)
    monkeypatch.setenv("SUPABASE_ANON_KEY", ANON_KEY)
    monkeypatch.setenv("EXAMQ_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("EXAMQ_SUBMIT_PASS_SECONDS", "0")
    monkeypatch.setattr(jobs_function, "_queue", None)
    return TestClient(jobs_function.app)


CHAIN = {
    "chain_id": 5,
    "jobs": [{"id": 5, "job_type": "system.noop", "status": "queued", "attempt": 0}],
}


@respx.mock
def test_jobs_api_calls_postgrest_with_the_anon_key_and_the_users_token(
    supabase_client,
) -> None:
    enqueue = respx.post(f"{PROJECT}/rest/v1/rpc/enqueue_chain").mock(
        return_value=httpx.Response(200, json=CHAIN)
    )
    respx.post(f"{PROJECT}/rest/v1/rpc/get_chain").mock(
        return_value=httpx.Response(200, json=CHAIN)
    )
    user_token = token()

    response = post(
        supabase_client, {"job_type": "system.noop", "payload": {}}, user_token
    )

    assert response.status_code == 202, response.text
    request = enqueue.calls.last.request
    assert request.headers["apikey"] == ANON_KEY
    assert request.headers["authorization"] == f"Bearer {user_token}"
    assert b"p_user_id" not in request.content
    assert response.json()["jobs"][0]["id"] == 5


@respx.mock
@pytest.mark.parametrize(
    ("status", "error", "expected"),
    [
        (
            401,
            {
                "code": "PGRST301",
                "message": "JWT expired",
                "details": None,
                "hint": None,
            },
            401,
        ),
        (
            400,
            {
                "code": "EQ003",
                "message": "queued-job quota reached",
                "details": None,
                "hint": None,
            },
            429,
        ),
        (
            400,
            {
                "code": "EQ001",
                "message": "unknown job type 'x'",
                "details": None,
                "hint": None,
            },
            400,
        ),
        (
            403,
            {
                "code": "42501",
                "message": "users may enqueue jobs only for themselves",
                "details": None,
                "hint": None,
            },
            403,
        ),
    ],
)
def test_jobs_api_maps_postgrest_errors_to_statuses(
    supabase_client, status, error, expected
) -> None:
    respx.post(f"{PROJECT}/rest/v1/rpc/enqueue_chain").mock(
        return_value=httpx.Response(status, json=error)
    )

    response = post(
        supabase_client, {"job_type": "system.noop", "payload": {}}, token()
    )

    assert response.status_code == expected
    assert error["message"] in response.json()["error"]


def test_jobs_api_on_supabase_needs_the_anon_key(supabase_client, monkeypatch) -> None:
    monkeypatch.delenv("SUPABASE_ANON_KEY")

    response = post(
        supabase_client, {"job_type": "system.noop", "payload": {}}, token()
    )

    assert (
        response.status_code == 500 and "SUPABASE_ANON_KEY" in response.json()["error"]
    )


# Authentication comes before the body: a caller without a valid session gets 401
# whatever they send, and only a signed-in user hears what is wrong with the body.
BAD_BODIES = [{}, {"job_type": ""}, [1, 2], {"job_type": "exam.grade", "surprise": 1}]


@pytest.mark.parametrize("body", BAD_BODIES)
@pytest.mark.parametrize(
    "bearer",
    [None, "junk", token(secret="another-secret-of-sufficient-length-000000")],
    ids=["missing", "junk", "wrong-secret"],
)
def test_jobs_api_refuses_a_bad_token_before_reading_the_body(
    client, bearer, body
) -> None:
    response = post(client, body, bearer)

    assert response.status_code == 401, response.text


def test_jobs_api_refuses_a_bad_token_even_when_the_body_is_not_json(client) -> None:
    response = client.post(
        "/api/jobs", content="not json", headers={"Authorization": "Bearer junk"}
    )

    assert response.status_code == 401, response.text


@respx.mock
@pytest.mark.parametrize(
    "bearer",
    [
        "junk",
        SERVICE_KEY,
        ANON_KEY,
        token(exp=int(time.time()) - 120),
        token(aud="something-else"),
        token(sub="not-a-uuid"),
    ],
    ids=["junk", "service-key", "anon-key", "expired", "audience", "bad-subject"],
)
@pytest.mark.parametrize("body", BAD_BODIES[:2])
def test_jobs_api_on_supabase_refuses_a_token_that_is_no_session_before_the_body(
    supabase_client, bearer, body
) -> None:
    enqueue = respx.post(f"{PROJECT}/rest/v1/rpc/enqueue_chain").mock(
        return_value=httpx.Response(200, json=CHAIN)
    )

    response = post(supabase_client, body, bearer)

    assert response.status_code == 401, response.text
    assert not enqueue.called


def test_jobs_app_given_a_secret_verifies_with_it_rather_than_the_environment(
    client, sql
) -> None:
    # As examq dev runs it: its own sign-in's secret, whatever SUPABASE_JWT_SECRET says.
    own_secret = "the-dev-servers-own-secret-0123456789abcdef"
    dev_client = TestClient(jobs_function.create_app(jwt_secret=own_secret))
    body = {"job_type": "system.noop", "payload": {}}

    accepted = post(dev_client, body, token(PRO_USER, secret=own_secret))
    from_environment = post(dev_client, body, token(PRO_USER))
    unchecked_body = post(dev_client, {}, token(PRO_USER, secret=own_secret))

    assert accepted.status_code == 202, accepted.text
    assert from_environment.status_code == 401, from_environment.text
    assert unchecked_body.status_code == 400
    assert sql.execute("select count(*) from jobs").fetchone() == (1,)


def test_a_repeated_pipeline_key_with_other_responses_is_a_conflict(client, monkeypatch, sql) -> None:
    monkeypatch.setenv("EXAMQ_SUBMIT_PASS_SECONDS", "0")
    exam = {"text": "item,key\n1,A\n2,B\n", "name": "key.csv"}
    first = pipeline(exam, {"text": "student,1,2\ns1,A,B\n", "name": "r.csv"})
    # The same file name and size: only the later steps, which carry the text, differ.
    other = pipeline(exam, {"text": "student,1,2\ns1,C,D\n", "name": "r.csv"})

    created = post(client, {**first, "idempotency_key": "pipe-1"}, token())
    again = post(client, {**first, "idempotency_key": "pipe-1"}, token())
    conflict = post(client, {**other, "idempotency_key": "pipe-1"}, token())

    assert created.status_code == again.status_code == 202
    assert again.json()["chain_id"] == created.json()["chain_id"]
    assert conflict.status_code == 409, conflict.text
    assert sql.execute("select count(*) from jobs").fetchone() == (4,)


def test_a_valid_token_of_a_deleted_user_is_refused_with_401(client, sql) -> None:
    gone = "00000000-0000-4000-8000-0000000000ff"

    response = post(client, {"job_type": "system.noop", "payload": {}}, token(gone))

    assert response.status_code == 401, response.text
    assert "no longer exists" in response.json()["error"]
    assert sql.execute("select count(*) from jobs").fetchone() == (0,)


def test_a_single_grading_job_answers_with_its_result(client) -> None:
    samples = PROJECT_ROOT / "examq" / "samples"
    payload = {
        "key_csv": (samples / "sample_key.csv").read_text(encoding="utf-8"),
        "responses_csv": (samples / "sample_responses.csv").read_text(encoding="utf-8"),
    }

    body = post(client, {"job_type": "exam.grade", "payload": payload}, token()).json()

    assert body["status"] == "succeeded", body
    assert body["report"] is None
    assert body["result"]["summary"]["students"] == 30
