"""POST /api/jobs: the teacher's app submits a job, or the exam pipeline, as the teacher.

Request: ``Authorization: Bearer <the user's Supabase access token>`` and a JSON body
``{"job_type": "...", "payload": {...}, "idempotency_key": "..."}``. With
``job_type`` ``exam.pipeline`` the payload is ``{"exam": source, "responses": source,
"format", "title", "missing_policy"}`` and four jobs are enqueued as a chain (check,
import, grade, report); any other type enqueues one job.

The jobs are enqueued with the user's identity (examq.exam.submission), so row-level
security, the tier's job types, payload limit and queued-job quota apply exactly as
for a call from supabase-js. Then a short worker pass runs here before answering
(``EXAMQ_SUBMIT_PASS_SECONDS``, default 8 s, 0 to skip) so that processing starts at
once: Vercel's Python runtime cannot keep working after the response is sent, and the
cron picks up whatever the pass leaves. The answer is 202 with the chain's jobs as
the user sees them after the pass, the report's links (``report``, a pipeline) and
the last job's result once it succeeded (``result``).

The token is checked before the body is read, so a caller without a valid session
learns nothing about what the API accepts. Over a direct connection it is verified
with ``SUPABASE_JWT_SECRET`` (or the secret ``create_app`` was given: ``examq dev``
passes the one its local Auth stand-in signs with). Over the Supabase API, PostgREST
verifies the signature at the enqueue; before that, a token whose claims cannot be a
signed-in user's (malformed, expired, an anon or service key) is refused here.

Errors: 401 for a missing or invalid token, or one whose user no longer exists, 400
for a bad body or payload (with the reason), 403 when the user may not do this, 413
for a payload over the tier's limit
or a body over ``EXAMQ_MAX_INPUT_BYTES``, 409 when the idempotency key already names
another job (another type or payload), 429 when the queued-job quota is reached, 500
for missing configuration (naming the variable), 503 when the database is
unreachable.
"""

from __future__ import annotations

import json
import threading
from typing import Any

from loguru import logger
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from examq import local
from examq.errors import (
    ConfigError,
    DatabaseError,
    IdempotencyConflict,
    InvalidInput,
    JobNotFound,
    PayloadTooLarge,
    PermanentError,
    PermissionDenied,
    QuotaExceeded,
    Unavailable,
)
from examq.exam.pipeline import (
    PIPELINE,
    chain_status,
    enqueue_chain,
    get_chain,
    job_summary,
    pipeline_steps,
)
from examq.exam.settings import ExamSettings, load_exam_settings
from examq.handlers import grade
from examq.exam.submission import (
    InvalidToken,
    UserPsycopgTransport,
    is_token_rejection,
    user_supabase_transport,
    verify_access_token,
)
from examq.log import configure_logging
from examq.queue import Queue, storable_text
from examq.worker import PassSummary, Worker

_queue: Queue | None = None
_queue_lock = threading.Lock()

# Exceptions of the queue and the HTTP status each becomes, most specific first.
_STATUSES: list[tuple[type[Exception], int]] = [
    (QuotaExceeded, 429),
    (PayloadTooLarge, 413),
    (IdempotencyConflict, 409),
    (InvalidInput, 400),
    (PermissionDenied, 403),
    (JobNotFound, 404),
    (Unavailable, 503),
]


def _service_queue(settings: ExamSettings) -> Queue:
    # Warm invocations reuse the connection of the previous one, as the cron does.
    global _queue
    with _queue_lock:
        if _queue is None:
            _queue = local.open_queue(settings, prepare=False)
        return _queue


