"""A local stand-in for the part of Supabase's HTTP API that examq uses: RPC calls.

``create_rest_app`` serves ``/rest/v1/rpc/{function}`` the way a Supabase project
does: its API gateway first (an ``apikey`` is required), then PostgREST 12.2, which
verifies the JWT, switches to the role the JWT names, sets ``request.jwt.claims`` and
calls ``public.<function>`` in one transaction. It exists so that tests, and a local
dev server, exercise supabase-py against real SQL with real roles and row-level
security, and get the same status codes and error bodies a project would send.

Where the behaviour comes from (read in PostgREST's own source and docs, v12.2):

- Gateway (Kong, as Supabase configures it): no ``apikey`` header or query parameter
  is 401 ``{"message": "No API key found in request", ...}``; a key that is not one of
  the project's keys is 401 ``{"message": "Invalid API key", ...}``. Here "one of the
  project's keys" means a JWT signed with the secret whose role is anon or
  service_role, which is what Supabase's legacy keys are. Without an
  ``Authorization`` header the ``apikey`` is used as the bearer token.
- JWT (src/PostgREST/Auth.hs, Error.hs): HS256/384/512 with the secret, 30 s of clock
  skew for ``exp``, ``nbf`` and ``iat``; every failure is 401 with code PGRST301 and a
  ``WWW-Authenticate: Bearer error="invalid_token"`` header; the messages are
  PostgREST 12's ("JWT expired", "JWSError JWSInvalidSignature"; malformed tokens get
  one of the same family). PostgREST 13 answers claim failures such as an expired
  JWT with PGRST303 instead. A JWT without a ``role`` claim runs as the anon role;
  ``role`` is written into the claims. A role other than the three API roles is
  refused as Postgres refuses ``authenticator`` (22023 if it does not exist, else
  42501).
- Transaction (docs references/transactions.rst): ``BEGIN`` READ ONLY for GET/HEAD
  and for POST to a STABLE or IMMUTABLE function, READ WRITE for POST to a VOLATILE
  one; then transaction-scoped ``search_path``, ``role``, ``request.jwt.claims``,
  ``request.method``, ``request.path``, ``request.headers`` and ``request.cookies``;
  then the call; ``COMMIT``. ``response.status`` and ``response.headers`` set by the
  function shape the answer.
- Calling (src/PostgREST/Query/QueryBuilder.hs): the body travels as one ``json``
  parameter and is turned into typed arguments by ``json_to_record`` with the
  function's declared argument types, so Postgres does every conversion (and raises
  its own errors, e.g. 22P05 for ``\\u0000`` in a jsonb argument). A function matches
  when every key of the body names one of its arguments and every argument without
  a default is given; a single unnamed json/jsonb argument takes the whole body.
  No match is 404 PGRST202, with PostgREST's message, details and hint; several are
  300 PGRST203.
- Results: ``setof`` -> JSON array; a single composite -> JSON object (a NULL
  composite comes back as an object whose fields are all null, as PostgREST does,
  see PostgREST issue #3694); anything else -> the JSON value (void -> ``null``).
  JSON is built by Postgres (``json_agg``), so timestamps read as ``to_json`` writes
  them.
- Errors (src/PostgREST/Error.hs ``pgErrorStatus``, docs references/errors.rst):
  ``{"code", "message", "details", "hint"}`` with the HTTP status of PostgREST's
  table; 42501 is 401 for the anon role and 403 for any other; ``PTnnn`` is nnn;
  every SQLSTATE the table does not name, examq's own class ``EQ`` included, is 400.
  ``RAISE SQLSTATE 'PGRST'`` with JSON message and detail sets the whole answer.

Tables and views are read by ``GET /rest/v1/{relation}``, for the part of PostgREST's
grammar the dashboard uses: see examq.rest_tables.

Not reproduced: the OpenAPI root, query-string filters and ``select`` on RPC
results, ``Prefer`` on RPC (``params=single-object``, ``params=multiple-objects``,
``count``, ``tx``), array bodies (400 PGRST102 here), the impersonated role's own
settings (``statement_timeout``), ``Content-Range`` on RPC and PostgREST's schema
cache (functions are looked up on every request, so a migration is visible at once).
Only the ``public`` schema is exposed. Each request opens its own database
connection, which keeps concurrent requests independent at the cost of one
connection set-up per call.
"""

