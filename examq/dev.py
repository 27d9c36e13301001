"""``examq dev``: the whole stack on one machine, behind one local server.

One uvicorn server (Starlette) answers what a deployment spreads over Vercel and
Supabase:

- ``/`` the built dashboard (dashboard/dist), and ``/config.js`` pointing the page at
  this server with a local anon key and the list of seeded users;
- ``/rest/v1`` the local PostgREST stand-in (examq.rest: RPC and table reads), with
  roles and claims from JWTs signed with this process's secret;
- ``/auth/v1`` the local Supabase Auth stand-in (examq.local_auth);
- ``/api/cron``, ``/api/health`` and ``/api/jobs``: the Vercel functions themselves
  (``functions/``), unchanged but for one setting: ``/api/jobs`` verifies users'
  tokens with this process's secret, as the project's JWT secret would on Supabase;

and a scheduler fires the crons of vercel.json on their schedules (UTC, as Vercel
does), calling them over HTTP with ``Authorization: Bearer <CRON_SECRET>``.

Realtime is not run: the dashboard's subscription fails to connect and the page says
it fell back to polling. It is a local stand-in: in production the page talks to the
Supabase project itself. The JWT secret is new on every start, so a browser session
from an earlier run ends with the page asking to sign in again.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import jwt
from loguru import logger
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from examq.errors import ConfigError, ExamqError
from examq.local_auth import LocalAuth, create_auth_app
from examq.rest import create_rest_app

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DASHBOARD_DIR = PROJECT_ROOT / "dashboard"
VERCEL_JSON = PROJECT_ROOT / "vercel.json"
ANON_KEY_SECONDS = 10 * 365 * 86400


# Crons -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Cron:
    """One entry of vercel.json's ``crons``: a path called on a cron schedule (UTC)."""

    path: str
    schedule: str


def read_crons(vercel_json: Path = VERCEL_JSON) -> list[Cron]:
    """The crons vercel.json declares; raises ConfigError naming a bad entry."""
    from croniter import croniter

    try:
        entries = json.loads(vercel_json.read_text(encoding="utf-8")).get("crons", [])
    except (OSError, ValueError) as exc:
        raise ConfigError("vercel.json", f"cannot be read: {exc}") from exc

    crons = []
    for entry in entries:
        path, schedule = entry.get("path"), entry.get("schedule")
        if not isinstance(path, str) or not path.startswith("/"):
            raise ConfigError("vercel.json", f"cron path must start with '/': {path!r}")
        if not isinstance(schedule, str) or not croniter.is_valid(schedule):
            raise ConfigError(
                "vercel.json", f"cron schedule of {path} is not valid: {schedule!r}"
            )
        crons.append(Cron(path, schedule))
    return crons


def next_fire(cron: Cron, after: datetime) -> datetime:
    """The first time after ``after`` (aware, UTC) at which ``cron`` fires."""
    from croniter import croniter

    return croniter(cron.schedule, after).get_next(datetime)


