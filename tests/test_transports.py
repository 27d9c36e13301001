"""The same queue behaviour over both transports: psycopg, and supabase-py over HTTP.

The supabase variant is a real ``supabase.create_client`` pointed at the local
Supabase stand-in (examq.rest) served by uvicorn on a free loopback port, so every
call goes through supabase-py's request building and error parsing, the gateway's
``apikey`` check, JWT verification, role switching and PostgREST's status mapping.
The psycopg variant connects directly; as a signed-in user it sets the role and the
JWT claims at connection start, the way PostgREST sets them per request.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import jwt
import psycopg
import pytest
from psycopg.conninfo import make_conninfo
from supabase import ClientOptions, create_client
from supabase._sync.client import SupabaseException

from examq.db import PsycopgTransport, SupabaseTransport, Transport
from examq.errors import (
    InvalidInput,
    JobNotFound,
    LeaseLost,
    PayloadTooLarge,
    PermissionDenied,
    UnknownJobType,
)
from examq.queue import Job, Queue
from examq.rest import create_rest_app, serve
from tests.conftest import FREE_USER, PRO_USER

SECRET = "examq-test-jwt-secret-of-at-least-32-bytes"
TRANSPORTS = ["psycopg", "supabase"]

# Fields that differ between two runs of the same scenario (ids, clocks, tokens).
VOLATILE_FIELDS = {
    "id",
    "job_id",
    "lease_token",
    "created_at",
    "updated_at",
    "run_at",
    "first_started_at",
    "started_at",
    "finished_at",
    "lease_expires_at",
    "eta_at",
    "sort_at",
}


def make_token(role: str, *, sub: str | None = None, expires_in: int = 3600) -> str:
    """A Supabase-style HS256 JWT for ``role`` (and user ``sub``)."""
    now = int(time.time())
    claims: dict[str, Any] = {"role": role, "iat": now, "exp": now + expires_in}
    if sub is not None:
        claims.update(sub=sub, aud="authenticated")
    return jwt.encode(claims, SECRET, algorithm="HS256")


ANON_KEY = make_token("anon", expires_in=10 * 365 * 86400)
SERVICE_KEY = make_token("service_role", expires_in=10 * 365 * 86400)


@pytest.fixture
def api_url(db_url: str) -> Iterator[str]:
    """Base URL of a running Supabase stand-in for this test's database."""
    with serve(create_rest_app(db_url, SECRET)) as url:
        yield url


def _psycopg_as_user(db_url: str, user_id: str) -> PsycopgTransport:
    # The role and claims PostgREST would set for this user's JWT, set once for the
    # whole session; the JSON has no spaces, which libpq's options would split on.
    claims = json.dumps(
        {"sub": user_id, "role": "authenticated"}, separators=(",", ":")
    )
    options = f"-c role=authenticated -c request.jwt.claims={claims}"
    return PsycopgTransport(make_conninfo(db_url, options=options))


def _supabase_as_user(api_url: str, user_id: str) -> SupabaseTransport:
    # As a server holding a user's access token does: the anon key for the gateway,
    # the user's JWT as the bearer of PostgREST requests.
    client = create_client(api_url, ANON_KEY)
    client.postgrest.auth(make_token("authenticated", sub=user_id))
    return SupabaseTransport(api_url, ANON_KEY, client=client)


@pytest.fixture
def transports(
    db_url: str, request: pytest.FixtureRequest
) -> Iterator[Callable[..., Transport]]:
    """Opens transports of one kind, as the service role or as a signed-in user."""
    opened: list[Transport] = []

    def open_transport(kind: str, *, user_id: str | None = None) -> Transport:
        if kind == "psycopg":
            transport: Transport = (
                PsycopgTransport(db_url)
                if user_id is None
                else _psycopg_as_user(db_url, user_id)
            )
        else:
            url = request.getfixturevalue("api_url")
            transport = (
                SupabaseTransport(url, SERVICE_KEY)
                if user_id is None
                else _supabase_as_user(url, user_id)
            )
        opened.append(transport)
        return transport

    yield open_transport
    for transport in opened:
        transport.close()


@pytest.fixture(params=TRANSPORTS)
def kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def queue(kind: str, transports: Callable[..., Transport]) -> Queue:
    """A queue client with the service role over the transport under test."""
    return Queue(transports(kind))


def _stable(value: Any) -> Any:
    """The value without the fields that differ from run to run."""
    if isinstance(value, dict):
        return {k: _stable(v) for k, v in value.items() if k not in VOLATILE_FIELDS}
    if isinstance(value, list):
        return [_stable(v) for v in value]
    return value


