"""The dispatcher: one pass of claim, send, record, within a time budget.

A pass first checks the admin alerts, then claims small batches of pending outbox
rows (``claim_notifications``: a lease, ``for update skip locked``, so concurrent
dispatchers take disjoint rows). For each row it renders the message and builds the
request, marks the row ``attempting`` (``start_notification_send``), makes the one
HTTP call, and records the answer (``finish_notification``). Everything that can
fail before the call (rendering, a missing address) fails the row without
contacting anyone. A dispatcher that dies between marking a row attempting and
recording the answer leaves it to the lease: the next claim marks it ``uncertain``
instead of sending it again, because the provider may already have delivered it.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx
from loguru import logger

from examq.config import Settings
from examq.errors import DatabaseError, LeaseLost, NotificationNotFound, Unavailable
from examq.notify.alerts import check_admin_alerts
from examq.notify.delivery import Delivery
from examq.notify.email import EmlFileSender, SendGridSender
from examq.notify.outbox import Notification, Outbox
from examq.notify.render import render_alert_slack, render_job_email, render_job_slack
from examq.notify.slack import SlackSender


@dataclass
class DispatchSummary:
    """Counts of what one dispatcher pass did."""

    claimed: int = 0
    sent: int = 0
    retried: int = 0
    failed: int = 0
    uncertain: int = 0
    released: int = 0
    lease_lost: int = 0
    alerts: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """The summary as a JSON-ready dict."""
        data = asdict(self)
        data["seconds"] = round(self.seconds, 3)
        return data


def default_dispatcher_id() -> str:
    """A dispatcher id unique to this process: host, pid and a random suffix."""
    return f"notify:{socket.gethostname()[:40]}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Dispatcher:
    """Sends the outbox's pending notifications by e-mail and Slack."""

    def __init__(
        self,
        outbox: Outbox,
        settings: Settings,
        *,
        dispatcher_id: str | None = None,
        http_client: httpx.Client | None = None,
        lease_seconds: int = 120,
    ) -> None:
        self.outbox = outbox
        self.settings = settings
        self.dispatcher_id = dispatcher_id or default_dispatcher_id()
        self.lease_seconds = lease_seconds
        self._http_client = http_client

    def run_pass(
        self,
        budget_seconds: float,
        *,
        check_alerts: bool = True,
        max_notifications: int | None = None,
    ) -> DispatchSummary:
        """Check the admin alerts, then send pending notifications until none are left or the budget is spent."""
        started = time.monotonic()
        deadline = started + budget_seconds
        summary = DispatchSummary()
        log = logger.bind(dispatcher_id=self.dispatcher_id)
        client = self._http_client or httpx.Client(
            timeout=httpx.Timeout(self.settings.notify_timeout_seconds)
        )

        try:
            if check_alerts:
                summary.alerts = self._check_alerts(log)

            while time.monotonic() < deadline - self._send_margin():
                want = self.settings.notify_batch_size
                if max_notifications is not None:
                    want = min(want, max_notifications - summary.claimed)
                    if want <= 0:
                        break
                batch = self.outbox.claim(
                    self.dispatcher_id, want, lease_seconds=self.lease_seconds
                )
                if not batch:
                    break
                summary.claimed += len(batch)

                for index, notification in enumerate(batch):
                    if time.monotonic() >= deadline - self._send_margin():
                        self._release_rest(batch[index:], summary, log)
                        break
                    self.deliver(notification, client, summary)
        finally:
            if self._http_client is None:
                client.close()

        summary.seconds = time.monotonic() - started
        if summary.claimed or summary.alerts:
            log.info("dispatcher pass finished", **summary.as_dict())
        return summary

    def _send_margin(self) -> float:
        # A send may take up to the HTTP timeout; none starts that close to the
        # deadline, so a pass ends within its budget even when a provider hangs.
        return self.settings.notify_timeout_seconds

    def _check_alerts(self, log: Any) -> list[str]:
        try:
            return [
                str(alert.get("kind"))
                for alert in check_admin_alerts(self.outbox, self.settings)
            ]
        except Unavailable:
            raise
        except DatabaseError as exc:
            # The alerts must not keep the notifications from going out.
            log.warning("admin alert check failed", error=type(exc).__name__)
            return []

    def _release_rest(
        self, batch: list[Notification], summary: DispatchSummary, log: Any
    ) -> None:
        for notification in batch:
            try:
                self.outbox.release(notification)
                summary.released += 1
            except (LeaseLost, NotificationNotFound):
                summary.lease_lost += 1
        log.info("budget spent; released unsent notifications", released=len(batch))

    def deliver(
        self, notification: Notification, client: httpx.Client, summary: DispatchSummary
    ) -> str:
        """Render, send and record one claimed notification; returns the recorded status."""
        log = logger.bind(
            dispatcher_id=self.dispatcher_id, **notification.log_context()
        )
        started = time.monotonic()

        # Everything that can fail without contacting anyone happens before the row
        # is marked attempting, so such a failure never makes a row uncertain.
        try:
            send = self._prepare(notification, client)
        except Exception as exc:  # noqa: BLE001 - a message that cannot be built fails alone
            send = Delivery(
                "failed", f"the message could not be built: {type(exc).__name__}"
            )
        if isinstance(send, Delivery):
            return self._record(log, notification, send, summary, started)

        try:
            self.outbox.start(notification, lease_seconds=self.lease_seconds)
        except NotificationNotFound:
            # Deleted meanwhile, with its job or its owner: nothing left to send.
            summary.lease_lost += 1
            log.info("notification deleted before sending; skipped")
            return "lease_lost"
        except LeaseLost:
            summary.lease_lost += 1
            log.warning(
                "lease lost before sending; another dispatcher owns the notification"
            )
            return "lease_lost"

        delivery = _send_within(send, self.settings.notify_timeout_seconds + SEND_GRACE_SECONDS)
        return self._record(log, notification, delivery, summary, started)

    def _prepare(
        self, notification: Notification, client: httpx.Client
    ) -> Callable[[], Delivery] | Delivery:
        """Build the request for a notification, or the failure that stops it before sending."""
        settings = self.settings
        if notification.audience == "admins":
            if settings.slack_admin_webhook_url is None:
                return Delivery("failed", "EXAMQ_SLACK_ADMIN_WEBHOOK_URL is not set")
            url = settings.slack_admin_webhook_url.get_secret_value()
            content = render_alert_slack(notification, settings.dashboard_url)
            return lambda: SlackSender(client).send(url, content)

        if notification.channel == "slack":
            if notification.slack_webhook_url is None:
                return Delivery(
                    "failed",
                    "the owner no longer has a Slack webhook in their preferences",
                )
            url = notification.slack_webhook_url.get_secret_value()
            content = render_job_slack(notification, settings.dashboard_url)
            return lambda: SlackSender(client).send(url, content)

        if notification.recipient_email is None:
            return Delivery("failed", "the owner has no e-mail address")
        address = notification.recipient_email.get_secret_value()
        email_content = render_job_email(notification, settings.dashboard_url)
        if settings.sendgrid_api_key is not None:
            sendgrid = SendGridSender(
                settings.sendgrid_api_key.get_secret_value(),
                settings.email_from,
                client,
            )
            body = sendgrid.build(
                notification.id, address, notification.recipient_name, email_content
            )
            return lambda: sendgrid.post(body)
        files = EmlFileSender(settings.outbox_path, settings.email_from)
        message = files.build(
            notification.id, address, notification.recipient_name, email_content
        )
        return lambda: files.write(notification.id, message)

    def _record(
        self,
        log: Any,
        notification: Notification,
        delivery: Delivery,
        summary: DispatchSummary,
        started: float,
    ) -> str:
        duration = round(time.monotonic() - started, 3)
        try:
            finished = self.outbox.finish(notification, delivery)
        except NotificationNotFound:
            # Deleted while it was being sent (its job pruned, its owner deleted): the
            # others of the pass go on.
            summary.lease_lost += 1
            log.warning("notification deleted before its outcome was recorded", outcome=delivery.outcome)
            return "lease_lost"
        except LeaseLost:
            summary.lease_lost += 1
            log.error(
                "lease lost before the outcome was recorded",
                outcome=delivery.outcome,
                duration_seconds=duration,
            )
            return "lease_lost"

        status = finished.status
        fields = {
            "duration_seconds": duration,
            "provider_status": delivery.provider_status,
        }
        if status == "sent":
            summary.sent += 1
            log.info("notification sent", **fields)
        elif status == "pending":
            summary.retried += 1
            log.warning(
                "notification not delivered; retry scheduled",
                run_at=finished.run_at.isoformat() if finished.run_at else None,
                reason=delivery.error,
                **fields,
            )
        elif status == "uncertain":
            summary.uncertain += 1
            log.error(
                "notification delivery uncertain; left for an admin",
                reason=delivery.error,
                **fields,
            )
        else:
            summary.failed += 1
            log.warning("notification failed", reason=delivery.error, **fields)
        return status