def _bearer(request: Request) -> str:
    scheme, _, token = request.headers.get("authorization", "").strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def submit_jobs(request: Request) -> JSONResponse:
    """Authenticate the teacher, enqueue as them, run a short pass, answer with the jobs."""
    try:
        settings = load_exam_settings()
    except ConfigError as exc:
        return _error(500, f"configuration: {exc}")
    configure_logging(settings.log_format, settings.log_level)
    jwt_secret = getattr(request.app.state, "jwt_secret", None)
    if jwt_secret is not None:
        settings = settings.model_copy(
            update={"supabase_jwt_secret": SecretStr(jwt_secret)}
        )

    token = _bearer(request)
    if not token:
        return _error(
            401,
            "sign in: send the user's access token as 'Authorization: Bearer <token>'",
        )
    try:
        # In a thread: with the embedded database, finding its URL may start it.
        transport = await run_in_threadpool(_user_transport, settings, token)
    except InvalidToken as exc:
        return _error(401, str(exc))
    except ConfigError as exc:
        logger.error("jobs API misconfigured: {}", exc)
        return _error(500, f"configuration: {exc}")

    raw = await _read_body(request, settings.max_input_bytes)
    if isinstance(raw, JSONResponse):
        return raw
    try:
        body = json.loads(raw)
    except json.JSONDecodeError as exc:
        return _error(400, f"the body must be JSON: {exc.msg} at line {exc.lineno} column {exc.colno}")
    except UnicodeDecodeError as exc:
        return _error(400, f"the body must be JSON in UTF-8: byte {exc.start} is not UTF-8")
    except ValueError:
        # Python refuses to read an integer of more than sys.get_int_max_str_digits()
        # digits (4300 by default), as a guard against quadratic-time conversion.
        return _error(400, "the body holds a number too long to read (thousands of digits)")
    except RecursionError:
        # Python's JSON reader recurses once per level of nesting.
        return _error(400, "the body is nested too deeply")
    request_error = _check_body(body)
    if request_error:
        return _error(400, request_error)

    job_type = body["job_type"]
    payload = body.get("payload", {})
    try:
        steps = (
            pipeline_steps(payload)
            if job_type == PIPELINE
            else [{"job_type": job_type, "payload": payload}]
        )
    except PermanentError as exc:
        return _error(400, str(exc))
    if job_type == grade.JOB_TYPE and (problem := grade.payload_problem(payload)):
        return _error(400, problem)

    return await run_in_threadpool(
        _enqueue_and_kick, settings, transport, steps, body.get("idempotency_key")
    )


async def _read_body(request: Request, limit: int) -> bytes | JSONResponse:
    """The request body, or a 413 once it is known to exceed ``limit`` bytes.

    A declared length over the limit is refused before anything is read, and a body
    sent without one is read only up to the limit, so an oversized upload costs the
    function neither the time nor the memory of receiving it whole.
    """
    too_large = _error(
        413, f"the body is over {limit} bytes, the most this API accepts (EXAMQ_MAX_INPUT_BYTES)"
    )
    declared = request.headers.get("content-length", "")
    if declared.strip().isdigit() and int(declared) > limit:
        return too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return too_large
        chunks.append(chunk)
    return b"".join(chunks)


def _check_body(body: Any) -> str | None:
    """Why the body is not a valid submission, or None."""
    if not isinstance(body, dict):
        return "the body must be a JSON object"
    unknown = sorted(set(body) - {"job_type", "payload", "idempotency_key"})
    if unknown:
        return f"unknown field(s): {', '.join(unknown)}"
    if not isinstance(body.get("job_type"), str) or not body["job_type"]:
        return "job_type must be a job type name"
    if not isinstance(body.get("payload", {}), dict):
        return "payload must be a JSON object"
    key = body.get("idempotency_key")
    if key is not None and (not isinstance(key, str) or not 1 <= len(key) <= 200):
        return "idempotency_key must be 1 to 200 characters"
    if key is not None and not storable_text(key):
        return "idempotency_key must not contain NUL characters or unpaired surrogates"
    return None


