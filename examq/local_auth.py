"""A local stand-in for the part of Supabase Auth that the dashboard uses.

``create_auth_app`` serves what supabase-js calls for e-mail sign-in, the way
Supabase Auth (GoTrue) answers it:

- ``POST /auth/v1/token?grant_type=password`` with ``{"email", "password"}``: a
  session ``{access_token, token_type, expires_in, expires_at, refresh_token,
  user}``; an unknown e-mail is 400 ``{"code": 400, "error_code":
  "invalid_credentials", "msg": "Invalid login credentials"}``.
- ``POST /auth/v1/token?grant_type=refresh_token`` with ``{"refresh_token"}``: a new
  session; the refresh token is used up (rotated), as GoTrue does. An unknown or
  used one is 400 ``refresh_token_not_found``.
- ``GET /auth/v1/user`` with the access token: the user; a bad token is 403
  ``bad_jwt``.
- ``POST /auth/v1/logout``: 204; the session's refresh tokens are forgotten.

The access token is a JWT signed with the local secret, with the claims Supabase
puts in its own (``sub``, ``role: authenticated``, ``aud``, ``email``,
``session_id``, ...), so the REST stand-in and the SQL functions read it exactly as
they read a real one. Users are the rows of ``auth.users`` (the seed's teachers and
admin).

It is a development stand-in: it checks no password, so anyone who can reach it can
sign in as any user of the local database. ``examq dev`` therefore listens on the
loopback interface unless told otherwise. Refresh tokens live in memory and end
with the process.
"""

from __future__ import annotations

import secrets
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import jwt
import psycopg
from psycopg.rows import dict_row
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from examq.rest import JWT_ALGORITHMS, _Answer, _check_api_key

ACCESS_TOKEN_SECONDS = 3600

_USER_SQL = """
select u.id::text as id, u.aud, u.role, u.email, u.raw_app_meta_data, u.raw_user_meta_data,
       u.created_at, u.updated_at
from auth.users u
where {condition}
"""


def _auth_error(status: int, error_code: str, message: str) -> JSONResponse:
    """GoTrue's error body: the HTTP status again, a stable code and a message."""
    return JSONResponse(
        {"code": status, "error_code": error_code, "msg": message}, status_code=status
    )


@dataclass
class _Session:
    session_id: str
    user_id: str


