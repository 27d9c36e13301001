"""The local Supabase API stand-in (examq.rest), tested over real HTTP.

Each test starts ``create_rest_app`` under uvicorn on a free loopback port, in front
of its own fresh database, and talks to it with httpx exactly as a client of a
Supabase project would: an ``apikey`` header for the gateway, a bearer JWT for
PostgREST. The expected answers are PostgREST 12's (see the module docstring of
examq.rest for the sources).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import psycopg
import pytest

from examq.rest import create_rest_app, serve, status_for_sqlstate
from tests.conftest import FREE_USER, PRO_USER

SECRET = "examq-test-jwt-secret-of-at-least-32-bytes"
OTHER_SECRET = "another-secret-that-signed-nothing-here-0"


def make_token(
    role: str, *, sub: str | None = None, secret: str = SECRET, expires_in: int = 3600
) -> str:
    """A Supabase-style HS256 JWT for ``role`` (and user ``sub``)."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "role": role,
        "iat": now,
        "exp": now + expires_in,
        "iss": "supabase-demo",
    }
    if sub is not None:
        claims.update(sub=sub, aud="authenticated")
    return jwt.encode(claims, secret, algorithm="HS256")


ANON_KEY = make_token("anon", expires_in=10 * 365 * 86400)
SERVICE_KEY = make_token("service_role", expires_in=10 * 365 * 86400)


def auth(token: str | None, api_key: str | None = ANON_KEY) -> dict[str, str]:
    headers = {}
    if api_key is not None:
        headers["apikey"] = api_key
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return headers


SERVICE = auth(SERVICE_KEY, SERVICE_KEY)


@pytest.fixture
def api(db_url: str) -> Iterator[httpx.Client]:
    """An HTTP client on ``/rest/v1`` of a running stand-in for this test's database."""
    with (
        serve(create_rest_app(db_url, SECRET)) as url,
        httpx.Client(base_url=f"{url}/rest/v1", timeout=30) as client,
    ):
        yield client


def enqueue(
    api: httpx.Client, job_type: str = "system.noop", **params: Any
) -> dict[str, Any]:
    response = api.post(
        "/rpc/enqueue_job", json={"p_job_type": job_type, **params}, headers=SERVICE
    )
    assert response.status_code == 200, response.text
    return response.json()


# Gateway and JWT -----------------------------------------------------------------


def test_rest_without_api_key_is_refused_by_the_gateway(api: httpx.Client) -> None:
    response = api.post("/rpc/get_job", json={"p_job_id": 1})

    assert response.status_code == 401
    assert response.json()["message"] == "No API key found in request"


def test_rest_api_key_signed_by_another_secret_is_refused_by_the_gateway(
    api: httpx.Client,
) -> None:
    forged = make_token("service_role", secret=OTHER_SECRET)

    response = api.post(
        "/rpc/get_job", json={"p_job_id": 1}, headers=auth(forged, forged)
    )

    assert response.status_code == 401
    assert response.json()["message"] == "Invalid API key"


def test_rest_token_signed_by_another_secret_is_401_pgrst301(api: httpx.Client) -> None:
    forged = make_token("service_role", secret=OTHER_SECRET)

    response = api.post("/rpc/get_job", json={"p_job_id": 1}, headers=auth(forged))

    assert response.status_code == 401
    assert response.json() == {
        "code": "PGRST301",
        "details": None,
        "hint": None,
        "message": "JWSError JWSInvalidSignature",
    }
    assert response.headers["www-authenticate"].startswith(
        'Bearer error="invalid_token"'
    )


def test_rest_expired_token_is_401_beyond_the_clock_skew(api: httpx.Client) -> None:
    expired = make_token("service_role", expires_in=-60)
    within_skew = make_token("service_role", expires_in=-5)
    job = enqueue(api)

    refused = api.post(
        "/rpc/get_job", json={"p_job_id": job["id"]}, headers=auth(expired)
    )
    accepted = api.post(
        "/rpc/get_job", json={"p_job_id": job["id"]}, headers=auth(within_skew)
    )

    assert refused.status_code == 401
    assert refused.json()["code"] == "PGRST301"
    assert refused.json()["message"] == "JWT expired"
    assert accepted.status_code == 200


def test_rest_malformed_token_is_401_pgrst301(api: httpx.Client) -> None:
    response = api.post("/rpc/get_job", json={"p_job_id": 1}, headers=auth("not-a-jwt"))

    assert response.status_code == 401
    assert response.json()["code"] == "PGRST301"


