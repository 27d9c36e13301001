"""The dashboard in headless Chromium against `examq dev`, with real data.

Each test signs in through the page as a seeded user and checks what a teacher or an
admin relies on: seeing only what they may see, a job appearing and progressing
without a reload, Cancel and Requeue, filters and search, times in the viewer's time
zone, notification preferences that are saved and keep the Slack webhook secret, and
a layout usable on a phone and by keyboard. Realtime is not run locally,
so these tests also show the page's polling fallback at work.
"""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import psycopg
import pytest

from examq.worker import Worker
from tests.conftest import ADMIN_USER, FREE_USER, PRO_USER, PROJECT_ROOT
from tests.dashboard.conftest import Data, DevServer, job_status, sign_in, wait_until

pytestmark = pytest.mark.timeout(180)


def listed_ids(page) -> set[int]:
    page.locator("#list-summary").filter(has_text="job").wait_for()
    return {
        int(i)
        for i in page.locator("#jobs-table tbody tr[data-job-id]").evaluate_all(
            "rows => rows.map(r => r.dataset.jobId)"
        )
    }


def apply_filters(page, **fields: str) -> set[int]:
    for name, value in fields.items():
        field = page.locator(f"#{name}")
        if field.evaluate("el => el.tagName") == "SELECT":
            field.select_option(value)
        else:
            field.fill(value)
    page.get_by_role("button", name="Apply").click()
    page.wait_for_function(
        "v => [...new URLSearchParams(location.hash.split('?')[1] || '').values()].includes(v)",
        arg=next(iter(fields.values())),
    )
    page.wait_for_function(
        "() => document.querySelector('#list-summary')?.textContent.length > 0"
    )
    return listed_ids(page)


def test_dashboard_teacher_sees_only_their_own_jobs(
    browser, dev_server: DevServer, data: Data
) -> None:
    context, page = sign_in(browser, dev_server, FREE_USER, path="/jobs")

    shown = listed_ids(page)
    page.goto(f"{dev_server.url}/#/jobs/{data.pro_dead}")
    refused = page.get_by_role("alert")

    assert shown == data.free_jobs
    assert refused.inner_text() == "This job was not found, or it is not yours to see."
    assert page.get_by_role("link", name="Dead letters").is_hidden()
    context.close()


def test_dashboard_overview_counts_only_the_teachers_jobs(
    browser, dev_server: DevServer, data: Data
) -> None:
    context, page = sign_in(browser, dev_server, FREE_USER)

    page.locator("[data-stat=succeeded] dd").wait_for()
    succeeded = page.locator("[data-stat=succeeded] dd").inner_text()
    dead = page.locator("[data-stat=dead] dd").inner_text()

    assert (succeeded, dead) == ("2", "1")
    assert page.locator("canvas#chart-throughput").count() == 1
    context.close()


def test_dashboard_shows_a_new_job_and_its_progress_without_reload(
    browser, dev_server: DevServer, data: Data
) -> None:
    context, page = sign_in(browser, dev_server, PRO_USER, path="/jobs")
    listed_ids(page)
    page.evaluate("window.__sameDocument = true")

    job = data.queue.enqueue(
        "system.sleep", {"seconds": 8, "steps": 16}, user_id=PRO_USER
    )
    row = page.locator(f"#jobs-table tr[data-job-id='{job.id}']")
    row.wait_for(timeout=15_000)
    banner = page.locator("#live-status").inner_text()
    row.get_by_role("link").click()
    page.locator("#job-progress").wait_for()

    worker = threading.Thread(
        target=lambda: Worker(data.queue, progress_interval_seconds=0.3).run_pass(30),
        daemon=True,
    )
    worker.start()
    seen: list[float] = []

    def finished() -> bool:
        value = page.locator("#job-progress").get_attribute("data-value")
        if value:
            seen.append(float(value))
        return page.locator("h1 .badge").inner_text() == "succeeded"

    wait_until(finished, timeout=40, interval=0.2, message="the job to show succeeded")
    worker.join(timeout=30)

    partial = sorted({v for v in seen if 0 < v < 100})
    assert "Realtime unavailable" in banner and "refreshing every" in banner
    assert len(partial) >= 2, f"progress seen: {seen}"
    assert seen == sorted(seen), "progress went backwards"
    assert page.locator("#job-progress").get_attribute("data-value") == "100"
    assert page.evaluate("window.__sameDocument") is True
    context.close()


