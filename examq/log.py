"""Logging through loguru, configured once: JSON lines on Vercel, readable lines in a terminal.

Job log lines carry ``job_id``, ``job_type``, ``attempt`` and ``worker_id`` bound by
the worker. Payloads, tokens, keys and e-mail addresses are never logged.
"""

from __future__ import annotations

import os
import sys

from loguru import logger

_configured = False


def configure_logging(log_format: str = "auto", level: str = "INFO", *, force: bool = False) -> None:
    """Install examq's single stderr sink (JSON or text) unless already done."""
    global _configured
    if _configured and not force:
        return

    use_json = log_format == "json" or (
        log_format == "auto" and (os.environ.get("VERCEL") == "1" or not sys.stderr.isatty())
    )

    logger.remove()
    if use_json:
        logger.add(sys.stderr, level=level, serialize=True, backtrace=False, diagnose=False)
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
    _configured = True
