"""Small handlers for operators and tests: a no-op and a cancellable sleep."""

from __future__ import annotations

import time
from typing import Any

from examq.errors import PermanentError, RetryableError
from examq.handlers import JobContext


def noop(payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """Do nothing; optionally fail on purpose (``fail``: ``retryable`` or ``permanent``)."""
    fail = payload.get("fail")
    if fail == "retryable":
        raise RetryableError(str(payload.get("message", "requested retryable failure")))
    if fail == "permanent":
        raise PermanentError(str(payload.get("message", "requested permanent failure")))
    return {"ok": True}


def sleep(payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """Sleep ``seconds`` in ``steps`` steps, reporting progress and honouring cancels."""
    try:
        seconds = float(payload.get("seconds", 1.0))
        steps = max(1, int(payload.get("steps", 10)))
    except (TypeError, ValueError) as exc:
        raise PermanentError(f"system.sleep: seconds and steps must be numbers ({exc})") from exc
    if not 0 <= seconds <= 3600:
        raise PermanentError("system.sleep: seconds must be between 0 and 3600")

    for step in range(steps):
        time.sleep(seconds / steps)
        ctx.report_progress(100.0 * (step + 1) / steps, f"step {step + 1} of {steps}")

    return {"slept_seconds": seconds}
