"""Tests of the exam.grade handler: parsing, scoring, statistics, progress, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import examq
from examq.errors import JobCancelled, PermanentError
from examq.handlers import registry
from examq.handlers.grade import grade_exam, read_text_file
from examq.worker import Worker

SHARED_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
SAMPLES = Path(examq.__file__).resolve().parent / "samples"

# Reference values of the Homeostasis Concept Inventory from shared/data/MANIFEST.md.
HCI_P = [
    .699, .753, .848, .404, .442, .363, .547, .705, .433, .648,
    .779, .573, .608, .759, .444, .607, .296, .797, .785, .722,
]  # fmt: skip
HCI_ITEM_REST_R = [
    .288, .221, .350, .173, .277, .342, .101, .325, .213, .264,
    .285, .316, .361, .339, .301, .382, .043, .417, .367, .340,
]  # fmt: skip
HCI_ALPHA_IF_DELETED = [
    .704, .710, .701, .715, .705, .699, .722, .701, .711, .706,
    .705, .702, .697, .700, .703, .695, .725, .694, .698, .700,
]  # fmt: skip

KEY = "item,key\nq1,A\nq2,B\nq3,C\n"
RESPONSES = "student,q1,q2,q3\ns1,A,B,C\ns2,A,B,D\ns3,A,C,D\ns4,B,C,D\n"


@dataclass
class FakeContext:
    """A JobContext that records progress and cancels on call number ``cancel_on``."""

    job_id: int = 1
    job_type: str = "exam.grade"
    attempt: int = 1
    cancel_on: int | None = None
    calls: list[tuple[float, str]] = field(default_factory=list)

    def report_progress(self, percent: float, message: str = "") -> None:
        self.calls.append((percent, message))
        if len(self.calls) == self.cancel_on:
            raise JobCancelled(f"job {self.job_id} was cancelled")


def _payload(key: Any = KEY, responses: Any = RESPONSES) -> dict[str, Any]:
    """Build a payload from the two CSVs, the valid ones unless given."""
    return {"key_csv": key, "responses_csv": responses}


def _grade(key: Any = KEY, responses: Any = RESPONSES) -> dict[str, Any]:
    """Grade inline CSV texts with a recording context."""
    return grade_exam(_payload(key, responses), FakeContext())


def _grade_files(key: Path, responses: Path, ctx: FakeContext) -> dict[str, Any]:
    """Grade two files the way the CLI does: read them, then pass their text."""
    payload = {
        "key_csv": read_text_file(key),
        "responses_csv": read_text_file(responses),
    }
    return grade_exam(payload, ctx)


@pytest.fixture
def responses_dir() -> Path:
    """The shared third-party response data, or a skip when it is absent."""
    folder = SHARED_DATA / "responses"
    if not folder.is_dir():
        pytest.skip(
            f"shared exam data is absent ({folder}); it is not in the repository"
        )
    return folder


def test_grade_is_registered_as_exam_grade() -> None:
    assert registry()["exam.grade"] is grade_exam


def test_grade_reproduces_the_hci_reference_values(responses_dir: Path) -> None:
    result = _grade_files(
        responses_dir / "HCIkey.csv", responses_dir / "HCItest.csv", FakeContext()
    )

    summary = result["summary"]
    assert summary["students"] == 651
    assert summary["items"] == summary["max_score"] == 20
    assert round(summary["alpha"], 4) == 0.7155
    assert round(summary["kr20"], 4) == 0.7155
    assert round(summary["mean"], 3) == 12.212
    assert round(summary["sd"], 3) == 3.640
    items = result["items"]
    assert [item["item"] for item in items] == [f"Item{i}" for i in range(1, 21)]
    assert [round(item["p"], 3) for item in items] == HCI_P
    assert [round(item["item_rest_r"], 3) for item in items] == HCI_ITEM_REST_R
    assert [
        round(item["alpha_if_deleted"], 3) for item in items
    ] == HCI_ALPHA_IF_DELETED
    assert len(result["students"]) == 651
    json.dumps(result, allow_nan=False)


def test_grade_reproduces_the_ctt_reference_values(responses_dir: Path) -> None:
    result = _grade_files(
        responses_dir / "CTTkey.csv", responses_dir / "CTTdata.csv", FakeContext()
    )

    summary = result["summary"]
    assert (summary["students"], summary["items"]) == (100, 20)
    assert round(summary["alpha"], 4) == 0.8128
    assert round(summary["mean"], 2) == 9.48
    assert round(summary["sd"], 3) == 4.520


def test_grade_reports_increasing_progress(responses_dir: Path) -> None:
    ctx = FakeContext()

    _grade_files(responses_dir / "HCIkey.csv", responses_dir / "HCItest.csv", ctx)

    percents = [percent for percent, _ in ctx.calls]
    assert len(percents) >= 5
    assert all(
        earlier < later for earlier, later in zip(percents, percents[1:], strict=False)
    )
    assert percents[0] >= 0 and percents[-1] == 100
    assert any("scored" in message for _, message in ctx.calls)


def test_grade_reports_several_progress_steps_on_a_tiny_exam() -> None:
    ctx = FakeContext()

    grade_exam({"key_csv": KEY, "responses_csv": RESPONSES}, ctx)

    percents = [percent for percent, _ in ctx.calls]
    assert len(percents) >= 5
    assert all(
        earlier < later for earlier, later in zip(percents, percents[1:], strict=False)
    )


@pytest.mark.parametrize("cancel_on", [1, 3, 4, 6])
def test_grade_lets_a_cancellation_propagate(cancel_on: int) -> None:
    ctx = FakeContext(cancel_on=cancel_on)

    with pytest.raises(JobCancelled):
        grade_exam({"key_csv": KEY, "responses_csv": RESPONSES}, ctx)

    assert len(ctx.calls) == cancel_on


def test_grade_grades_the_sample_exam_with_positive_alpha() -> None:
    result = _grade_files(
        SAMPLES / "sample_key.csv", SAMPLES / "sample_responses.csv", FakeContext()
    )

    assert result["summary"]["students"] == 30
    assert result["summary"]["items"] == 10
    assert result["summary"]["alpha"] > 0.5
    assert result["students"][0]["student"] == "s01"


def test_grade_scores_each_answer_against_the_key() -> None:
    result = _grade()

    assert [s["total"] for s in result["students"]] == [3, 2, 1, 0]
    assert [s["student"] for s in result["students"]] == ["s1", "s2", "s3", "s4"]
    assert [i["p"] for i in result["items"]] == [0.75, 0.5, 0.25]
    assert [i["key"] for i in result["items"]] == ["A", "B", "C"]
    assert result["summary"]["alpha"] == pytest.approx(0.75)
    assert result["summary"]["kr20"] == pytest.approx(0.75)


def test_grade_ignores_case_and_surrounding_whitespace() -> None:
    result = _grade(
        key=" Item , KEY ,note\nQ1, a ,x\nq2,B,y\n",
        responses="ID,q1,Q2\ns1,  A,b \ns2,a,c\n",
    )

    assert [s["total"] for s in result["students"]] == [2, 1]
    assert [i["item"] for i in result["items"]] == ["Q1", "q2"]


def test_grade_scores_blank_and_missing_answers_zero() -> None:
    result = _grade(responses="student,q1,q2,q3\ns1,A,,C\ns2,A\ns3, ,B,C\n")

    assert [s["total"] for s in result["students"]] == [2, 1, 2]


def test_grade_ignores_extra_columns_and_blank_lines() -> None:
    result = _grade(
        responses="gender,student_id,q3,major,q1,q2\n\n0,s1,C,x,A,B\n,,,\n1,s2,C,y,D,D"
    )

    assert result["students"] == [
        {"student": "s1", "total": 3},
        {"student": "s2", "total": 1},
    ]


def test_grade_uses_the_first_column_when_no_id_column_is_named() -> None:
    result = _grade(responses="name,q1,q2,q3\nAda,A,B,C\nBob,A,A,A\n")

    assert [s["student"] for s in result["students"]] == ["Ada", "Bob"]


def test_grade_accepts_utf8_bytes_and_byte_order_marks() -> None:
    result = _grade(
        key=("\ufeff" + KEY).encode("utf-8"),
        responses="\ufeff" + RESPONSES.replace("s1", "élève"),
    )

    assert result["students"][0] == {"student": "élève", "total": 3}


def test_grade_reports_undefined_statistics_as_null() -> None:
    one_student = _grade(responses="student,q1,q2,q3\ns1,A,B,D\n")
    one_item = _grade(key="item,key\nq1,A\n")

    assert one_student["summary"]["alpha"] is None
    assert one_student["summary"]["kr20"] is None
    assert one_student["summary"]["sd"] is None
    assert one_student["items"][0]["item_rest_r"] is None
    assert one_item["summary"]["alpha"] is None
    assert one_item["items"][0]["alpha_if_deleted"] is None
    json.dumps(one_student, allow_nan=False)


MALFORMED_INPUTS = [
    pytest.param({"responses_csv": RESPONSES}, ["no key_csv"], id="no-key"),
    pytest.param({"key_csv": KEY}, ["no responses_csv"], id="no-responses"),
    pytest.param(_payload(key=3), ["key_csv", "int"], id="key-not-text"),
    pytest.param(_payload(responses=None), ["responses_csv"], id="responses-not-text"),
    pytest.param(_payload(key=""), ["key_csv is empty"], id="key-empty"),
    pytest.param(_payload(responses="\n \n"), ["responses_csv is empty"], id="blank"),
    pytest.param(_payload(key="question,key\nq1,A\n"), ["'item'"], id="no-item"),
    pytest.param(_payload(key="item,answer\nq1,A\n"), ["'key'"], id="no-key-column"),
    pytest.param(_payload(key="q1,A\nq2,B\n"), ["'item'", "'key'"], id="no-header"),
    pytest.param(_payload(key="item,key\n"), ["no items"], id="no-items"),
    pytest.param(
        _payload(key="item,key\nq1,A\nq2,B\nQ1,C\n"),
        ["'Q1' twice", "lines 2 and 4"],
        id="duplicate-item",
    ),
    pytest.param(
        _payload(key="item,key\nq1,A\nq2,\n"), ["'q2' has no key"], id="blank-key"
    ),
    pytest.param(_payload(key=KEY + "q4,A\nq5,B\n"), ["q4, q5"], id="items-absent"),
    pytest.param(
        _payload(responses="student,q1,q2,q3\n"), ["no student rows"], id="no-rows"
    ),
    pytest.param(
        _payload(responses=RESPONSES + "s2,A,A,A\n"),
        ["'s2' twice", "lines 3 and 6"],
        id="duplicate-student",
    ),
    pytest.param(
        _payload(responses=RESPONSES + " ,A,A,A\n"),
        ["line 6", "no student id"],
        id="blank-student",
    ),
    pytest.param(
        _payload(responses="q1,q2,q3\nA,B,C\n"),
        ["student id", "'q1'"],
        id="first-column-is-an-item",
    ),
    pytest.param(
        _payload(key="item,key\nid,A\n", responses="id,q1\ns1,A\n"),
        ["column 'id' cannot be both"],
        id="id-column-is-an-item",
    ),
    pytest.param(
        _payload(responses="id,q1,q2,Q2,q3\ns1,A,B,B,C\n"),
        ["'q2' more than once"],
        id="item-column-twice",
    ),
    pytest.param(
        _payload(responses=b"student,q1,q2,q3\ns1,\xe9,B,C\n"),
        ["responses_csv is not UTF-8"],
        id="responses-not-utf8",
    ),
    pytest.param(
        _payload(key=b"item,key\nq1,\xff\n"),
        ["key_csv is not UTF-8"],
        id="key-not-utf8",
    ),
    pytest.param(
        _payload(key='item,key\nq1,"A\n'), ["key_csv is not valid CSV"], id="bad-quote"
    ),
]


@pytest.mark.parametrize(("payload", "fragments"), MALFORMED_INPUTS)
def test_grade_rejects_malformed_input_naming_the_problem(
    payload: dict[str, Any], fragments: list[str]
) -> None:
    with pytest.raises(PermanentError) as raised:
        grade_exam(payload, FakeContext())

    for fragment in fragments:
        assert fragment in str(raised.value)


def test_read_text_file_decodes_utf8_without_the_byte_order_mark(
    tmp_path: Path,
) -> None:
    path = tmp_path / "key.csv"
    path.write_bytes(b"\xef\xbb\xbfitem,key\nq1,\xc3\x89\n")

    assert read_text_file(path) == "item,key\nq1,É\n"


def test_read_text_file_names_a_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes("item,key\nq1,É\n".encode("latin-1"))

    with pytest.raises(PermanentError, match="latin1.csv is not UTF-8"):
        read_text_file(path)


def test_read_text_file_names_a_file_it_cannot_read(tmp_path: Path) -> None:
    with pytest.raises(PermanentError, match="missing.csv"):
        read_text_file(tmp_path / "missing.csv")


def _many_students(count: int) -> str:
    """A responses CSV for the three-item KEY, long enough to pass a small size limit."""
    rows = [f"student-{n:05d},A,B,C" for n in range(count)]
    return "student,q1,q2,q3\n" + "\n".join(rows) + "\n"


@pytest.mark.parametrize("field", ["key_csv", "responses_csv"])
@pytest.mark.parametrize("as_bytes", [False, True], ids=["text", "bytes"])
def test_grade_refuses_an_input_over_the_size_limit(monkeypatch, field, as_bytes) -> None:
    monkeypatch.setenv("EXAMQ_MAX_INPUT_BYTES", "1024")
    big = {
        "key_csv": "item,key\n" + "".join(f"item{n:04d},A\n" for n in range(200)),
        "responses_csv": _many_students(100),
    }[field]
    payload = _payload(**{field.removesuffix("_csv"): big.encode() if as_bytes else big})

    with pytest.raises(PermanentError) as raised:
        grade_exam(payload, FakeContext())

    message = str(raised.value)
    assert message.startswith(f"exam.grade: {field} is {len(big.encode())} bytes")
    assert "limited to 1024 bytes (EXAMQ_MAX_INPUT_BYTES)" in message


def test_grade_counts_the_limit_in_utf8_bytes(monkeypatch) -> None:
    monkeypatch.setenv("EXAMQ_MAX_INPUT_BYTES", "1024")
    # 700 characters, but 1400 bytes once encoded: over the limit.
    responses = "student,q1,q2,q3\n" + "é" * 700 + ",A,B,C\n"
    assert len(responses) < 1024 < len(responses.encode())

    with pytest.raises(PermanentError, match="EXAMQ_MAX_INPUT_BYTES"):
        _grade(responses=responses)


def test_grade_accepts_inputs_within_the_size_limit(monkeypatch) -> None:
    responses = _many_students(40)
    monkeypatch.setenv("EXAMQ_MAX_INPUT_BYTES", str(len(responses.encode())))

    result = _grade(responses=responses)

    assert result["summary"]["students"] == 40


def test_an_oversized_grade_job_fails_permanently_on_the_queue(queue, monkeypatch) -> None:
    monkeypatch.setenv("EXAMQ_MAX_INPUT_BYTES", "1024")
    job = queue.enqueue("exam.grade", _payload(responses=_many_students(100)))

    Worker(queue, worker_id="size-limit").run_pass(10)

    after = queue.get(job.id)
    assert after.status == "dead" and after.attempt == 1
    assert after.error_kind == "permanent"
    assert "responses_csv" in after.last_error
    assert "limited to 1024 bytes (EXAMQ_MAX_INPUT_BYTES)" in after.last_error


def test_submit_refuses_to_grade_files_over_the_size_limit(db_url, tmp_path) -> None:
    responses = tmp_path / "responses.csv"
    sample = (SAMPLES / "sample_responses.csv").read_text()
    header, *rows = sample.splitlines()
    # The sample (831 bytes) with its students repeated under new ids: about 2.5 KB.
    more = [f"x{copy}-{row}" for copy in range(2) for row in rows]
    responses.write_text("\n".join([header, *rows, *more]) + "\n")
    assert responses.stat().st_size > 2048

    result = subprocess.run(
        [
            sys.executable, "-m", "examq", "submit", "exam.grade",
            "--key", str(SAMPLES / "sample_key.csv"), "--responses", str(responses),
            "--wait", "--json",
        ],
        env={
            **os.environ,
            "DATABASE_URL": db_url,
            "EXAMQ_LOG_FORMAT": "text",
            "EXAMQ_MAX_INPUT_BYTES": "2048",
        },
        cwd=Path(examq.__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=120,
    )

    job = json.loads(result.stdout)
    assert job["status"] == "dead" and job["attempt"] == 1, job
    assert "limited to 2048 bytes (EXAMQ_MAX_INPUT_BYTES)" in job["last_error"]


def _as_excel(text: str, delimiter: str) -> str:
    return text.replace(",", delimiter)


@pytest.mark.parametrize("delimiter", [";", "\t"], ids=["semicolon", "tab"])
def test_grade_reads_excel_semicolon_and_tab_files_as_the_comma_ones(delimiter: str) -> None:
    expected = _grade()["summary"]

    graded = _grade(_as_excel(KEY, delimiter), _as_excel(RESPONSES, delimiter))

    assert graded["summary"] == expected


def test_grade_reads_excel_sep_lines_and_utf16_unicode_text() -> None:
    expected = _grade()["summary"]

    declared = _grade("sep=;\n" + _as_excel(KEY, ";"), "sep=,\r\n" + RESPONSES)
    unicode_text = _grade(
        ("\ufeff" + _as_excel(KEY, "\t")).encode("utf-16-le"),
        ("\ufeff" + _as_excel(RESPONSES, "\t")).encode("utf-16-le"),
    )

    assert declared["summary"] == expected
    assert unicode_text["summary"] == expected


def test_grade_refuses_latin1_saying_how_to_save_the_file() -> None:
    with pytest.raises(PermanentError, match="save it as UTF-8"):
        _grade(responses=RESPONSES.replace("s1", "Zo\xeb").encode("latin-1"))


def test_grade_matches_several_answers_in_any_order() -> None:
    graded = _grade("item,key\nq1,A;C\nq2,B\n", "student,q1,q2\ns1,C;A\ns2, a | c ,B\ns3,A;B;C,B\ns4,A,B\n")

    assert [s["total"] for s in graded["students"]] == [1, 2, 1, 1]
