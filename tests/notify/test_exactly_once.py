"""At most once per notification: concurrent dispatchers, and a dispatcher killed mid-send."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections import Counter

import httpx
import respx

from examq.db import PsycopgTransport
from examq.notify.dispatcher import Dispatcher
from examq.notify.email import SENDGRID_MAIL_SEND_URL
from examq.notify.outbox import Outbox
from tests.conftest import PROJECT_ROOT
from tests.notify.conftest import SENDGRID_KEY, finish_job, make_settings, outbox_rows

# A dispatcher that dies the moment it would record SendGrid's 202: the message was
# accepted, but the row still says attempting. Each POST is appended to a file first.
DYING_DISPATCHER = """
import json, os, signal, sys
import httpx, respx
from examq.config import load_settings
from examq.db import PsycopgTransport
from examq.notify.dispatcher import Dispatcher
from examq.notify.email import SENDGRID_MAIL_SEND_URL
from examq.notify.outbox import Outbox

db_url, posts_file, outbox_dir = sys.argv[1:4]

def accept(request):
    with open(posts_file, "a") as f:
        f.write(json.loads(request.content)["custom_args"]["examq_notification_id"] + "\\n")
    return httpx.Response(202, headers={"X-Message-Id": "accepted-before-death"})

def die(self, notification, delivery):
    os.kill(os.getpid(), signal.SIGKILL)

Outbox.finish = die
settings = load_settings({"DATABASE_URL": db_url, "SENDGRID_API_KEY": "SG.key",
                          "EXAMQ_OUTBOX_DIR": outbox_dir})
with respx.mock:
    respx.post(SENDGRID_MAIL_SEND_URL).mock(side_effect=accept)
    Dispatcher(Outbox(PsycopgTransport(db_url)), settings, dispatcher_id="doomed").run_pass(30)
"""


def test_two_dispatchers_at_once_send_each_notification_once(
    queue, db_url, sql, tmp_path
):
    jobs = [finish_job(queue, "dead") for _ in range(24)]
    settings = make_settings(
        db_url, tmp_path, SENDGRID_API_KEY=SENDGRID_KEY, EXAMQ_NOTIFY_BATCH_SIZE="4"
    )
    # Both dispatchers hold a claimed batch and are inside a POST at the same moment
    # before either may go on: the claims overlapped in time.
    both_sending = threading.Barrier(2, timeout=30)
    first_post: dict[str, bool] = {}
    posted: list[tuple[str, int]] = []
    lock = threading.Lock()

    def accept(request: httpx.Request) -> httpx.Response:
        name = threading.current_thread().name
        with lock:
            posted.append(
                (
                    name,
                    int(
                        json.loads(request.content)["custom_args"][
                            "examq_notification_id"
                        ]
                    ),
                )
            )
            waits = name not in first_post
            first_post[name] = True
        if waits:
            both_sending.wait()
        return httpx.Response(202)

    summaries = {}

    def run(name: str) -> None:
        transport = PsycopgTransport(db_url)
        try:
            summaries[name] = Dispatcher(
                Outbox(transport), settings, dispatcher_id=name
            ).run_pass(60, check_alerts=False)
        finally:
            transport.close()

    with respx.mock:
        respx.post(SENDGRID_MAIL_SEND_URL).mock(side_effect=accept)
        threads = [
            threading.Thread(target=run, args=(name,), name=name)
            for name in ("d1", "d2")
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)

    counts = Counter(notification for _, notification in posted)
    assert len(counts) == len(jobs) and set(counts.values()) == {1}, (
        "each notification POSTed once"
    )
    assert {name for name, _ in posted} == {"d1", "d2"}, "both dispatchers sent some"
    assert summaries["d1"].sent + summaries["d2"].sent == len(jobs)
    assert {r["status"] for r in outbox_rows(sql)} == {"sent"}


def test_dispatcher_killed_after_the_provider_accepted_does_not_send_again(
    queue, db_url, sql, tmp_path
):
    finish_job(queue, "dead")
    posts_file = tmp_path / "posts.txt"

    dying = subprocess.run(
        [
            sys.executable,
            "-c",
            DYING_DISPATCHER,
            db_url,
            str(posts_file),
            str(tmp_path / "outbox"),
        ],
        cwd=PROJECT_ROOT,
        capture_output=True,
        check=False,
        text=True,
        timeout=120,
    )

    assert dying.returncode == -9, dying.stderr
    [row] = outbox_rows(sql)
    assert posts_file.read_text().split() == [str(row["id"])], (
        "SendGrid accepted it once"
    )
    assert row["status"] == "attempting" and row["dispatcher_id"] == "doomed"

    # The restarted dispatcher runs once the dead one's lease has run out (moved into
    # the past rather than waited for).
    sql.execute(
        "update notification_outbox set lease_expires_at = now() - interval '1 second'"
    )
    settings = make_settings(db_url, tmp_path, SENDGRID_API_KEY=SENDGRID_KEY)
    transport = PsycopgTransport(db_url)
    try:
        with respx.mock:
            route = respx.post(SENDGRID_MAIL_SEND_URL).mock(
                return_value=httpx.Response(202)
            )
            first = Dispatcher(Outbox(transport), settings).run_pass(30)
            second = Dispatcher(Outbox(transport), settings).run_pass(30)
    finally:
        transport.close()

    assert route.call_count == 0, "no second POST"
    assert first.claimed == 0 and second.claimed == 0
    [row] = outbox_rows(sql)
    assert row["status"] == "uncertain" and "may have delivered" in row["last_error"]


def test_dispatcher_killed_before_sending_lets_the_next_one_send(
    queue, db_url, sql, tmp_path, outbox
):
    finish_job(queue, "dead")
    # The dead dispatcher claimed the row and never marked it attempting.
    [claimed] = outbox.claim("doomed", 10)
    sql.execute(
        "update notification_outbox set lease_expires_at = now() - interval '1 second'"
    )
    settings = make_settings(db_url, tmp_path, SENDGRID_API_KEY=SENDGRID_KEY)

    with respx.mock:
        route = respx.post(SENDGRID_MAIL_SEND_URL).mock(
            return_value=httpx.Response(202)
        )
        summary = Dispatcher(outbox, settings).run_pass(30)

    assert summary.sent == 1 and route.call_count == 1
    [row] = outbox_rows(sql)
    assert row["id"] == claimed.id and row["status"] == "sent" and row["attempts"] == 1


def test_concurrent_claims_never_hand_out_a_row_twice(queue, db_url, sql):
    # Many claims racing on few rows: without row locks two claims would read the
    # same pending rows in their snapshots and both lease them.
    for _ in range(60):
        finish_job(queue, "dead")
    start = threading.Barrier(6, timeout=30)
    claimed: list[int] = []
    lock = threading.Lock()

    def claim_until_empty(name: str) -> None:
        transport = PsycopgTransport(db_url)
        outbox = Outbox(transport)
        try:
            start.wait()
            while batch := outbox.claim(name, 2):
                with lock:
                    claimed.extend(n.id for n in batch)
        finally:
            transport.close()

    threads = [
        threading.Thread(target=claim_until_empty, args=(f"c{i}",)) for i in range(6)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert len(claimed) == 60 and len(set(claimed)) == 60
    assert {r["status"] for r in outbox_rows(sql)} == {"claimed"}
