"""The examq command as users run it: submit on real exam data, demo, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


from tests.conftest import PROJECT_ROOT, shared_data

EXAMQ = [sys.executable, "-m", "examq"]

# From ../shared/data/MANIFEST.md (HCI: 651 students x 20 items).
HCI_P = [.699, .753, .848, .404, .442, .363, .547, .705, .433, .648,
         .779, .573, .608, .759, .444, .607, .296, .797, .785, .722]
HCI_ITEM_REST = [.288, .221, .350, .173, .277, .342, .101, .325, .213, .264,
                 .285, .316, .361, .339, .301, .382, .043, .417, .367, .340]
HCI_ALPHA_IF_DELETED = [.704, .710, .701, .715, .705, .699, .722, .701, .711, .706,
                        .705, .702, .697, .700, .703, .695, .725, .694, .698, .700]


def run_examq(
    args: list[str], db_url: str, env_extra: dict[str, str] | None = None, **kwargs
) -> subprocess.CompletedProcess:
    env = {**os.environ, "DATABASE_URL": db_url, "EXAMQ_LOG_FORMAT": "text", **(env_extra or {})}
    return subprocess.run(
        EXAMQ + args, env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300, **kwargs
    )


def submit_grade(db_url: str, key: Path, responses: Path) -> dict:
    result = run_examq(
        ["submit", "exam.grade", "--key", str(key), "--responses", str(responses), "--wait", "--json"],
        db_url,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_submit_grades_the_hci_exam_to_the_reference_values(db_url):
    job = submit_grade(db_url, shared_data("responses", "HCIkey.csv"), shared_data("responses", "HCItest.csv"))

    assert job["status"] == "succeeded" and isinstance(job["id"], int)
    summary = job["result"]["summary"]
    assert (summary["students"], summary["items"]) == (651, 20)
    assert round(summary["alpha"], 4) == 0.7155 and round(summary["kr20"], 4) == 0.7155
    assert round(summary["mean"], 3) == 12.212 and round(summary["sd"], 3) == 3.640
    items = job["result"]["items"]
    assert [round(i["p"], 3) for i in items] == HCI_P
    assert [round(i["item_rest_r"], 3) for i in items] == HCI_ITEM_REST
    assert [round(i["alpha_if_deleted"], 3) for i in items] == HCI_ALPHA_IF_DELETED

    # A large result is summarised in text form, without failing.
    shown = run_examq(["status", str(job["id"])], db_url)
    assert shown.returncode == 0, shown.stderr
    assert "succeeded" in shown.stdout and "alpha 0.7155" in shown.stdout


def test_submit_grades_the_ctt_exam_to_the_reference_values(db_url):
    job = submit_grade(db_url, shared_data("responses", "CTTkey.csv"), shared_data("responses", "CTTdata.csv"))

    summary = job["result"]["summary"]
    assert job["status"] == "succeeded"
    assert (summary["students"], summary["items"]) == (100, 20)
    assert round(summary["alpha"], 4) == 0.8128
    assert round(summary["mean"], 2) == 9.48 and round(summary["sd"], 3) == 4.520


def test_submit_malformed_key_fails_permanently_with_the_reason(db_url, tmp_path):
    key = tmp_path / "key.csv"
    key.write_text("item,answer\nQ1,A\n")
    responses = tmp_path / "responses.csv"
    responses.write_text("student,Q1\ns1,A\ns2,B\n")

    result = run_examq(
        ["submit", "exam.grade", "--key", str(key), "--responses", str(responses), "--wait", "--json"],
        db_url,
    )

    assert result.returncode == 1
    job = json.loads(result.stdout)
    assert job["status"] == "dead" and job["attempt"] == 1
    assert "key" in job["last_error"]


def test_submit_non_utf8_file_is_refused_before_enqueueing(db_url, tmp_path):
    key = tmp_path / "key.csv"
    key.write_bytes("item,key\nQ1,\xe9\n".encode("latin-1"))

    result = run_examq(["submit", "exam.grade", "--key", str(key), "--responses", str(key)], db_url)

    assert result.returncode == 2
    assert "UTF-8" in result.stderr and "key.csv" in result.stderr


def test_db_reset_on_database_url_needs_confirmation(db_url, sql):
    refused = run_examq(["db", "reset"], db_url)
    assert refused.returncode == 2 and "--yes" in refused.stderr
    assert sql.execute("select count(*) from public.tiers").fetchone()[0] > 0

    confirmed = run_examq(["db", "reset", "--yes"], db_url)
    assert confirmed.returncode == 0, confirmed.stderr
    # The demo users (and their admin) never go into a DATABASE_URL database.
    assert "seed" not in confirmed.stdout
    assert sql.execute("select count(*) from public.accounts").fetchone()[0] == 0
    assert sql.execute("select count(*) from public.tiers").fetchone()[0] > 0


def test_unreachable_database_is_one_clear_line():
    result = run_examq(["status", "1"], "postgresql://nobody@127.0.0.1:1/none")

    assert result.returncode == 2
    assert "cannot connect to the database" in result.stderr and "Traceback" not in result.stderr


def test_bad_configuration_is_one_clear_line(db_url):
    result = run_examq(["status", "1"], "mysql://wrong")

    assert result.returncode == 2
    assert "DATABASE_URL" in result.stderr and "Traceback" not in result.stderr


def test_demo_grades_the_sample_exam(db_url):
    result = run_examq(["demo"], db_url)

    assert result.returncode == 0, result.stderr
    assert "succeeded" in result.stdout and "dead" in result.stdout
    assert "claimed 4, succeeded 3, failed 1" in result.stdout


def test_load_refuses_option_values_it_cannot_run_with(db_url):
    for args, hint in (
        (["--rate", "0"], "--rate"),
        (["--seconds", "-1"], "--seconds"),
        (["--workers", "0"], "--workers"),
        (["--teachers", "2"], "--teachers"),
        (["--batch", "0"], "--batch"),
    ):
        result = run_examq(["load", *args], db_url)
        assert result.returncode == 2, (args, result.stderr)
        assert hint in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_submit_names_what_a_grading_payload_lacks_and_refuses_a_bad_user_id(db_url):
    payload = run_examq(["submit", "exam.grade", "--payload", '{"x": 1}'], db_url)
    user = run_examq(["submit", "system.noop", "--user", "not-a-uuid"], db_url)
    mistyped = run_examq(
        ["submit", "exam.grade", "--payload", '{"key_csv": 1, "responses_csv": "s,1"}'], db_url
    )

    assert payload.returncode == 2
    assert "key_csv" in payload.stderr and "responses_csv" in payload.stderr
    assert mistyped.returncode == 2
    assert "key_csv must be CSV text, not int" in mistyped.stderr
    assert user.returncode == 2
    assert "--user" in user.stderr and "uuid" in user.stderr


def test_an_unknown_job_type_is_refused_with_the_closest_known_one(db_url):
    typo = run_examq(["submit", "exam.grad", "--payload", "{}"], db_url)
    nonsense = run_examq(["submit", "zzz", "--payload", "{}"], db_url)

    assert typo.returncode == 2
    assert "unknown job type 'exam.grad'" in typo.stderr
    assert "did you mean exam.grade?" in typo.stderr
    assert "system.noop" in typo.stderr and "Traceback" not in typo.stderr
    assert nonsense.returncode == 2
    assert "did you mean" not in nonsense.stderr and "exam.grade" in nonsense.stderr


def test_cancel_and_requeue_say_what_happened_and_print_json_on_request(db_url):
    submitted = run_examq(["submit", "system.noop", "--json"], db_url)
    job_id = str(json.loads(submitted.stdout)["id"])

    cancelled = run_examq(["cancel", job_id, "--reason", "wrong file"], db_url)
    again = run_examq(["cancel", job_id, "--json"], db_url)
    requeued = run_examq(["requeue", job_id], db_url)

    assert cancelled.returncode == 0, cancelled.stderr
    assert cancelled.stdout.strip() == f"job {job_id}: cancelled (status cancelled)"
    assert json.loads(again.stdout) == {
        "job_id": int(job_id), "status": "cancelled", "outcome": "already_finished", "run_at": None,
    }
    assert requeued.stdout.strip() == f"job {job_id}: back in the queue (status queued)"


def test_dev_without_a_built_dashboard_says_how_to_build_it(db_url, tmp_path):
    result = run_examq(["dev", "--static-dir", str(tmp_path), "--no-cron"], db_url)

    assert result.returncode == 2
    assert "index.html" in result.stderr and "Traceback" not in result.stderr


def test_status_of_a_running_job_shows_its_progress(db_url, queue):
    job = queue.enqueue("system.sleep", {"seconds": 60, "steps": 10})
    [claimed] = queue.claim("w", 1)
    queue.heartbeat(claimed, progress=20, message="step 2 of 10")

    shown = run_examq(["status", str(job.id)], db_url)

    assert shown.returncode == 0, shown.stderr
    assert f"job {job.id} (system.sleep): running" in shown.stdout
    assert "progress: 20% (step 2 of 10)" in shown.stdout
