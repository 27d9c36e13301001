"""Item analysis: the HCI reference values through the exam model, and reliability checked
against an independent implementation (pingouin) on generated data with missing answers."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from examq.exam.gift import parse_gift
from examq.exam.importers import import_exam
from examq.exam.keys import parse_key_csv
from examq.exam.scoring import score_responses
from examq.exam.statistics import analyse
from tests.conftest import shared_data

# Reference values of the Homeostasis Concept Inventory from ../shared/data/MANIFEST.md.
HCI_P = [.699, .753, .848, .404, .442, .363, .547, .705, .433, .648,
         .779, .573, .608, .759, .444, .607, .296, .797, .785, .722]  # fmt: skip
HCI_ITEM_REST = [.288, .221, .350, .173, .277, .342, .101, .325, .213, .264,
                 .285, .316, .361, .339, .301, .382, .043, .417, .367, .340]  # fmt: skip
HCI_ALPHA_IF_DELETED = [.704, .710, .701, .715, .705, .699, .722, .701, .711, .706,
                        .705, .702, .697, .700, .703, .695, .725, .694, .698, .700]  # fmt: skip


def _hci() -> dict:
    exam = import_exam(
        shared_data("responses", "HCIkey.csv").read_bytes(), "HCIkey.csv"
    )
    scored = score_responses(
        exam, shared_data("responses", "HCItest.csv").read_text(encoding="utf-8")
    )
    return analyse(scored)


def test_hci_through_the_exam_model_reproduces_the_reference_values() -> None:
    result = _hci()

    summary = result["summary"]
    assert (summary["students"], summary["items"], summary["max_score"]) == (
        651,
        20,
        20,
    )
    assert round(summary["alpha"], 4) == round(summary["kr20"], 4) == 0.7155
    assert round(summary["mean"], 3) == 12.212 and round(summary["sd"], 3) == 3.640
    items = result["items"]
    assert [i["item"] for i in items] == [f"Item{n}" for n in range(1, 21)]
    assert [round(i["p"], 3) for i in items] == HCI_P
    assert [round(i["item_rest_r"], 3) for i in items] == HCI_ITEM_REST
    assert [round(i["alpha_if_deleted"], 3) for i in items] == HCI_ALPHA_IF_DELETED
    json.dumps(result, allow_nan=False)


def test_hci_flags_the_near_zero_item_and_counts_its_distractors() -> None:
    items = _hci()["items"]

    assert [(i["item"], i["flag"]) for i in items if i["flag"]] == [
        ("Item17", "near zero")
    ]
    item17 = {row["option"]: row for row in items[16]["distractors"]}
    assert item17["C"]["is_key"] and item17["C"]["count"] == 193
    assert sum(row["count"] for row in item17.values()) == 651
    assert set(item17) == {"A", "B", "C", "D"}


def test_hci_distribution_counts_every_student_once() -> None:
    distribution = _hci()["distribution"]

    assert distribution["whole_points"]
    assert sum(b["count"] for b in distribution["bins"]) == 651
    assert [b["count"] for b in distribution["bins"]][19:21] == [9, 5]


def _generated_exam(
    students: int = 150, items: int = 12, missing: float = 0.08, seed: int = 20261203
):
    """Answers to a 12-item test from a seeded item response model, with blanks."""
    rng = np.random.default_rng(seed)
    ability = rng.normal(size=(students, 1))
    difficulty = np.linspace(-1.5, 1.5, items)
    right = rng.random((students, items)) < 1 / (
        1 + np.exp(-(1.4 * ability - difficulty))
    )
    keys = rng.choice(list("ABCD"), size=items)
    wrong = np.array(
        [
            [rng.choice([c for c in "ABCD" if c != k]) for k in keys]
            for _ in range(students)
        ]
    )
    answers = np.where(right, keys, wrong).astype(object)
    answers[rng.random((students, items)) < missing] = ""

    key_csv = "item,key\n" + "".join(f"q{i + 1},{k}\n" for i, k in enumerate(keys))
    header = "student," + ",".join(f"q{i + 1}" for i in range(items))
    rows = "\n".join(f"s{n}," + ",".join(row) for n, row in enumerate(answers))
    return key_csv, header + "\n" + rows + "\n", answers, keys


def _independent_scores(answers: np.ndarray, keys: np.ndarray):
    """A pandas frame of 1/0 scores with NaN for blanks, built without examq."""
    import pandas as pd

    frame = pd.DataFrame((answers == keys).astype(float))
    return frame.mask(pd.DataFrame(answers == ""))


def test_alpha_matches_pingouin_when_blanks_score_zero() -> None:
    pingouin = pytest.importorskip("pingouin")
    key_csv, responses, answers, keys = _generated_exam()
    assert (answers == "").sum() > 50

    result = analyse(
        score_responses(parse_key_csv(key_csv), responses), missing_policy="zero"
    )

    expected, _ = pingouin.cronbach_alpha(
        data=_independent_scores(answers, keys).fillna(0)
    )
    assert result["summary"]["alpha"] == pytest.approx(expected, abs=1e-9)
    assert result["summary"]["kr20"] == pytest.approx(expected, abs=1e-9)
    assert result["summary"]["missing_answers"] == int((answers == "").sum())


def test_alpha_matches_pingouin_listwise_when_asked_to_leave_out_incomplete_students() -> (
    None
):
    pingouin = pytest.importorskip("pingouin")
    key_csv, responses, answers, keys = _generated_exam(missing=0.02)

    result = analyse(
        score_responses(parse_key_csv(key_csv), responses), missing_policy="listwise"
    )

    expected, _ = pingouin.cronbach_alpha(
        data=_independent_scores(answers, keys), nan_policy="listwise"
    )
    complete = int((answers != "").all(axis=1).sum())
    assert result["summary"]["students_in_statistics"] == complete < 150
    assert result["summary"]["alpha"] == pytest.approx(expected, abs=1e-9)
    # Totals still count every student.
    assert result["summary"]["students"] == 150


def test_partial_credit_gives_alpha_but_no_kr20() -> None:
    exam = parse_gift(
        "::a::A? {~%50%x ~%50%y ~z}\n\n::b::B? {=p ~q}\n\n::c::C? {#1..2}"
    )
    responses = io.StringIO()
    responses.write("student,a,b,c\n")
    for n, row in enumerate(
        [
            ("x;y", "p", "1"),
            ("x", "q", "3"),
            ("z", "p", "2"),
            ("y", "q", "0"),
            ("x;y", "p", "1.5"),
        ]
    ):
        responses.write(f"s{n},{row[0]},{row[1]},{row[2]}\n")

    summary = analyse(score_responses(exam, responses.getvalue()))["summary"]

    assert summary["alpha"] is not None and summary["kr20"] is None


def test_an_item_everyone_gets_right_is_flagged_as_having_no_variance() -> None:
    exam = parse_key_csv("item,key\nq1,A\nq2,B\nq3,C\n")

    result = analyse(
        score_responses(exam, "id,q1,q2,q3\ns1,A,B,C\ns2,A,A,C\ns3,A,B,A\ns4,A,C,B\n")
    )

    assert result["items"][0]["flag"] == "no variance"