def _lifecycle(transport: Transport) -> dict[str, Any]:
    """Enqueue, claim, heartbeat, complete twice; every raw answer, by step."""
    enqueued = transport.call(
        "enqueue_job", {"p_job_type": "system.noop", "p_payload": {"n": 1}}
    )
    claimed = transport.call(
        "claim_jobs",
        {"p_worker_id": "w1", "p_limit": 5, "p_job_types": ["system.noop"]},
    )
    (job,) = claimed
    lease = {"p_job_id": job["id"], "p_lease_token": job["lease_token"]}
    beat = transport.call(
        "heartbeat_job", {**lease, "p_progress": 50, "p_message": "half"}
    )
    completed = transport.call("complete_job", {**lease, "p_result": {"ok": True}})
    repeated = transport.call("complete_job", {**lease, "p_result": {"ok": True}})
    fetched = transport.call("get_job", {"p_job_id": job["id"]})
    return {
        "enqueued": enqueued,
        "claimed": claimed,
        "heartbeat": beat,
        "completed": completed,
        "repeated": repeated,
        "fetched": fetched,
    }


# Same values on both transports --------------------------------------------------


def test_transports_lifecycle_returns_the_same_values(
    transports: Callable[..., Transport],
) -> None:
    direct = _lifecycle(transports("psycopg"))
    over_http = _lifecycle(transports("supabase"))

    assert _stable(over_http) == _stable(direct)
    # Same keys, so the volatile fields are present on both, only different.
    assert over_http["fetched"].keys() == direct["fetched"].keys()
    assert over_http["heartbeat"].keys() == direct["heartbeat"].keys()
    assert direct["completed"]["outcome"] == "completed"
    assert direct["repeated"]["outcome"] == "already_completed"
    assert direct["fetched"]["result"] == {"ok": True}
    assert direct["fetched"]["progress"] == 100


def test_transports_timestamps_are_rendered_alike(
    transports: Callable[..., Transport],
) -> None:
    direct = transports("psycopg").call("enqueue_job", {"p_job_type": "system.noop"})
    over_http = transports("supabase").call("get_job", {"p_job_id": direct["id"]})

    assert over_http["created_at"] == direct["created_at"]
    assert over_http == direct


# Behaviour, on each transport ----------------------------------------------------


def test_transport_enqueue_claim_heartbeat_complete(queue: Queue) -> None:
    job = queue.enqueue("system.noop", {"n": 1})
    (claimed,) = queue.claim("w1", job_types=["system.noop"])
    beat = queue.heartbeat(claimed, progress=50, message="half way")
    done = queue.complete(claimed, {"ok": True})

    assert claimed.id == job.id and claimed.status == "running" and claimed.attempt == 1
    assert (
        beat.job_id == job.id and beat.progress == 50 and beat.cancel_requested is False
    )
    assert (done.status, done.outcome) == ("succeeded", "completed")
    assert queue.get(job.id).result == {"ok": True}


def test_transport_repeated_complete_is_already_completed(queue: Queue) -> None:
    queue.enqueue("system.noop")
    (job,) = queue.claim("w1", job_types=["system.noop"])
    queue.complete(job, {"ok": True})

    again = queue.complete(job, {"ok": True})

    assert (again.status, again.outcome) == ("succeeded", "already_completed")


def test_transport_late_complete_after_takeover_raises_lease_lost(
    queue: Queue, sql: psycopg.Connection
) -> None:
    queue.enqueue("system.noop")
    (stale,) = queue.claim("w1", job_types=["system.noop"])
    sql.execute(
        "update public.jobs set lease_expires_at = now() - interval '1 second' "
        "where id = %s",
        (stale.id,),
    )
    (taken_over,) = queue.claim("w2", job_types=["system.noop"])

    with pytest.raises(LeaseLost) as raised:
        queue.complete(stale, {"ok": "late"})

    assert taken_over.id == stale.id and taken_over.lease_token != stale.lease_token
    assert type(raised.value) is LeaseLost
    assert raised.value.sqlstate == "EQ005"
    assert queue.get(stale.id).status == "running"


def test_transport_unknown_job_type_raises(queue: Queue) -> None:
    with pytest.raises(UnknownJobType) as raised:
        queue.enqueue("no.such.type")

    assert type(raised.value) is UnknownJobType
    assert raised.value.sqlstate == "EQ001"


