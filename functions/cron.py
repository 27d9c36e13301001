"""GET /api/cron: what the Vercel cron calls to run one worker pass.

Vercel sends ``Authorization: Bearer <CRON_SECRET>`` with each cron call; anything
else is refused with 401. The pass stops claiming before ``EXAMQ_CRON_BUDGET_SECONDS``
(default 50 s, below the function's 60 s ``maxDuration`` in vercel.json), so the
function is never stopped mid-job by the platform. Overlapping or repeated ticks are
safe: the database hands each job to one lease at a time. After the pass, the
notification dispatcher checks the admin alerts and sends pending notifications
with what is left of the budget, and the tick is recorded for the cron-silence alert.
"""

from __future__ import annotations

import hmac
import os
import threading

from loguru import logger
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from examq.config import Settings, load_settings
from examq.errors import ConfigError, DatabaseError, Unavailable
from examq.local import open_queue
from examq.log import configure_logging
from examq.notify.dispatcher import Dispatcher
from examq.notify.outbox import Outbox
from examq.queue import Queue
from examq.worker import PassSummary, Worker, retention_step

_queue: Queue | None = None
_queue_lock = threading.Lock()


def _shared_queue(settings: Settings) -> Queue:
    # Warm invocations reuse the connection of the previous one.
    global _queue
    with _queue_lock:
        if _queue is None:
            _queue = open_queue(settings, prepare=False)
        return _queue


def is_authorized(request: Request, secret: str) -> bool:
    """True when the request carries ``Bearer <secret>``, compared in constant time."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    # The scheme is case-insensitive (RFC 9110); the token is compared in full.
    matches = hmac.compare_digest(token.strip().encode("utf-8"), secret.encode("utf-8"))
    return scheme.lower() == "bearer" and matches


def run_cron(request: Request) -> JSONResponse:
    """Authenticate the cron call, run one worker pass, and report its counts."""
    try:
        settings = load_settings()
    except ConfigError as exc:
        return config_error_response(request, exc)
    configure_logging(settings.log_format, settings.log_level)

    secret = settings.cron_secret.get_secret_value() if settings.cron_secret else ""
    if not secret:
        logger.error("CRON_SECRET is not set; refusing to run")
        return JSONResponse(
            {"error": "CRON_SECRET is not set: set it in the project's environment variables"},
            status_code=500,
        )
    if not is_authorized(request, secret):
        return JSONResponse({"error": "unauthorized"}, status_code=401)

    try:
        queue = _shared_queue(settings)
        worker = Worker(
            queue,
            batch_size=settings.worker_batch_size,
            batch_outcomes=settings.worker_batch_outcomes,
        )
        try:
            summary = worker.run_pass(settings.cron_budget_seconds)
        except Unavailable:
            # A warm function's reused connection may have been closed since the last
            # tick; the transport reconnects on the next call, so try once more.
            summary = worker.run_pass(settings.cron_budget_seconds / 2)
    except ConfigError as exc:
        return JSONResponse({"error": f"configuration: {exc}"}, status_code=500)
    except Unavailable as exc:
        logger.error("database unavailable: {}", exc)
        return JSONResponse({"error": "database unavailable"}, status_code=503)

    notifications = _notify(queue, settings, summary)
    # Retention runs in small bounded steps on every tick, so no tick is ever long.
    pruned = retention_step(queue, settings.retention_days)
    return JSONResponse({**summary.as_dict(), "notifications": notifications, **pruned})


def _notify(queue: Queue, settings: Settings, summary: PassSummary) -> dict:
    # After the worker pass, within what is left of the budget: check the admin
    # alerts and send pending notifications, then record this tick as successful.
    # The tick is recorded last so that the cron-silence alert measures the gap since
    # the previous tick. A failure here never fails the tick: the jobs are recorded,
    # and the outbox keeps what was not sent for the next tick.
    outbox = Outbox(queue.transport)
    try:
        result = Dispatcher(outbox, settings).run_pass(
            max(0.0, settings.cron_budget_seconds - summary.seconds)
        ).as_dict()
    except DatabaseError as exc:
        logger.warning("notification pass failed: {}", type(exc).__name__)
        result = {"error": type(exc).__name__}
    try:
        outbox.record_cron_tick(summary.as_dict())
    except DatabaseError as exc:
        logger.warning("recording the cron tick failed: {}", type(exc).__name__)
    return result


def config_error_response(request: Request, exc: ConfigError) -> JSONResponse:
    """The 500 for settings that did not load: only a caller holding the secret learns
    what is misconfigured; the logs say it in every case."""
    raw_secret = os.environ.get("CRON_SECRET", "")
    if not raw_secret or not is_authorized(request, raw_secret):
        logger.error("configuration error: {}", exc)
        return JSONResponse({"error": "server misconfigured; see the function's logs"}, status_code=500)
    return JSONResponse({"error": f"configuration: {exc}"}, status_code=500)


app = Starlette(routes=[Route("/api/cron", run_cron, methods=["GET"])])
