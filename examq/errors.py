"""The one exception tree of examq, and the SQLSTATEs of the database mapped onto it.

Errors raised by the SQL functions carry a SQLSTATE that examq owns (class ``EQ``).
Both transports (psycopg and PostgREST through supabase-py) turn such an error into
the same exception type, so callers branch on types and fields, never on messages.
"""

from __future__ import annotations


class ExamqError(Exception):
    """Base class of every error examq raises on purpose."""


class ConfigError(ExamqError):
    """A setting is missing or invalid; ``variable`` names the environment variable."""

    def __init__(self, variable: str, message: str) -> None:
        super().__init__(f"{variable}: {message}")
        self.variable = variable


class DatabaseError(ExamqError):
    """The database refused or failed a call; ``sqlstate`` says which way."""

    def __init__(
        self,
        message: str,
        *,
        sqlstate: str | None = None,
        job_id: int | None = None,
        detail: str | None = None,
    ) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.job_id = job_id
        self.detail = detail


class InvalidInput(DatabaseError):
    """The call's arguments are not acceptable (bad job type, payload, option)."""


class UnknownJobType(InvalidInput):
    """The job type is not registered, or not allowed for the caller's tier."""


class PayloadTooLarge(InvalidInput):
    """The payload exceeds the caller's tier limit."""


class IdempotencyConflict(InvalidInput):
    """An idempotency key already names a job of another type or payload (EQ009)."""


class QuotaExceeded(DatabaseError):
    """The caller already has as many queued jobs as their tier allows."""


class JobNotFound(DatabaseError):
    """No job with that id exists, or the caller may not see it."""


class LeaseLost(DatabaseError):
    """The caller's lease on the job expired or was superseded; nothing was changed."""


class NotificationNotFound(DatabaseError):
    """No notification (outbox row) with that id exists."""


class InvalidState(DatabaseError):
    """The job is not in a state that allows the requested transition."""


class PermissionDenied(DatabaseError):
    """The caller's role may not perform this call."""


class Unavailable(DatabaseError):
    """The database could not be reached, the connection broke, or PostgreSQL aborted
    the call to settle a race (a deadlock, a serialization failure); safe to retry."""


# The SQLSTATEs raised by supabase/migrations, each with the exception it becomes.
# Class EQ is examq's own; PostgREST answers such errors with HTTP 400, which the
# RPC transport maps back through this same table.
SQLSTATE_ERRORS: dict[str, type[DatabaseError]] = {
    "EQ001": UnknownJobType,
    "EQ002": PayloadTooLarge,
    "EQ003": QuotaExceeded,
    "EQ004": JobNotFound,
    "EQ005": LeaseLost,
    "EQ006": InvalidState,
    "EQ007": InvalidInput,
    "EQ008": NotificationNotFound,
    "EQ009": IdempotencyConflict,
    "42501": PermissionDenied,
    "40P01": Unavailable,  # deadlock detected: this call was the one rolled back
    "40001": Unavailable,  # serialization failure
    "55P03": Unavailable,  # lock not available (a lock_timeout ran out): try again later
    "22P05": InvalidInput,  # untranslatable character (a NUL in text)
    "22P02": InvalidInput,  # invalid text representation
    "22023": InvalidInput,  # invalid parameter value
    "22021": InvalidInput,  # character not in repertoire
    "22003": InvalidInput,  # numeric value out of range
    "22008": InvalidInput,  # datetime field overflow
    # PostgREST's own codes for a JWT it refuses (expired, bad signature, bad claims).
    "PGRST301": PermissionDenied,
    "PGRST302": PermissionDenied,
    "PGRST303": PermissionDenied,
}

# PostgREST cannot reach the database (PGRST000-003), or the gateway answered without a
# JSON body (postgrest-py reports the HTTP status as the code): worth retrying later.
_UNAVAILABLE = {"PGRST000", "PGRST001", "PGRST002", "PGRST003", "502", "503", "504", "520"}


def error_for_sqlstate(
    sqlstate: str | None, message: str, *, detail: str | None = None
) -> DatabaseError:
    """Build the exception that corresponds to a SQLSTATE (DatabaseError if unknown)."""
    cls = SQLSTATE_ERRORS.get(sqlstate or "", DatabaseError)
    if cls is DatabaseError and sqlstate and (sqlstate[:2] in {"08", "57"} or sqlstate in _UNAVAILABLE):
        cls = Unavailable
    return cls(message, sqlstate=sqlstate, detail=detail)


class HandlerError(ExamqError):
    """Raised by a job handler to tell the worker how the job ended."""


class RetryableError(HandlerError):
    """A transient failure: the job is tried again later, if attempts remain."""


class PermanentError(HandlerError):
    """A failure that retrying cannot fix (bad input): the job fails at once."""


class JobCancelled(HandlerError):
    """The job's cancellation was requested; the handler stops and the job ends cancelled."""
