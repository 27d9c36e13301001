"""Shared fixtures: a real PostgreSQL with the migrations applied, one database per test.

The server is ``EXAMQ_TEST_DATABASE_URL`` (default: the local PostgreSQL on
127.0.0.1:5432), or, when that cannot be reached, the embedded server. A template
database gets the Supabase stand-in, the migrations and the seed once per session;
each test that asks for ``db_url`` gets its own copy of it, so tests are isolated and
may commit, run concurrent connections, or kill them.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse, urlunparse

import psycopg
import pytest

from examq import local
from examq.db import PsycopgTransport
from examq.queue import Queue

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"

# Seeded users (supabase/seed.sql).
FREE_USER = "00000000-0000-4000-8000-000000000001"
PRO_USER = "00000000-0000-4000-8000-000000000002"
ENTERPRISE_USER = "00000000-0000-4000-8000-000000000003"
ADMIN_USER = "00000000-0000-4000-8000-00000000000a"


def _with_database(url: str, name: str) -> str:
    return urlunparse(urlparse(url)._replace(path=f"/{name}"))


def _server_url() -> str:
    url = os.environ.get("EXAMQ_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    try:
        psycopg.connect(url, connect_timeout=3).close()
        return url
    except psycopg.OperationalError:
        from examq.config import load_settings

        settings = load_settings({"EXAMQ_DATA_DIR": str(Path.home() / ".cache" / "examq-test")})
        return local.embedded_url(settings)


@pytest.fixture(scope="session")
def pg_server_url() -> str:
    """URL of a maintenance database on the test server."""
    return _server_url()


@pytest.fixture(scope="session")
def template_db(pg_server_url: str) -> Iterator[str]:
    """Name of a template database with the stand-in, migrations and seed applied."""
    name = f"examq_tpl_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(f'create database "{name}"')
    local.apply_schema(_with_database(pg_server_url, name), seed=True)
    yield name
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(f'drop database if exists "{name}" with (force)')


@pytest.fixture
def db_url(pg_server_url: str, template_db: str) -> Iterator[str]:
    """URL of a fresh database cloned from the template, dropped after the test."""
    name = f"examq_t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(f'create database "{name}" template "{template_db}"')
    yield _with_database(pg_server_url, name)
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(f'drop database if exists "{name}" with (force)')


@pytest.fixture
def queue(db_url: str) -> Iterator[Queue]:
    """A queue client over a direct connection to the test database."""
    transport = PsycopgTransport(db_url)
    yield Queue(transport)
    transport.close()


@pytest.fixture
def sql(db_url: str) -> Iterator[psycopg.Connection]:
    """An autocommit superuser connection to the test database, for setup and checks."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        yield conn


def shared_data(*parts: str) -> Path:
    """A file of ../shared/data, or skip the test when that folder is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared test data not present: {path.name} (../shared/data is absent)")
    return path
