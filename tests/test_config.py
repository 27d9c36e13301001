"""Settings: backend selection and errors that name the variable at fault."""

from __future__ import annotations

import pytest

from examq.config import Backend, load_settings
from examq.errors import ConfigError


def test_backend_follows_what_is_set():
    assert load_settings({}).backend is Backend.EMBEDDED
    assert load_settings({"DATABASE_URL": "postgresql://u@h/db"}).backend is Backend.POSTGRES
    supabase = {"SUPABASE_URL": "https://abc.supabase.co", "SUPABASE_SERVICE_ROLE_KEY": "k"}
    assert load_settings(supabase).backend is Backend.SUPABASE
    assert load_settings({"DATABASE_URL": " "}).backend is Backend.EMBEDDED


@pytest.mark.parametrize(
    ("environ", "variable"),
    [
        ({"DATABASE_URL": "mysql://x"}, "DATABASE_URL"),
        ({"SUPABASE_URL": "not a url", "SUPABASE_SERVICE_ROLE_KEY": "k"}, "SUPABASE_URL"),
        ({"SUPABASE_URL": "https://abc.supabase.co"}, "SUPABASE_SERVICE_ROLE_KEY"),
        ({"SUPABASE_SERVICE_ROLE_KEY": "k"}, "SUPABASE_URL"),
        ({"EXAMQ_WORKER_BATCH_SIZE": "0"}, "EXAMQ_WORKER_BATCH_SIZE"),
        ({"EXAMQ_CRON_BUDGET_SECONDS": "soon"}, "EXAMQ_CRON_BUDGET_SECONDS"),
        ({"EXAMQ_LOG_FORMAT": "xml"}, "EXAMQ_LOG_FORMAT"),
        ({"CRON_SECRET": "short"}, "CRON_SECRET"),
    ],
)
def test_bad_value_names_the_variable(environ, variable):
    with pytest.raises(ConfigError) as info:
        load_settings(environ)
    assert info.value.variable == variable
    assert variable in str(info.value)


def test_secrets_do_not_show_in_repr():
    settings = load_settings({"CRON_SECRET": "top-secret-0123456789", "SUPABASE_URL": "https://a.supabase.co",
                              "SUPABASE_SERVICE_ROLE_KEY": "service-key"})
    assert "top-secret-0123456789" not in repr(settings) and "service-key" not in repr(settings)