def test_dashboard_cancel_stops_a_queued_job(
    browser, dev_server: DevServer, data: Data, db_url: str
) -> None:
    job = data.queue.enqueue("system.noop", {}, user_id=PRO_USER)
    context, page = sign_in(browser, dev_server, PRO_USER, path=f"/jobs/{job.id}")

    page.get_by_role("button", name="Cancel job").click()
    page.get_by_role("button", name="Yes, cancel it").click()
    page.locator("#action-status").filter(has_text="Cancel: cancelled.").wait_for()
    page.locator("h1 .badge").filter(has_text="cancelled").wait_for()

    assert job_status(db_url, job.id) == "cancelled"
    assert "queued → cancelled" in page.locator("#job-events").inner_text()
    assert page.get_by_role("button", name="Cancel job").count() == 0
    context.close()


def test_dashboard_admin_requeues_dead_jobs(
    browser, dev_server: DevServer, data: Data, db_url: str
) -> None:
    context, page = sign_in(browser, dev_server, ADMIN_USER, path="/dead")
    page.locator("#dead-summary").filter(has_text="dead jobs").wait_for()
    dead_rows = {
        int(i)
        for i in page.locator("#dead-table tbody tr").evaluate_all(
            "rows => rows.map(r => r.dataset.jobId)"
        )
    }

    page.get_by_label(f"Select job {data.pro_dead}").check()
    page.get_by_role("button", name="Requeue selected (1)").click()
    page.locator("#dead-status").filter(has_text="Requeued 1 job(s).").wait_for()
    page.locator(f"#dead-table tr[data-job-id='{data.pro_dead}']").wait_for(
        state="detached"
    )

    page.goto(f"{dev_server.url}/#/jobs/{data.free_dead}")
    page.get_by_role("button", name="Requeue").click()
    page.locator("#action-status").filter(has_text="Requeue: requeued.").wait_for()

    assert dead_rows == data.dead
    assert job_status(db_url, data.pro_dead) == "queued"
    assert job_status(db_url, data.free_dead) == "queued"
    context.close()


def test_dashboard_teacher_has_no_requeue(
    browser, dev_server: DevServer, data: Data
) -> None:
    context, page = sign_in(
        browser, dev_server, FREE_USER, path=f"/jobs/{data.free_dead}"
    )

    page.locator("h1 .badge").filter(has_text="dead").wait_for()
    error = page.locator("#last-error").inner_text()

    assert page.get_by_role("button", name="Requeue").count() == 0
    assert "key" in error and "column" in error
    context.close()


def test_dashboard_filters_and_search_return_the_right_rows(
    browser, dev_server: DevServer, data: Data
) -> None:
    context, page = sign_in(browser, dev_server, ADMIN_USER, path="/jobs")
    everything = listed_ids(page)

    dead = apply_filters(page, status="dead")
    page.goto(f"{dev_server.url}/#/jobs")
    noop = apply_filters(page, type="system.noop")
    page.goto(f"{dev_server.url}/#/jobs")
    pro = apply_filters(page, tier="pro")
    page.goto(f"{dev_server.url}/#/jobs")
    by_id = apply_filters(page, q=str(data.pro_done))
    page.goto(f"{dev_server.url}/#/jobs")
    by_error = apply_filters(page, q="BUCKET exams-pro")
    page.goto(f"{dev_server.url}/#/jobs")
    by_type_text = apply_filters(page, q="noop")
    page.goto(f"{dev_server.url}/#/jobs")
    page.locator("#from").fill("2999-01-01")
    none = apply_filters(page, q="grade")

    assert everything == {*data.free_jobs, data.pro_done, data.pro_dead}
    assert dead == data.dead
    assert noop == {data.pro_dead}
    assert pro == {data.pro_done, data.pro_dead}
    assert by_id == {data.pro_done}
    assert by_error == {data.pro_dead}
    assert by_type_text == {data.pro_dead}
    assert none == set()
    assert page.locator("#list-summary").inner_text() == "No jobs match these filters."
    context.close()


