"""Admin alerts: checked in SQL on every dispatcher pass, raised at most once per window.

``public.check_admin_alerts`` decides and records; this module passes the
thresholds from the settings and logs each alert raised (its kind and counts, never
the error texts it carries, which may quote user data). The alerts reach the admins'
Slack channel through the outbox when EXAMQ_SLACK_ADMIN_WEBHOOK_URL is set; without
it they are only recorded in ``public.admin_alerts`` and logged.
"""

from __future__ import annotations

from typing import Any

from loguru import logger

from examq.config import Settings
from examq.notify.outbox import Outbox

# Figures safe to log: counts and durations, no free text.
_LOGGED_FIGURES = (
    "count",
    "oldest_seconds",
    "threshold_seconds",
    "ready",
    "rate",
    "threshold",
    "failed",
    "finished",
    "window_seconds",
    "silent_seconds",
)


def check_admin_alerts(outbox: Outbox, settings: Settings) -> list[dict[str, Any]]:
    """Raise the admin alerts whose condition holds now; returns those raised."""
    alerts = outbox.check_alerts(
        window_seconds=settings.alert_window_seconds,
        queue_age_seconds=settings.alert_queue_age_seconds,
        failure_rate=settings.alert_failure_rate,
        failure_min_jobs=settings.alert_failure_min_jobs,
        failure_window_seconds=settings.alert_failure_window_seconds,
        cron_silence_seconds=settings.alert_cron_silence_seconds,
        notify=settings.slack_admin_webhook_url is not None,
    )
    for alert in alerts:
        figures = {k: alert[k] for k in _LOGGED_FIGURES if k in alert}
        logger.bind(alert=alert.get("kind")).warning("admin alert raised", **figures)
    return alerts
