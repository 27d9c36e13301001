"""The exam chain on a real database: submitted, run by the worker, failing and cancelled."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from examq.exam.pipeline import chain_status, enqueue_chain, get_chain, pipeline_steps
from examq.handlers.grade import grade_exam
from examq.worker import Worker
from tests.conftest import FREE_USER, PROJECT_ROOT, shared_data
from tests.exam.test_statistics import HCI_ALPHA_IF_DELETED, HCI_ITEM_REST, HCI_P


@pytest.fixture(autouse=True)
def folders(monkeypatch, tmp_path: Path) -> Path:
    for name in ("SUPABASE_URL", "SUPABASE_SERVICE_ROLE_KEY", "EXAMQ_REPORTS_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("EXAMQ_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("EXAMQ_STORAGE_DIR", str(tmp_path / "storage"))
    return tmp_path


def _inline(path: Path) -> dict:
    return {"text": path.read_text(encoding="utf-8"), "name": path.name}


def _run(queue, chain_id: int, deadline_seconds: float = 60) -> dict:
    worker = Worker(queue, batch_size=2)
    deadline = time.monotonic() + deadline_seconds
    chain = get_chain(queue.transport, chain_id)
    while chain_status(chain["jobs"]) in ("queued", "running") and time.monotonic() < deadline:
        if worker.run_pass(10).claimed == 0:
            time.sleep(0.05)
        chain = get_chain(queue.transport, chain_id)
    return chain


def test_hci_pipeline_runs_as_four_jobs_and_reproduces_the_reference_values(
    queue, folders: Path
) -> None:
    steps = pipeline_steps(
        {
            "exam": _inline(shared_data("responses", "HCIkey.csv")),
            "responses": _inline(shared_data("responses", "HCItest.csv")),
            "title": "Homeostasis Concept Inventory",
        }
    )
    submitted = enqueue_chain(queue.transport, steps, user_id=FREE_USER)

    chain = _run(queue, submitted["chain_id"])

    jobs = {job["job_type"]: job for job in chain["jobs"]}
    assert [job["job_type"] for job in chain["jobs"]] == [
        "exam.pipeline",
        "exam.import",
        "exam.grade",
        "exam.report",
    ]
    assert all(
        job["status"] == "succeeded" and job["attempt"] == 1 for job in chain["jobs"]
    )
    graded = jobs["exam.grade"]["result"]
    assert graded["exam"]["source_format"] == "key_csv"
    assert (
        round(graded["summary"]["alpha"], 4)
        == round(graded["summary"]["kr20"], 4)
        == 0.7155
    )
    assert (
        round(graded["summary"]["mean"], 3) == 12.212
        and round(graded["summary"]["sd"], 3) == 3.640
    )
    assert [round(i["p"], 3) for i in graded["items"]] == HCI_P
    assert [round(i["item_rest_r"], 3) for i in graded["items"]] == HCI_ITEM_REST
    assert [
        round(i["alpha_if_deleted"], 3) for i in graded["items"]
    ] == HCI_ALPHA_IF_DELETED
    report = jobs["exam.report"]["result"]
    html = (
        folders
        / "data"
        / "reports"
        / FREE_USER
        / str(jobs["exam.report"]["id"])
        / "report.html"
    )
    assert report["links"]["html"] == html.resolve().as_uri()
    assert "Homeostasis Concept Inventory" in html.read_text(encoding="utf-8")
    assert report["flagged"] == [
        {
            "item": "Item17",
            "flag": "near zero",
            "item_rest_r": pytest.approx(0.0434, abs=1e-4),
        }
    ]


def test_the_bundled_gift_quiz_grades_the_sample_responses_as_the_sample_key_does(queue) -> None:
    samples = PROJECT_ROOT / "examq" / "samples"
    steps = pipeline_steps(
        {
            "exam": _inline(samples / "sample_quiz.gift"),
            "responses": _inline(samples / "sample_responses.csv"),
        }
    )
    chain = _run(queue, enqueue_chain(queue.transport, steps, user_id=FREE_USER)["chain_id"])
    by_key = grade_exam(
        {
            "key_csv": (samples / "sample_key.csv").read_text(encoding="utf-8"),
            "responses_csv": (samples / "sample_responses.csv").read_text(encoding="utf-8"),
        },
        SimpleNamespace(report_progress=lambda *a, **k: None, job_id=0, job_type="exam.grade", attempt=1),
    )

    graded = {job["job_type"]: job for job in chain["jobs"]}["exam.grade"]["result"]
    assert graded["exam"]["source_format"] == "gift"
    assert graded["summary"]["students"] == by_key["summary"]["students"] == 30
    for figure in ("mean", "sd", "alpha"):
        assert graded["summary"][figure] == pytest.approx(by_key["summary"][figure])
    assert [round(i["p"], 6) for i in graded["items"]] == [round(i["p"], 6) for i in by_key["items"]]


def test_a_failing_import_fails_the_chain_with_the_reason(queue) -> None:
    steps = pipeline_steps(
        {
            "exam": {"text": "::weights::Q {~%42%a =b}", "name": "quiz.gift"},
            "responses": {"text": "student,Q1\ns1,b\n"},
        }
    )
    submitted = enqueue_chain(queue.transport, steps)

    chain = _run(queue, submitted["chain_id"])

    statuses = [(job["job_type"], job["status"]) for job in chain["jobs"]]
    assert statuses == [
        ("exam.pipeline", "succeeded"),
        ("exam.import", "dead"),
        ("exam.grade", "cancelled"),
        ("exam.report", "cancelled"),
    ]
    imported, graded, reported = chain["jobs"][1:]
    assert (
        imported["attempt"] == 1
        and "'weights'" in imported["last_error"]
        and "42%" in imported["last_error"]
    )
    assert graded["last_error"].startswith(
        f"parent job {imported['id']} failed: quiz.gift: question 'weights'"
    )
    assert reported["last_error"].startswith(
        f"parent job {graded['id']} was cancelled: parent job {imported['id']} failed"
    )
    assert chain_status(chain["jobs"]) == "failed"


def test_a_missing_storage_object_fails_the_first_step_naming_it(queue) -> None:
    steps = pipeline_steps(
        {
            "exam": {"bucket": "exam-uploads", "path": f"{FREE_USER}/exam.gift"},
            "responses": {"text": "student,Q1\n"},
        }
    )
    submitted = enqueue_chain(queue.transport, steps, user_id=FREE_USER)

    chain = _run(queue, submitted["chain_id"])

    first = chain["jobs"][0]
    assert (
        first["status"] == "dead"
        and f"exam-uploads/{FREE_USER}/exam.gift does not exist" in first["last_error"]
    )
    assert [job["status"] for job in chain["jobs"][1:]] == ["cancelled"] * 3


def test_a_users_job_cannot_read_another_users_storage_object(
    queue, folders: Path
) -> None:
    other = folders / "storage" / "exam-uploads" / "someone-else" / "exam.gift"
    other.parent.mkdir(parents=True)
    other.write_text("Q {=a ~b}")
    steps = pipeline_steps(
        {
            "exam": {"bucket": "exam-uploads", "path": "someone-else/exam.gift"},
            "responses": {"text": "x"},
        }
    )
    submitted = enqueue_chain(queue.transport, steps, user_id=FREE_USER)

    chain = _run(queue, submitted["chain_id"])

    assert "is not in your folder" in chain["jobs"][0]["last_error"]


def test_cancelling_the_chain_root_cancels_every_step(queue) -> None:
    steps = pipeline_steps(
        {"exam": {"text": "Q {=a ~b}"}, "responses": {"text": "student,Q1\ns1,a\n"}}
    )
    submitted = enqueue_chain(queue.transport, steps)

    outcome = queue.cancel(submitted["chain_id"], "teacher changed their mind")

    chain = get_chain(queue.transport, submitted["chain_id"])
    assert outcome.outcome == "cancelled"
    assert [job["status"] for job in chain["jobs"]] == ["cancelled"] * 4
    assert chain["jobs"][3]["last_error"].startswith(
        f"parent job {chain['jobs'][2]['id']} was cancelled"
    )


def test_cli_submits_the_pipeline_and_prints_the_finished_chain(
    db_url, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "DATABASE_URL": db_url,
        "EXAMQ_LOG_FORMAT": "text",
        "EXAMQ_DATA_DIR": str(tmp_path / "data"),
    }
    env.pop("EXAMQ_STORAGE_DIR", None)
    command = [
        sys.executable, "-m", "examq", "submit", "exam.pipeline",
        "--exam", str(shared_data("responses", "HCIkey.csv")),
        "--responses", str(shared_data("responses", "HCItest.csv")),
        "--title", "HCI", "--wait", "--json",
    ]  # fmt: skip

    result = subprocess.run(
        command,
        env=env,
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    chain = json.loads(result.stdout)
    assert chain["status"] == "succeeded"
    assert [(job["job_type"], job["status"]) for job in chain["jobs"]] == [
        ("exam.pipeline", "succeeded"), ("exam.import", "succeeded"), ("exam.grade", "succeeded"), ("exam.report", "succeeded"),
    ]  # fmt: skip
    assert round(chain["report"]["summary"]["alpha"], 4) == 0.7155
    html = Path(chain["report"]["files"]["report.html"]["path"])
    assert html.is_file() and html.is_relative_to(tmp_path / "data" / "reports")


def test_a_chain_is_queued_until_a_step_starts():
    waiting = [
        {"status": "queued", "attempt": 0},
        {"status": "waiting", "attempt": 0},
    ]
    assert chain_status(waiting) == "queued"
    # A retry is queued with an attempt behind it: the chain has started.
    assert chain_status([{"status": "queued", "attempt": 1}, {"status": "waiting", "attempt": 0}]) == "running"
    assert chain_status([{"status": "succeeded", "attempt": 1}, {"status": "queued", "attempt": 0}]) == "running"
    assert chain_status([{"status": "succeeded", "attempt": 1}, {"status": "dead", "attempt": 3}]) == "failed"