from __future__ import annotations

import difflib
import json
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
import psycopg
from loguru import logger
from psycopg import sql
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

EXPOSED_SCHEMA = "public"
SEARCH_PATH = "public, extensions"
ANON_ROLE = "anon"
API_ROLES = ("anon", "authenticated", "service_role")
GATEWAY_KEY_ROLES = ("anon", "service_role")
JWT_ALGORITHMS = ["HS256", "HS384", "HS512"]
JWT_SKEW_SECONDS = 30
JSON_CONTENT_TYPE = "application/json; charset=utf-8"

_RPC_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
_JSON_TYPES = ("json", "jsonb")


class _Answer(Exception):
    """A non-2xx answer, raised wherever the request's handling decides it."""

    def __init__(
        self,
        status: int,
        body: Mapping[str, Any],
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        super().__init__(body.get("message"))
        self.status = status
        self.body = dict(body)
        self.headers = headers or []

    def response(self) -> Response:
        """The HTTP response PostgREST (or the gateway) sends for this error."""
        response = Response(
            json.dumps(self.body, ensure_ascii=False),
            status_code=self.status,
            headers={"content-type": JSON_CONTENT_TYPE},
        )
        for name, value in self.headers:
            response.raw_headers.append(
                (name.lower().encode("latin-1"), value.encode("latin-1"))
            )
        return response


def _pgrst(
    status: int,
    code: str,
    message: str,
    details: Any = None,
    hint: Any = None,
    headers: list[tuple[str, str]] | None = None,
) -> _Answer:
    return _Answer(
        status,
        {"code": code, "details": details, "hint": hint, "message": message},
        headers,
    )


def _jwt_invalid(message: str) -> _Answer:
    # Haskell's `show` of the message: double quotes, escaped inside.
    description = json.dumps(message)
    header = (
        "WWW-Authenticate",
        f'Bearer error="invalid_token", error_description={description}',
    )
    return _pgrst(401, "PGRST301", message, headers=[header])


# Gateway ---------------------------------------------------------------------------


def _check_api_key(request: Request, secret: str) -> str:
    """Refuse the request as Supabase's gateway does unless it carries a project key."""
    api_key = request.headers.get("apikey") or request.query_params.get("apikey")
    if not api_key:
        raise _Answer(
            401,
            {
                "message": "No API key found in request",
                "hint": "No `apikey` request header or url param was found.",
            },
        )

    # The gateway compares the key with the project's keys; it does not read expiry.
    try:
        claims = jwt.decode(
            api_key,
            secret,
            algorithms=JWT_ALGORITHMS,
            options={
                "verify_exp": False,
                "verify_nbf": False,
                "verify_iat": False,
                "verify_aud": False,
            },
        )
    except jwt.InvalidTokenError:
        claims = {}
    if not isinstance(claims, dict) or claims.get("role") not in GATEWAY_KEY_ROLES:
        raise _Answer(
            401,
            {
                "message": "Invalid API key",
                "hint": "Double check your Supabase `anon` or `service_role` API key.",
            },
        )
    return api_key


def _bearer_token(request: Request, api_key: str) -> str:
    """The JWT to verify: the bearer of ``Authorization``, else the ``apikey``."""
    authorization = request.headers.get("authorization")
    if authorization is None:
        return api_key
    scheme, _, token = authorization.strip().partition(" ")
    # PostgREST reads a non-Bearer Authorization header as no token at all.
    return token.strip() if scheme.lower() == "bearer" else ""


# JWT -------------------------------------------------------------------------------


def _claims(token: str, secret: str) -> dict[str, Any]:
    """Verify the JWT as PostgREST 12 does; its claims, with ``role`` filled in."""
    if not token:
        return {"role": ANON_ROLE}

    parts = token.count(".") + 1
    if parts != 3:
        raise _jwt_invalid(
            "JWSError (CompactDecodeError Invalid number of parts: "
            f"Expected 3 parts; got {parts})"
        )

    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=JWT_ALGORITHMS,
            leeway=JWT_SKEW_SECONDS,
            options={"verify_aud": False},
        )
    except jwt.ExpiredSignatureError as exc:
        raise _jwt_invalid("JWT expired") from exc
    except jwt.ImmatureSignatureError as exc:
        message = "JWTIssuedAtFuture" if "iat" in str(exc) else "JWTNotYetValid"
        raise _jwt_invalid(message) from exc
    except jwt.InvalidAlgorithmError as exc:
        raise _jwt_invalid("JWSError JWSNoSignatures") from exc
    except jwt.InvalidSignatureError as exc:
        raise _jwt_invalid("JWSError JWSInvalidSignature") from exc
    except jwt.InvalidTokenError as exc:
        raise _jwt_invalid(
            "Parsing claims failed"
            if "payload" in str(exc)
            else "JWSError JWSInvalidSignature"
        ) from exc

    role = claims.get("role", ANON_ROLE)
    claims["role"] = role if isinstance(role, str) else json.dumps(role)
    return claims


