"""Submitting jobs as a signed-in user, so that row-level security and tier limits apply.

The jobs API (functions/jobs.py) receives the teacher's Supabase access token and
must enqueue under that identity, never with the service role. Two ways, matching
examq's two transports:

- Over the Supabase API: PostgREST with the project's anon key as ``apikey`` and the
  user's token as ``Authorization``. PostgREST verifies the token and runs the call
  as the ``authenticated`` role with the token's claims.
- Over a direct connection (``DATABASE_URL`` or the embedded server): the token is
  verified here with the project's JWT secret (HS256, audience ``authenticated``,
  ``exp`` required, 30 s of leeway as PostgREST allows), then the call runs in one
  transaction after ``set local role authenticated`` and
  ``set_config('request.jwt.claims', ...)``, which is what PostgREST does.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from typing import Any

from examq.db import SupabaseTransport
from examq.errors import (
    DatabaseError,
    ExamqError,
    PermissionDenied,
    Unavailable,
    error_for_sqlstate,
)

JWT_AUDIENCE = "authenticated"
JWT_LEEWAY_SECONDS = 30


class InvalidToken(ExamqError):
    """The access token is missing, malformed, expired, or not a signed-in user's."""


def verify_access_token(token: str, secret: str | None) -> dict[str, Any]:
    """Return the claims of a signed-in user's Supabase access token.

    Raises InvalidToken when the signature, audience or expiry do not check out, or
    when the token is not an ``authenticated`` user's (an anon or service key is
    refused: this path must never run with more rights than the user has).

    With ``secret=None`` the signature is not checked, only the claims: for a token
    that goes on to PostgREST, which checks the signature with the project's key.
    """
    import jwt

    if not token:
        raise InvalidToken("no access token")
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=["HS256"],
            audience=JWT_AUDIENCE,
            leeway=JWT_LEEWAY_SECONDS,
            # Without the signature, PyJWT checks nothing else unless told to.
            options={
                "require": ["exp", "sub"],
                "verify_signature": secret is not None,
                "verify_exp": True,
                "verify_aud": True,
            },
        )
    except jwt.ExpiredSignatureError as exc:
        raise InvalidToken("the access token has expired") from exc
    except jwt.InvalidTokenError as exc:
        raise InvalidToken(
            f"the access token is not valid ({type(exc).__name__})"
        ) from exc

    if claims.get("role") != "authenticated":
        raise InvalidToken("the access token is not a signed-in user's")
    try:
        uuid.UUID(str(claims["sub"]))
    except ValueError as exc:
        raise InvalidToken("the access token's subject is not a user id") from exc
    return claims


class UserPsycopgTransport:
    """Calls the SQL functions over a direct connection as the user the claims name.

    One connection per call, closed after it: the role and claims are set with
    ``set local`` inside the call's transaction, so nothing leaks to a later user.
    """

    def __init__(self, url: str, claims: Mapping[str, Any]) -> None:
        self._url = url
        self._claims = json.dumps(dict(claims))

    def call(self, function: str, params: Mapping[str, Any]) -> Any:
        """Run ``public.<function>`` as the user; returns its JSON value; raises DatabaseError subclasses."""
        import psycopg
        from psycopg import sql
        from psycopg.types.json import Jsonb

        args = [
            sql.SQL("{} => {}").format(sql.Identifier(name), sql.Placeholder())
            for name in params
        ]
        values = [
            Jsonb(v) if isinstance(v, dict | list) else v for v in params.values()
        ]
        query = sql.SQL("select {}.{}({}) as value").format(
            sql.Identifier("public"), sql.Identifier(function), sql.SQL(", ").join(args)
        )
        try:
            with (
                psycopg.connect(
                    self._url, connect_timeout=10, application_name="examq-jobs-api"
                ) as conn,
                conn.transaction(),
            ):
                conn.execute("set local role authenticated")
                conn.execute(
                    "select set_config('request.jwt.claims', %s, true)",
                    [self._claims],
                )
                row = conn.execute(query, values).fetchone()
        except psycopg.OperationalError as exc:
            raise Unavailable(
                f"database unavailable during {function}: {exc}".strip()
            ) from exc
        except psycopg.Error as exc:
            raise error_for_sqlstate(
                exc.sqlstate,
                exc.diag.message_primary or str(exc),
                detail=exc.diag.message_detail,
            ) from exc
        return json.loads(json.dumps(row[0], default=str)) if row else None

    def close(self) -> None:
        """Nothing to release: each call opens and closes its own connection."""


def user_supabase_transport(url: str, anon_key: str, token: str) -> Any:
    """A SupabaseTransport that calls PostgREST with the anon key and the user's token."""
    from supabase import create_client

    client = create_client(url, anon_key)
    client.postgrest.auth(token)
    return SupabaseTransport(url, anon_key, client=client)


def is_token_rejection(error: DatabaseError) -> bool:
    """True when PostgREST refused the user's token itself (expired, bad signature, ...)."""
    return (error.sqlstate or "").startswith("PGRST30") or (
        isinstance(error, PermissionDenied) and "JWT" in str(error)
    )