def test_dashboard_shows_times_in_the_viewers_time_zone(
    browser, dev_server: DevServer, data: Data
) -> None:
    context, page = sign_in(
        browser,
        dev_server,
        FREE_USER,
        path=f"/jobs/{data.free_dead}",
        timezone_id="Pacific/Auckland",
        locale="en-NZ",
    )

    created = page.locator("#job-events time").first
    created.wait_for()
    iso = created.get_attribute("datetime")
    expected = page.evaluate(
        "iso => new Intl.DateTimeFormat('en-NZ', {dateStyle: 'medium', timeStyle: 'medium', timeZone: 'Pacific/Auckland'}).format(new Date(iso))",
        iso,
    )
    in_utc = page.evaluate(
        "iso => new Intl.DateTimeFormat('en-NZ', {dateStyle: 'medium', timeStyle: 'medium', timeZone: 'UTC'}).format(new Date(iso))",
        iso,
    )

    assert created.inner_text() == expected != in_utc
    assert "Pacific/Auckland" in page.locator("#time-zone").inner_text()
    context.close()


def test_dashboard_works_on_a_phone_and_by_keyboard(
    browser, dev_server: DevServer, data: Data
) -> None:
    context, page = sign_in(
        browser,
        dev_server,
        ADMIN_USER,
        viewport={"width": 390, "height": 844},
        is_mobile=True,
        has_touch=True,
    )
    page.locator("[data-stat=queued]").wait_for()
    overview_overflow = page.evaluate(
        "document.documentElement.scrollWidth - window.innerWidth"
    )

    page.goto(f"{dev_server.url}/#/jobs")
    listed_ids(page)
    list_overflow = page.evaluate(
        "document.documentElement.scrollWidth - window.innerWidth"
    )
    unlabelled = page.evaluate(
        """() => [...document.querySelectorAll('input, select')]
             .filter(el => !(el.labels && el.labels.length) && !el.getAttribute('aria-label'))
             .map(el => el.id || el.name)"""
    )

    first_focusable = page.evaluate(
        "document.querySelector('a[href], button, input, select, [tabindex]:not([tabindex=\"-1\"])').textContent"
    )
    page.locator(".skip-link").focus()
    page.keyboard.press("Enter")
    skipped_to = page.evaluate("document.activeElement.id")
    page.locator(f"#jobs-table a[href='#/jobs/{data.pro_done}']").focus()
    page.keyboard.press("Enter")
    page.locator("h1").filter(has_text=f"Job #{data.pro_done}").wait_for()
    focused = page.evaluate("document.activeElement.tagName")

    assert overview_overflow <= 0 and list_overflow <= 0
    assert unlabelled == []
    assert (first_focusable, skipped_to) == ("Skip to content", "main")
    assert focused == "H1"
    context.close()


PREFERENCES_SQL = """
select email_enabled, slack_enabled, slack_webhook_url, events, job_types,
       success_min_seconds
from public.notification_preferences where user_id = %s
"""


def preferences_row(db_url: str, user_id: str) -> tuple | None:
    with psycopg.connect(db_url) as conn:
        return conn.execute(PREFERENCES_SQL, (user_id,)).fetchone()


def settings_form(page) -> dict:
    """What the notification form shows: channels, events, job types, minimum."""
    return page.evaluate(
        """() => ({
             email: document.getElementById('email-enabled').checked,
             slack: document.getElementById('slack-enabled').checked,
             webhook: document.getElementById('slack-webhook-url').value,
             events: [...document.querySelectorAll('input[id^="event-"]:checked')].map(e => e.value),
             jobTypes: [...document.querySelectorAll('input[id^="job-type-"]:checked')].map(e => e.value),
             minimum: document.getElementById('success-min-seconds').value,
           })"""
    )


def test_dashboard_teacher_sets_notification_preferences(
    browser, dev_server: DevServer, db_url: str
) -> None:
    context, page = sign_in(browser, dev_server, FREE_USER)
    page.get_by_role("link", name="Notifications").click()
    page.locator("#settings-source").filter(has_text="defaults").wait_for()
    defaults = settings_form(page)
    webhook_state = page.locator("#slack-webhook-state").inner_text()

    page.get_by_label("E-mail me").uncheck()
    page.get_by_label("Minimum run time before a success is notified").fill("0")
    page.get_by_label("Cancelled").check()
    page.get_by_role("button", name="Save preferences").click()
    page.locator("#settings-status").filter(has_text="Saved.").wait_for()
    page.reload()
    page.locator("#settings-source").filter(has_text="saved preferences").wait_for()
    reloaded = settings_form(page)
    saved = preferences_row(db_url, FREE_USER)

    page.get_by_label("Post to my Slack").check()
    page.get_by_label("Slack incoming webhook URL").fill("https://example.com/hooks/x")
    page.get_by_role("button", name="Save preferences").click()
    refused = page.get_by_role("alert").filter(has_text="Not saved")
    refused.wait_for()

    assert defaults == {
        "email": True,
        "slack": False,
        "webhook": "",
        "events": ["succeeded", "failed"],
        "jobTypes": [],
        "minimum": "60",
    }
    assert webhook_state == "No webhook URL is saved."
    assert page.title() == "Notifications · examq"
    assert reloaded == {
        "email": False,
        "slack": False,
        "webhook": "",
        "events": ["succeeded", "failed", "cancelled"],
        "jobTypes": [],
        "minimum": "0",
    }
    assert saved == (False, False, None, ["succeeded", "failed", "cancelled"], None, 0)
    assert refused.inner_text() == (
        "Not saved: the Slack webhook URL must be an incoming-webhook address, "
        "https://hooks.slack.com/services/..., of at most 500 characters"
    )
    assert page.locator("#settings-status").inner_text() == ""
    assert preferences_row(db_url, FREE_USER) == saved
    context.close()