# Functions -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Param:
    name: str
    type: str
    is_required: bool
    is_variadic: bool


@dataclass(frozen=True)
class _Function:
    name: str
    params: tuple[_Param, ...]
    volatility: str
    returns_set: bool
    returns_composite: bool
    returns_void: bool

    @property
    def takes_whole_body(self) -> bool:
        """A single unnamed json/jsonb argument receives the request body as it is."""
        return (
            len(self.params) == 1
            and not self.params[0].name
            and self.params[0].type in _JSON_TYPES
        )

    def signature(self) -> str:
        args = ", ".join(f"{p.name} => {p.type}" for p in self.params)
        return f"{EXPOSED_SCHEMA}.{self.name}({args})"


# format_type qualifies every type outside pg_catalog because the lookup runs with an
# empty search_path, so the type names are valid in any later search_path.
_FUNCTIONS_SQL = """
select p.proname,
       p.provolatile::text,
       p.proretset,
       p.pronargs,
       p.pronargdefaults,
       rt.typtype::text,
       p.prorettype = 'pg_catalog.void'::pg_catalog.regtype,
       p.prorettype = 'pg_catalog.record'::pg_catalog.regtype,
       array(select pg_catalog.format_type(u.t, null)
             from unnest(coalesce(p.proallargtypes, p.proargtypes::oid[]))
                  with ordinality u(t, i)
             order by u.i),
       p.proargmodes::text[],
       p.proargnames
from pg_catalog.pg_proc p
join pg_catalog.pg_namespace n on n.oid = p.pronamespace
join pg_catalog.pg_type rt on rt.oid = p.prorettype
where n.nspname = %s and p.proname = %s and p.prokind = 'f'
"""

_FUNCTION_NAMES_SQL = """
select distinct p.proname
from pg_catalog.pg_proc p
join pg_catalog.pg_namespace n on n.oid = p.pronamespace
where n.nspname = %s and p.prokind = 'f'
"""


def _function_from_row(row: tuple[Any, ...]) -> _Function:
    (
        name,
        volatility,
        returns_set,
        nargs,
        ndefaults,
        ret_typtype,
        returns_void,
        returns_record,
        types,
        modes,
        names,
    ) = row
    modes = modes or ["i"] * len(types)
    names = names or [""] * len(types)

    inputs = [
        (n, t, m)
        for n, t, m in zip(names, types, modes, strict=True)
        if m in ("i", "b", "v")
    ]
    has_out_params = any(m in ("o", "b", "t") for m in modes)
    first_optional = nargs - ndefaults
    params = tuple(
        _Param(name=n, type=t, is_required=i < first_optional, is_variadic=m == "v")
        for i, (n, t, m) in enumerate(inputs)
    )

    return _Function(
        name=name,
        params=params,
        volatility=volatility,
        returns_set=returns_set,
        returns_composite=ret_typtype == "c" or (returns_record and has_out_params),
        returns_void=returns_void,
    )


