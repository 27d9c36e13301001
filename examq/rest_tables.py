"""Table and view reads for the local Supabase API stand-in: ``GET /rest/v1/{relation}``.

examq's dashboard reads a few tables and views through supabase-js
(``supabase.from('jobs').select(...).eq(...)``), which becomes a PostgREST read. This
module answers those reads as PostgREST 12.2 does, for the part of its grammar the
dashboard uses, and is mounted by ``examq.rest.create_rest_app`` next to the RPC
endpoint, behind the same gateway and JWT checks.

What is reproduced (PostgREST's docs: references/api/tables_views.rst,
pagination_count.rst; its source: RangeQuery.hs, Response.hs, Error.hs):

- ``select``: ``*`` or a comma-separated list of column names. Columns are written
  ``"relation"."column"``, so an unknown one gets Postgres' own 42703 ``column
  jobs.nope does not exist`` (400), and an unknown relation 42P01 (404).
- Filters ``column=[not.]op.value`` with ``eq``, ``neq``, ``gt``, ``gte``, ``lt``,
  ``lte``, ``like``, ``ilike`` (``*`` is the wildcard), ``is`` (``null``, ``true``,
  ``false``, ``unknown``) and ``in.(a,b,"c,d")``. Values travel as untyped parameters,
  so Postgres converts them to the column's type (and raises 22P02 and the like).
  A filter the grammar does not know is 400 PGRST100.
- ``order=column[.asc|.desc][.nullsfirst|.nullslast],...``, ``limit``, ``offset``.
- ``Prefer: count=exact``: the total of rows matching the filters, in
  ``Content-Range: lower-upper/total``; the status is 206 when the page holds fewer
  rows than the total, and 416 PGRST103 when the offset is past it. Without a count,
  ``Content-Range: lower-upper/*`` (``*/*`` for an empty page).
- ``Accept: application/vnd.pgrst.object+json`` (supabase-js ``.single()``): one
  object, or 406 PGRST116 when the result is not exactly one row.
- The read runs in a READ ONLY transaction under the JWT's role with
  ``request.jwt.claims`` set, so row-level security and grants apply as on Supabase:
  the anon role gets 401 42501 on examq's tables, a teacher sees their own rows.

Not reproduced: writes (examq's tables are written by its functions only), embedded
resources and aliases or casts in ``select``, the logical filters ``or`` and ``and``,
full-text and array operators, the ``Range`` request header, ``count=planned`` and
``count=estimated`` (ignored: no count), CSV and other media types.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

import psycopg
from loguru import logger
from psycopg import sql
from starlette.requests import Request
from starlette.responses import Response

from examq.rest import (
    _SETTINGS_SQL,
    ANON_ROLE,
    EXPOSED_SCHEMA,
    JSON_CONTENT_TYPE,
    SEARCH_PATH,
    _Answer,
    _bearer_token,
    _check_api_key,
    _claims,
    _from_pg_error,
    _pgrst,
    _rollback_quietly,
    _RpcEndpoint,
)

SINGLE_OBJECT = "application/vnd.pgrst.object+json"

_RESERVED = {"select", "order", "limit", "offset", "apikey", "columns", "on_conflict"}
_COMPARISONS = {"eq": "=", "neq": "<>", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
_IS_VALUES = {"null": "null", "true": "true", "false": "false", "unknown": "unknown"}
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*$")


def _parse_error(what: str, text: str, details: str) -> _Answer:
    """PostgREST's answer for a query string it cannot parse (400 PGRST100)."""
    return _pgrst(
        400,
        "PGRST100",
        f'"failed to parse {what} ({text})" (line 1, column 1)',
        details,
    )


@dataclass(frozen=True)
class _Filter:
    column: str
    operator: str
    value: str
    is_negated: bool


@dataclass(frozen=True)
class _OrderTerm:
    column: str
    direction: str | None
    nulls: str | None


@dataclass
class _Read:
    """What one read asks for, once parsed."""

    relation: str
    columns: list[str] | None
    filters: list[_Filter] = field(default_factory=list)
    order: list[_OrderTerm] = field(default_factory=list)
    limit: int | None = None
    offset: int = 0
    wants_count: bool = False
    wants_single: bool = False


def _column(name: str, what: str, text: str) -> str:
    name = name.strip()
    if not _IDENTIFIER.match(name):
        raise _parse_error(
            what, text, f"unexpected {name!r}: this stand-in reads plain column names"
        )
    return name


def _parse_select(text: str) -> list[str] | None:
    if text.strip() in ("", "*"):
        return None
    return [_column(part, "select parameter", text) for part in text.split(",")]


