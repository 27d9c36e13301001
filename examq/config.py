"""Settings, read once from the environment and validated at start.

Which database examq uses follows from what is set: ``DATABASE_URL`` selects a direct
PostgreSQL connection (psycopg); ``SUPABASE_URL`` with ``SUPABASE_SERVICE_ROLE_KEY``
selects the Supabase API (supabase-py RPC); with neither, an embedded PostgreSQL
server is started in ``EXAMQ_DATA_DIR``.
"""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from examq.errors import ConfigError


class Backend(str, Enum):
    """The three ways examq reaches its database."""

    POSTGRES = "postgres"
    SUPABASE = "supabase"
    EMBEDDED = "embedded"


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
    cron_budget_seconds: float = Field(default=50.0, gt=0, le=900, alias="EXAMQ_CRON_BUDGET_SECONDS")
    retention_days: float = Field(default=30.0, ge=0.05, le=3650, alias="EXAMQ_RETENTION_DAYS")
    log_format: Literal["auto", "json", "text"] = Field(default="auto", alias="EXAMQ_LOG_FORMAT")
    log_level: Literal["TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR"] = Field(
        default="INFO", alias="EXAMQ_LOG_LEVEL"
    )

    @field_validator(
        "database_url", "supabase_url", "supabase_service_role_key", "cron_secret", mode="before"
    )
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("data_dir", mode="before")
    @classmethod
    def _blank_is_default(cls, value: object) -> object:
        return _default_data_dir() if isinstance(value, str) and not value.strip() else value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str | None) -> str | None:
        if value is not None and urlparse(value).scheme not in {"postgres", "postgresql"}:
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
