"""A handler table of a user's own, as EXAMQ_HANDLERS names one (used by the tests)."""

from __future__ import annotations

from typing import Any


def shout(payload: dict[str, Any], ctx: Any) -> dict[str, Any]:
    return {"text": str(payload.get("text", "")).upper(), "attempt": ctx.attempt}


HANDLERS = {"custom.shout": shout}

NOT_A_TABLE = ["custom.shout"]

BAD_NAME = {"Custom Shout": shout}