def _parse_filter(column: str, text: str) -> _Filter:
    is_negated = text.startswith("not.")
    operator, dot, value = (text[4:] if is_negated else text).partition(".")
    if not dot or operator not in {*_COMPARISONS, "like", "ilike", "is", "in"}:
        raise _parse_error("filter", text, f"unknown operator {operator!r}")
    if operator == "is" and value.lower() not in _IS_VALUES:
        raise _parse_error("filter", text, "is takes null, true, false or unknown")
    if operator == "in" and not (value.startswith("(") and value.endswith(")")):
        raise _parse_error("filter", text, "in takes a list in parentheses: in.(a,b)")
    return _Filter(_column(column, "filter", text), operator, value, is_negated)


def _parse_order(text: str) -> list[_OrderTerm]:
    terms = []
    for part in text.split(","):
        name, *modifiers = part.strip().split(".")
        direction = nulls = None
        for modifier in modifiers:
            if modifier in ("asc", "desc") and direction is None and nulls is None:
                direction = modifier
            elif modifier in ("nullsfirst", "nullslast") and nulls is None:
                nulls = modifier
            else:
                raise _parse_error("order", text, f"unexpected {modifier!r}")
        terms.append(_OrderTerm(_column(name, "order", text), direction, nulls))
    return terms


def _parse_count(what: str, text: str) -> int:
    if not text.isdigit():
        raise _parse_error(f"{what} parameter", text, "expecting digit")
    return int(text)


def _in_list(value: str) -> list[str]:
    """The items of ``(a,b,"c,d")``: double quotes protect commas; ``\\`` escapes."""
    items: list[str] = []
    current: list[str] = []
    is_quoted = was_quoted = False
    chars = iter(value[1:-1])
    for char in chars:
        if is_quoted:
            if char == "\\":
                current.append(next(chars, ""))
            elif char == '"':
                is_quoted = False
            else:
                current.append(char)
        elif char == '"':
            is_quoted = was_quoted = True
        elif char == ",":
            items.append("".join(current) if was_quoted else "".join(current).strip())
            current, was_quoted = [], False
        else:
            current.append(char)
    if current or was_quoted or items:
        items.append("".join(current) if was_quoted else "".join(current).strip())
    return items


def _array_literal(items: list[str]) -> str:
    """A Postgres array literal whose elements are exactly ``items``."""
    quoted = (
        '"' + item.replace("\\", "\\\\").replace('"', '\\"') + '"' for item in items
    )
    return "{" + ",".join(quoted) + "}"


def parse_read(relation: str, request: Request) -> _Read:
    """Turn a request's path, query string and headers into a read, or raise PGRST1xx."""
    params = request.query_params
    read = _Read(relation=relation, columns=_parse_select(params.get("select", "*")))

    for key, value in params.multi_items():
        if key not in _RESERVED:
            read.filters.append(_parse_filter(key, value))

    if "order" in params:
        read.order = _parse_order(params["order"])
    if "limit" in params:
        read.limit = _parse_count("limit", params["limit"])
    if "offset" in params:
        read.offset = _parse_count("offset", params["offset"])

    prefer = request.headers.get("prefer", "")
    read.wants_count = any(p.strip() == "count=exact" for p in prefer.split(","))
    read.wants_single = SINGLE_OBJECT in request.headers.get("accept", "")
    return read


def _where(read: _Read) -> tuple[sql.Composable, list[Any]]:
    relation = sql.Identifier(read.relation)
    conditions: list[sql.Composable] = []
    values: list[Any] = []
    for item in read.filters:
        target = sql.SQL("{}.{}").format(relation, sql.Identifier(item.column))
        if item.operator in _COMPARISONS:
            condition = sql.SQL("{} " + _COMPARISONS[item.operator] + " {}").format(
                target, sql.Placeholder()
            )
            values.append(item.value)
        elif item.operator in ("like", "ilike"):
            condition = sql.SQL("{} " + item.operator + " {}").format(
                target, sql.Placeholder()
            )
            values.append(item.value.replace("*", "%"))
        elif item.operator == "is":
            condition = sql.SQL("{} is " + _IS_VALUES[item.value.lower()]).format(
                target
            )
        else:
            condition = sql.SQL("{} = any ({})").format(target, sql.Placeholder())
            values.append(_array_literal(_in_list(item.value)))
        conditions.append(
            sql.SQL("not ({})").format(condition) if item.is_negated else condition
        )

    if not conditions:
        return sql.SQL(""), values
    return sql.SQL(" where ") + sql.SQL(" and ").join(conditions), values