def _enqueue_and_kick(
    settings: ExamSettings, transport: Any, steps: list[dict[str, Any]], key: str | None
) -> JSONResponse:
    try:
        chain = enqueue_chain(transport, steps, idempotency_key=key)
    except DatabaseError as exc:
        return _database_error(exc)

    log = logger.bind(job_id=chain["chain_id"], job_type=steps[0]["job_type"])
    log.info("jobs submitted", jobs=len(chain["jobs"]))
    summary = _kick(settings, [step["job_type"] for step in steps], log)

    try:
        chain = get_chain(transport, chain["chain_id"])
    except DatabaseError as exc:
        log.bind(error=type(exc).__name__).warning(
            "reading the chain after the pass failed"
        )

    report = next(
        (
            job.get("result")
            for job in chain["jobs"]
            if job["job_type"] == "exam.report"
        ),
        None,
    )
    # The outcome of a single job (exam.grade, say) without a second read; a chain's
    # is its report.
    last = chain["jobs"][-1]
    result = last.get("result") if last["status"] == "succeeded" else None
    return JSONResponse(
        {
            "chain_id": chain["chain_id"],
            "status": chain_status(chain["jobs"]),
            "jobs": [job_summary(job) for job in chain["jobs"]],
            "report": report,
            "result": result,
            "pass": summary,
        },
        status_code=202,
    )


def _user_transport(settings: ExamSettings, token: str) -> Any:
    """A transport that calls the SQL functions as the token's user (see examq.exam.submission).

    Raises InvalidToken when the token is not a signed-in user's, ConfigError when a
    setting the chosen path needs is missing.
    """
    if settings.database_url is None and settings.supabase_url is not None:
        if settings.supabase_anon_key is None:
            raise ConfigError(
                "SUPABASE_ANON_KEY",
                "must be set for the jobs API to call Supabase as the user",
            )
        # The claims only: the signing key is PostgREST's to check (it may be
        # asymmetric, unknown here). This spares a request, and the caller a 400 about
        # their body, when the token is plainly not a signed-in user's.
        verify_access_token(token, None)
        return user_supabase_transport(
            settings.supabase_url, settings.supabase_anon_key.get_secret_value(), token
        )

    if settings.supabase_jwt_secret is None:
        raise ConfigError(
            "SUPABASE_JWT_SECRET",
            "must be set for the jobs API to verify users' tokens",
        )
    claims = verify_access_token(token, settings.supabase_jwt_secret.get_secret_value())
    url = settings.database_url or local.database_url(settings, prepare=False)
    return UserPsycopgTransport(url, claims)


def _database_error(exc: DatabaseError) -> JSONResponse:
    if is_token_rejection(exc):
        return _error(401, f"the access token was refused: {exc}")
    if exc.sqlstate == "EQ007" and str(exc).startswith("no user with id "):
        # This API enqueues only for the token's own user: a valid token whose user
        # was deleted since it was issued (Supabase tokens live until they expire).
        return _error(401, "the signed-in user no longer exists; sign in again")
    for cls, status in _STATUSES:
        if isinstance(exc, cls):
            return _error(status, str(exc))
    logger.error("enqueue failed: {} ({})", type(exc).__name__, exc.sqlstate)
    return _error(500, "the job could not be enqueued")


def _kick(
    settings: ExamSettings, job_types: list[str], log: Any
) -> dict[str, Any] | None:
    """Run a bounded worker pass for these job types so the new jobs start now."""
    if settings.submit_pass_seconds <= 0:
        return None
    try:
        worker = Worker(
            _service_queue(settings),
            batch_size=settings.worker_batch_size,
            job_types=sorted(set(job_types)),
        )
        summary: PassSummary = worker.run_pass(
            settings.submit_pass_seconds, max_jobs=len(job_types)
        )
    except (DatabaseError, ConfigError) as exc:
        # The jobs are enqueued; the cron runs them if this pass cannot.
        log.bind(error=type(exc).__name__).warning("the pass after submitting failed")
        return {"error": "the jobs are queued; the next cron pass runs them"}
    return summary.as_dict()


def create_app(*, jwt_secret: str | None = None) -> Starlette:
    """The jobs function as an ASGI app.

    ``jwt_secret``, when given, verifies the users' tokens in place of
    ``SUPABASE_JWT_SECRET``, over a direct connection: ``examq dev`` passes the secret
    its local Auth stand-in signs with, which it makes up on each start.
    """
    jobs_app = Starlette(routes=[Route("/api/jobs", submit_jobs, methods=["POST"])])
    jobs_app.state.jwt_secret = jwt_secret
    return jobs_app


# What Vercel serves: the secret comes from the environment.
app = create_app()
