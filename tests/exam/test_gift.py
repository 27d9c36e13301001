"""The GIFT importer against the reference parse of Moodle's own examples, and GIFT's edge cases."""

from __future__ import annotations

import json
from typing import Any

import pytest

from examq.exam.errors import ExamInputError
from examq.exam.gift import parse_gift
from examq.exam.model import (
    BLANK,
    Matching,
    Numerical,
    ShortAnswer,
    SingleChoice,
    TrueFalse,
)
from tests.conftest import shared_data

# The reference parser's type names, and the model types they correspond to.
REFERENCE_TYPES = {
    "MC": {"single_choice", "multiple_response"},
    "TF": {"true_false"},
    "Short": {"short_answer"},
    "Numerical": {"numerical"},
    "Matching": {"matching"},
    "Essay": {"essay"},
}


def _fraction(choice: dict[str, Any]) -> float:
    """A reference choice's credit: its %weight%, else 1 for '=' and 0 for '~'."""
    if choice["weight"] is not None:
        return choice["weight"] / 100
    return 1.0 if choice["isCorrect"] else 0.0


def _text(value: dict[str, Any] | None) -> str | None:
    return None if value is None else value["text"]


def _numeric(answer: Any) -> dict[str, float]:
    if isinstance(answer, dict) and answer.get("type") == "range":
        return {"value": answer["number"], "tolerance": answer["range"]}
    return {"low": answer["numberLow"], "high": answer["numberHigh"]}


def test_gift_matches_the_reference_parse_question_by_question() -> None:
    exam = parse_gift(
        shared_data("exams", "giftFormatPhpExamples.gift").read_text(encoding="utf-8")
    )
    expected = json.loads(
        shared_data("exams", "giftFormatPhpExamples.json").read_text(encoding="utf-8")
    )

    assert len(exam.questions) == len(expected)
    for number, (question, reference) in enumerate(
        zip(exam.questions, expected, strict=True), start=1
    ):
        where = f"question {number}"
        assert question.type in REFERENCE_TYPES[reference["type"]], where
        assert question.title == reference["title"], where
        assert question.stem == _text(reference["stem"]), where
        assert question.has_blank == reference["hasEmbeddedAnswers"], where
        assert question.general_feedback == _text(reference["globalFeedback"]), where

        if isinstance(question, SingleChoice):
            assert [c.text for c in question.choices] == [
                _text(c["text"]) for c in reference["choices"]
            ], where
            assert [c.weight for c in question.choices] == [
                _fraction(c) for c in reference["choices"]
            ], where
            assert [c.feedback for c in question.choices] == [
                _text(c["feedback"]) for c in reference["choices"]
            ], where
        elif isinstance(question, ShortAnswer):
            assert [a.text for a in question.answers] == [
                _text(c["text"]) for c in reference["choices"]
            ], where
            assert [a.weight for a in question.answers] == [
                _fraction(c) for c in reference["choices"]
            ], where
            assert [a.feedback for a in question.answers] == [
                _text(c["feedback"]) for c in reference["choices"]
            ], where
        elif isinstance(question, TrueFalse):
            assert question.correct is reference["isTrue"], where
            assert question.feedback_true == _text(reference["trueFeedback"]), where
            assert question.feedback_false == _text(reference["falseFeedback"]), where
        elif isinstance(question, Numerical):
            choices = reference["choices"]
            if isinstance(
                choices, dict
            ):  # the short form {#1822:5}: one full-credit answer
                choices = [
                    {
                        "text": choices,
                        "weight": None,
                        "isCorrect": True,
                        "feedback": None,
                    }
                ]
            for answer, choice in zip(question.answers, choices, strict=True):
                for field, value in _numeric(choice["text"]).items():
                    assert getattr(answer, field) == value, where
                assert answer.weight == _fraction(choice), where
                assert answer.feedback == _text(choice["feedback"]), where
        elif isinstance(question, Matching):
            assert [(p.prompt, p.answer) for p in question.pairs] == [
                (_text(p["subquestion"]), p["subanswer"])
                for p in reference["matchPairs"]
            ], where
        else:
            pytest.fail(f"{where}: unexpected type {question.type}")


def test_gift_numerical_answers_cover_exact_negative_tolerance_range_and_weights() -> (
    None
):
    exam = parse_gift(
        shared_data("exams", "numerical1.gift").read_text(encoding="utf-8"),
        name="numerical1.gift",
    )

    bounds = [[(a.bounds(), a.weight) for a in q.answers] for q in exam.questions]
    assert all(q.type == "numerical" for q in exam.questions)
    assert bounds[0] == [((1822, 1822), 1.0)]
    assert bounds[1] == [((-1, -1), 1.0)]
    assert bounds[2][0][0] == pytest.approx((3.141, 3.142))
    assert bounds[3][0][0] == pytest.approx((-3.143, -3.141))
    assert bounds[4] == [((3.141, 3.142), 1.0)]
    assert bounds[5] == [((-3.142, -3.141), 1.0)]
    assert bounds[6] == [((1, 5), 1.0)]
    assert bounds[7] == [((-5, 5), 1.0)]
    assert bounds[8] == [((1822, 1822), 1.0), ((1820, 1824), 0.5)]
    grasp = exam.questions[9]
    assert grasp.title == "Combien de principes GRASP y a-t-il?"
    assert (
        grasp.stem_format == "html"
        and grasp.stem == "<p>Combien de principes GRASP y a-t-il?</p>"
    )
    assert [(a.value, a.weight) for a in grasp.answers] == [
        (5, 0.0),
        (9, 1.0),
        (23, 0.0),
    ]
    # Escaped = and : inside the HTML feedback are the characters themselves.
    assert (
        'title="Gang des quatre" href="http://fr.wikipedia.org/wiki/Design_Patterns"'
        in grasp.answers[2].feedback
    )


