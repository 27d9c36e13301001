"""Messages from templates: e-mail (subject, plain text, HTML) and Slack (text and blocks).

The templates are files in ``examq/notify/templates``, rendered with Jinja2. HTML
templates are autoescaped; Slack templates escape every interpolated value for
Slack's mrkdwn (``&``, ``<``, ``>``) unless the value is ``SlackMarkup`` that this
module built itself (a link). Everything that came from users (exam titles, error
messages, names) is therefore escaped wherever it lands; plain-text e-mail needs no
escaping, and the subject is kept to one line.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from examq.notify.outbox import JobFacts, Notification

TEMPLATES = Path(__file__).resolve().parent / "templates"

_VERBS = {"succeeded": "succeeded", "dead": "failed", "cancelled": "was cancelled"}
_COLOURS = {"succeeded": "#0f7b3f", "dead": "#b42318", "cancelled": "#8a5a00"}
_SLACK_EMOJI = {
    "succeeded": ":white_check_mark:",
    "dead": ":x:",
    "cancelled": ":no_entry_sign:",
}


@dataclass(frozen=True)
class EmailContent:
    """A rendered e-mail: one-line subject, plain-text body and HTML body."""

    subject: str
    text: str
    html: str


@dataclass(frozen=True)
class SlackContent:
    """A rendered Slack message: fallback text and Block Kit blocks."""

    text: str
    blocks: list[dict[str, Any]]

    def payload(self) -> dict[str, Any]:
        """The JSON body of an incoming-webhook POST."""
        return {"text": self.text, "blocks": self.blocks}


class SlackMarkup(str):
    """Text already in Slack mrkdwn, inserted into a Slack template unescaped."""


def slack_escape(value: Any) -> str:
    """Escape a value for Slack mrkdwn: only ``&``, ``<`` and ``>`` are control characters."""
    if isinstance(value, SlackMarkup):
        return value
    text = "" if value is None else str(value)
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


@lru_cache(maxsize=1)
def _email_env() -> Environment:
    return Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=lambda name: bool(name) and name.endswith(".html.j2"),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


@lru_cache(maxsize=1)
def _slack_env() -> Environment:
    return Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=False,
        finalize=slack_escape,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def job_link(dashboard_url: str, job_id: int) -> str:
    """The dashboard's address of one job (its hash route ``#/jobs/<id>``)."""
    return f"{dashboard_url.rstrip('/')}/#/jobs/{job_id}"


def render_job_email(notification: Notification, dashboard_url: str) -> EmailContent:
    """Render the e-mail telling a job's owner how the job ended."""
    context = _job_context(notification, dashboard_url)
    env = _email_env()
    subject = env.get_template("job_email_subject.txt.j2").render(context)
    # One line, without the invisible controls that reorder text (a title holding
    # U+202E would show the rest of the subject reversed).
    subject = " ".join(_BIDI_CONTROLS.sub("", subject).split())[:200]
    context["subject"] = subject
    text = env.get_template("job_email.txt.j2").render(context)
    html = env.get_template("job_email.html.j2").render(context)
    return EmailContent(subject=subject, text=text, html=html)


def render_job_slack(notification: Notification, dashboard_url: str) -> SlackContent:
    """Render the Slack message telling a job's owner how the job ended."""
    context = _job_context(notification, dashboard_url)
    job = _job(notification)
    error = context["error"]
    context["error"] = " ".join(error.split())[:300] if error else None
    context["link_markup"] = SlackMarkup(
        f"<{context['link']}|Open job #{job.id} in the dashboard>"
    )
    context["headline"] = (
        f"{_SLACK_EMOJI.get(job.status, '')} {context['headline']}".strip()
    )
    body = _slack_env().get_template("job_slack.txt.j2").render(context).strip()
    fallback = slack_escape(context["headline"])
    return SlackContent(text=fallback, blocks=[_section(body)])


def render_alert_slack(notification: Notification, dashboard_url: str) -> SlackContent:
    """Render an admin alert (dead-letter queue, queue age, failure rate, cron silence)."""
    alert = dict(notification.details)
    alert.setdefault("kind", notification.kind.removeprefix("alert."))
    alert.setdefault("jobs", [])
    context = {
        "alert": alert,
        "since_text": _when(alert.get("since")),
        "duration": _duration,
        "percent": lambda v: f"{float(v) * 100:.0f}%",
        "link_markup": SlackMarkup(
            f"<{dashboard_url.rstrip('/')}/|Open the examq dashboard>"
        ),
    }
    body = _slack_env().get_template("alert_slack.txt.j2").render(context).strip()
    first_line = body.splitlines()[0] if body else f"examq alert: {alert['kind']}"
    return SlackContent(text=first_line, blocks=[_section(body)])


