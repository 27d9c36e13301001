"""Schema setup (stand-in, migrations, seed) when several commands start at once."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest

from examq import local
from tests.conftest import _with_database


@pytest.fixture
def empty_db(pg_server_url: str) -> Iterator[str]:
    name = f"examq_e_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(f'create database "{name}"')
    yield _with_database(pg_server_url, name)
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(f'drop database if exists "{name}" with (force)')


def test_two_setups_at_once_on_an_empty_database_both_succeed_and_apply_once(empty_db):
    start = threading.Barrier(2)

    def setup() -> list[str]:
        start.wait()
        return local.apply_schema(empty_db, seed=True)

    with ThreadPoolExecutor(2) as pool:
        first, second = pool.map(lambda _: setup(), range(2))

    applied = sorted([first, second], key=len)
    assert applied[0] == [] and applied[1] == [p.name for p in local.migration_files()]


def test_a_setup_waits_while_another_holds_the_schema_lock(db_url):
    with psycopg.connect(db_url, autocommit=True) as holder:
        holder.execute("select pg_advisory_lock(%s)", (local.SCHEMA_LOCK,))
        result: dict[str, list[str]] = {}
        waiter = threading.Thread(target=lambda: result.setdefault("applied", local.apply_schema(db_url)))
        waiter.start()
        deadline = time.monotonic() + 30
        waiting = "select exists (select from pg_locks where locktype = 'advisory' and not granted)"
        while not holder.execute(waiting).fetchone()[0]:
            assert time.monotonic() < deadline, "the second setup never asked for the lock"
            time.sleep(0.02)
        assert "applied" not in result
        holder.execute("select pg_advisory_unlock(%s)", (local.SCHEMA_LOCK,))
        waiter.join(timeout=60)

    assert result["applied"] == []


def test_a_reset_waits_for_a_setup_in_progress(db_url):
    with psycopg.connect(db_url, autocommit=True) as holder:
        holder.execute("select pg_advisory_lock(%s)", (local.SCHEMA_LOCK,))
        result: dict[str, list[str]] = {}
        resetter = threading.Thread(
            target=lambda: result.setdefault("applied", local.reset_database(db_url, seed=False))
        )
        resetter.start()
        deadline = time.monotonic() + 30
        waiting = "select exists (select from pg_locks where locktype = 'advisory' and not granted)"
        while not holder.execute(waiting).fetchone()[0]:
            assert time.monotonic() < deadline, "the reset never asked for the lock"
            time.sleep(0.02)
        # Nothing was dropped while the other setup holds the lock.
        assert holder.execute("select to_regclass('public.jobs') is not null").fetchone()[0]
        holder.execute("select pg_advisory_unlock(%s)", (local.SCHEMA_LOCK,))
        resetter.join(timeout=120)

    assert result["applied"] == [p.name for p in local.migration_files()]
