"""Two transports to the same SQL functions: psycopg (direct) and supabase-py (RPC over HTTP).

Both take a function name and named arguments, return the function's value decoded
from JSON the same way, and raise the same exceptions from ``examq.errors``. Values
come back as JSON would carry them (timestamps and uuids as strings) on both, so the
callers above never see which transport they used.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Mapping
from typing import Any, Protocol

from examq.errors import Unavailable, error_for_sqlstate

# What each function returns: a set of rows, one row, or a single (JSON) value.
_SHAPES = {
    "claim_jobs": "rows",
    "claim_job_batch": "rows",
    "enqueue_job": "row",
    "get_job": "row",
}


# Parameters declared as SQL arrays; every other dict or list argument is jsonb.
_ARRAY_PARAMS = {"p_job_types"}


class Transport(Protocol):
    """Calls one SQL function of the queue and returns its decoded value."""

    def call(self, function: str, params: Mapping[str, Any]) -> Any:
        """Call ``public.<function>`` with named parameters; raises DatabaseError subclasses."""

    def close(self) -> None:
        """Release the connection."""


def _to_json_compatible(value: Any) -> Any:
    """Round-trip through JSON so both transports hand back identical values."""
    return json.loads(json.dumps(value, default=str))


class PsycopgTransport:
    """Calls the SQL functions over one direct PostgreSQL connection, in autocommit mode."""

    def __init__(
        self, url: str, *, application_name: str = "examq", statement_timeout_seconds: float | None = None
    ) -> None:
        self._url = url
        self._application_name = application_name
        # A bound on every statement of this connection (a call that waits on a lock
        # held elsewhere fails instead of hanging); none by default.
        self._options = (
            f"-c statement_timeout={max(1, round(statement_timeout_seconds * 1000))}"
            if statement_timeout_seconds is not None
            else None
        )
        self._lock = threading.Lock()
        self._conn: Any = None

    def _connect(self) -> Any:
        import psycopg

        try:
            extra = {"options": self._options} if self._options else {}
            return psycopg.connect(
                self._url,
                autocommit=True,
                application_name=self._application_name,
                connect_timeout=10,
                **extra,
            )
        except psycopg.OperationalError as exc:
            raise Unavailable(f"cannot connect to the database: {exc}".strip()) from exc

    def call(self, function: str, params: Mapping[str, Any]) -> Any:
        """Run ``select ... from public.<function>(p_x => ...)`` and decode the value."""
        return self._call(function, params, rows_as_text=False)

    def call_rows_as_text(self, function: str, params: Mapping[str, Any]) -> list[str]:
        """Like ``call`` for a function returning rows, each row as JSON text.

        The claims use it: pydantic validates a job straight from its JSON text, which
        costs less than decoding every row into a dict first.
        """
        return self._call(function, params, rows_as_text=True)

    def _call(self, function: str, params: Mapping[str, Any], *, rows_as_text: bool) -> Any:
        import psycopg
        from psycopg import sql
        from psycopg.types.json import Jsonb

        args = []
        values = []
        for name, value in params.items():
            args.append(sql.SQL("{} => {}").format(sql.Identifier(name), sql.Placeholder()))
            if isinstance(value, dict | list) and name not in _ARRAY_PARAMS:
                value = Jsonb(value)
            values.append(value)
        shape = _SHAPES.get(function, "value")
        call = sql.SQL("{}.{}({})").format(
            sql.Identifier("public"), sql.Identifier(function), sql.SQL(", ").join(args)
        )
        if shape == "value":
            query = sql.SQL("select {} as value").format(call)
        elif rows_as_text:
            query = sql.SQL("select row_to_json(r)::text as value from {} r").format(call)
        else:
            query = sql.SQL("select to_jsonb(r) as value from {} r").format(call)

        with self._lock:
            if self._conn is None or self._conn.closed:
                self._conn = self._connect()
            try:
                rows = self._conn.execute(query, values).fetchall()
            except psycopg.OperationalError as exc:
                if exc.sqlstate is None or self._conn.broken:
                    self._drop_connection()
                    raise Unavailable(f"database connection failed during {function}: {exc}") from exc
                # The server answered (a deadlock, a serialization failure, a statement
                # timeout): the connection is fine, the error says what happened.
                raise error_for_sqlstate(
                    exc.sqlstate, exc.diag.message_primary or str(exc), detail=exc.diag.message_detail
                ) from exc
            except psycopg.Error as exc:
                if self._conn.broken:
                    self._drop_connection()
                diag = exc.diag
                raise error_for_sqlstate(
                    exc.sqlstate,
                    diag.message_primary or str(exc),
                    detail=diag.message_detail,
                ) from exc

        if shape == "rows" or rows_as_text:
            return [row[0] for row in rows]
        if shape == "row":
            value = rows[0][0] if rows else None
            # A function returning a composite gives a row of nulls for "no row".
            if isinstance(value, dict) and all(v is None for v in value.values()):
                return None
            return value
        return _to_json_compatible(rows[0][0]) if rows else None

    def _drop_connection(self) -> None:
        try:
            if self._conn is not None:
                self._conn.close()
        finally:
            self._conn = None

    def close(self) -> None:
        """Close the connection (a later call reconnects)."""
        with self._lock:
            self._drop_connection()


class SupabaseTransport:
    """Calls the SQL functions as PostgREST RPCs through supabase-py."""

    def __init__(self, url: str, key: str, *, client: Any = None) -> None:
        self._url = url
        self._key = key
        # A client handed in belongs to the caller, who closes it.
        self._owns_client = client is None
        self._client = client if client is not None else self._create_client()

    def _create_client(self) -> Any:
        from supabase import create_client

        return create_client(self._url, self._key)

    def call(self, function: str, params: Mapping[str, Any]) -> Any:
        """POST to ``/rest/v1/rpc/<function>`` and decode the answer."""
        import httpx
        from postgrest.exceptions import APIError

        payload = {k: (str(v) if isinstance(v, uuid.UUID) else v) for k, v in params.items()}
        if self._client is None:
            self._client = self._create_client()
        try:
            response = self._client.rpc(function, payload).execute()
        except APIError as exc:
            raise error_for_sqlstate(
                exc.code, exc.message or str(exc), detail=exc.details
            ) from exc
        except httpx.HTTPError as exc:
            raise Unavailable(f"Supabase API unreachable during {function}: {exc}") from exc

        data = response.data
        shape = _SHAPES.get(function, "value")
        if shape == "rows":
            return list(data or [])
        if shape == "row":
            if isinstance(data, list):
                data = data[0] if data else None
            if isinstance(data, dict) and all(v is None for v in data.values()):
                return None
            return data
        return data

    def close(self) -> None:
        """Close the client's pooled HTTP connections (a later call opens new ones)."""
        # supabase-py keeps one httpx.Client (keep-alive, HTTP/2) per PostgREST client.
        if self._owns_client and self._client is not None:
            self._client.postgrest.session.close()
            self._client = None

