"""Typed calls onto the outbox's SQL functions: claim, start, finish, alerts, cron ticks.

Like ``examq.queue``, this module only shapes arguments and results; every state
change of a notification is one SQL function call (see
supabase/migrations/20261203000400_notifications.sql).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, SecretStr

from examq.db import Transport
from examq.errors import DatabaseError, InvalidInput
from examq.notify.delivery import Delivery
from examq.queue import clean_text

Channel = Literal["email", "slack"]
Audience = Literal["owner", "admins"]
Event = Literal["succeeded", "failed", "cancelled"]


class JobFacts(BaseModel):
    """What a notification says about its job, as of the event that caused it."""

    model_config = ConfigDict(extra="ignore")

    id: int
    job_type: str
    tier: str | None = None
    status: str
    attempt: int
    max_attempts: int
    error: str | None = None
    error_kind: str | None = None
    title: str | None = None
    created_at: datetime
    first_started_at: datetime | None = None
    finished_at: datetime
    summary: dict[str, Any] | None = None

    @property
    def run_seconds(self) -> float | None:
        """Seconds from the first start to the finish, when the job ever started."""
        if self.first_started_at is None:
            return None
        return max(0.0, (self.finished_at - self.first_started_at).total_seconds())


class Notification(BaseModel):
    """A claimed outbox row with what is needed to render and address it.

    The recipient's address and webhook URL are ``SecretStr`` so that no repr, log
    line or error message shows them by accident.
    """

    model_config = ConfigDict(extra="ignore")

    id: int
    lease_token: uuid.UUID
    job_id: int | None = None
    event_id: int | None = None
    user_id: uuid.UUID | None = None
    audience: Audience
    channel: Channel
    kind: str
    attempts: int
    details: dict[str, Any] = {}
    created_at: datetime
    recipient_email: SecretStr | None = None
    recipient_name: str | None = None
    slack_webhook_url: SecretStr | None = None
    job: JobFacts | None = None

    def log_context(self) -> dict[str, Any]:
        """Ids to bind to log lines: never an address, a URL or a payload."""
        return {
            "notification_id": self.id,
            "job_id": self.job_id,
            "channel": self.channel,
            "audience": self.audience,
            "kind": self.kind,
            "attempt": self.attempts + 1,
        }


class Finished(BaseModel):
    """What finish_notification reported."""

    model_config = ConfigDict(extra="ignore")

    id: int
    status: str
    outcome: str
    run_at: datetime | None = None


class Outbox:
    """Typed access to the outbox's SQL functions over one transport."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport

    def claim(
        self, dispatcher_id: str, limit: int = 20, *, lease_seconds: int = 120
    ) -> list[Notification]:
        """Lease up to ``limit`` pending notifications; resolves expired leases first."""
        params = {
            "p_dispatcher_id": dispatcher_id,
            "p_limit": limit,
            "p_lease_seconds": lease_seconds,
        }
        rows = self.transport.call("claim_notifications", params) or []
        return [Notification.model_validate(row) for row in rows]

    def start(self, notification: Notification, *, lease_seconds: int = 120) -> None:
        """Mark the notification attempting, right before sending; raises LeaseLost."""
        params = {
            "p_id": notification.id,
            "p_lease_token": str(notification.lease_token),
            "p_lease_seconds": lease_seconds,
        }
        self.transport.call("start_notification_send", params)

    def finish(self, notification: Notification, delivery: Delivery) -> Finished:
        """Record the provider's answer; raises LeaseLost when the row is no longer ours."""
        params: dict[str, Any] = {
            "p_id": notification.id,
            "p_lease_token": str(notification.lease_token),
            "p_outcome": delivery.outcome,
        }
        optional = {
            "p_error": clean_text(delivery.error, 2000) if delivery.error else None,
            "p_provider_status": delivery.provider_status,
            "p_provider_message_id": delivery.message_id,
            "p_retry_after_seconds": delivery.retry_after_seconds,
            "p_retry_at_epoch": delivery.retry_at_epoch,
        }
        params.update({k: v for k, v in optional.items() if v is not None})
        return Finished.model_validate(
            self.transport.call("finish_notification", params)
        )

    def release(self, notification: Notification) -> Finished:
        """Hand back a claimed notification that was not started."""
        return self.finish(notification, Delivery(outcome="released"))

    def requeue(self, notification_id: int) -> dict[str, Any]:
        """Send a failed or uncertain notification again; raises InvalidState, NotificationNotFound."""
        return dict(
            self.transport.call("requeue_notification", {"p_id": notification_id})
        )

    def check_alerts(
        self,
        *,
        window_seconds: int,
        queue_age_seconds: int,
        failure_rate: float,
        failure_min_jobs: int,
        failure_window_seconds: int,
        cron_silence_seconds: int,
        notify: bool,
    ) -> list[dict[str, Any]]:
        """Raise the admin alerts whose condition holds (once per window); returns those raised."""
        params = {
            "p_window_seconds": window_seconds,
            "p_queue_age_seconds": queue_age_seconds,
            "p_failure_rate": failure_rate,
            "p_failure_min_jobs": failure_min_jobs,
            "p_failure_window_seconds": failure_window_seconds,
            "p_cron_silence_seconds": cron_silence_seconds,
            "p_notify": notify,
        }
        return list(self.transport.call("check_admin_alerts", params) or [])

    def record_cron_tick(
        self, summary: dict[str, Any] | None = None, name: str = "cron"
    ) -> str:
        """Record a successful cron tick (for the cron_silent alert); returns its time."""
        return str(
            self.transport.call(
                "record_cron_tick", {"p_name": name, "p_summary": summary or {}}
            )
        )

    def set_preferences(
        self,
        user_id: uuid.UUID | str | None = None,
        *,
        email: bool = True,
        slack: bool = False,
        slack_webhook_url: str | None = None,
        events: list[Event] | None = None,
        job_types: list[str] | None = None,
        success_min_seconds: int | None = None,
    ) -> dict[str, Any]:
        """Create or replace a user's preferences (returned without the webhook URL).

        Raises InvalidInput for refused values, PermissionDenied for another user's.
        """
        params: dict[str, Any] = {"p_email_enabled": email, "p_slack_enabled": slack}
        optional = {
            "p_user_id": str(user_id) if user_id is not None else None,
            "p_slack_webhook_url": slack_webhook_url,
            "p_events": events,
            "p_job_types": job_types,
            "p_success_min_seconds": success_min_seconds,
        }
        params.update({k: v for k, v in optional.items() if v is not None})
        try:
            row = self.transport.call("set_notification_preferences", params)
        except DatabaseError as exc:
            if exc.sqlstate == "23514":
                # A check constraint names the rule broken; the value (maybe a secret
                # webhook URL) is left out of the message.
                raise InvalidInput(
                    f"notification preferences refused: {exc.args[0].split(' violates ')[-1]}",
                    sqlstate=exc.sqlstate,
                ) from exc
            raise
        return dict(row or {})