def test_dashboard_notification_webhook_stays_secret_on_a_phone_by_keyboard(
    browser, dev_server: DevServer, db_url: str
) -> None:
    secret = "https://hooks.slack.com/services/T0EXAMQ/B0EXAMQ/s3cr3tW3bh00k"
    context, page = sign_in(
        browser,
        dev_server,
        PRO_USER,
        path="/settings",
        viewport={"width": 390, "height": 844},
        is_mobile=True,
        has_touch=True,
    )
    page.locator("#settings-source").wait_for()
    overflow = page.evaluate(
        "document.documentElement.scrollWidth - window.innerWidth"
    )
    unlabelled = page.evaluate(
        """() => [...document.querySelectorAll('input, select')]
             .filter(el => !(el.labels && el.labels.length) && !el.getAttribute('aria-label'))
             .map(el => el.id || el.name)"""
    )
    focused = page.evaluate("document.activeElement.textContent")

    # Keyboard only: Space toggles a checkbox, Tab moves on, Enter submits.
    page.locator("#slack-enabled").focus()
    page.keyboard.press("Space")
    page.keyboard.press("Tab")
    page.keyboard.type(secret)
    page.get_by_label("system.noop").focus()
    page.keyboard.press("Space")
    page.locator("#success-min-seconds").focus()
    page.keyboard.press("Enter")
    page.locator("#settings-status").filter(has_text="Saved.").wait_for()
    after_save = page.locator("#slack-webhook-state").inner_text()

    api_answers = []
    page.on("response", lambda r: "/rest/v1/" in r.url and api_answers.append(r))
    page.reload()
    page.locator("#settings-source").filter(has_text="saved preferences").wait_for()
    reloaded = settings_form(page)
    shown = page.locator("#slack-webhook-state").inner_text()
    answers = "".join(r.text() for r in api_answers)

    # Saving with Slack on and no URL is stopped in the page: the function would
    # replace the stored webhook with nothing.
    page.locator("#success-min-seconds").focus()
    page.keyboard.press("Enter")
    missing = page.evaluate(
        "document.getElementById('slack-webhook-url').validity.valueMissing"
    )

    assert overflow <= 0
    assert unlabelled == []
    assert focused == "Notifications"
    assert after_save == shown == "A webhook URL is saved (it is never shown)."
    assert reloaded["slack"] is True and reloaded["webhook"] == ""
    assert reloaded["jobTypes"] == ["system.noop"]
    assert api_answers and secret not in answers and "slack_webhook_url" not in answers
    assert secret not in page.content()
    assert missing is True
    assert preferences_row(db_url, PRO_USER) == (
        True,
        True,
        secret,
        ["succeeded", "failed"],
        ["system.noop"],
        60,
    )
    context.close()


def test_dashboard_page_holds_no_secret_but_the_anon_key(
    dev_server: DevServer, built_dashboard: Path
) -> None:
    import httpx

    config = httpx.get(f"{dev_server.url}/config.js").text
    bundle = "".join(
        p.read_text(encoding="utf-8", errors="replace")
        for p in built_dashboard.rglob("*.js")
    )

    assert "dashboard-test-cron-secret" not in config + bundle
    assert "service_role" not in config
    assert '"role":"anon"' in _payload_of(
        config.split('"supabaseAnonKey": "')[1].split('"')[0]
    )


def _payload_of(token: str) -> str:
    import base64

    part = token.split(".")[1]
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)).decode()


SCREENSHOTS = PROJECT_ROOT / "docs" / "screenshots"

