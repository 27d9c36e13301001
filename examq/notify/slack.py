"""Slack messages through incoming webhooks, over httpx.

An incoming webhook answers 200 with the body ``ok``; 400 ``invalid_payload`` (or
``user_not_found``); 403 ``invalid_token`` or ``action_prohibited``; 404
``no_service`` or ``channel_not_found``; 410 ``channel_is_archived``; 429 with a
``Retry-After`` header (seconds) when rate limited; 5xx (``rollup_error``) on its
side. 429 and 5xx are retried; the other 4xx are permanent and recorded with Slack's
error string. The webhook URL is a secret: it is never logged nor put in an error.
"""

from __future__ import annotations

import httpx

from examq.notify.delivery import Delivery, header_number, transport_failure
from examq.notify.render import SlackContent


class SlackSender:
    """Posts messages to Slack incoming webhooks."""

    def __init__(self, client: httpx.Client) -> None:
        self._client = client

    def send(self, webhook_url: str, content: SlackContent) -> Delivery:
        """POST the message to the webhook and classify the answer."""
        try:
            response = self._client.post(webhook_url, json=content.payload())
        except httpx.HTTPError as exc:
            return transport_failure("Slack", exc)
        return classify_slack(response)


def classify_slack(response: httpx.Response) -> Delivery:
    """What an incoming webhook's answer means for the notification."""
    status = response.status_code
    if 200 <= status < 300:
        return Delivery("sent", provider_status=status)

    # Slack answers errors with a short plain-text code such as channel_is_archived.
    code = (
        " ".join(response.text.split())[:200] or response.reason_phrase or "no message"
    )
    reason = f"Slack answered {status}: {code}"
    if status == 429:
        return Delivery(
            "retry",
            reason,
            provider_status=status,
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