class CronScheduler:
    """Fires each cron on its schedule by calling ``fire(cron)`` in a thread of its own.

    A call still running when its cron comes round again makes that round skip (and
    say so), so a slow worker pass never piles up calls; Vercel may overlap them,
    and examq is correct either way.
    """

    def __init__(
        self,
        crons: list[Cron],
        fire: Callable[[Cron], None],
        *,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._crons = crons
        self._fire = fire
        self._now = now
        self._stop = threading.Event()
        self._running: dict[Cron, threading.Thread] = {}
        self._thread = threading.Thread(
            target=self._loop, name="examq-cron", daemon=True
        )

    def start(self) -> None:
        """Start firing in a background thread."""
        if self._crons:
            self._thread.start()

    def stop(self) -> None:
        """Stop firing; calls in flight finish on their own."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        due = {cron: next_fire(cron, self._now()) for cron in self._crons}
        while True:
            cron, at = min(due.items(), key=lambda item: item[1])
            if self._stop.wait(max(0.0, (at - self._now()).total_seconds())):
                return
            previous = self._running.get(cron)
            if previous is not None and previous.is_alive():
                logger.warning(
                    "cron skipped: the previous call is still running", path=cron.path
                )
            else:
                thread = threading.Thread(
                    target=self._call, args=(cron,), name="examq-cron-call", daemon=True
                )
                self._running[cron] = thread
                thread.start()
            due[cron] = next_fire(cron, at)

    def _call(self, cron: Cron) -> None:
        try:
            self._fire(cron)
        except Exception:  # noqa: BLE001 - a failed tick must not stop the scheduler
            logger.exception("cron call failed", path=cron.path)


def http_firer(
    base_url: str, cron_secret: str, timeout_seconds: float
) -> Callable[[Cron], None]:
    """A ``fire`` for CronScheduler that calls the cron's path as Vercel does."""

    def fire(cron: Cron) -> None:
        response = httpx.get(
            f"{base_url}{cron.path}",
            headers={
                "Authorization": f"Bearer {cron_secret}",
                "User-Agent": "vercel-cron/1.0",
            },
            timeout=timeout_seconds,
        )
        try:
            summary = response.json()
        except ValueError:
            summary = {}
        logger.info(
            "cron fired",
            path=cron.path,
            status=response.status_code,
            claimed=summary.get("claimed"),
            succeeded=summary.get("succeeded"),
        )

    return fire


# The dashboard ---------------------------------------------------------------------


def build_dashboard(dashboard_dir: Path = DASHBOARD_DIR) -> Path:
    """Build the dashboard into ``dashboard_dir/dist``; returns that folder.

    Needs Node.js and ``npm ci --prefix dashboard``. Without them, an existing build
    is served as it is. Raises ExamqError when there is neither.
    """
    dist = dashboard_dir / "dist"
    node = shutil.which("node")
    if node and (dashboard_dir / "node_modules").is_dir():
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("SUPABASE_URL", "SUPABASE_ANON_KEY")
        }
        result = subprocess.run(
            [node, str(dashboard_dir / "build.mjs"), "--out", str(dist)],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
            check=False,
        )
        if result.returncode != 0:
            raise ExamqError(
                f"the dashboard build failed: {result.stderr.strip() or result.stdout.strip()}"
            )
        return dist
    if (dist / "index.html").is_file():
        logger.warning(
            "node or dashboard/node_modules missing: serving the existing build in {}",
            dist,
        )
        return dist
    raise ExamqError(
        "the dashboard is not built and cannot be: install Node.js, run "
        "`npm ci --prefix dashboard`, then start examq dev again"
    )


def vercel_function_app(jwt_secret: str | None = None) -> Any:
    """The Vercel functions (cron, health, jobs) as one ASGI app, from the checkout.

    They are not packaged: each is imported from ``functions/`` as Vercel would, and
    gets its requests unchanged (full path), as on Vercel. ``jwt_secret`` is the one
    the local Auth stand-in signs with: the jobs function verifies users' tokens with
    it, as on Supabase it would with the project's JWT secret.
    """
    if str(PROJECT_ROOT) not in sys.path:
        sys.path.insert(0, str(PROJECT_ROOT))
    from functions.cron import app as cron
    from functions.health import app as health
    from functions.jobs import create_app as create_jobs_app

    return Starlette(
        routes=[
            Route("/api/cron", cron),
            Route("/api/health", health),
            Route("/api/jobs", create_jobs_app(jwt_secret=jwt_secret)),
        ]
    )


def anon_key(jwt_secret: str) -> str:
    """The local anon key: a JWT with role anon, as Supabase's legacy anon key is."""
    now = int(time.time())
    return jwt.encode(
        {"iss": "examq-dev", "role": "anon", "iat": now, "exp": now + ANON_KEY_SECONDS},
        jwt_secret,
        algorithm="HS256",
    )