def _matches(function: _Function, keys: set[str], *, is_post: bool) -> bool:
    if is_post and function.takes_whole_body:
        return True
    names = {p.name for p in function.params if p.name}
    required = {p.name for p in function.params if p.is_required}
    return (
        keys <= names
        and required <= keys
        and all(p.name for p in function.params if p.is_required)
    )


def _no_function(
    name: str,
    keys: list[str],
    *,
    is_post: bool,
    overloads: list[_Function],
    all_names: list[str],
) -> _Answer:
    """PostgREST's PGRST202 answer, hint included (fuzzy, as PostgREST's is)."""
    qualified = f"{EXPOSED_SCHEMA}.{name}"
    listed = ", ".join(keys)
    if keys:
        called = f"{qualified}({listed})"
        searched = f" with parameter{'s' if len(keys) > 1 else ''} {listed}"
    else:
        called = f"{qualified} without parameters"
        searched = " without parameters"
    if is_post:
        searched += " or with a single unnamed json/jsonb parameter"
    message = f"Could not find the function {called} in the schema cache"
    details = (
        f"Searched for the function {qualified}{searched}, "
        "but no matches were found in the schema cache."
    )

    hint = None
    if overloads:

        def as_text(params: list[str]) -> str:
            return "(" + ", ".join(sorted(params)) + ")"

        candidates = [as_text([p.name for p in f.params]) for f in overloads]
        best = difflib.get_close_matches(as_text(keys), candidates, n=1, cutoff=0.33)
        if best:
            hint = f"Perhaps you meant to call the function {qualified}{best[0]}"
    else:
        best = difflib.get_close_matches(name, all_names, n=1, cutoff=0.75)
        if best:
            hint = f"Perhaps you meant to call the function {EXPOSED_SCHEMA}.{best[0]}"

    return _pgrst(404, "PGRST202", message, details, hint)


def _call_statement(
    function: _Function, keys: set[str], body: str
) -> tuple[sql.Composed, list[str]]:
    """The statement that calls the function and renders its answer as JSON text.

    Its only parameter is the request body: user input never becomes SQL text.
    """
    target = sql.SQL("{}.{}").format(
        sql.Identifier(EXPOSED_SCHEMA), sql.Identifier(function.name)
    )

    given = [p for p in function.params if p.name in keys]
    if function.takes_whole_body:
        source = sql.SQL("from {}({}::{}) pgrst_call").format(
            target, sql.Placeholder(), sql.SQL(function.params[0].type)
        )
    elif given:
        # json_to_record converts each value with the argument's declared type, so
        # Postgres raises its own errors (22P02, 22P05, ...) for values it refuses.
        columns = sql.SQL(", ").join(
            sql.SQL("{} {}").format(sql.Identifier(p.name), sql.SQL(p.type))
            for p in given
        )
        arguments = sql.SQL(", ").join(
            sql.SQL("{}{} := pgrst_body.{}").format(
                sql.SQL("variadic ") if p.is_variadic else sql.SQL(""),
                sql.Identifier(p.name),
                sql.Identifier(p.name),
            )
            for p in given
        )
        source = sql.SQL(
            "from json_to_record({}::json) as pgrst_body({}), lateral {}({}) pgrst_call"
        ).format(sql.Placeholder(), columns, target, arguments)
    else:
        source = sql.SQL("from {}() pgrst_call").format(target)

    # The same shapes PostgREST builds: a scalar function's alias is also its column.
    if function.returns_void:
        selected = sql.SQL("1")
        rendered = sql.SQL("coalesce(max('null'::text), 'null')")
    elif not function.returns_composite:
        selected = sql.SQL("pgrst_call as pgrst_scalar")
        rendered = (
            sql.SQL("coalesce(json_agg(_postgrest_t.pgrst_scalar), '[]')::text")
            if function.returns_set
            else sql.SQL(
                "coalesce((json_agg(_postgrest_t.pgrst_scalar) -> 0)::text, 'null')"
            )
        )
    else:
        selected = sql.SQL("pgrst_call.*")
        rendered = (
            sql.SQL("coalesce(json_agg(_postgrest_t), '[]')::text")
            if function.returns_set
            else sql.SQL("coalesce((json_agg(_postgrest_t) -> 0)::text, 'null')")
        )

    # current_setting is read after the aggregate has consumed every row, that is,
    # after the function has run and could set the response settings.
    statement = sql.SQL(
        "select {body} as body, "
        "nullif(current_setting('response.headers', true), '') as response_headers, "
        "nullif(current_setting('response.status', true), '') as response_status "
        "from (select {selected} {source}) _postgrest_t"
    ).format(body=rendered, selected=selected, source=source)
    return statement, [body] if function.takes_whole_body or given else []