def test_rest_api_key_alone_runs_as_its_role(api: httpx.Client) -> None:
    job = enqueue(api)

    as_anon = api.post(
        "/rpc/get_job", json={"p_job_id": job["id"]}, headers=auth(None, ANON_KEY)
    )
    as_service = api.post(
        "/rpc/get_job", json={"p_job_id": job["id"]}, headers=auth(None, SERVICE_KEY)
    )

    assert as_anon.status_code == 401
    assert as_anon.json()["code"] == "42501"
    assert as_anon.headers["www-authenticate"] == "Bearer"
    assert as_service.status_code == 200
    assert as_service.json()["id"] == job["id"]


def test_rest_token_role_outside_the_api_roles_is_refused(api: httpx.Client) -> None:
    as_postgres = api.post(
        "/rpc/get_job", json={"p_job_id": 1}, headers=auth(make_token("postgres"))
    )
    as_nobody = api.post(
        "/rpc/get_job", json={"p_job_id": 1}, headers=auth(make_token("no_such_role"))
    )

    assert as_postgres.status_code == 403
    assert as_postgres.json()["code"] == "42501"
    assert as_nobody.status_code == 400
    assert as_nobody.json()["message"] == 'role "no_such_role" does not exist'


# Role switching ------------------------------------------------------------------


def test_rest_claim_jobs_is_401_for_anon_and_403_for_a_user(api: httpx.Client) -> None:
    args = {"p_worker_id": "w1", "p_limit": 1}
    user_token = make_token("authenticated", sub=FREE_USER)

    as_anon = api.post("/rpc/claim_jobs", json=args, headers=auth(make_token("anon")))
    as_user = api.post("/rpc/claim_jobs", json=args, headers=auth(user_token))

    assert as_anon.status_code == 401
    assert as_anon.json()["code"] == "42501"
    assert as_anon.json()["message"] == "permission denied for function claim_jobs"
    assert as_user.status_code == 403
    assert as_user.json()["code"] == "42501"


def test_rest_get_job_shows_a_user_only_their_own_jobs(api: httpx.Client) -> None:
    own = enqueue(api, "exam.grade", p_user_id=FREE_USER)
    other = enqueue(api, "exam.grade", p_user_id=PRO_USER)
    user = auth(make_token("authenticated", sub=FREE_USER))

    mine = api.post("/rpc/get_job", json={"p_job_id": own["id"]}, headers=user)
    theirs = api.post("/rpc/get_job", json={"p_job_id": other["id"]}, headers=user)

    assert mine.status_code == 200
    assert mine.json()["user_id"] == FREE_USER
    assert theirs.status_code == 400
    assert theirs.json()["code"] == "EQ004"


def test_rest_user_enqueues_as_themselves_from_the_jwt_sub(api: httpx.Client) -> None:
    user = auth(make_token("authenticated", sub=FREE_USER))

    response = api.post(
        "/rpc/enqueue_job", json={"p_job_type": "exam.grade"}, headers=user
    )

    assert response.status_code == 200, response.text
    assert response.json()["user_id"] == FREE_USER
    assert response.json()["tier"] == "free"


# Calling and results -------------------------------------------------------------


def test_rest_unknown_function_is_404_pgrst202(api: httpx.Client) -> None:
    response = api.post("/rpc/no_such_function", json={"p_x": 1}, headers=SERVICE)

    assert response.status_code == 404
    body = response.json()
    assert body["code"] == "PGRST202"
    assert body["message"] == (
        "Could not find the function public.no_such_function(p_x) in the schema cache"
    )
    assert body["details"] == (
        "Searched for the function public.no_such_function with parameter p_x "
        "or with a single unnamed json/jsonb parameter, "
        "but no matches were found in the schema cache."
    )


def test_rest_unknown_argument_is_404_pgrst202_with_a_hint(api: httpx.Client) -> None:
    response = api.post(
        "/rpc/get_job", json={"p_job_id": 1, "p_extra": 2}, headers=SERVICE
    )

    assert response.status_code == 404
    body = response.json()
    assert body["code"] == "PGRST202"
    assert body["message"] == (
        "Could not find the function public.get_job(p_extra, p_job_id) "
        "in the schema cache"
    )
    assert body["hint"] == (
        "Perhaps you meant to call the function public.get_job(p_job_id)"
    )


def test_rest_missing_required_argument_is_404_pgrst202(api: httpx.Client) -> None:
    response = api.post("/rpc/get_job", json={}, headers=SERVICE)

    assert response.status_code == 404
    assert response.json()["message"] == (
        "Could not find the function public.get_job without parameters "
        "in the schema cache"
    )


def test_rest_eq_error_is_400_with_postgrest_body(api: httpx.Client) -> None:
    response = api.post(
        "/rpc/enqueue_job", json={"p_job_type": "no.such.type"}, headers=SERVICE
    )

    assert response.status_code == 400
    assert response.json() == {
        "code": "EQ001",
        "details": None,
        "hint": None,
        "message": "unknown job type 'no.such.type'",
    }


