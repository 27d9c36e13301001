"""Settings of exam processing and of the jobs API, on top of examq's own settings.

They are read from the environment (or ``.env``) like ``examq.config.Settings``,
which they extend, and a bad value stops examq naming the variable at fault.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, ValidationError, field_validator

from examq.config import Settings
from examq.errors import ConfigError


class ExamSettings(Settings):
    """examq's settings plus where exam files come from and where reports go."""

    storage_dir: Path | None = Field(default=None, alias="EXAMQ_STORAGE_DIR")
    reports_dir: Path | None = Field(default=None, alias="EXAMQ_REPORTS_DIR")
    reports_bucket: str = Field(
        default="exam-reports",
        min_length=3,
        max_length=63,
        alias="EXAMQ_REPORTS_BUCKET",
    )
    report_link_seconds: int = Field(
        default=7 * 86400, ge=60, le=365 * 86400, alias="EXAMQ_REPORT_LINK_SECONDS"
    )
    max_input_bytes: int = Field(
        default=20 * 1024 * 1024,
        ge=1024,
        le=500 * 1024 * 1024,
        alias="EXAMQ_MAX_INPUT_BYTES",
    )
    supabase_anon_key: SecretStr | None = Field(default=None, alias="SUPABASE_ANON_KEY")
    supabase_jwt_secret: SecretStr | None = Field(
        default=None, alias="SUPABASE_JWT_SECRET"
    )
    submit_pass_seconds: float = Field(
        default=8.0, ge=0, le=50, alias="EXAMQ_SUBMIT_PASS_SECONDS"
    )

    @field_validator(
        "storage_dir",
        "reports_dir",
        "supabase_anon_key",
        "supabase_jwt_secret",
        mode="before",
    )
    @classmethod
    def _blank_exam_setting_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

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


def load_exam_settings() -> ExamSettings:
    """Read and validate the settings; raises ConfigError naming the variable at fault."""
    try:
        return ExamSettings()
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = first.get("loc") or ()
        variable = str(loc[0]) if loc else ""
        message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
        if not variable and ":" in message:
            variable, _, message = message.partition(": ")
        raise ConfigError(variable or "environment", message) from exc
