"""The report: HTML with its histogram and item table, escaped; the scores CSV."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime

import pytest

from examq.exam.gift import parse_gift
from examq.exam.keys import parse_key_csv
from examq.exam.report import render_html, render_scores_csv
from examq.exam.scoring import score_responses
from examq.exam.statistics import analyse

EXAM = "::<b>bold</b> title::Is <script>alert(1)</script> safe? {=yes ~no}\n\n::two::Two? {=a ~b}\n\n::three::Three? {=c ~d}"
RESPONSES = (
    'student,Q1,Q2,Q3\n=HYPERLINK("x"),yes,a,c\ns2,no,a,d\ns3,yes,b,d\ns4,no,b,c\n'
)


def _result() -> dict:
    exam = parse_gift(EXAM)
    scored = score_responses(exam, RESPONSES)
    analysed = analyse(scored)
    students = [
        {"student": s, "total": float(t), "scores": [float(p) for p in row]}
        for s, t, row in zip(
            scored.student_ids, scored.points.sum(axis=1), scored.points, strict=True
        )
    ]
    return {
        "exam": {"title": "Quiz <1>", "source_format": "gift"},
        **analysed,
        "students": students,
    }


def test_report_html_has_the_histogram_item_table_and_flags() -> None:
    result = _result()

    html = render_html(result, generated_at=datetime(2026, 12, 3, tzinfo=UTC))

    assert (
        html.startswith("<!doctype html>") and "<svg" in html and "Total score" in html
    )
    for item in result["items"]:
        assert f'<td class="text">{item["item"]}</td>' in html
    flagged = [i for i in result["items"] if i["flag"]]
    assert flagged and all(
        f"badge {i['flag'].replace(' ', '-')}" in html for i in flagged
    )
    assert "2026-12-03 00:00 UTC" in html
    assert "A blank or missing answer scores 0" in html


def test_report_html_escapes_text_from_uploaded_files() -> None:
    html = render_html(_result())

    assert (
        "<script>alert(1)</script>" not in html
        and "&lt;b&gt;bold&lt;/b&gt; title" in html
    )
    assert "Quiz &lt;1&gt;" in html


def test_report_csv_has_a_row_per_student_and_defuses_formulas() -> None:
    lines = render_scores_csv(_result()).splitlines()

    assert lines[0] == "student,total,Q1,Q2,Q3"
    assert lines[1].startswith("\"'=HYPERLINK(")
    assert lines[2] == "s2,1,0,1,0"
    assert len(lines) == 5


def test_report_csv_defuses_formulas_in_item_names_of_the_header() -> None:
    items = ['=HYPERLINK("http://x")', "@SUM(1+1)", "+cmd", "-2+3"]
    key, responses = io.StringIO(), io.StringIO()
    csv.writer(key).writerows([["item", "key"], *([item, "A"] for item in items)])
    csv.writer(responses).writerows([["student", *items], ["s1", "A", "A", "B", "A"]])
    scored = score_responses(parse_key_csv(key.getvalue()), responses.getvalue())
    result = {
        **analyse(scored),
        "students": [{"student": "s1", "total": 3.0, "scores": [1.0, 1.0, 0.0, 1.0]}],
    }

    header = next(csv.reader(io.StringIO(render_scores_csv(result))))

    assert header == ["student", "total", *("'" + item for item in items)]


@pytest.mark.parametrize(
    ("student", "cell"),
    [
        ("=1+1", "'=1+1"),
        ("+1+1", "'+1+1"),
        ("-1+1", "'-1+1"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\tx", "'\tx"),
        ("\r=x", "'\r=x"),
        ("  =1+1", "'  =1+1"),
        ("x\r=1+1", "x\r=1+1"),
        ("x\n=1+1", "x\n=1+1"),
    ],
)
def test_report_csv_defuses_every_cell_but_keeps_numbers_numbers(
    student: str, cell: str
) -> None:
    result = {
        "items": [{"item": "=A1"}, {"item": "-5"}],
        "students": [{"student": student, "total": -1.5, "scores": [-2.0, 0.5]}],
    }

    rows = list(csv.reader(io.StringIO(render_scores_csv(result), newline="")))

    assert rows == [
        ["student", "total", "'=A1", "-5"],
        [cell, "-1.500", "-2", "0.500"],
    ]