def test_rest_error_details_are_passed_through(api: httpx.Client) -> None:
    job = enqueue(api)
    stale = "00000000-0000-4000-8000-0000000000ff"

    response = api.post(
        "/rpc/heartbeat_job",
        json={"p_job_id": job["id"], "p_lease_token": stale},
        headers=SERVICE,
    )

    assert response.status_code == 400
    assert response.json()["code"] == "EQ005"
    assert response.json()["details"] == f"job_id={job['id']}"


def test_rest_bad_argument_value_is_postgres_error(api: httpx.Client) -> None:
    response = api.post("/rpc/get_job", json={"p_job_id": "seven"}, headers=SERVICE)

    assert response.status_code == 400
    assert response.json()["code"] == "22P02"


def test_rest_nul_in_jsonb_argument_is_22p05(api: httpx.Client) -> None:
    response = api.post(
        "/rpc/enqueue_job",
        json={"p_job_type": "system.noop", "p_payload": {"text": "a\x00b"}},
        headers=SERVICE,
    )

    assert response.status_code == 400
    assert response.json()["code"] == "22P05"


def test_rest_composite_result_is_the_row_as_to_json_renders_it(
    api: httpx.Client, sql: psycopg.Connection
) -> None:
    job = enqueue(api, "exam.grade", p_user_id=FREE_USER, p_payload={"n": 1, "s": "é"})

    (expected,) = sql.execute(
        "select to_json(j) from public.jobs j where j.id = %s", (job["id"],)
    ).fetchone()

    assert job == expected
    assert job["created_at"][10] == "T" and job["created_at"][-6] in "+-"


def test_rest_setof_result_is_an_array(api: httpx.Client) -> None:
    first, second = enqueue(api), enqueue(api)
    args = {"p_worker_id": "w1", "p_limit": 5, "p_job_types": ["system.noop"]}

    claimed = api.post("/rpc/claim_jobs", json=args, headers=SERVICE)
    again = api.post("/rpc/claim_jobs", json=args, headers=SERVICE)

    assert claimed.status_code == 200
    assert [job["id"] for job in claimed.json()] == [first["id"], second["id"]]
    assert again.json() == []


def test_rest_jsonb_result_is_the_value(api: httpx.Client) -> None:
    enqueue(api)
    (job,) = api.post(
        "/rpc/claim_jobs", json={"p_worker_id": "w1"}, headers=SERVICE
    ).json()

    response = api.post(
        "/rpc/complete_job",
        json={
            "p_job_id": job["id"],
            "p_lease_token": job["lease_token"],
            "p_result": {"ok": True},
        },
        headers=SERVICE,
    )

    assert response.json() == {
        "job_id": job["id"],
        "status": "succeeded",
        "outcome": "completed",
    }
    assert response.headers["content-type"] == "application/json; charset=utf-8"


@pytest.fixture
def helper_functions(sql: psycopg.Connection) -> None:
    """Small functions with the return shapes examq's own functions do not cover."""
    sql.execute(
        """
        create sequence public.counter;
        grant usage on sequence public.counter to service_role;

        create function public.add_them(a integer, b integer default 1) returns integer
        language sql immutable as $$ select a + b $$;

        create function public.maybe_job(p_job_id bigint) returns public.jobs
        language sql stable as $$ select * from public.jobs where id = p_job_id $$;

        create function public.touch_counter() returns bigint
        language sql volatile as $$ select nextval('public.counter') $$;

        create function public.touch_counter_stable() returns bigint
        language sql stable as $$ select nextval('public.counter') $$;

        create function public.echo_body(jsonb) returns jsonb
        language sql immutable as $$ select $1 $$;

        create function public.teapot() returns text
        language plpgsql volatile as $$
        begin
          perform set_config('response.status', '418', true);
          perform set_config('response.headers', '[{"X-Brew": "earl grey"}]', true);
          return 'short and stout';
        end $$;

        create function public.refuse() returns void
        language plpgsql as $$
        begin
          raise sqlstate 'PGRST' using
            message = '{"code": "123", "message": "payment required", "hint": "pay"}',
            detail = '{"status": 402, "headers": {"X-Powered-By": "money"}}';
        end $$;

        create function public.nothing() returns void language sql as $$ select $$;
        """
    )