# httpx's timeouts bound each connect, write and read, not a whole request: a provider
# that answers a byte at a time could hold a send, and the pass, for as long as it
# likes. A send is also bounded as a whole, by the timeout plus this grace, which lets
# a connect timeout (a send that never went out, retried later) be reported first.
SEND_GRACE_SECONDS = 1.0


def _send_within(send: Callable[[], Delivery], seconds: float) -> Delivery:
    """Run ``send`` and return its outcome, or ``uncertain`` once ``seconds`` have passed.

    The send runs in a daemon thread: one that overruns is abandoned (its request may
    have been delivered, so the row waits for an admin rather than being sent again),
    and the process can still exit while it lingers.
    """
    outcome: list[Delivery] = []

    def run() -> None:
        try:
            outcome.append(send())
        except Exception as exc:  # noqa: BLE001 - the request may have gone out
            outcome.append(
                Delivery(
                    "uncertain",
                    f"unexpected error while sending ({type(exc).__name__}); it may have been delivered",
                )
            )

    # Named after the thread it sends for: logs and traces read as if that one sent.
    worker = threading.Thread(target=run, name=threading.current_thread().name, daemon=True)
    worker.start()
    worker.join(seconds)
    if outcome:
        return outcome[0]
    return Delivery(
        "uncertain",
        f"no complete answer within {seconds:g} s; the message may have been delivered",
    )

