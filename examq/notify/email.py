"""E-mail senders: SendGrid's v3 mail send over httpx, or ``.eml`` files in a local folder.

The message is built with the ``sendgrid`` package's helpers (``Mail``) and its JSON
(``mail.get()``) is POSTed with httpx rather than with the package's own client, so
that timeouts are ours and tests can fake the API at the HTTP layer. SendGrid's
answers (https://api.sendgrid.com/v3/mail/send): 202 accepted (the ``X-Message-Id``
header identifies the message); 400 with ``{"errors": [{"message", "field"}]}``;
401 and 403 for a bad key or an unverified sender; 413 too large; 429 with
``X-RateLimit-Reset`` (epoch seconds) when rate limited; 5xx on its side. 429 and
5xx are retried; other 4xx are permanent; see ``examq.notify.delivery`` for what
happens when no answer comes back.
"""

from __future__ import annotations

import email.policy
import email.utils
import os
import tempfile
from email.message import EmailMessage
from pathlib import Path
from typing import Protocol

import httpx
from sendgrid.helpers.mail import (
    CustomArg,
    From,
    HtmlContent,
    Mail,
    PlainTextContent,
    Subject,
    To,
)

from examq.notify.delivery import Delivery, header_number, redact, transport_failure
from examq.notify.render import EmailContent

SENDGRID_MAIL_SEND_URL = "https://api.sendgrid.com/v3/mail/send"


class EmailSender(Protocol):
    """Delivers one rendered e-mail and says how it went."""

    def send(
        self,
        notification_id: int,
        to_address: str,
        to_name: str | None,
        content: EmailContent,
    ) -> Delivery:
        """Send the message; never raises for the provider's refusals."""


class SendGridSender:
    """Sends e-mail through SendGrid's v3 mail-send API."""

    def __init__(self, api_key: str, from_address: str, client: httpx.Client) -> None:
        self._api_key = api_key
        self._from_name, self._from_email = email.utils.parseaddr(from_address)
        self._client = client

    def build(
        self,
        notification_id: int,
        to_address: str,
        to_name: str | None,
        content: EmailContent,
    ) -> dict:
        """The mail-send JSON body, built with the sendgrid helpers."""
        mail = Mail(
            from_email=From(self._from_email, self._from_name or None),
            to_emails=To(to_address, to_name or None),
            subject=Subject(content.subject),
            plain_text_content=PlainTextContent(content.text),
            html_content=HtmlContent(content.html),
        )
        # Lets an admin find the message in SendGrid's activity feed when its
        # delivery is uncertain.
        mail.custom_arg = CustomArg("examq_notification_id", str(notification_id))
        return mail.get()

    def send(
        self,
        notification_id: int,
        to_address: str,
        to_name: str | None,
        content: EmailContent,
    ) -> Delivery:
        """Build the message and POST it to SendGrid."""
        return self.post(self.build(notification_id, to_address, to_name, content))

    def post(self, body: dict) -> Delivery:
        """POST a built message to SendGrid and classify the answer."""
        try:
            response = self._client.post(
                SENDGRID_MAIL_SEND_URL,
                json=body,
                headers={"Authorization": f"Bearer {self._api_key}"},
            )
        except httpx.HTTPError as exc:
            return transport_failure("SendGrid", exc)
        return classify_sendgrid(response)


def classify_sendgrid(response: httpx.Response) -> Delivery:
    """What a SendGrid mail-send answer means for the notification."""
    status = response.status_code
    if 200 <= status < 300:
        return Delivery(
            "sent",
            provider_status=status,
            message_id=response.headers.get("x-message-id"),
        )

    reason = f"SendGrid answered {status}: {_sendgrid_errors(response)}"
    if status == 429:
        return Delivery(
            "retry",
            reason,
            provider_status=status,
            retry_at_epoch=header_number(response.headers, "x-ratelimit-reset"),
            retry_after_seconds=header_number(response.headers, "retry-after"),
        )
    if status >= 500:
        return Delivery(
            "retry",
            reason,
            provider_status=status,
            retry_after_seconds=header_number(response.headers, "retry-after"),
        )
    return Delivery("failed", reason, provider_status=status)


def _sendgrid_errors(response: httpx.Response) -> str:
    """The messages of SendGrid's ``{"errors": [...]}`` body, addresses redacted."""
    try:
        errors = response.json().get("errors") or []
        parts = []
        for error in errors[:5]:
            message = str(error.get("message") or "").strip()
            field = error.get("field")
            parts.append(f"{message} (field {field})" if field else message)
        text = "; ".join(p for p in parts if p)
    except (ValueError, AttributeError):
        text = response.text.strip()[:300]
    return redact(text) or response.reason_phrase or "no message"


class EmlFileSender:
    """Writes each e-mail as a MIME ``.eml`` file (multipart/alternative) in a folder.

    Used when SENDGRID_API_KEY is not set, so that local runs and the demo show the
    messages. The file is named by notification id and written atomically, so a
    repeated attempt replaces the same file instead of adding a second message.
    """

    def __init__(self, folder: Path, from_address: str) -> None:
        self.folder = folder
        self._from = from_address

    def path_for(self, notification_id: int) -> Path:
        """The file a notification is written to."""
        return self.folder / f"notification-{notification_id:08d}.eml"

    def build(
        self,
        notification_id: int,
        to_address: str,
        to_name: str | None,
        content: EmailContent,
    ) -> EmailMessage:
        """The message as the standard library builds it: text and HTML alternatives."""
        message = EmailMessage(policy=email.policy.SMTP)
        message["Subject"] = content.subject
        message["From"] = self._from
        message["To"] = email.utils.formataddr((to_name or "", to_address))
        message["Date"] = email.utils.formatdate(localtime=False, usegmt=True)
        message["Message-ID"] = f"<examq-notification-{notification_id}@examq.local>"
        message["X-Examq-Notification-Id"] = str(notification_id)
        message.set_content(content.text)
        message.add_alternative(content.html, subtype="html")
        return message

    def send(
        self,
        notification_id: int,
        to_address: str,
        to_name: str | None,
        content: EmailContent,
    ) -> Delivery:
        """Build the message and write its file."""
        return self.write(
            notification_id, self.build(notification_id, to_address, to_name, content)
        )

    def write(self, notification_id: int, message: EmailMessage) -> Delivery:
        """Write a built message; a file-system error fails the notification with its reason."""
        data = message.as_bytes()
        target = self.path_for(notification_id)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd, temporary = tempfile.mkstemp(
                dir=self.folder, prefix=".writing-", suffix=".eml"
            )
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(temporary, target)
        except OSError as exc:
            return Delivery(
                "failed", f"cannot write the local outbox folder: {exc.strerror or exc}"
            )
        return Delivery("sent", message_id=target.name)