@pytest.mark.usefixtures("helper_functions")
def test_rest_result_shapes_follow_postgrest(api: httpx.Client) -> None:
    scalar = api.post("/rpc/add_them", json={"a": 2}, headers=SERVICE)
    null_row = api.post("/rpc/maybe_job", json={"p_job_id": 999}, headers=SERVICE)
    whole_body = api.post("/rpc/echo_body", json={"any": ["thing"]}, headers=SERVICE)
    void = api.post("/rpc/nothing", headers=SERVICE)

    assert scalar.json() == 3
    assert null_row.status_code == 200
    assert null_row.json()["id"] is None
    assert all(value is None for value in null_row.json().values())
    assert whole_body.json() == {"any": ["thing"]}
    assert void.status_code == 200
    assert void.json() is None


@pytest.mark.usefixtures("helper_functions")
def test_rest_get_calls_run_read_only(api: httpx.Client) -> None:
    added = api.get("/rpc/add_them", params={"a": "2", "b": "5"}, headers=SERVICE)
    writing_get = api.get("/rpc/touch_counter", headers=SERVICE)
    writing_post = api.post("/rpc/touch_counter", headers=SERVICE)
    stable_post = api.post("/rpc/touch_counter_stable", headers=SERVICE)

    assert added.json() == 7
    assert writing_get.status_code == 405
    assert writing_get.json()["code"] == "25006"
    assert writing_post.json() == 1
    assert stable_post.status_code == 405


@pytest.mark.usefixtures("helper_functions")
def test_rest_function_sets_status_and_headers(api: httpx.Client) -> None:
    teapot = api.post("/rpc/teapot", headers=SERVICE)
    refused = api.post("/rpc/refuse", headers=SERVICE)

    assert teapot.status_code == 418
    assert teapot.headers["x-brew"] == "earl grey"
    assert teapot.json() == "short and stout"
    assert refused.status_code == 402
    assert refused.headers["x-powered-by"] == "money"
    assert refused.json() == {
        "code": "123",
        "details": None,
        "hint": "pay",
        "message": "payment required",
    }


def test_rest_other_methods_and_schemas_are_refused(api: httpx.Client) -> None:
    put = api.put("/rpc/get_job", json={"p_job_id": 1}, headers=SERVICE)
    other_schema = api.post(
        "/rpc/get_job",
        json={"p_job_id": 1},
        headers={**SERVICE, "Content-Profile": "auth"},
    )
    not_json = api.post("/rpc/get_job", content=b"{nope", headers=SERVICE)
    too_deep = api.post(
        "/rpc/get_job", content=b'{"p_job_id": ' + b"[" * 100000 + b"]" * 100000 + b"}", headers=SERVICE
    )

    assert (put.status_code, put.json()["code"]) == (405, "PGRST101")
    assert (other_schema.status_code, other_schema.json()["code"]) == (406, "PGRST106")
    assert (not_json.status_code, not_json.json()["code"]) == (400, "PGRST102")
    assert (too_deep.status_code, too_deep.json()["code"]) == (400, "PGRST102")


def test_rest_concurrent_claims_never_take_a_job_twice(api: httpx.Client) -> None:
    ids = {enqueue(api)["id"] for _ in range(8)}
    claimed: list[int] = []
    errors: list[str] = []
    lock = threading.Lock()

    def claim(worker: str) -> None:
        response = api.post(
            "/rpc/claim_jobs",
            json={"p_worker_id": worker, "p_limit": 2},
            headers=SERVICE,
        )
        with lock:
            if response.status_code == 200:
                claimed.extend(job["id"] for job in response.json())
            else:
                errors.append(response.text)

    threads = [threading.Thread(target=claim, args=(f"w{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    # Concurrent claims skip each other's locked rows, so a batch may come back short;
    # what must hold is that no job is handed out twice.
    rest = api.post(
        "/rpc/claim_jobs", json={"p_worker_id": "last", "p_limit": 8}, headers=SERVICE
    )
    assert errors == []
    assert len(claimed) == len(set(claimed)) > 0
    assert sorted(claimed + [job["id"] for job in rest.json()]) == sorted(ids)


@pytest.mark.parametrize(
    ("sqlstate", "is_authenticated", "status"),
    [
        ("42501", False, 401),
        ("42501", True, 403),
        ("23505", True, 409),
        ("23503", True, 409),
        ("P0001", True, 400),
        ("PT418", True, 418),
        ("42883", True, 404),
        ("22P02", True, 400),
        ("40001", True, 500),
        ("53300", True, 503),
        ("53400", True, 500),
        ("57014", True, 500),
        ("57P01", True, 503),
        ("08006", True, 503),
        ("25006", True, 405),
        ("EQ001", True, 400),
    ],
)
def test_rest_status_for_sqlstate_follows_postgrest_12(
    sqlstate: str, is_authenticated: bool, status: int
) -> None:
    assert status_for_sqlstate(sqlstate, is_authenticated=is_authenticated) == status