def create_dev_app(
    database_url: str,
    *,
    jwt_secret: str,
    static_dir: Path,
    cron_app: Any = None,
) -> Starlette:
    """The ASGI app of ``examq dev``: dashboard, config.js, REST, auth and /api."""
    auth = LocalAuth(database_url, jwt_secret)
    key = anon_key(jwt_secret)
    if cron_app is None:
        cron_app = vercel_function_app(jwt_secret)

    async def config_js(request: Request) -> Response:
        users = await run_in_threadpool(auth.list_users)
        config = {
            "supabaseUrl": str(request.base_url).rstrip("/"),
            "supabaseAnonKey": key,
            "local": {"users": users},
        }
        return Response(
            "// Served by examq dev: the local stand-in's URL and anon key.\n"
            f"window.EXAMQ_CONFIG = {json.dumps(config, indent=2)};\n",
            media_type="text/javascript",
            headers={"cache-control": "no-store"},
        )

    # Routes whose endpoint is an ASGI app get the request unchanged (full path), as
    # the Vercel function and the Supabase gateway would.
    routes = [
        Route("/config.js", config_js, methods=["GET"]),
        Route("/rest/{path:path}", create_rest_app(database_url, jwt_secret)),
        Route("/auth/{path:path}", create_auth_app(auth)),
        Route("/api/{path:path}", cron_app),
        Mount("/", StaticFiles(directory=static_dir, html=True)),
    ]
    return Starlette(routes=routes)


# Running it --------------------------------------------------------------------------


def listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port``; raises ConfigError saying why it cannot be."""
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if not 0 <= port <= 65535:
        raise ConfigError("--port", f"must be between 0 and 65535, not {port}")
    sock = socket.socket(
        socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM
    )
    try:
        # Lets a restarted server bind while the previous one's connections linger
        # in TIME_WAIT; a port another server listens on is still refused.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(
                "--port",
                f"cannot listen on {where}: address already in use; choose another --port",
            ) from None
        if exc.errno == errno.EACCES:
            raise ConfigError(
                "--port",
                f"cannot listen on {where}: permission denied; choose a port above 1023",
            ) from None
        reason = exc.strerror or str(exc)
        raise ConfigError(
            "--host", f"cannot listen on {where}: {reason}; check --host"
        ) from None
    return sock


def run(
    database_url: str,
    *,
    host: str,
    port: int,
    cron_secret: str | None,
    cron_budget_seconds: float,
    fire_crons: bool,
    static_dir: Path,
) -> None:
    """Serve until interrupted; prints the URL on stdout once the socket is bound."""
    import uvicorn

    jwt_secret = secrets.token_urlsafe(32)
    # functions.cron reads its settings from the environment on each call: it gets
    # the same database and a cron secret the scheduler knows.
    chosen_secret = cron_secret
    cron_secret = cron_secret or secrets.token_urlsafe(24)
    os.environ["DATABASE_URL"] = database_url
    os.environ["CRON_SECRET"] = cron_secret

    sock = listening_socket(host, port)
    bound_port = sock.getsockname()[1]
    local_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    base_url = f"http://{local_host}:{bound_port}"

    app = create_dev_app(database_url, jwt_secret=jwt_secret, static_dir=static_dir)
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="info", lifespan="off", ws="none")
    )

    scheduler = None
    if fire_crons:
        crons = read_crons()
        scheduler = CronScheduler(
            crons, http_firer(base_url, cron_secret, cron_budget_seconds + 30)
        )
        scheduler.start()
        for cron in crons:
            logger.info("cron scheduled", path=cron.path, schedule=cron.schedule)

    if host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning(
            "examq dev signs anyone in without a password; it listens on {} only by your choice",
            host,
        )
    if chosen_secret is None:
        # Made up for this run: without it the cron endpoint cannot be called by hand.
        print(
            f"examq dev: call {base_url}/api/cron with 'Authorization: Bearer {cron_secret}'",
            flush=True,
        )
    print(f"examq dev: serving {base_url}", flush=True)
    try:
        server.run(sockets=[sock])
    finally:
        if scheduler is not None:
            scheduler.stop()
        sock.close()
