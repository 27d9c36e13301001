"""What a provider's answer means for a notification: sent, retry later, failed, or uncertain.

The rule that keeps a notification from being sent twice lives here: an answer
counts as "not delivered, safe to retry" only when the provider said so (429, 5xx)
or when the connection failed before any byte of the request left (connect error,
connect or pool timeout). A request that went out and got no answer (read or write
timeout, dropped connection) is ``uncertain``: neither SendGrid's mail send nor
Slack's incoming webhooks have an idempotency key, so sending it again could deliver
it twice, and an admin decides instead.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import httpx

Outcome = Literal["sent", "retry", "failed", "uncertain", "released"]

# Connection failures before the request was written: nothing reached the provider.
NOT_SENT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
# Failures while building the request: nothing was sent, and sending again fails again.
REFUSED_LOCALLY_ERRORS = (
    httpx.UnsupportedProtocol,
    httpx.LocalProtocolError,
    httpx.InvalidURL,
)

_ADDRESS = re.compile(r"[^\s@<>\"'(),;:]+@[^\s@<>\"'(),;:]+")


@dataclass(frozen=True)
class Delivery:
    """The outcome of one attempt, with the provider's hints for a retry."""

    outcome: Outcome
    error: str | None = None
    provider_status: int | None = None
    message_id: str | None = None
    retry_after_seconds: float | None = None
    retry_at_epoch: float | None = None


def redact(text: str) -> str:
    """Replace anything that looks like an e-mail address (a provider may echo one)."""
    return _ADDRESS.sub("<address>", text)


def transport_failure(provider: str, exc: Exception) -> Delivery:
    """Classify an httpx error raised while sending; the message names only its type.

    The exception's own text is left out because it may carry the request URL, and a
    Slack webhook URL is a secret.
    """
    name = type(exc).__name__
    if isinstance(exc, NOT_SENT_ERRORS):
        return Delivery(
            "retry", f"could not reach {provider} ({name}); nothing was sent"
        )
    if isinstance(exc, REFUSED_LOCALLY_ERRORS):
        return Delivery(
            "failed", f"the request to {provider} could not be built ({name})"
        )
    return Delivery(
        "uncertain",
        f"{provider} did not answer after the request was sent ({name}); it may have been "
        "delivered, so it is not sent again automatically",
    )


def header_number(headers: httpx.Headers, name: str) -> float | None:
    """A numeric header (Retry-After in seconds, X-RateLimit-Reset in epoch seconds), or None."""
    value = headers.get(name)
    if value is None:
        return None
    try:
        number = float(value.strip())
    except ValueError:
        return None
    return number if number >= 0 else None