def _section(text: str) -> dict[str, Any]:
    # A section's text is limited to 3000 characters.
    return {"type": "section", "text": {"type": "mrkdwn", "text": text[:3000]}}


def _job(notification: Notification) -> JobFacts:
    if notification.job is None:
        raise ValueError(f"notification {notification.id} has no job to describe")
    return notification.job


def _job_context(notification: Notification, dashboard_url: str) -> dict[str, Any]:
    job = _job(notification)
    label = f'"{job.title}"' if job.title else f"{job.job_type} job #{job.id}"
    verb = _VERBS.get(job.status, job.status)
    headline = {
        "succeeded": f"Your {label} finished successfully.",
        "dead": f"Your {label} failed and will not be retried.",
        "cancelled": f"Your {label} was cancelled.",
    }.get(job.status, f"Your {label} is {job.status}.")
    run = job.run_seconds
    return {
        "name": notification.recipient_name,
        "job": job,
        "verb": verb,
        "headline": headline,
        "status_text": {
            "succeeded": "succeeded",
            "dead": "failed for good (in the dead-letter queue)",
            "cancelled": "cancelled",
        }.get(job.status, job.status),
        "colour": _COLOURS.get(job.status, "#1f2933"),
        "figures": _figures(job),
        "reason": _reason(job),
        "error": job.error if job.status != "succeeded" else None,
        "attempts_text": f"{job.attempt} attempt{'s' if job.attempt != 1 else ''}"
        f" (of {job.max_attempts} allowed)",
        "run_text": _duration(run) if run is not None else None,
        "finished_text": _when(job.finished_at),
        "link": job_link(dashboard_url, job.id),
        "preference_text": {
            "succeeded": "success",
            "dead": "failure",
            "cancelled": "cancellation",
        }.get(job.status, job.status),
    }


def _figures(job: JobFacts) -> list[tuple[str, str]]:
    """The key figures of a succeeded job's result (exam.grade's summary), as label/value."""
    summary = job.summary or {}
    if job.status != "succeeded" or not summary:
        return []
    figures: list[tuple[str, str]] = []
    if "students" in summary:
        figures.append(("Students", _number(summary.get("students"))))
    if "items" in summary:
        figures.append(("Items", _number(summary.get("items"))))
    if "mean" in summary:
        mean = _number(summary.get("mean"), 2)
        if summary.get("max_score") is not None:
            mean = f"{mean} of {_number(summary.get('max_score'))}"
        figures.append(("Mean score", mean))
    if "sd" in summary:
        figures.append(("Standard deviation", _number(summary.get("sd"), 2)))
    if "alpha" in summary:
        figures.append(("Cronbach's alpha", _number(summary.get("alpha"), 3)))
    return figures


def _reason(job: JobFacts) -> str | None:
    """What went wrong, in plain words, for a job that did not succeed."""
    if job.status == "cancelled":
        return (
            "The job was stopped on request before it finished; nothing more will run."
        )
    if job.status != "dead":
        return None
    return {
        "permanent": "The job could not process its input, so it was not retried. "
        "Check the files you submitted; the message below names the problem.",
        "exhausted": f"The job failed on every one of its {job.attempt} attempts. "
        "The last attempt's error is below.",
        "lease_expired": f"The worker running the job stopped responding during its last "
        f"attempt ({job.attempt} of {job.max_attempts}), for example because it ran out of time "
        "or memory.",
    }.get(job.error_kind or "", "The job failed and will not be retried.")


# A figure of a job's summary is shown as a number; anything else a handler put
# there is shown as text, cut to this many characters, so no result can make an
# e-mail larger than a provider accepts.
FIGURE_LIMIT = 60

_BIDI_CONTROLS = re.compile("[\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _number(value: Any, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a (not defined for this data)"
    if isinstance(value, bool) or not isinstance(value, int | float):
        text = str(value)
        return text if len(text) <= FIGURE_LIMIT else text[: FIGURE_LIMIT - 1] + "\u2026"
    if digits == 0 and float(value).is_integer():
        return str(int(value))
    return f"{float(value):.{digits or 2}f}"


def _duration(seconds: Any) -> str:
    total = float(seconds or 0)
    if total < 60:
        return f"{total:.1f} s"
    minutes, secs = divmod(round(total), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s" if secs else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def _when(value: Any) -> str:
    if value is None:
        return "unknown"
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return value
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
