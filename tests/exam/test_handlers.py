"""The exam handlers run directly: import, grade with an exam model, report, input check."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest

from examq.errors import JobCancelled, PermanentError
from examq.handlers import registry
from examq.handlers.grade import grade_exam
from tests.conftest import shared_data

GIFT = "::q1::Capital? {=Paris ~Lyon}\n\n::q2::Pi? {#3.14:0.01}\n\n::q3::Why? {}\n"
RESPONSES = "student,q1,q2,q3\ns1,Paris,3.14,because\ns2,Lyon,3.2,\ns3,Paris,3.16,\n"


@dataclass
class Ctx:
    job_id: int = 11
    job_type: str = "exam.grade"
    attempt: int = 1
    job: object = None
    cancel_on: int | None = None
    calls: list[tuple[float, str]] = field(default_factory=list)

    def report_progress(self, percent: float, message: str = "") -> None:
        self.calls.append((percent, message))
        if len(self.calls) == self.cancel_on:
            raise JobCancelled("cancelled")


@pytest.fixture(autouse=True)
def folders(monkeypatch, tmp_path: Path) -> Path:
    for name in (
        "DATABASE_URL",
        "SUPABASE_URL",
        "SUPABASE_SERVICE_ROLE_KEY",
        "EXAMQ_REPORTS_DIR",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("EXAMQ_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("EXAMQ_STORAGE_DIR", str(tmp_path / "storage"))
    return tmp_path


def test_exam_handlers_are_registered() -> None:
    handlers = registry()

    assert {"exam.import", "exam.grade", "exam.report", "exam.pipeline"} <= set(
        handlers
    )


def test_import_returns_the_exam_model_and_its_outline() -> None:
    result = registry()["exam.import"](
        {"exam": {"text": GIFT, "name": "quiz.gift"}}, Ctx()
    )

    assert result["format"] == "gift" and result["questions"] == 3
    assert result["by_type"] == {"single_choice": 1, "numerical": 1, "essay": 1}
    assert [q["type"] for q in result["exam_model"]["questions"]] == [
        "single_choice",
        "numerical",
        "essay",
    ]


def test_import_failure_names_the_file_and_question() -> None:
    with pytest.raises(
        PermanentError,
        match=r"quiz.gift: question 'bad' \(line 1\) has answer grade\(s\) 42%",
    ):
        registry()["exam.import"](
            {"exam": {"text": "::bad::Q {~%42%a =b}", "name": "quiz.gift"}}, Ctx()
        )


def test_grade_with_the_imported_model_scores_by_type_and_skips_essays() -> None:
    imported = registry()["exam.import"](
        {"exam": {"text": GIFT, "name": "quiz.gift"}}, Ctx()
    )

    result = grade_exam(
        {"parent_result": imported, "responses": {"text": RESPONSES, "name": "r.csv"}},
        Ctx(),
    )

    assert result["exam"]["scored"] == 2 and result["exam"]["ungraded"] == 1
    assert [s["total"] for s in result["students"]] == [2, 0, 1]
    assert [s["scores"] for s in result["students"]] == [[1, 1], [0, 0], [1, 0]]
    assert [i["item"] for i in result["items"]] == ["Q1", "Q2"]


def test_grade_with_a_model_reports_progress_and_stops_when_cancelled() -> None:
    imported = registry()["exam.import"]({"exam": {"text": GIFT}}, Ctx())
    ctx = Ctx(cancel_on=3)

    with pytest.raises(JobCancelled):
        grade_exam(
            {"exam_model": imported["exam_model"], "responses_csv": RESPONSES}, ctx
        )

    assert len(ctx.calls) == 3


@pytest.mark.parametrize("inline_source", [False, True], ids=["responses_csv", "responses"])
def test_grade_with_a_model_refuses_responses_over_the_size_limit(
    monkeypatch, inline_source: bool
) -> None:
    monkeypatch.setenv("EXAMQ_MAX_INPUT_BYTES", "1024")
    imported = registry()["exam.import"]({"exam": {"text": GIFT}}, Ctx())
    responses = RESPONSES + "".join(f"extra{n:04d},Paris,3.14,\n" for n in range(100))
    payload: dict = {"exam_model": imported["exam_model"]}
    if inline_source:
        payload["responses"] = {"text": responses, "name": "r.csv"}
    else:
        payload["responses_csv"] = responses

    with pytest.raises(PermanentError) as raised:
        grade_exam(payload, Ctx())

    assert f"is {len(responses.encode())} bytes" in str(raised.value)
    assert "limited to 1024 bytes (EXAMQ_MAX_INPUT_BYTES)" in str(raised.value)


def test_grade_refuses_an_invalid_model_naming_where() -> None:
    with pytest.raises(PermanentError, match="exam model is invalid at questions"):
        grade_exam(
            {
                "exam_model": {"source_format": "gift", "questions": []},
                "responses_csv": RESPONSES,
            },
            Ctx(),
        )


@pytest.mark.parametrize(
    "payload",
    [
        {"exam_model": None, "responses_csv": "s,1"},
        {"exam_model": None, "parent_result": "x", "responses_csv": "s,1"},
        {"parent_result": {"exam_model": None}, "responses_csv": "s,1"},
    ],
)
def test_grade_refuses_a_model_that_is_not_an_object_for_good(payload) -> None:
    with pytest.raises(PermanentError, match="exam_model must be an exam model object"):
        grade_exam(payload, Ctx())


def test_the_plain_key_path_is_unchanged() -> None:
    result = grade_exam(
        {"key_csv": "item,key\nq1,A\n", "responses_csv": "student,q1\ns1,a\ns2,B\n"},
        Ctx(),
    )

    assert result["students"] == [
        {"student": "s1", "total": 1},
        {"student": "s2", "total": 0},
    ]


def test_report_stores_html_and_csv_in_the_owners_folder(folders: Path) -> None:
    imported = registry()["exam.import"]({"exam": {"text": GIFT}}, Ctx())
    graded = grade_exam({"parent_result": imported, "responses_csv": RESPONSES}, Ctx())
    owner = SimpleNamespace(user_id="00000000-0000-4000-8000-000000000001")

    result = registry()["exam.report"](
        {"parent_result": graded, "title": "Quiz 1"}, Ctx(job_id=99, job=owner)
    )

    folder = folders / "data" / "reports" / owner.user_id / "99"
    assert result["links"]["html"] == (folder / "report.html").resolve().as_uri()
    assert "Quiz 1" in (folder / "report.html").read_text(encoding="utf-8")
    assert (folder / "scores.csv").read_text(encoding="utf-8").splitlines()[
        0
    ] == "student,total,Q1,Q2"
    assert result["summary"]["students"] == 3


def test_report_without_a_grading_result_fails_permanently() -> None:
    with pytest.raises(PermanentError, match="needs a grading result"):
        registry()["exam.report"]({"parent_result": {"summary": {}}}, Ctx())


def test_pipeline_check_reads_storage_inputs_and_detects_the_format(
    folders: Path,
) -> None:
    owner = "00000000-0000-4000-8000-000000000001"
    exam = folders / "storage" / "exam-uploads" / owner / "items.xml"
    exam.parent.mkdir(parents=True)
    exam.write_bytes(shared_data("exams", "choice_multiple.xml").read_bytes())
    payload = {
        "exam": {"bucket": "exam-uploads", "path": f"{owner}/items.xml"},
        "responses": {"inline": True, "name": "r.csv", "bytes": 10},
    }

    result = registry()["exam.pipeline"](
        payload, Ctx(job=SimpleNamespace(user_id=owner))
    )

    assert (
        result["exam"]["format"] == "qti"
        and result["exam"]["bytes"] == exam.stat().st_size
    )
    assert result["responses"] == {
        "where": "inline r.csv",
        "name": "r.csv",
        "bytes": 10,
    }


def test_pipeline_check_names_a_missing_object() -> None:
    payload = {
        "exam": {"bucket": "exam-uploads", "path": "system/none.gift"},
        "responses": {"inline": True},
    }

    with pytest.raises(
        PermanentError, match="exam-uploads/system/none.gift does not exist"
    ):
        registry()["exam.pipeline"](payload, Ctx())
