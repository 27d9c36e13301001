"""The notification settings: defaults, validation naming the variable, secrets kept out of repr."""

from __future__ import annotations

from pathlib import Path

import pytest

from examq.config import load_settings
from examq.errors import ConfigError


def test_defaults_write_email_to_the_data_dir_outbox():
    settings = load_settings({"EXAMQ_DATA_DIR": "/srv/examq"})

    assert (
        settings.sendgrid_api_key is None and settings.slack_admin_webhook_url is None
    )
    assert settings.outbox_path == Path("/srv/examq/outbox")
    assert settings.dashboard_url == "http://localhost:8000"
    assert load_settings({"EXAMQ_OUTBOX_DIR": "/tmp/mail"}).outbox_path == Path(
        "/tmp/mail"
    )


@pytest.mark.parametrize(
    ("environ", "variable"),
    [
        ({"EXAMQ_EMAIL_FROM": "not an address"}, "EXAMQ_EMAIL_FROM"),
        ({"EXAMQ_DASHBOARD_URL": "localhost:8000"}, "EXAMQ_DASHBOARD_URL"),
        (
            {"EXAMQ_SLACK_ADMIN_WEBHOOK_URL": "http://hooks.slack.com/services/x"},
            "EXAMQ_SLACK_ADMIN_WEBHOOK_URL",
        ),
        ({"EXAMQ_NOTIFY_TIMEOUT_SECONDS": "0"}, "EXAMQ_NOTIFY_TIMEOUT_SECONDS"),
        ({"EXAMQ_ALERT_FAILURE_RATE": "1.5"}, "EXAMQ_ALERT_FAILURE_RATE"),
        ({"EXAMQ_ALERT_WINDOW_SECONDS": "10"}, "EXAMQ_ALERT_WINDOW_SECONDS"),
    ],
)
def test_bad_value_names_the_variable(environ, variable):
    with pytest.raises(ConfigError) as info:
        load_settings(environ)

    assert info.value.variable == variable


def test_notification_secrets_do_not_show_in_repr_or_errors():
    secret_hook = "http://hooks.slack.com/services/T/B/very-secret"
    settings = load_settings(
        {
            "SENDGRID_API_KEY": "SG.secret-key",
            "EXAMQ_SLACK_ADMIN_WEBHOOK_URL": "https://hooks.slack.com/services/T/B/s3cr3t",
        }
    )

    assert "SG.secret-key" not in repr(settings) and "s3cr3t" not in repr(settings)
    with pytest.raises(ConfigError) as info:
        load_settings({"EXAMQ_SLACK_ADMIN_WEBHOOK_URL": secret_hook})
    assert "very-secret" not in str(info.value)