_SETTINGS_SQL = """
select set_config('search_path', %s, true),
       set_config('role', %s, true),
       set_config('request.jwt.claims', %s, true),
       set_config('request.method', %s, true),
       set_config('request.path', %s, true),
       set_config('request.headers', %s, true),
       set_config('request.cookies', %s, true)
"""


# Errors ----------------------------------------------------------------------------


# PostgREST 12.2's pgErrorStatus, in its order: the first entry whose code is a
# prefix of the SQLSTATE decides. 21000, 42883, 42501 and PTnnn depend on more than
# the code and are decided in status_for_sqlstate; anything else is 400.
_STATUS_BY_SQLSTATE: tuple[tuple[str, int], ...] = (
    ("08", 503),  # connection exception
    ("09", 500),  # triggered action exception
    ("0L", 403),  # invalid grantor
    ("0P", 403),  # invalid role specification
    ("23503", 409),  # foreign key violation
    ("23505", 409),  # unique violation
    ("25006", 405),  # read-only SQL transaction
    ("25", 500),  # invalid transaction state
    ("28", 403),  # invalid authorization specification
    ("2D", 500),  # invalid transaction termination
    ("38", 500),  # external routine exception
    ("39", 500),  # external routine invocation exception
    ("3B", 500),  # savepoint exception
    ("40", 500),  # transaction rollback (serialization failure, deadlock)
    ("53400", 500),  # configuration limit exceeded
    ("53", 503),  # insufficient resources
    ("54", 500),  # program limit exceeded
    ("55", 500),  # object not in prerequisite state
    ("57P01", 503),  # terminating connection due to administrator command
    ("57", 500),  # operator intervention (query canceled, statement timeout)
    ("58", 500),  # system error
    ("F0", 500),  # configuration file error
    ("HV", 500),  # foreign data wrapper error
    ("P0001", 400),  # RAISE EXCEPTION without an ERRCODE
    ("P0", 500),  # other PL/pgSQL errors
    ("XX", 500),  # internal error
    ("42P01", 404),  # undefined table
    ("42P17", 500),  # infinite recursion (in a policy)
)


def status_for_sqlstate(
    sqlstate: str, message: str = "", *, is_authenticated: bool = True
) -> int:
    """The HTTP status PostgREST 12.2 answers for a PostgreSQL error code.

    ``is_authenticated`` is PostgREST's notion: the request's role is not the anon
    role. ``message`` matters for two codes only (21000 and 42883).
    """
    if sqlstate == "21000":
        # pg-safeupdate's refusal is the client's fault; other cardinality errors not.
        return 400 if message.endswith("requires a WHERE clause") else 500
    if sqlstate == "42883":
        return 406 if message.startswith("function xmlagg(") else 404
    if sqlstate == "42501":
        return 403 if is_authenticated else 401
    if sqlstate.startswith("PT"):
        code = sqlstate[2:]
        return int(code) if code.isdigit() and 100 <= int(code) <= 599 else 500
    for prefix, status in _STATUS_BY_SQLSTATE:
        if sqlstate.startswith(prefix):
            return status
    return 400