def test_transport_payload_too_large_for_the_free_tier_raises(queue: Queue) -> None:
    payload = {"responses": "x" * 300_000}

    with pytest.raises(PayloadTooLarge) as raised:
        queue.enqueue("exam.grade", payload, user_id=FREE_USER)

    assert type(raised.value) is PayloadTooLarge
    assert raised.value.sqlstate == "EQ002"


def test_transport_nul_in_payload_raises_invalid_input(queue: Queue) -> None:
    with pytest.raises(InvalidInput) as raised:
        queue.enqueue("system.noop", {"text": "before\x00after"})

    assert type(raised.value) is InvalidInput


def test_transport_nul_reaching_the_database_raises_invalid_input(queue: Queue) -> None:
    # Past the client-side check, the database refuses it with the same type.
    params = {"p_job_type": "system.noop", "p_payload": {"text": "before\x00after"}}

    with pytest.raises(InvalidInput) as raised:
        queue.transport.call("enqueue_job", params)

    assert type(raised.value) is InvalidInput
    assert raised.value.sqlstate == "22P05"


def test_transport_user_enqueues_for_themselves_and_cannot_read_others(
    kind: str, queue: Queue, transports: Callable[..., Transport]
) -> None:
    others = queue.enqueue("exam.grade", {"n": 2}, user_id=PRO_USER)
    as_user = Queue(transports(kind, user_id=FREE_USER))

    own = as_user.enqueue("exam.grade", {"n": 1})

    assert own.user_id == uuid.UUID(FREE_USER) and own.tier == "free"
    assert as_user.get(own.id).id == own.id
    with pytest.raises(JobNotFound) as raised:
        as_user.get(others.id)
    assert type(raised.value) is JobNotFound


def test_transport_user_cannot_claim_jobs(
    kind: str, transports: Callable[..., Transport]
) -> None:
    as_user = Queue(transports(kind, user_id=FREE_USER))

    with pytest.raises(PermissionDenied) as raised:
        as_user.claim("w1")

    assert type(raised.value) is PermissionDenied
    assert raised.value.sqlstate == "42501"


def test_transport_call_after_close_opens_a_new_connection(queue: Queue) -> None:
    job = queue.enqueue("system.noop")

    queue.transport.close()

    assert queue.get(job.id).id == job.id


def test_transport_claim_returns_jobs_as_the_model_reads_them(queue: Queue) -> None:
    queue.enqueue("system.noop", {"n": 1})

    (job,) = queue.claim("w1", job_types=["system.noop"], lease_seconds=30)

    assert isinstance(job, Job)
    assert job.lease_token is not None and job.lease_expires_at is not None
    assert job.payload == {"n": 1}


# What supabase-py sends ----------------------------------------------------------


@pytest.fixture
def echo_request(sql: psycopg.Connection) -> None:
    """A function that returns what PostgREST told the database about the request."""
    sql.execute(
        """
        create function public.echo_request() returns json
        language sql stable as $$
          select json_build_object(
            'role', current_user,
            'uid', auth.uid(),
            'claims', current_setting('request.jwt.claims', true)::json,
            'headers', current_setting('request.headers', true)::json
          )
        $$;
        """
    )


@pytest.mark.usefixtures("echo_request")
def test_supabase_client_sends_apikey_and_authorization(api_url: str) -> None:
    client = create_client(api_url, SERVICE_KEY)

    seen = client.rpc("echo_request").execute().data

    assert seen["headers"]["apikey"] == SERVICE_KEY
    assert seen["headers"]["authorization"] == f"Bearer {SERVICE_KEY}"
    assert seen["role"] == "service_role"
    assert seen["claims"]["role"] == "service_role"


@pytest.mark.usefixtures("echo_request")
@pytest.mark.parametrize("way", ["postgrest.auth", "options.headers"])
def test_supabase_client_as_a_user_keeps_the_anon_key_for_the_gateway(
    api_url: str, way: str
) -> None:
    user_token = make_token("authenticated", sub=FREE_USER)
    if way == "postgrest.auth":
        client = create_client(api_url, ANON_KEY)
        client.postgrest.auth(user_token)
    else:
        options = ClientOptions(headers={"Authorization": f"Bearer {user_token}"})
        client = create_client(api_url, ANON_KEY, options)

    seen = client.rpc("echo_request").execute().data

    assert seen["headers"]["apikey"] == ANON_KEY
    assert seen["headers"]["authorization"] == f"Bearer {user_token}"
    assert seen["role"] == "authenticated"
    assert seen["uid"] == FREE_USER


def test_supabase_client_requires_an_http_url() -> None:
    with pytest.raises(SupabaseException, match="Invalid URL"):
        create_client("127.0.0.1:54321", ANON_KEY)
