"""Settings, read once from the environment and validated at start.

Which database examq uses follows from what is set: ``DATABASE_URL`` selects a direct
PostgreSQL connection (psycopg); ``SUPABASE_URL`` with ``SUPABASE_SERVICE_ROLE_KEY``
selects the Supabase API (supabase-py RPC); with neither, an embedded PostgreSQL
server is started in ``EXAMQ_DATA_DIR``.
"""

from __future__ import annotations

import os
import re
from email.utils import parseaddr
from enum import Enum
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from examq.errors import ConfigError


class Backend(str, Enum):
    """The three ways examq reaches its database."""

    POSTGRES = "postgres"
    SUPABASE = "supabase"
    EMBEDDED = "embedded"


# What loguru accepts for rotation and retention, in the forms examq documents.
# ASCII digits only (\d would take any script's), and \Z, not $, which also matches
# before a final newline.
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|KiB|MiB|GiB)\s*\Z", re.IGNORECASE | re.ASCII)
_DURATION = re.compile(
    r"^\s*(\d+(?:\.\d+)?)\s*(second|minute|hour|day|week|month|year)s?\s*\Z", re.IGNORECASE | re.ASCII
)
_CLOCK = re.compile(r"^\s*([01]?\d|2[0-3]):[0-5]\d\s*\Z", re.ASCII)
_UNIT_SECONDS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400, "week": 604800,
                 "month": 2629800, "year": 31557600}


def _duration_problem(match: re.Match[str]) -> str | None:
    """Why a duration that matched _DURATION is unusable, or None."""
    seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2).lower()]
    if seconds <= 0:
        return "must be longer than 0"
    if seconds > 100 * _UNIT_SECONDS["year"]:
        return "must be at most 100 years"
    return None

# A Supabase Storage bucket name, for EXAMQ_REPORTS_BUCKET and for the buckets that
# jobs name their inputs in (examq/exam/storage.py).
BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{1,62}\Z")

# The cron function's maxDuration in vercel.json: Vercel stops the function then, so a
# cron pass's budget must end before it, leaving time to record the last outcomes.
CRON_MAX_DURATION_SECONDS = 60

# EXAMQ_HANDLERS items: a dotted module path, a colon, an attribute name (ASCII).
HANDLER_SPEC = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*\Z")

# The smallest EXAMQ_MAX_INPUT_BYTES allowed: an input no larger than this is within
# every valid limit, so a handler need not read the settings to accept it.
MIN_INPUT_LIMIT_BYTES = 1024


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "examq"