# A day of history for the overview's charts: finished jobs of the seeded teachers,
# spread over 24 hours, a few of them dead. (The test data above is minutes old.)
HISTORY_SQL = """
insert into public.jobs
  (job_type, user_id, tier, status, run_at, sort_at, attempt, max_attempts, lease_token,
   progress, result, last_error, error_kind, first_started_at, started_at, finished_at,
   created_at, updated_at)
select 'exam.grade', u.user_id, u.tier,
       case when g % 23 = 0 then 'dead' else 'succeeded' end::public.job_status,
       at, at, 1, 3, gen_random_uuid(),
       case when g % 23 = 0 then null else 100 end,
       case when g % 23 = 0 then null else '{"summary": {"students": 50}}'::jsonb end,
       case when g % 23 = 0 then 'responses.csv is missing item Q' || (g % 40) end,
       case when g % 23 = 0 then 'permanent' end,
       at + make_interval(secs => 5 + (g % 17) * 4),
       at + make_interval(secs => 5 + (g % 17) * 4),
       at + make_interval(secs => 5 + (g % 17) * 4 + 2 + (g % 11) * 3),
       at, at
from generate_series(1, 900) g
cross join lateral (select now() - make_interval(secs => 86000 * power(random() + 0 * g, 0.7)) as at) t
cross join lateral (
  select a.user_id, a.tier from public.accounts a where not a.is_admin order by a.user_id offset (g % 3) limit 1
) u
"""


def test_dashboard_screenshots(
    browser, dev_server: DevServer, data: Data, db_url: str, tmp_path: Path
) -> None:
    """Overview and job page as a person sees them; copied to docs/screenshots when
    EXAMQ_UPDATE_SCREENSHOTS=1."""
    import psycopg

    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(HISTORY_SQL)
    queue = data.queue
    for _ in range(6):
        queue.enqueue("exam.grade", {"title": "waiting"}, user_id=PRO_USER)

    # A job on its second attempt: the first timed out, the second is 42 % through.
    key = (PROJECT_ROOT / "examq" / "samples" / "sample_key.csv").read_text(
        encoding="utf-8"
    )
    responses = (PROJECT_ROOT / "examq" / "samples" / "sample_responses.csv").read_text(
        encoding="utf-8"
    )
    job = queue.enqueue(
        "exam.grade",
        {
            "title": "Chemistry final, period 3",
            "key_csv": key,
            "responses_csv": responses,
        },
        user_id=PRO_USER,
    )
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            "update public.jobs set sort_at = now() - interval '1 day' where id = %s",
            (job.id,),
        )
    (first,) = queue.claim("worker-eu-1", 1)
    queue.fail(first, "timeout reading responses from storage after 30 s", "retryable")
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            "update public.jobs set run_at = now(), sort_at = now() - interval '1 day' where id = %s",
            (job.id,),
        )
    (second,) = queue.claim("worker-eu-2", 1)
    # Spread the history over the last four minutes, as a real run would have it.
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            """
            update public.jobs
            set created_at = now() - interval '4 minutes',
                first_started_at = now() - interval '230 seconds',
                run_at = now() - interval '80 seconds',
                started_at = now() - interval '75 seconds'
            where id = %s
            """,
            (job.id,),
        )
        conn.execute(
            """
            update public.job_events e
            set at = now() - (array[interval '240 s', interval '230 s',
                                    interval '200 s', interval '75 s'])[o.n]
            from (
              select id, row_number() over (order by id) as n
              from public.job_events where job_id = %s
            ) o
            where e.id = o.id
            """,
            (job.id,),
        )
    queue.heartbeat(second, progress=42, message="grading student 21 of 50")

    context, page = sign_in(
        browser, dev_server, ADMIN_USER, viewport={"width": 1280, "height": 900}
    )
    page.locator("canvas#chart-throughput").wait_for()
    page.locator("#live-status").filter(has_text="refreshing").wait_for()
    overview = tmp_path / "overview.png"
    page.screenshot(path=str(overview), full_page=True)

    page.goto(f"{dev_server.url}/#/jobs/{job.id}")
    page.locator("#job-eta").wait_for()
    job_page = tmp_path / "job.png"
    page.screenshot(path=str(job_page), full_page=True)
    context.close()

    assert overview.stat().st_size > 20_000 and job_page.stat().st_size > 20_000
    if os.environ.get("EXAMQ_UPDATE_SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(overview, SCREENSHOTS / "overview.png")
        shutil.copy(job_page, SCREENSHOTS / "job.png")
