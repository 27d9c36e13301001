"""Fixtures for the dashboard's tests: a built dashboard, `examq dev` on a free port in
front of the test's own database, headless Chromium driven by Playwright, and real
data made by the real queue and worker.

The browser tests skip, saying why, without Debian's Chromium at /usr/bin/chromium
(`apt-get install -y chromium`), the Python `playwright` package (the `test` extra;
it drives that Chromium and downloads no browser), Node.js, or the dashboard's npm
packages (`npm ci --prefix dashboard`).
"""

from __future__ import annotations

import os
import queue as stdlib_queue
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest

from examq.db import PsycopgTransport
from examq.queue import Queue
from examq.worker import Worker
from tests.conftest import ADMIN_USER, FREE_USER, PRO_USER, PROJECT_ROOT

CHROMIUM = Path("/usr/bin/chromium")
DASHBOARD = PROJECT_ROOT / "dashboard"
SAMPLES = PROJECT_ROOT / "examq" / "samples"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SERVER_START_SECONDS = 60

# The local sign-in buttons (seeded users, supabase/seed.sql).
SIGN_IN = {
    FREE_USER: "Fran Free (free tier)",
    PRO_USER: "Priya Pro (pro tier)",
    ADMIN_USER: "Ada Admin (admin)",
}


def wait_until(
    predicate, timeout: float = 20.0, interval: float = 0.1, message: str = "condition"
):
    """Poll ``predicate`` until it returns a truthy value, or fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {message}")
        time.sleep(interval)


@pytest.fixture(scope="session")
def built_dashboard(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The dashboard built into a temporary folder (as `examq dev` would serve it)."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("Node.js is not installed: the dashboard cannot be built")
    if not (DASHBOARD / "node_modules").is_dir():
        pytest.skip(
            "dashboard/node_modules is missing: run `npm ci --prefix dashboard`"
        )
    out = tmp_path_factory.mktemp("dashboard") / "dist"
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("SUPABASE_URL", "SUPABASE_ANON_KEY")
    }
    result = subprocess.run(
        [node, str(DASHBOARD / "build.mjs"), "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="session")
def browser():
    """Headless Debian Chromium under Playwright; each launch gets a fresh profile."""
    if not CHROMIUM.exists():
        pytest.skip(
            "Chromium is not installed at /usr/bin/chromium: apt-get install -y chromium"
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the Python playwright package is not installed (test extra)")
    with sync_playwright() as playwright:
        # launch() gives the browser a new temporary --user-data-dir every time.
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
        )
        yield browser
        browser.close()


@dataclass
class DevServer:
    """A running `examq dev`: its URL and the lines it printed."""

    url: str
    process: subprocess.Popen
    lines: list[str] = field(default_factory=list)


def start_dev_server(db_url: str, static_dir: Path, *extra: str) -> DevServer:
    env = {
        **os.environ,
        "DATABASE_URL": db_url,
        "CRON_SECRET": "dashboard-test-cron-secret",
        "EXAMQ_LOG_FORMAT": "text",
        "EXAMQ_OUTBOX_DIR": str(static_dir.parent / "outbox"),
    }
    env.pop("SUPABASE_URL", None)
    env.pop("SUPABASE_SERVICE_ROLE_KEY", None)
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "examq",
            "dev",
            "--port",
            "0",
            "--no-build",
            "--static-dir",
            str(static_dir),
            *extra,
        ],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: stdlib_queue.Queue[str] = stdlib_queue.Queue()
    seen: list[str] = []

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            seen.append(line.rstrip())
            lines.put(line)

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + SERVER_START_SECONDS
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
        except stdlib_queue.Empty:
            break
        match = re.search(r"examq dev: serving (http://\S+)", line)
        if match:
            return DevServer(match.group(1), process, seen)
        if process.poll() is not None:
            break
    process.kill()
    raise AssertionError("examq dev did not start:\n" + "\n".join(seen))


def stop_dev_server(server: DevServer) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait(timeout=10)


@pytest.fixture
def dev_server(db_url: str, built_dashboard: Path, browser) -> Iterator[DevServer]:
    """`examq dev` (crons off: the tests run the worker themselves) on this test's database."""
    server = start_dev_server(db_url, built_dashboard, "--no-cron")
    yield server
    stop_dev_server(server)


@dataclass
class Data:
    """Jobs made through the real queue and worker, by owner and outcome."""

    queue: Queue
    free_done: list[int]
    free_dead: int
    pro_done: int
    pro_dead: int

    @property
    def free_jobs(self) -> set[int]:
        return {*self.free_done, self.free_dead}

    @property
    def dead(self) -> set[int]:
        return {self.free_dead, self.pro_dead}


@pytest.fixture
def data(db_url: str) -> Iterator[Data]:
    """Exams graded by the worker for two teachers, and one failure for good each."""
    transport = PsycopgTransport(db_url)
    queue = Queue(transport)
    key = (SAMPLES / "sample_key.csv").read_text(encoding="utf-8")
    responses = (SAMPLES / "sample_responses.csv").read_text(encoding="utf-8")
    exam = {"key_csv": key, "responses_csv": responses, "title": "Biology midterm"}

    free_done = [
        queue.enqueue("exam.grade", exam, user_id=FREE_USER).id for _ in range(2)
    ]
    free_dead = queue.enqueue(
        "exam.grade",
        {"key_csv": "question,answer\nQ1,A\n", "responses_csv": responses},
        user_id=FREE_USER,
    ).id
    pro_done = queue.enqueue("exam.grade", exam, user_id=PRO_USER).id
    pro_dead = queue.enqueue(
        "system.noop",
        {"fail": "permanent", "message": "storage bucket exams-pro is gone"},
        user_id=PRO_USER,
    ).id

    Worker(queue, batch_size=10).run_pass(60)
    for job_id, status in [
        (free_done[0], "succeeded"),
        (free_dead, "dead"),
        (pro_dead, "dead"),
    ]:
        assert queue.get(job_id).status == status

    yield Data(queue, free_done, free_dead, pro_done, pro_dead)
    transport.close()


def job_status(db_url: str, job_id: int) -> str:
    with psycopg.connect(db_url) as conn:
        return conn.execute(
            "select status::text from public.jobs where id = %s", (job_id,)
        ).fetchone()[0]


def sign_in(
    browser, server: DevServer, user_id: str, *, path: str = "", **context_options
):
    """A new browser context and page, signed in as a seeded user through the local picker."""
    context = browser.new_context(**context_options)
    page = context.new_page()
    page.goto(server.url + "/")
    page.get_by_role("button", name=SIGN_IN[user_id]).click()
    page.locator("#nav").wait_for(state="visible")
    if path:
        page.goto(f"{server.url}/#{path}")
    return context, page
