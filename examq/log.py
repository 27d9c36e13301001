"""Logging through loguru, configured once: JSON lines on Vercel, readable lines in a terminal.

Job log lines carry ``job_id``, ``job_type``, ``attempt`` and ``worker_id`` bound by
the worker. Payloads, tokens, keys and e-mail addresses are never logged.

Sinks:

- stderr: JSON lines (one object per line: ``time``, ``level``, ``message``,
  ``logger``, ``function``, ``line``, the bound fields, and ``exception`` when there
  is one) on Vercel (``VERCEL=1``), when stderr is not a terminal, or with
  ``EXAMQ_LOG_FORMAT=json``; readable, coloured lines in a terminal or with ``text``.
- ``EXAMQ_LOG_FILE``: the same JSON lines, also written to this file, rotated when
  it reaches ``EXAMQ_LOG_ROTATION`` (a size such as ``50 MB``, or a time such as
  ``1 day`` or ``00:00``) and pruned after ``EXAMQ_LOG_RETENTION`` (``14 days``, or a
  number of files). Writes go through a queue, so a slow disk never holds a job up.

The JSON serialiser writes only the fields above: loguru's own ``serialize=True``
writes every attribute of the record and costs several times as much per line.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loguru import logger

from examq.errors import ConfigError

if TYPE_CHECKING:
    from examq.config import Settings

_configured = False


def json_line(record: dict[str, Any]) -> str:
    """One log record as a compact JSON object (no trailing newline)."""
    data: dict[str, Any] = {
        "time": record["time"].isoformat(timespec="milliseconds"),
        "level": record["level"].name,
        "message": record["message"],
        "logger": record["name"],
        "function": record["function"],
        "line": record["line"],
    }
    data.update((k, v) for k, v in record["extra"].items() if k != "_json")
    exception = record["exception"]
    if exception is not None and exception.type is not None:
        data["exception"] = f"{exception.type.__name__}: {exception.value}"
    return json.dumps(data, default=str, ensure_ascii=False)


def _json_format(record: dict[str, Any]) -> str:
    # loguru formats the returned string again: the JSON goes in as a field.
    record["extra"]["_json"] = json_line(record)
    return "{extra[_json]}\n"


def configure_logging(
    log_format: str = "auto",
    level: str = "INFO",
    *,
    force: bool = False,
    settings: Settings | None = None,
) -> None:
    """Install examq's sinks (stderr, and the file of EXAMQ_LOG_FILE) unless already done.

    ``settings`` supplies the file sink's settings; without it they are read from the
    environment. Raises ConfigError naming the variable for a bad value, or when the
    EXAMQ_LOG_FILE file cannot be created or opened.
    """
    global _configured
    if _configured and not force:
        return

    if settings is None:
        from examq.config import load_settings

        settings = load_settings()

    use_json = log_format == "json" or (
        log_format == "auto"
        and (os.environ.get("VERCEL") == "1" or not sys.stderr.isatty())
    )

    logger.remove()
    if use_json:
        logger.add(
            sys.stderr,
            level=level,
            format=_json_format,
            backtrace=False,
            diagnose=False,
        )
    else:
        logger.add(
            sys.stderr,
            level=level,
            backtrace=False,
            diagnose=False,
            format=(
                "<green>{time:HH:mm:ss.SSS}</green> <level>{level: <7}</level> "
                "<cyan>{extra}</cyan> {message}"
            ),
        )

    if settings.log_file is not None:
        _add_file_sink(settings.log_file, settings, level)
    _configured = True


def _add_file_sink(log_file: Path, settings: Settings, level: str) -> None:
    """Add the EXAMQ_LOG_FILE sink; raises ConfigError when the file cannot be created."""
    try:
        log_file.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            "EXAMQ_LOG_FILE",
            f"cannot create the folder {log_file.parent}: {exc.strerror or exc}",
        ) from exc
    try:
        # loguru opens the file here (not on the first line), so a file that cannot
        # be written is reported at start rather than lost in the writer thread.
        logger.add(
            log_file,
            level=level,
            format=_json_format,
            rotation=settings.log_rotation,
            retention=settings.log_retention,
            enqueue=True,
            backtrace=False,
            diagnose=False,
            encoding="utf-8",
        )
    except OSError as exc:
        raise ConfigError(
            "EXAMQ_LOG_FILE", f"cannot open {log_file} for writing: {exc.strerror or exc}"
        ) from exc