class LocalAuth:
    """Signs seeded users in with JWTs from the local secret; see the module docstring."""

    def __init__(self, database_url: str, jwt_secret: str) -> None:
        self._database_url = database_url
        self._jwt_secret = jwt_secret
        self._refresh_tokens: dict[str, _Session] = {}
        self._lock = threading.Lock()

    def list_users(self) -> list[dict[str, Any]]:
        """The local users, for the sign-in page: e-mail, name, tier and admin flag."""
        with psycopg.connect(self._database_url, row_factory=dict_row) as conn:
            rows = conn.execute(
                """
                select u.email, u.raw_user_meta_data ->> 'name' as name,
                       coalesce(a.tier, 'free') as tier, coalesce(a.is_admin, false) as is_admin
                from auth.users u
                left join public.accounts a on a.user_id = u.id
                where u.email is not null
                order by coalesce(a.is_admin, false), u.email
                """
            ).fetchall()
        return [dict(row) for row in rows]

    async def _user(self, condition: str, value: str) -> dict[str, Any] | None:
        async with await psycopg.AsyncConnection.connect(
            self._database_url, row_factory=dict_row
        ) as conn:
            cursor = await conn.execute(_USER_SQL.format(condition=condition), (value,))
            return await cursor.fetchone()

    def _user_json(self, row: dict[str, Any]) -> dict[str, Any]:
        created = row["created_at"].isoformat()
        return {
            "id": row["id"],
            "aud": row["aud"] or "authenticated",
            "role": row["role"] or "authenticated",
            "email": row["email"],
            "email_confirmed_at": created,
            "phone": "",
            "confirmed_at": created,
            "last_sign_in_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "app_metadata": {
                "provider": "email",
                "providers": ["email"],
                **(row["raw_app_meta_data"] or {}),
            },
            "user_metadata": row["raw_user_meta_data"] or {},
            "identities": [],
            "created_at": created,
            "updated_at": row["updated_at"].isoformat(),
            "is_anonymous": False,
        }

    def _session_json(
        self, request: Request, row: dict[str, Any], session_id: str
    ) -> dict[str, Any]:
        now = int(time.time())
        user = self._user_json(row)
        claims = {
            "iss": f"{str(request.base_url).rstrip('/')}/auth/v1",
            "sub": row["id"],
            "aud": user["aud"],
            "exp": now + ACCESS_TOKEN_SECONDS,
            "iat": now,
            "email": row["email"],
            "phone": "",
            "app_metadata": user["app_metadata"],
            "user_metadata": user["user_metadata"],
            "role": user["role"],
            "aal": "aal1",
            "amr": [{"method": "password", "timestamp": now}],
            "session_id": session_id,
            "is_anonymous": False,
        }
        refresh_token = secrets.token_urlsafe(24)
        with self._lock:
            self._refresh_tokens[refresh_token] = _Session(session_id, row["id"])
        return {
            "access_token": jwt.encode(claims, self._jwt_secret, algorithm="HS256"),
            "token_type": "bearer",
            "expires_in": ACCESS_TOKEN_SECONDS,
            "expires_at": now + ACCESS_TOKEN_SECONDS,
            "refresh_token": refresh_token,
            "user": user,
        }

    async def token(self, request: Request) -> Response:
        """``POST /auth/v1/token``: sign in with a password, or refresh a session."""
        try:
            _check_api_key(request, self._jwt_secret)
        except _Answer as answer:
            return answer.response()
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return _auth_error(400, "bad_json", "Could not parse request body as JSON")

        grant_type = request.query_params.get("grant_type")
        if grant_type == "password":
            email = str(body.get("email") or "").strip().lower()
            if not email or not body.get("password"):
                return _auth_error(400, "validation_failed", "missing email or phone")
            row = await self._user("lower(u.email) = %s", email)
            if row is None:
                return _auth_error(
                    400, "invalid_credentials", "Invalid login credentials"
                )
            return JSONResponse(self._session_json(request, row, str(uuid.uuid4())))

        if grant_type == "refresh_token":
            with self._lock:
                session = self._refresh_tokens.pop(
                    str(body.get("refresh_token") or ""), None
                )
            if session is None:
                return _auth_error(
                    400,
                    "refresh_token_not_found",
                    "Invalid Refresh Token: Refresh Token Not Found",
                )
            row = await self._user("u.id = %s::uuid", session.user_id)
            if row is None:
                return _auth_error(400, "user_not_found", "User not found")
            return JSONResponse(self._session_json(request, row, session.session_id))

        return _auth_error(400, "unsupported_grant_type", "unsupported_grant_type")

    def _claims(self, request: Request) -> dict[str, Any] | None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return None
        try:
            return jwt.decode(
                token.strip(),
                self._jwt_secret,
                algorithms=JWT_ALGORITHMS,
                options={"verify_aud": False},
            )
        except jwt.InvalidTokenError:
            return None

    async def user(self, request: Request) -> Response:
        """``GET /auth/v1/user``: the user the access token names."""
        try:
            _check_api_key(request, self._jwt_secret)
        except _Answer as answer:
            return answer.response()
        claims = self._claims(request)
        if claims is None or not claims.get("sub"):
            return _auth_error(
                403, "bad_jwt", "invalid JWT: unable to parse or verify signature"
            )
        row = await self._user("u.id = %s::uuid", str(claims["sub"]))
        if row is None:
            return _auth_error(
                403, "user_not_found", "User from sub claim in JWT does not exist"
            )
        return JSONResponse(self._user_json(row))

    async def logout(self, request: Request) -> Response:
        """``POST /auth/v1/logout``: forget the session's refresh tokens."""
        claims = self._claims(request)
        if claims is not None:
            with self._lock:
                for token, session in list(self._refresh_tokens.items()):
                    if session.session_id == claims.get("session_id"):
                        del self._refresh_tokens[token]
        return Response(status_code=204)


def create_auth_app(auth: LocalAuth) -> Starlette:
    """An ASGI app serving the ``/auth/v1`` routes of ``auth``."""
    return Starlette(
        routes=[
            Route("/auth/v1/token", auth.token, methods=["POST"]),
            Route("/auth/v1/user", auth.user, methods=["GET"]),
            Route("/auth/v1/logout", auth.logout, methods=["POST"]),
        ]
    )