def _from_pg_error(exc: psycopg.Error, *, is_authenticated: bool) -> _Answer:
    """PostgREST's answer for an error the database (or the connection) raised."""
    sqlstate = exc.sqlstate
    if sqlstate is None:
        if isinstance(exc, psycopg.OperationalError):
            return _pgrst(
                503,
                "PGRST001",
                "Database client error. Retrying the connection.",
                str(exc),
            )
        return _pgrst(500, "PGRSTX00", str(exc))

    diag = exc.diag
    message = diag.message_primary or str(exc)
    if sqlstate == "PGRST":
        return _raised_pgrst(message, diag.message_detail)

    status = status_for_sqlstate(sqlstate, message, is_authenticated=is_authenticated)
    headers = [("WWW-Authenticate", "Bearer")] if status == 401 else []
    body = {
        "code": sqlstate,
        "details": diag.message_detail,
        "hint": diag.message_hint,
        "message": message,
    }
    return _Answer(status, body, headers)


def _raised_pgrst(message: str, detail: str | None) -> _Answer:
    """``RAISE SQLSTATE 'PGRST'``: the function chose the whole error answer."""
    try:
        error = json.loads(message)
        answer = json.loads(detail) if detail is not None else None
        if not (isinstance(error, dict) and isinstance(answer, dict)):
            raise ValueError("not objects")
        body = {
            "code": str(error["code"]),
            "details": error.get("details"),
            "hint": error.get("hint"),
            "message": str(error["message"]),
        }
        headers = [(str(k), str(v)) for k, v in dict(answer["headers"]).items()]
        return _Answer(int(answer["status"]), body, headers)
    except (ValueError, KeyError, TypeError):
        return _pgrst(
            500,
            "PGRST121",
            "Could not parse JSON in the \"RAISE SQLSTATE 'PGRST'\" error",
            f"Invalid JSON value for MESSAGE: '{message}'"
            if detail is not None
            else "DETAIL is missing in the RAISE statement",
            "MESSAGE must be a JSON object with obligatory keys: 'code', 'message' "
            "and optional keys: 'details', 'hint'.",
        )


def _response_settings(
    headers_text: str | None, status_text: str | None
) -> tuple[int, list[tuple[str, str]]]:
    """The status and extra headers a function asked for through ``response.*``."""
    status = 200
    if status_text is not None:
        if not status_text.strip().isdigit() or not 100 <= int(status_text) <= 599:
            raise _pgrst(
                500, "PGRST112", "response.status guc must be a valid status code"
            )
        status = int(status_text)

    headers: list[tuple[str, str]] = []
    if headers_text is not None:
        try:
            items = json.loads(headers_text)
            for item in items:
                ((name, value),) = item.items()
                if not isinstance(value, str):
                    raise ValueError("header value is not a string")
                headers.append((name, value))
        except (ValueError, TypeError, AttributeError) as exc:
            raise _pgrst(
                500,
                "PGRST111",
                "response.headers guc must be a JSON array composed of objects "
                "with a single key and a string value",
            ) from exc
    return status, headers


# The application -------------------------------------------------------------------


@dataclass(frozen=True)
class _Call:
    """What one request asks for, once authenticated and parsed."""

    function: str
    method: str
    path: str
    role: str
    claims: dict[str, Any]
    keys: set[str]
    body: str
    headers: dict[str, str]
    cookies: dict[str, str]


