"""Runs each pgTAP file of supabase/tests/database with pg_prove, on its own database."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import psycopg
import pytest

from tests.conftest import PROJECT_ROOT

SQL_TESTS = sorted((PROJECT_ROOT / "supabase" / "tests" / "database").glob("*.test.sql"))


@pytest.mark.parametrize("path", SQL_TESTS, ids=[p.name for p in SQL_TESTS])
def test_pgtap_file(path: Path, db_url: str):
    if shutil.which("pg_prove") is None:
        pytest.skip("pg_prove is not installed (Debian: libtap-parser-sourcehandler-pgtap-perl)")
    try:
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute("create extension if not exists pgtap")
    except psycopg.errors.FeatureNotSupported as exc:
        pytest.skip(f"pgTAP is not installed on the test server: {exc}")
    except psycopg.errors.UndefinedFile as exc:
        pytest.skip(f"pgTAP is not installed on the test server: {exc}")

    result = subprocess.run(
        ["pg_prove", "--verbose", "--dbname", db_url, str(path)],
        capture_output=True, text=True, timeout=300,
    )

    assert result.returncode == 0, result.stdout + result.stderr
