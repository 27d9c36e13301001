"""Job types of the user's own: handlers named in EXAMQ_HANDLERS run beside the built-ins."""

from __future__ import annotations

import json

import pytest

from examq.errors import ConfigError
from examq.handlers import registry
from tests.handlers.custom_jobs import shout
from tests.test_cli import run_examq


def test_handlers_named_in_the_setting_join_the_built_in_ones():
    handlers = registry("tests.handlers.custom_jobs:HANDLERS")

    assert handlers["custom.shout"] is shout
    assert "exam.grade" in handlers


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("tests.handlers.no_such_module:HANDLERS", "cannot import 'tests.handlers.no_such_module'"),
        ("tests.handlers.custom_jobs:MISSING", "has no 'MISSING'"),
        ("tests.handlers.custom_jobs:NOT_A_TABLE", "must be a dict of job type to handler, not list"),
        ("tests.handlers.custom_jobs:BAD_NAME", "'Custom Shout' is not a job type name"),
    ],
)
def test_a_table_that_cannot_be_loaded_is_named(spec, message):
    with pytest.raises(ConfigError) as refused:
        registry(spec)

    assert refused.value.variable == "EXAMQ_HANDLERS"
    assert message in str(refused.value)


def test_a_worker_runs_a_job_type_of_the_users_own(db_url, sql):
    sql.execute(
        "insert into job_types (name, description, lease_seconds) values ('custom.shout', 'Shouts', 30)"
    )
    env = {"EXAMQ_HANDLERS": "tests.handlers.custom_jobs:HANDLERS"}

    submitted = run_examq(
        ["submit", "custom.shout", "--payload", '{"text": "quiet"}', "--wait", "--json"], db_url, env_extra=env
    )

    assert submitted.returncode == 0, submitted.stderr
    job = json.loads(submitted.stdout)
    assert job["status"] == "succeeded" and job["result"] == {"text": "QUIET", "attempt": 1}


def test_a_malformed_setting_stops_the_worker_with_its_name(db_url):
    result = run_examq(["work"], db_url, env_extra={"EXAMQ_HANDLERS": "myapp.jobs"})

    assert result.returncode != 0
    assert "EXAMQ_HANDLERS" in result.stderr and "module:attribute" in result.stderr