class _RpcEndpoint:
    """Serves ``/rest/v1/rpc/{function}`` for one database and one JWT secret."""

    def __init__(self, database_url: str, jwt_secret: str) -> None:
        self._database_url = database_url
        self._jwt_secret = jwt_secret

    async def handle(self, request: Request) -> Response:
        started = time.perf_counter()
        function = request.path_params["function"]
        role = "-"
        try:
            api_key = _check_api_key(request, self._jwt_secret)
            claims = _claims(_bearer_token(request, api_key), self._jwt_secret)
            role = claims["role"]
            call = await self._parse(request, function, claims)
            response = await self._invoke(call)
        except _Answer as answer:
            response = answer.response()

        logger.debug(
            "rpc answered",
            function=function,
            role=role,
            status=response.status_code,
            duration_ms=round((time.perf_counter() - started) * 1000, 1),
        )
        return response

    async def _parse(
        self, request: Request, function: str, claims: dict[str, Any]
    ) -> _Call:
        method = request.method
        if method not in ("GET", "HEAD", "POST"):
            raise _pgrst(405, "PGRST101", f"Cannot use the {method} method on RPC")

        profile = request.headers.get(
            "content-profile" if method == "POST" else "accept-profile"
        )
        if profile is not None and profile != EXPOSED_SCHEMA:
            raise _pgrst(
                406,
                "PGRST106",
                f"The schema must be one of the following: {EXPOSED_SCHEMA}",
            )

        if method == "POST":
            raw = await request.body()
            try:
                body = raw.decode("utf-8") if raw.strip() else "{}"
                payload = json.loads(body)
            except (ValueError, RecursionError) as exc:
                # RecursionError: Python's JSON reader recurses once per nesting level.
                raise _pgrst(400, "PGRST102", "Empty or invalid json") from exc
            if not isinstance(payload, dict):
                raise _pgrst(
                    400,
                    "PGRST102",
                    "Empty or invalid json",
                    "This stand-in accepts only a JSON object of named arguments.",
                )
        else:
            payload = {}
            for key in request.query_params:
                if key == "apikey":
                    continue
                values = request.query_params.getlist(key)
                payload[key] = values[-1] if len(values) == 1 else values
            body = json.dumps(payload)

        return _Call(
            function=function,
            method=method,
            path=request.url.path,
            role=claims["role"],
            claims=claims,
            keys=set(payload),
            body=body,
            headers={k.lower(): v for k, v in request.headers.items()},
            cookies=dict(request.cookies),
        )

    async def _invoke(self, call: _Call) -> Response:
        is_authenticated = call.role != ANON_ROLE
        try:
            conn = await psycopg.AsyncConnection.connect(
                self._database_url, autocommit=True, application_name="examq-rest"
            )
        except psycopg.OperationalError as exc:
            raise _pgrst(
                503,
                "PGRST000",
                "Database connection error. Retrying the connection.",
                str(exc),
            ) from exc

        async with conn:
            try:
                function = await self._resolve(conn, call)
                await self._check_role(conn, call.role)
            except psycopg.Error as exc:
                raise _from_pg_error(exc, is_authenticated=is_authenticated) from exc

            is_read_only = call.method != "POST" or function.volatility != "v"
            statement, arguments = _call_statement(function, call.keys, call.body)

            try:
                await conn.execute(
                    "begin read only" if is_read_only else "begin read write"
                )
                await conn.execute(
                    _SETTINGS_SQL,
                    (
                        SEARCH_PATH,
                        call.role,
                        json.dumps(call.claims),
                        call.method,
                        call.path,
                        json.dumps(call.headers),
                        json.dumps(call.cookies),
                    ),
                )
                cursor = await conn.execute(statement, arguments)
                body, headers_text, status_text = await cursor.fetchone()
                status, headers = _response_settings(headers_text, status_text)
                await conn.execute("commit")
            except psycopg.Error as exc:
                await _rollback_quietly(conn)
                raise _from_pg_error(exc, is_authenticated=is_authenticated) from exc
            except _Answer:
                await _rollback_quietly(conn)
                raise

        response = Response(
            body if call.method != "HEAD" else b"",
            status_code=status,
            headers={"content-type": JSON_CONTENT_TYPE},
        )
        for name, value in headers:
            # Content-Type is replaced; other headers may repeat (Set-Cookie).
            if name.lower() == "content-type":
                response.headers[name] = value
            else:
                response.headers.append(name, value)
        return response

    async def _resolve(self, conn: psycopg.AsyncConnection, call: _Call) -> _Function:
        """The function the request names, picked as PostgREST's schema cache would."""
        await conn.execute("set search_path = ''")
        cursor = await conn.execute(_FUNCTIONS_SQL, (EXPOSED_SCHEMA, call.function))
        overloads = [_function_from_row(row) for row in await cursor.fetchall()]

        is_post = call.method == "POST"
        matching = [f for f in overloads if _matches(f, call.keys, is_post=is_post)]
        # A function with named arguments wins over one that takes the whole body.
        if len(matching) > 1:
            named = [f for f in matching if not f.takes_whole_body]
            matching = named or matching
        if len(matching) == 1:
            return matching[0]

        if matching:
            raise _pgrst(
                300,
                "PGRST203",
                "Could not choose the best candidate function between: "
                + ", ".join(f.signature() for f in matching),
                None,
                "Try renaming the parameters or the function itself in the database so "
                "function overloading can be resolved",
            )

        all_names: list[str] = []
        if not overloads:
            cursor = await conn.execute(_FUNCTION_NAMES_SQL, (EXPOSED_SCHEMA,))
            all_names = [row[0] for row in await cursor.fetchall()]
        raise _no_function(
            call.function,
            sorted(call.keys),
            is_post=is_post,
            overloads=overloads,
            all_names=all_names,
        )

    async def _check_role(self, conn: psycopg.AsyncConnection, role: str) -> None:
        """Refuse a role the authenticator cannot switch to, with Postgres' errors.

        This connection may be a superuser's, which could switch to any role;
        PostgREST connects as ``authenticator``, a member of the API roles only.
        """
        if role in API_ROLES:
            return
        cursor = await conn.execute(
            "select 1 from pg_catalog.pg_roles where rolname = %s", (role,)
        )
        if await cursor.fetchone() is None:
            raise _pgrst(400, "22023", f'role "{role}" does not exist')
        raise _pgrst(403, "42501", f'permission denied to set role "{role}"')


