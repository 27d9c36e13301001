"""Settings: backend selection and errors that name the variable at fault."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from starlette.testclient import TestClient

import functions.cron as cron_function
import functions.health as health_function
import functions.jobs as jobs_function
from examq.config import (
    CRON_MAX_DURATION_SECONDS,
    MIN_INPUT_LIMIT_BYTES,
    Backend,
    Settings,
    load_settings,
)
from examq.errors import ConfigError
from examq.exam.settings import load_exam_settings
from tests.conftest import PROJECT_ROOT


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
        ({"EXAMQ_LOG_RETENTION": "99999999999 years"}, "EXAMQ_LOG_RETENTION"),
        ({"EXAMQ_LOG_RETENTION": "0 days"}, "EXAMQ_LOG_RETENTION"),
        ({"EXAMQ_LOG_ROTATION": "\u0665\u0660 MB"}, "EXAMQ_LOG_ROTATION"),
        ({"EXAMQ_LOG_ROTATION": "0 MB"}, "EXAMQ_LOG_ROTATION"),
        ({"EXAMQ_LOG_ROTATION": "0 seconds"}, "EXAMQ_LOG_ROTATION"),
        ({"EXAMQ_REPORTS_BUCKET": "exam-reports\n"}, "EXAMQ_REPORTS_BUCKET"),
        ({"EXAMQ_CRON_BUDGET_SECONDS": "1e-300"}, "EXAMQ_CRON_BUDGET_SECONDS"),
        ({"EXAMQ_NOTIFY_TIMEOUT_SECONDS": "1e-300"}, "EXAMQ_NOTIFY_TIMEOUT_SECONDS"),
        ({"EXAMQ_SLACK_ADMIN_WEBHOOK_URL": "https://"}, "EXAMQ_SLACK_ADMIN_WEBHOOK_URL"),
    ],
)
def test_bad_value_names_the_variable(environ, variable):
    with pytest.raises(ConfigError) as info:
        load_settings(environ)
    assert info.value.variable == variable
    assert variable in str(info.value)


def test_spaces_around_the_database_url_are_not_part_of_it():
    settings = load_settings({"DATABASE_URL": " postgresql://postgres@127.0.0.1/x\n"})
    assert settings.database_url == "postgresql://postgres@127.0.0.1/x"


def test_secrets_do_not_show_in_repr():
    settings = load_settings({"CRON_SECRET": "top-secret-0123456789", "SUPABASE_URL": "https://a.supabase.co",
                              "SUPABASE_SERVICE_ROLE_KEY": "service-key"})
    assert "top-secret-0123456789" not in repr(settings) and "service-key" not in repr(settings)


# Settings of exam processing, the jobs API and the cron, each with a value examq must
# refuse at start rather than act on later.
BAD_SETTINGS = [
    ("EXAMQ_MAX_INPUT_BYTES", "-5"),
    ("EXAMQ_REPORT_LINK_SECONDS", "abc"),
    ("EXAMQ_SUBMIT_PASS_SECONDS", "abc"),
    ("EXAMQ_REPORTS_BUCKET", "bad bucket!"),
    ("EXAMQ_CRON_BUDGET_SECONDS", "100"),
]


@pytest.mark.parametrize(("variable", "value"), BAD_SETTINGS)
def test_exam_and_cron_settings_are_validated_with_the_others(variable, value):
    with pytest.raises(ConfigError) as info:
        load_settings({variable: value})
    assert info.value.variable == variable
    assert str(info.value).startswith(f"{variable}: ")


def test_every_documented_variable_is_validated_when_settings_load():
    example = (PROJECT_ROOT / ".env.example").read_text()
    documented = set(re.findall(r"^([A-Z][A-Z0-9_]+)=", example, re.MULTILINE))

    validated = {field.alias for field in Settings.model_fields.values()}

    assert documented, ".env.example lists the variables"
    assert documented <= validated, f"not read by load_settings: {documented - validated}"


def test_exam_settings_keep_their_defaults_and_blank_means_default():
    settings = load_settings({"EXAMQ_REPORTS_BUCKET": " ", "EXAMQ_STORAGE_DIR": ""})

    assert settings.reports_bucket == "exam-reports"
    assert settings.storage_dir is None
    assert settings.max_input_bytes == 20 * 1024 * 1024
    assert settings.report_link_seconds == 7 * 86400
    assert settings.submit_pass_seconds == 8.0
    assert load_exam_settings().max_input_bytes >= MIN_INPUT_LIMIT_BYTES


@pytest.mark.parametrize("budget", ["60", "60.5", "100"])
def test_cron_budget_must_end_before_the_functions_max_duration(budget):
    with pytest.raises(ConfigError) as info:
        load_settings({"EXAMQ_CRON_BUDGET_SECONDS": budget})
    assert info.value.variable == "EXAMQ_CRON_BUDGET_SECONDS"
    assert "below 60 s" in str(info.value) and "maxDuration" in str(info.value)


def test_cron_budgets_below_the_max_duration_are_accepted():
    assert load_settings({"EXAMQ_CRON_BUDGET_SECONDS": "59"}).cron_budget_seconds == 59
    assert load_settings({}).cron_budget_seconds == 50


def test_the_cron_bound_is_vercel_json_max_duration():
    functions = json.loads((PROJECT_ROOT / "vercel.json").read_text())["functions"]

    assert functions["api/cron.py"]["maxDuration"] == CRON_MAX_DURATION_SECONDS


def _run_examq(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "examq", *args],
        env={**os.environ, "EXAMQ_LOG_FORMAT": "text", **env},
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(("variable", "value"), BAD_SETTINGS)
def test_commands_refuse_to_start_with_a_bad_setting(db_url, variable, value):
    for command in (["status", "1"], ["work"], ["demo"]):
        result = _run_examq(command, {"DATABASE_URL": db_url, variable: value})

        assert result.returncode == 2, (command, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr
        assert result.stderr.startswith("error:") and variable in result.stderr, result.stderr


def test_a_bad_setting_leaves_queued_jobs_untouched(db_url, queue):
    job = queue.enqueue(
        "exam.pipeline",
        {
            "exam": {"text": "::q1::Capital? {=Paris ~Lyon}\n", "name": "quiz.gift"},
            "responses": {"text": "student,q1\ns1,Paris\n", "name": "responses.csv"},
        },
    )

    result = _run_examq(["work"], {"DATABASE_URL": db_url, "EXAMQ_MAX_INPUT_BYTES": "-5"})

    assert result.returncode == 2, result.stderr
    after = queue.get(job.id)
    assert (after.status, after.attempt, after.last_error) == ("queued", 0, None)


@pytest.mark.parametrize(("variable", "value"), BAD_SETTINGS)
def test_vercel_functions_refuse_a_bad_setting(monkeypatch, db_url, variable, value):
    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.setenv("CRON_SECRET", "s3cret-for-config-tests")
    monkeypatch.setenv(variable, value)
    monkeypatch.setattr(cron_function, "_queue", None)
    monkeypatch.setattr(health_function, "_queue", None)
    secret = {"Authorization": "Bearer s3cret-for-config-tests"}

    answers = {
        "cron": TestClient(cron_function.app).get("/api/cron", headers=secret),
        "health": TestClient(health_function.app).get("/api/health", headers=secret),
        "jobs": TestClient(jobs_function.create_app()).post(
            "/api/jobs", headers=secret, json={"job_type": "system.noop"}
        ),
    }

    for name, response in answers.items():
        assert response.status_code == 500, (name, response.text)
        assert variable in response.json()["error"], (name, response.text)
    assert cron_function._queue is None and health_function._queue is None

    # Without the secret, the functions that take it say only that something is wrong.
    for path, app in (("/api/cron", cron_function.app), ("/api/health", health_function.app)):
        anonymous = TestClient(app).get(path)
        assert anonymous.status_code == 500 and variable not in anonymous.text, (path, anonymous.text)