def test_gift_refuses_a_weight_moodle_does_not_allow_naming_the_question() -> None:
    text = "::Capitals::Pick one {~%33%Paris ~Rome =Berlin}\n"

    with pytest.raises(ExamInputError) as raised:
        parse_gift(text, name="quiz.gift")

    message = str(raised.value)
    assert "quiz.gift" in message and "'Capitals'" in message and "33%" in message
    assert raised.value.question is not None and "Capitals" in raised.value.question


def test_gift_accepts_moodles_fractional_weights_and_negative_ones() -> None:
    exam = parse_gift("Pick {~%33.33333%a ~%33.33333%b ~%33.33333%c ~%-100%d}")

    question = exam.questions[0]
    assert question.type == "multiple_response"
    assert [c.weight for c in question.choices] == [
        1 / 3,
        1 / 3,
        1 / 3,
        -1.0,
    ]


def test_gift_escapes_comments_categories_and_formats() -> None:
    text = (
        "// a comment line\n"
        "$CATEGORY: course/unit 1\n"
        "\n"
        "::Escapes\\: all::[markdown]1 \\= 1\\, \\{curly\\} and a \\# sign\\nnew line {\n"
        "  =yes \\~ really#right\\: indeed\n"
        "  // a comment inside the answers\n"
        "  ~no\n"
        "}\n"
        "\n"
        "Essay question {}\n"
        "\n"
        "A description without answers.\n"
    )

    exam = parse_gift(text)

    first, essay = exam.questions
    assert first.title == "Escapes: all"
    assert first.category == essay.category == "course/unit 1"
    assert first.stem_format == "markdown"
    assert first.stem == "1 = 1\\, {curly} and a # sign\nnew line"
    assert [(c.text, c.feedback) for c in first.choices] == [
        ("yes ~ really", "right: indeed"),
        ("no", None),
    ]
    assert essay.type == "essay" and essay.stem == "Essay question"
    assert exam.warnings and "description" in exam.warnings[0]


def test_gift_true_false_feedback_is_wrong_then_right() -> None:
    exam = parse_gift(
        "The sky is green.{FALSE#No, it is blue.#Right, it is not green.}"
    )

    question = exam.questions[0]
    assert question.correct is False
    assert question.feedback_true == "No, it is blue."
    assert question.feedback_false == "Right, it is not green."


def test_gift_matching_with_an_extra_wrong_answer_and_general_feedback() -> None:
    exam = parse_gift(
        "Match. {=a -> 1 =b -> 2 = -> 3 ####Pairs are letters to digits.}"
    )

    question = exam.questions[0]
    assert [(p.prompt, p.answer) for p in question.pairs] == [("a", "1"), ("b", "2")]
    assert question.distractors == ["3"]
    assert question.general_feedback == "Pairs are letters to digits."


def test_gift_missing_word_leaves_a_blank() -> None:
    exam = parse_gift("The capital of France is {=Paris ~Lyon} today.")

    assert exam.questions[0].stem == f"The capital of France is {BLANK} today."
    assert exam.questions[0].has_blank


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ("Q {~a ~b", ["line 1", "the end of the question", "'}'"]),
        ("\n\nQ {#abc}", ["line 3", "'abc'", "a number"]),
        ("Q {~only}", ["at least two answers"]),
        ("Q {=a->1 =b}", ["without '->'"]),
        ("Q {#5..1}", ["minimum is above its maximum"]),
        ("// nothing but comments\n", ["no GIFT questions"]),
    ],
)
def test_gift_errors_name_the_line_and_the_problem(
    text: str, fragments: list[str]
) -> None:
    with pytest.raises(ExamInputError) as raised:
        parse_gift(text, name="bad.gift")

    assert "bad.gift" in str(raised.value)
    for fragment in fragments:
        assert fragment in str(raised.value)


@pytest.mark.parametrize(
    ("answers", "field"),
    [
        ("{#1e999}", "value 1e999"),
        ("{#-1e999}", "value -1e999"),
        ("{#5:1e999}", "tolerance 1e999"),
        ("{#1..1e999}", "maximum 1e999"),
        ("{#-1e999..1}", "minimum -1e999"),
        ("{#=1822:0 =%50%1e999:2}", "value 1e999"),
    ],
)
def test_gift_refuses_a_number_beyond_floats_naming_the_question_and_field(
    answers: str, field: str
) -> None:
    with pytest.raises(ExamInputError) as raised:
        parse_gift(f"::Q1:: What? {answers}", name="huge.gift")

    message = str(raised.value)
    assert message.startswith("huge.gift: numerical question 'Q1' (line 1)")
    assert f"{field}, which is not a finite number" in message
    assert raised.value.question == "'Q1' (line 1)"


def test_gift_two_questions_without_a_blank_line_say_so() -> None:
    text = "::Q1:: What is 2+2? {=4 ~3 ~5}\n::Q2:: Capital of France? {=Paris ~Rome}\n"

    with pytest.raises(ExamInputError) as raised:
        parse_gift(text, name="quiz.gift")

    message = str(raised.value)
    assert "line 2, column 27" in message
    assert "separate questions with a blank line" in message


def test_gift_a_stray_brace_in_one_line_question_gets_no_blank_line_hint() -> None:
    with pytest.raises(ExamInputError) as raised:
        parse_gift("::Q1:: What is 2+2? {=4 ~3} {\n", name="quiz.gift")

    assert "blank line" not in str(raised.value)