async def _rollback_quietly(conn: psycopg.AsyncConnection) -> None:
    if conn.closed or conn.broken:
        return
    try:
        await conn.execute("rollback")
    except psycopg.Error:
        logger.debug("rollback after a failed rpc failed too")


async def _gateway_not_found(request: Request) -> Response:
    return _Answer(404, {"message": "no Route matched with those values"}).response()


def create_rest_app(database_url: str, jwt_secret: str) -> Starlette:
    """An ASGI app serving ``/rest/v1/rpc/{function}`` and table reads as Supabase does."""
    from examq.rest_tables import TableEndpoint

    endpoint = _RpcEndpoint(database_url, jwt_secret)
    tables = TableEndpoint(database_url, jwt_secret)
    routes = [
        Route("/rest/v1/rpc/{function}", endpoint.handle, methods=_RPC_METHODS),
        Route("/rest/v1/{relation}", tables.handle, methods=["GET", "HEAD"]),
        Route("/{path:path}", _gateway_not_found, methods=_RPC_METHODS),
    ]
    # Supabase's gateway answers browsers' CORS preflights for every origin.
    middleware = [
        Middleware(
            CORSMiddleware,
            allow_origins=["*"],
            allow_methods=["*"],
            allow_headers=["*"],
            expose_headers=["Content-Range", "Content-Location"],
        )
    ]
    return Starlette(routes=routes, middleware=middleware)


@contextmanager
def serve(
    app: Any, host: str = "127.0.0.1", port: int = 0, *, startup_timeout: float = 10.0
) -> Iterator[str]:
    """Run ``app`` under uvicorn in a background thread; yields its base URL.

    The socket is bound before the server starts, so ``port=0`` picks a free port
    without a race. The server is stopped when the block ends. Raises TimeoutError
    when the server does not answer within ``startup_timeout`` seconds.
    """
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    url = f"http://{host}:{sock.getsockname()[1]}"

    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="examq-rest", daemon=True
    )
    thread.start()

    try:
        deadline = time.monotonic() + startup_timeout
        while not _answers(url):
            if not thread.is_alive():
                raise RuntimeError(
                    f"the local API server at {url} stopped during start-up"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"the local API server at {url} did not answer "
                    f"within {startup_timeout} s"
                )
            time.sleep(0.02)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def _answers(url: str) -> bool:
    try:
        httpx.get(f"{url}/rest/v1/", timeout=1.0)
    except httpx.TransportError:
        return False
    return True
