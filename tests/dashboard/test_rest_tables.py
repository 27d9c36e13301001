"""Table reads of the local Supabase API stand-in (examq.rest_tables), over real HTTP.

What supabase-js sends for ``supabase.from(table).select(...)`` and what PostgREST
12.2 answers: filters, ordering, paging, ``Prefer: count=exact`` with Content-Range and
206/416, single-object reads, its error bodies, and row-level security under the
JWT's role.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from examq.rest import create_rest_app, serve
from examq.rest_tables import content_range
from tests.conftest import ADMIN_USER, FREE_USER, PRO_USER
from tests.test_rest import ANON_KEY, SECRET, SERVICE, auth, enqueue, make_token

FREE = auth(make_token("authenticated", sub=FREE_USER))
ADMIN = auth(make_token("authenticated", sub=ADMIN_USER))


@pytest.fixture
def api(db_url: str) -> Iterator[httpx.Client]:
    with (
        serve(create_rest_app(db_url, SECRET)) as url,
        httpx.Client(base_url=f"{url}/rest/v1", timeout=30) as client,
    ):
        yield client


@pytest.fixture
def jobs(api: httpx.Client) -> dict[str, list[int]]:
    """Three jobs of the free teacher and two of the pro teacher, oldest first."""
    free = [enqueue(api, "exam.grade", p_user_id=FREE_USER)["id"] for _ in range(3)]
    pro = [enqueue(api, "system.noop", p_user_id=PRO_USER)["id"] for _ in range(2)]
    return {"free": free, "pro": pro}


def ids(response: httpx.Response) -> list[int]:
    assert response.status_code in (200, 206), response.text
    return [row["id"] for row in response.json()]


def test_rest_tables_select_filter_and_order(
    api: httpx.Client, jobs: dict[str, list[int]]
) -> None:
    newest_first = api.get(
        "/jobs", params={"select": "id,user_id", "order": "id.desc"}, headers=ADMIN
    )
    free_only = api.get(
        "/jobs",
        params={"select": "id", "user_id": f"eq.{FREE_USER}", "order": "id"},
        headers=ADMIN,
    )
    listed = api.get(
        "/jobs",
        params={
            "select": "id",
            "id": f'in.({jobs["free"][0]},"{jobs["pro"][1]}")',
            "order": "id",
        },
        headers=ADMIN,
    )
    not_free = api.get(
        "/jobs",
        params={"select": "id", "tier": "not.eq.free", "order": "id"},
        headers=ADMIN,
    )
    ranged = api.get(
        "/jobs",
        params={
            "select": "id",
            "id": f"gt.{jobs['free'][0]}",
            "order": "id",
            "limit": "2",
        },
        headers=ADMIN,
    )

    assert ids(newest_first) == sorted(jobs["free"] + jobs["pro"], reverse=True)
    assert set(newest_first.json()[0]) == {"id", "user_id"}
    assert ids(free_only) == jobs["free"]
    assert ids(listed) == [jobs["free"][0], jobs["pro"][1]]
    assert ids(not_free) == jobs["pro"]
    assert ids(ranged) == jobs["free"][1:3]


def test_rest_tables_row_level_security_applies(
    api: httpx.Client, jobs: dict[str, list[int]]
) -> None:
    as_teacher = api.get("/jobs", params={"select": "id", "order": "id"}, headers=FREE)
    others = api.get(
        "/jobs", params={"select": "id", "user_id": f"eq.{PRO_USER}"}, headers=FREE
    )
    as_anon = api.get("/jobs", params={"select": "id"}, headers=auth(None, ANON_KEY))

    assert ids(as_teacher) == jobs["free"]
    assert ids(others) == []
    assert as_anon.status_code == 401
    assert as_anon.json() == {
        "code": "42501",
        "details": None,
        "hint": None,
        "message": "permission denied for table jobs",
    }


def test_rest_tables_count_exact_sets_content_range_and_206(
    api: httpx.Client, jobs: dict[str, list[int]]
) -> None:
    count = {"Prefer": "count=exact"}
    page = api.get(
        "/jobs",
        params={"select": "id", "order": "id", "limit": "2", "offset": "1"},
        headers={**ADMIN, **count},
    )
    whole = api.get(
        "/jobs",
        params={"select": "id", "user_id": f"eq.{PRO_USER}"},
        headers={**ADMIN, **count},
    )
    uncounted = api.get("/jobs", params={"select": "id", "limit": "2"}, headers=ADMIN)
    past_end = api.get(
        "/jobs", params={"select": "id", "offset": "9"}, headers={**ADMIN, **count}
    )

    assert (page.status_code, page.headers["content-range"]) == (206, "1-2/5")
    assert (whole.status_code, whole.headers["content-range"]) == (200, "0-1/2")
    assert (uncounted.status_code, uncounted.headers["content-range"]) == (200, "0-1/*")
    assert past_end.status_code == 416
    assert past_end.json()["code"] == "PGRST103"
    assert past_end.headers["content-range"] == "*/5"


def test_rest_tables_head_gives_the_count_without_rows(
    api: httpx.Client, jobs: dict[str, list[int]]
) -> None:
    response = api.head(
        "/dead_letter_jobs",
        params={"select": "*"},
        headers={**ADMIN, "Prefer": "count=exact"},
    )

    assert response.status_code == 200
    assert response.headers["content-range"] == "*/0"
    assert response.content == b""


def test_rest_tables_single_object_is_one_row_or_406(
    api: httpx.Client, jobs: dict[str, list[int]]
) -> None:
    single = {"Accept": "application/vnd.pgrst.object+json"}
    one = api.get(
        "/jobs",
        params={"select": "id,status", "id": f"eq.{jobs['free'][0]}"},
        headers={**FREE, **single},
    )
    hidden = api.get(
        "/jobs",
        params={"select": "id", "id": f"eq.{jobs['pro'][0]}"},
        headers={**FREE, **single},
    )

    assert one.json() == {"id": jobs["free"][0], "status": "queued"}
    assert hidden.status_code == 406
    assert hidden.json() == {
        "code": "PGRST116",
        "details": "The result contains 0 rows",
        "hint": None,
        "message": "Cannot coerce the result to a single JSON object",
    }


def test_rest_tables_errors_follow_postgrest(api: httpx.Client) -> None:
    no_column = api.get("/jobs", params={"select": "id,nope"}, headers=SERVICE)
    no_table = api.get("/nope", headers=SERVICE)
    bad_value = api.get("/jobs", params={"id": "eq.seven"}, headers=SERVICE)
    bad_operator = api.get("/jobs", params={"id": "equals.7"}, headers=SERVICE)
    bad_order = api.get("/jobs", params={"order": "id.sideways"}, headers=SERVICE)
    other_schema = api.get("/jobs", headers={**SERVICE, "Accept-Profile": "auth"})
    no_key = api.get("/jobs")

    assert (no_column.status_code, no_column.json()["message"]) == (
        400,
        "column jobs.nope does not exist",
    )
    assert (no_table.status_code, no_table.json()["code"]) == (404, "42P01")
    assert (bad_value.status_code, bad_value.json()["code"]) == (400, "22P02")
    assert (bad_operator.status_code, bad_operator.json()["code"]) == (400, "PGRST100")
    assert (bad_order.status_code, bad_order.json()["code"]) == (400, "PGRST100")
    assert (other_schema.status_code, other_schema.json()["code"]) == (406, "PGRST106")
    assert (no_key.status_code, no_key.json()["message"]) == (
        401,
        "No API key found in request",
    )


def test_rest_tables_values_never_become_sql(
    api: httpx.Client, jobs: dict[str, list[int]]
) -> None:
    injected = api.get(
        "/jobs", params={"select": "id", "job_type": "eq.x' or '1'='1"}, headers=ADMIN
    )
    quoted_in = api.get(
        "/jobs",
        params={"select": "id", "job_type": 'in.("exam.grade",")x")'},
        headers=ADMIN,
    )

    assert ids(injected) == []
    assert sorted(ids(quoted_in)) == jobs["free"]


PREFERENCE_COLUMNS = "email_enabled,slack_enabled,events,job_types,success_min_seconds"
WEBHOOK = "https://hooks.slack.com/services/T0EXAMQ/B0EXAMQ/secret"


def test_rest_tables_read_own_notification_preferences_without_the_webhook(
    api: httpx.Client,
) -> None:
    saved = api.post(
        "/rpc/set_notification_preferences",
        json={
            "p_slack_enabled": True,
            "p_slack_webhook_url": WEBHOOK,
            "p_events": ["failed", "cancelled"],
            "p_job_types": ["exam.grade"],
            "p_success_min_seconds": 0,
        },
        headers=FREE,
    )
    api.post(
        "/rpc/set_notification_preferences",
        json={"p_email_enabled": False, "p_user_id": PRO_USER},
        headers=SERVICE,
    ).raise_for_status()
    single = {"Accept": "application/vnd.pgrst.object+json"}

    own = api.get(
        "/notification_preferences",
        params={"select": PREFERENCE_COLUMNS, "user_id": f"eq.{FREE_USER}"},
        headers={**FREE, **single},
    )
    everything_visible = api.get(
        "/notification_preferences", params={"select": "user_id"}, headers=FREE
    )
    has_webhook = api.get(
        "/notification_preferences",
        params={
            "select": "user_id",
            "user_id": f"eq.{FREE_USER}",
            "slack_webhook_url": "not.is.null",
        },
        headers=FREE,
    )
    as_anon = api.get(
        "/notification_preferences",
        params={"select": PREFERENCE_COLUMNS},
        headers=auth(None, ANON_KEY),
    )

    assert saved.status_code == 200, saved.text
    assert saved.json()["has_slack_webhook"] is True
    assert "slack_webhook_url" not in saved.json()
    assert own.json() == {
        "email_enabled": True,
        "slack_enabled": True,
        "events": ["failed", "cancelled"],
        "job_types": ["exam.grade"],
        "success_min_seconds": 0,
    }
    assert everything_visible.json() == [{"user_id": FREE_USER}]
    assert has_webhook.json() == [{"user_id": FREE_USER}]
    assert WEBHOOK not in own.text + everything_visible.text + has_webhook.text
    assert as_anon.status_code == 401


def test_rest_tables_notification_preferences_refuse_a_foreign_webhook(
    api: httpx.Client,
) -> None:
    refused = api.post(
        "/rpc/set_notification_preferences",
        json={"p_slack_enabled": True, "p_slack_webhook_url": "https://example.com/x"},
        headers=FREE,
    )
    for_someone_else = api.post(
        "/rpc/set_notification_preferences",
        json={"p_user_id": PRO_USER},
        headers=FREE,
    )
    rows = api.get(
        "/notification_preferences", params={"select": "user_id"}, headers=SERVICE
    )

    assert refused.status_code == 400
    assert refused.json()["code"] == "EQ007"
    assert refused.json()["message"] == (
        "the Slack webhook URL must be an incoming-webhook address, "
        "https://hooks.slack.com/services/..., of at most 500 characters"
    )
    assert for_someone_else.status_code == 403
    assert rows.json() == []


@pytest.mark.parametrize(
    ("lower", "rows", "total", "expected"),
    [
        (0, 10, None, (200, "0-9/*")),
        (0, 0, None, (200, "*/*")),
        (0, 10, 10, (200, "0-9/10")),
        (0, 10, 25, (206, "0-9/25")),
        (20, 5, 25, (206, "20-24/25")),
        (0, 0, 0, (200, "*/0")),
        (30, 0, 25, (416, "*/25")),
    ],
)
def test_rest_tables_content_range_follows_postgrest(
    lower: int, rows: int, total: int | None, expected
) -> None:
    assert content_range(lower, rows, total) == expected