class Settings(BaseSettings):
    """examq's configuration; each field is read from the variable named in its alias."""

    # A .env file in the working directory is read too; the environment wins.
    model_config = SettingsConfigDict(
        populate_by_name=True, extra="ignore", env_file=".env", env_file_encoding="utf-8"
    )

    database_url: str | None = Field(default=None, alias="DATABASE_URL")
    supabase_url: str | None = Field(default=None, alias="SUPABASE_URL")
    supabase_service_role_key: SecretStr | None = Field(
        default=None, alias="SUPABASE_SERVICE_ROLE_KEY"
    )
    cron_secret: SecretStr | None = Field(default=None, alias="CRON_SECRET")
    data_dir: Path = Field(default_factory=_default_data_dir, alias="EXAMQ_DATA_DIR")
    worker_batch_size: int = Field(default=5, ge=1, le=1000, alias="EXAMQ_WORKER_BATCH_SIZE")
    # At least a second: a pass must have time to claim and finish something.
    cron_budget_seconds: float = Field(default=50.0, ge=1, alias="EXAMQ_CRON_BUDGET_SECONDS")
    retention_days: float = Field(default=30.0, ge=0.05, le=3650, alias="EXAMQ_RETENTION_DAYS")
    log_format: Literal["auto", "json", "text"] = Field(default="auto", alias="EXAMQ_LOG_FORMAT")
    log_level: Literal["TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR"] = Field(
        default="INFO", alias="EXAMQ_LOG_LEVEL"
    )
    # An optional file sink of JSON lines, rotated and pruned (examq/log.py).
    log_file: Path | None = Field(default=None, alias="EXAMQ_LOG_FILE")
    log_rotation: str = Field(default="50 MB", alias="EXAMQ_LOG_ROTATION")
    log_retention: str | int = Field(default="14 days", alias="EXAMQ_LOG_RETENTION")
    # Workers for many short jobs: large claims, successes recorded per batch.
    worker_batch_outcomes: bool = Field(default=False, alias="EXAMQ_WORKER_BATCH_OUTCOMES")
    # Your own handlers, beside the built-in ones: module:attribute, comma-separated
    # (examq/handlers/__init__.py).
    handlers: str | None = Field(default=None, alias="EXAMQ_HANDLERS")
    # GET /api/health: when the queue counts as unhealthy (functions/health.py).
    health_tick_stale_seconds: int = Field(
        default=300, ge=60, le=604800, alias="EXAMQ_HEALTH_TICK_STALE_SECONDS"
    )
    health_queue_age_seconds: int = Field(
        default=900, ge=1, le=604800, alias="EXAMQ_HEALTH_QUEUE_AGE_SECONDS"
    )

    # Notifications (examq/notify). Without SENDGRID_API_KEY, e-mail is written as
    # .eml files to the outbox folder instead of being sent.
    sendgrid_api_key: SecretStr | None = Field(default=None, alias="SENDGRID_API_KEY")
    email_from: str = Field(
        default="examq <notifications@examq.local>", alias="EXAMQ_EMAIL_FROM"
    )
    dashboard_url: str = Field(default="http://localhost:8000", alias="EXAMQ_DASHBOARD_URL")
    outbox_dir: Path | None = Field(default=None, alias="EXAMQ_OUTBOX_DIR")
    slack_admin_webhook_url: SecretStr | None = Field(
        default=None, alias="EXAMQ_SLACK_ADMIN_WEBHOOK_URL"
    )
    notify_batch_size: int = Field(
        default=20, ge=1, le=1000, alias="EXAMQ_NOTIFY_BATCH_SIZE"
    )
    notify_timeout_seconds: float = Field(
        # Under a tenth of a second no provider answers; every send would time out.
        default=10.0, ge=0.1, le=60, alias="EXAMQ_NOTIFY_TIMEOUT_SECONDS"
    )
    alert_window_seconds: int = Field(
        default=1800, ge=60, le=604800, alias="EXAMQ_ALERT_WINDOW_SECONDS"
    )
    alert_queue_age_seconds: int = Field(
        default=900, ge=1, le=604800, alias="EXAMQ_ALERT_QUEUE_AGE_SECONDS"
    )
    alert_failure_rate: float = Field(
        default=0.25, gt=0, le=1, alias="EXAMQ_ALERT_FAILURE_RATE"
    )
    alert_failure_min_jobs: int = Field(
        default=10, ge=1, le=1000000, alias="EXAMQ_ALERT_FAILURE_MIN_JOBS"
    )
    alert_failure_window_seconds: int = Field(
        default=900, ge=60, le=604800, alias="EXAMQ_ALERT_FAILURE_WINDOW_SECONDS"
    )
    alert_cron_silence_seconds: int = Field(
        default=300, ge=60, le=604800, alias="EXAMQ_ALERT_CRON_SILENCE_SECONDS"
    )

    # Exam processing (examq/exam) and the jobs API (functions/jobs.py). Local folders
    # stand in for Supabase Storage unless the Supabase pair is set and they are not.
    storage_dir: Path | None = Field(default=None, alias="EXAMQ_STORAGE_DIR")
    reports_dir: Path | None = Field(default=None, alias="EXAMQ_REPORTS_DIR")
    reports_bucket: str = Field(default="exam-reports", alias="EXAMQ_REPORTS_BUCKET")
    report_link_seconds: int = Field(
        default=7 * 86400, ge=60, le=365 * 86400, alias="EXAMQ_REPORT_LINK_SECONDS"
    )
    max_input_bytes: int = Field(
        default=20 * 1024 * 1024,
        ge=MIN_INPUT_LIMIT_BYTES,
        le=500 * 1024 * 1024,
        alias="EXAMQ_MAX_INPUT_BYTES",
    )
    supabase_anon_key: SecretStr | None = Field(default=None, alias="SUPABASE_ANON_KEY")
    supabase_jwt_secret: SecretStr | None = Field(default=None, alias="SUPABASE_JWT_SECRET")
    submit_pass_seconds: float = Field(
        default=8.0, ge=0, le=50, alias="EXAMQ_SUBMIT_PASS_SECONDS"
    )

    @field_validator(
        "database_url", "supabase_url", "supabase_service_role_key", "cron_secret",
        "sendgrid_api_key", "slack_admin_webhook_url", "outbox_dir",
        "storage_dir", "reports_dir", "supabase_anon_key", "supabase_jwt_secret",
        mode="before",
    )
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("handlers", mode="before")
    @classmethod
    def _check_handlers(cls, value: object) -> object:
        if not isinstance(value, str) or not value.strip():
            return None
        for spec in value.split(","):
            if not HANDLER_SPEC.match(spec.strip()):
                raise ValueError(
                    "must name handler tables as module:attribute, comma-separated"
                    f" (e.g. myapp.jobs:HANDLERS), not {spec.strip()!r}"
                )
        return value.strip()

    @field_validator("data_dir", mode="before")
    @classmethod
    def _blank_is_default(cls, value: object) -> object:
        return _default_data_dir() if isinstance(value, str) and not value.strip() else value

    @field_validator("reports_bucket")
    @classmethod
    def _check_reports_bucket(cls, value: str) -> str:
        if not BUCKET_NAME.match(value):
            raise ValueError(
                "must be a Storage bucket name, 3 to 63 of a-z 0-9 . _ -"
                f" (e.g. exam-reports), not {value!r}"
            )
        return value

    @field_validator("cron_budget_seconds")
    @classmethod
    def _check_cron_budget(cls, value: float) -> float:
        if value >= CRON_MAX_DURATION_SECONDS:
            raise ValueError(
                f"must be below {CRON_MAX_DURATION_SECONDS} s, the cron function's"
                " maxDuration in vercel.json (default 50)"
            )
        return value

    @field_validator("email_from", "dashboard_url", "reports_bucket", mode="before")
    @classmethod
    def _blank_text_is_default(cls, value: object, info: Any) -> object:
        if isinstance(value, str) and not value.strip():
            return cls.model_fields[info.field_name].default
        return value

    @field_validator("email_from")
    @classmethod
    def _check_email_from(cls, value: str) -> str:
        _, address = parseaddr(value)
        if "@" not in address or any(c in value for c in "\r\n"):
            raise ValueError(
                "must be an address, e.g. 'examq <notifications@example.com>'"
            )
        return value

    @field_validator("dashboard_url")
    @classmethod
    def _check_dashboard_url(cls, value: str) -> str:
        parsed = urlparse(value)
        if parsed.scheme not in {"http", "https"} or not parsed.netloc:
            raise ValueError("must be the dashboard's http(s):// URL")
        return value.rstrip("/")

    @field_validator("slack_admin_webhook_url")
    @classmethod
    def _check_slack_admin_webhook_url(
        cls, value: SecretStr | None
    ) -> SecretStr | None:
        # The message names the variable but never echoes the URL: it is a secret.
        url = urlparse(value.get_secret_value()) if value is not None else None
        if url is not None and (url.scheme != "https" or not url.hostname):
            raise ValueError("must be a Slack incoming webhook https:// URL")
        return value

    @field_validator("log_file", mode="before")
    @classmethod
    def _blank_log_file_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("log_rotation", mode="before")
    @classmethod
    def _check_log_rotation(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip():
            return "50 MB"
        text = value if isinstance(value, str) else ""
        size, duration = _SIZE.match(text), _DURATION.match(text)
        if not (size or duration or _CLOCK.match(text)):
            raise ValueError("must be a size ('50 MB'), a duration ('1 day') or a time of day ('00:00')")
        if size and float(size.group(1)) <= 0:
            raise ValueError("a size must be larger than 0")
        if duration and (problem := _duration_problem(duration)):
            raise ValueError(f"a duration {problem}")
        return text.strip()

    @field_validator("log_retention", mode="before")
    @classmethod
    def _check_log_retention(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip():
            return "14 days"
        if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
            value = int(value.strip())
        if isinstance(value, int) and not isinstance(value, bool):
            if value < 1:
                raise ValueError("must keep at least 1 file")
            return value
        duration = _DURATION.match(value) if isinstance(value, str) else None
        if duration is None:
            raise ValueError("must be a duration ('14 days') or a number of files ('10')")
        if problem := _duration_problem(duration):
            raise ValueError(f"a duration {problem}")
        return value.strip()

    @field_validator("cron_secret")
    @classmethod
    def _check_cron_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 16:
            raise ValueError("must be at least 16 characters (e.g. openssl rand -hex 32)")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        # Spaces around a pasted URL are not part of it (urlparse ignores them too,
        # the driver would not).
        value = value.strip()
        if urlparse(value).scheme not in {"postgres", "postgresql"}:
            raise ValueError("must be a postgresql:// connection URL")
        return value

    @field_validator("supabase_url")
    @classmethod
    def _check_supabase_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parsed = urlparse(value)
        if parsed.scheme not in {"http", "https"} or not parsed.netloc:
            raise ValueError("must be the project's https:// URL")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _check_supabase_pair(self) -> "Settings":
        has_key = self.supabase_service_role_key is not None and bool(
            self.supabase_service_role_key.get_secret_value().strip()
        )
        if self.supabase_url and not has_key:
            raise ValueError("SUPABASE_SERVICE_ROLE_KEY: must be set when SUPABASE_URL is set")
        if has_key and not self.supabase_url:
            raise ValueError("SUPABASE_URL: must be set when SUPABASE_SERVICE_ROLE_KEY is set")
        return self

    @property
    def inputs_in_supabase(self) -> bool:
        """Inputs come from Supabase Storage when the project is configured and no local folder is set."""
        return (
            bool(self.supabase_url and self.supabase_service_role_key)
            and self.storage_dir is None
        )

    @property
    def reports_in_supabase(self) -> bool:
        """Reports go to Supabase Storage when the project is configured and no local folder is set."""
        return (
            bool(self.supabase_url and self.supabase_service_role_key)
            and self.reports_dir is None
        )

    @property
    def local_storage_dir(self) -> Path:
        """The folder that stands in for Storage buckets (one sub-folder per bucket)."""
        return self.storage_dir or self.data_dir / "storage"

    @property
    def local_reports_dir(self) -> Path:
        """The folder reports are written to in local runs."""
        return self.reports_dir or self.data_dir / "reports"

    @property
    def outbox_path(self) -> Path:
        """Where e-mail is written as .eml files when SENDGRID_API_KEY is not set."""
        if self.outbox_dir is not None:
            return self.outbox_dir
        return self.data_dir / "outbox"

    @property
    def backend(self) -> Backend:
        """Which database this configuration selects."""
        if self.database_url:
            return Backend.POSTGRES
        if self.supabase_url:
            return Backend.SUPABASE
        return Backend.EMBEDDED


def load_settings(environ: dict[str, str] | None = None) -> Settings:
    """Read and validate the settings; raises ConfigError naming the variable at fault."""
    try:
        if environ is None:
            return Settings()
        # An explicit mapping replaces the environment and any .env file entirely.
        return _Isolated(**{k: v for k, v in environ.items() if k in _ALIASES})
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = first.get("loc") or ()
        variable = str(loc[0]) if loc else ""
        message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
        if not variable and ":" in message:
            variable, _, message = message.partition(": ")
        raise ConfigError(variable or "environment", message) from exc


class _Isolated(Settings):
    """Settings built only from the values given, for callers that pass a mapping."""

    model_config = SettingsConfigDict(populate_by_name=True, extra="ignore", env_file=None)

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, *args, **kwargs):  # type: ignore[override]
        return (init_settings,)


_ALIASES = {field.alias for field in Settings.model_fields.values() if field.alias}
