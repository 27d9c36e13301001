"""GET /api/health: the queue's health, for an uptime check and for operators.

The report is ``public.queue_health()``: queue depth by tier, the oldest ready job's
wait, the dead-letter count, expired leases not yet reclaimed, the last successful
cron tick and the failure rate over the last 15 minutes, with ``ok`` and the
problems found (no successful tick for ``EXAMQ_HEALTH_TICK_STALE_SECONDS``, default
300 s; a ready job older than ``EXAMQ_HEALTH_QUEUE_AGE_SECONDS``, default 900 s).

Who may call it: the same ``Authorization: Bearer <CRON_SECRET>`` as the cron, which
is what an uptime monitor holds; anything else is 401. Admins do not need this
endpoint: ``queue_health()`` is an RPC that admins may call with their own session
(supabase-js ``rpc('queue_health')``, or Studio), and that teachers may not.

Answers 200 with the report when ``ok``, 503 with the report when not (so that an
uptime check alerts), 500 when CRON_SECRET is not configured, and 503 with
``{"error": "database unavailable"}`` when the database cannot be reached.
"""

from __future__ import annotations

import threading

from loguru import logger
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from examq.config import Settings, load_settings
from examq.errors import ConfigError, DatabaseError
from examq.local import open_queue
from examq.log import configure_logging
from examq.queue import Queue
from functions.cron import config_error_response, is_authorized

HEALTH_TIMEOUT_SECONDS = 5.0

_queue: Queue | None = None
_queue_lock = threading.Lock()


def _shared_queue(settings: Settings) -> Queue:
    # Warm invocations reuse the connection of the previous one.
    global _queue
    with _queue_lock:
        if _queue is None:
            # A monitor wants an answer soon: a database too busy to give one in a
            # few seconds is reported unavailable (503) rather than left hanging.
            _queue = open_queue(settings, prepare=False, statement_timeout_seconds=HEALTH_TIMEOUT_SECONDS)
        return _queue


def health(request: Request) -> JSONResponse:
    """Authenticate the caller and answer with the queue's health report."""
    try:
        settings = load_settings()
    except ConfigError as exc:
        return config_error_response(request, exc)
    configure_logging(settings.log_format, settings.log_level, settings=settings)

    secret = settings.cron_secret.get_secret_value() if settings.cron_secret else ""
    if not secret:
        logger.error("CRON_SECRET is not set; refusing to answer")
        return JSONResponse(
            {
                "error": "CRON_SECRET is not set: set it in the project's environment variables"
            },
            status_code=500,
        )
    if not is_authorized(request, secret):
        return JSONResponse({"error": "unauthorized"}, status_code=401)

    try:
        report = _shared_queue(settings).health(
            tick_stale_seconds=settings.health_tick_stale_seconds,
            queue_age_seconds=settings.health_queue_age_seconds,
        )
    except ConfigError as exc:
        return JSONResponse({"error": f"configuration: {exc}"}, status_code=500)
    except DatabaseError as exc:
        logger.error("health check failed: {}", type(exc).__name__)
        return JSONResponse({"error": "database unavailable"}, status_code=503)

    if not report.get("ok"):
        logger.warning("queue unhealthy", problems=report.get("problems"))
    return JSONResponse(report, status_code=200 if report.get("ok") else 503)


app = Starlette(routes=[Route("/api/health", health, methods=["GET"])])