def read_statements(read: _Read) -> tuple[sql.Composed, sql.Composed | None, list[Any]]:
    """The page statement, the count statement (when asked for) and their parameters.

    Only the filter values are parameters; names are quoted identifiers, so no part of
    the query string becomes SQL text.
    """
    relation = sql.Identifier(read.relation)
    source = sql.SQL("{}.{}").format(sql.Identifier(EXPOSED_SCHEMA), relation)
    where, values = _where(read)

    if read.columns is None:
        selected = sql.SQL("{}.*").format(relation)
    else:
        selected = sql.SQL(", ").join(
            sql.SQL("{}.{}").format(relation, sql.Identifier(c)) for c in read.columns
        )

    order = sql.SQL("")
    if read.order:
        terms = [
            sql.SQL("{}.{}{}{}").format(
                relation,
                sql.Identifier(t.column),
                sql.SQL(f" {t.direction}" if t.direction else ""),
                sql.SQL(
                    {"nullsfirst": " nulls first", "nullslast": " nulls last"}.get(
                        t.nulls or "", ""
                    )
                ),
            )
            for t in read.order
        ]
        order = sql.SQL(" order by ") + sql.SQL(", ").join(terms)

    page = sql.SQL("{}{}").format(
        sql.SQL(f" limit {read.limit}") if read.limit is not None else sql.SQL(""),
        sql.SQL(f" offset {read.offset}") if read.offset else sql.SQL(""),
    )
    statement = sql.SQL(
        "select coalesce(json_agg(_postgrest_t), '[]')::text, count(_postgrest_t) "
        "from (select {selected} from {source}{where}{order}{page}) _postgrest_t"
    ).format(selected=selected, source=source, where=where, order=order, page=page)

    count = None
    if read.wants_count:
        count = sql.SQL(
            "select count(*) from (select 1 from {source}{where}) _postgrest_c"
        ).format(source=source, where=where)
    return statement, count, values


def content_range(lower: int, rows: int, total: int | None) -> tuple[int, str]:
    """PostgREST's status and ``Content-Range`` for a page of ``rows`` rows at ``lower``."""
    upper = lower + rows - 1
    has_range = total != 0 and lower <= upper
    header = (
        (f"{lower}-{upper}" if has_range else "*")
        + "/"
        + ("*" if total is None else str(total))
    )
    if total is None:
        return 200, header
    if lower > total:
        return 416, header
    return (206 if rows < total else 200), header


class TableEndpoint:
    """Serves ``GET``/``HEAD /rest/v1/{relation}`` for one database and JWT secret."""

    def __init__(self, database_url: str, jwt_secret: str) -> None:
        self._database_url = database_url
        self._jwt_secret = jwt_secret
        self._rpc = _RpcEndpoint(database_url, jwt_secret)

    async def handle(self, request: Request) -> Response:
        """Answer one read as PostgREST does, errors included."""
        started = time.perf_counter()
        relation = request.path_params["relation"]
        role = "-"
        try:
            api_key = _check_api_key(request, self._jwt_secret)
            claims = _claims(_bearer_token(request, api_key), self._jwt_secret)
            role = claims["role"]
            profile = request.headers.get("accept-profile")
            if profile is not None and profile != EXPOSED_SCHEMA:
                raise _pgrst(
                    406,
                    "PGRST106",
                    f"The schema must be one of the following: {EXPOSED_SCHEMA}",
                )
            read = parse_read(relation, request)
            response = await self._read(request, read, claims)
        except _Answer as answer:
            response = answer.response()

        logger.debug(
            "table read answered",
            relation=relation,
            role=role,
            status=response.status_code,
            duration_ms=round((time.perf_counter() - started) * 1000, 1),
        )
        return response

    async def _read(
        self, request: Request, read: _Read, claims: dict[str, Any]
    ) -> Response:
        is_authenticated = claims["role"] != ANON_ROLE
        statement, count_statement, values = read_statements(read)
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
                await self._rpc._check_role(conn, claims["role"])
                await conn.execute("begin read only")
                await conn.execute(
                    _SETTINGS_SQL,
                    (
                        SEARCH_PATH,
                        claims["role"],
                        json.dumps(claims),
                        request.method,
                        request.url.path,
                        json.dumps({k.lower(): v for k, v in request.headers.items()}),
                        json.dumps(dict(request.cookies)),
                    ),
                )
                body, rows = await (await conn.execute(statement, values)).fetchone()
                total = None
                if count_statement is not None:
                    (total,) = await (
                        await conn.execute(count_statement, values)
                    ).fetchone()
                await conn.execute("commit")
            except psycopg.Error as exc:
                await _rollback_quietly(conn)
                raise _from_pg_error(exc, is_authenticated=is_authenticated) from exc

        status, range_header = content_range(read.offset, rows, total)
        if status == 416:
            raise _pgrst(
                416,
                "PGRST103",
                "Requested range not satisfiable",
                f"An offset of {read.offset} was requested, but there are only {total} rows.",
                headers=[("Content-Range", range_header)],
            )

        if read.wants_single:
            if rows != 1:
                raise _pgrst(
                    406,
                    "PGRST116",
                    "Cannot coerce the result to a single JSON object",
                    f"The result contains {rows} rows",
                )
            body = json.dumps(json.loads(body)[0], ensure_ascii=False)

        content_type = (
            f"{SINGLE_OBJECT}; charset=utf-8"
            if read.wants_single
            else JSON_CONTENT_TYPE
        )
        return Response(
            body if request.method != "HEAD" else b"",
            status_code=status,
            headers={"content-type": content_type, "content-range": range_header},
        )
