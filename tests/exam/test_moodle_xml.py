"""The Moodle XML importer: Moodle's fixture with an invalid grade, each type, and hostile XML."""

from __future__ import annotations

import pytest

from examq.exam.errors import ExamInputError
from examq.exam.moodle_xml import parse_moodle_xml
from tests.conftest import shared_data

QUIZ = """<?xml version="1.0" encoding="UTF-8"?>
<quiz>
  <question type="category"><category><text>$course$/top/Unit 1</text></category></question>
  <question type="multichoice">
    <name><text>Primes</text></name>
    <questiontext format="html"><text><![CDATA[Which are <b>prime</b>? x < 10 & x > 1]]></text></questiontext>
    <defaultgrade>2.0000000</defaultgrade>
    <single>false</single>
    <answer fraction="50"><text>2</text><feedback><text>yes</text></feedback></answer>
    <answer fraction="50"><text>3</text></answer>
    <answer fraction="-100"><text>4</text></answer>
  </question>
  <question type="truefalse">
    <name><text>Sky</text></name>
    <questiontext format="moodle_auto_format"><text>The sky is green.</text></questiontext>
    <answer fraction="0"><text>true</text><feedback><text>No.</text></feedback></answer>
    <answer fraction="100"><text>false</text><feedback><text>Right.</text></feedback></answer>
  </question>
  <question type="shortanswer">
    <name><text>Capital</text></name>
    <questiontext format="html"><text>Capital of France?</text></questiontext>
    <usecase>1</usecase>
    <answer fraction="100"><text>Paris</text></answer>
    <answer fraction="33.33333"><text>Par*</text></answer>
  </question>
  <question type="numerical">
    <name><text>Born</text></name>
    <questiontext format="html"><text>Grant was born in?</text></questiontext>
    <answer fraction="100"><text>1822</text><tolerance>0</tolerance></answer>
    <answer fraction="50"><text>1822</text><tolerance>-2</tolerance></answer>
    <answer fraction="0"><text>*</text><feedback><text>Not close.</text></feedback></answer>
  </question>
  <question type="matching">
    <name><text>Capitals</text></name>
    <questiontext format="html"><text>Match.</text></questiontext>
    <subquestion format="html"><text>Canada</text><answer><text>Ottawa</text></answer></subquestion>
    <subquestion format="html"><text>Italy</text><answer><text>Rome</text></answer></subquestion>
    <subquestion format="html"><text></text><answer><text>Paris</text></answer></subquestion>
  </question>
  <question type="description">
    <name><text>Intro</text></name>
    <questiontext format="html"><text>Read this first.</text></questiontext>
  </question>
  <question type="essay">
    <name><text>Explain</text></name>
    <questiontext format="html"><text>Explain why.</text></questiontext>
  </question>
</quiz>
"""


def test_moodle_xml_refuses_the_invalid_grade_naming_the_question() -> None:
    data = shared_data("exams", "error_invalid_grades.xml").read_bytes()

    with pytest.raises(ExamInputError) as raised:
        parse_moodle_xml(data, name="error_invalid_grades.xml")

    message = str(raised.value)
    # The question's name as Moodle shows it: CDATA read, tags dropped, & < > kept.
    assert "Question with invalid grades : x > 1 & x < 2" in message
    assert "33%" in message and "error_invalid_grades.xml" in message


def test_moodle_xml_reads_the_fixture_once_its_grade_is_valid() -> None:
    data = (
        shared_data("exams", "error_invalid_grades.xml")
        .read_bytes()
        .replace(b'fraction="33"', b'fraction="-100"')
    )

    exam = parse_moodle_xml(data)

    question = exam.questions[0]
    assert question.type == "multiple_response"
    assert (
        question.stem == "Select all prime numbers :<br>"
        and question.stem_format == "html"
    )
    assert [c.weight for c in question.choices] == [
        -0.5,
        -1.0,
        1 / 3,
        -0.5,
        1 / 3,
    ]
    assert (
        question.choices[2].text == '<p dir="ltr" style="text-align: left;">3<br></p>'
    )
    assert (question.min_fraction, question.max_fraction) == (0.0, 1.0)


def test_moodle_xml_reads_each_question_type() -> None:
    exam = parse_moodle_xml(QUIZ.encode())

    primes, sky, capital, born, capitals, explain = exam.questions
    assert all(q.category == "$course$/top/Unit 1" for q in exam.questions)
    assert primes.type == "multiple_response" and primes.points == 2.0
    assert primes.stem == "Which are <b>prime</b>? x < 10 & x > 1"
    first = primes.choices[0]
    assert (first.id, first.text, first.weight, first.feedback) == (
        "A",
        "2",
        0.5,
        "yes",
    )
    assert sky.type == "true_false" and sky.correct is False
    assert (sky.feedback_true, sky.feedback_false) == ("No.", "Right.")
    assert capital.type == "short_answer" and all(
        a.case_sensitive and a.wildcards for a in capital.answers
    )
    assert [a.weight for a in capital.answers] == [1.0, 1 / 3]
    assert [(a.bounds(), a.weight) for a in born.answers[:2]] == [
        ((1822, 1822), 1.0),
        ((1820, 1824), 0.5),
    ]
    assert born.answers[2].is_any and born.answers[2].feedback == "Not close."
    assert [(p.prompt, p.answer) for p in capitals.pairs] == [
        ("Canada", "Ottawa"),
        ("Italy", "Rome"),
    ]
    assert capitals.distractors == ["Paris"]
    assert explain.type == "essay"
    assert any("description" in w for w in exam.warnings)


def test_moodle_xml_refuses_a_type_it_cannot_grade_by_name() -> None:
    quiz = b'<quiz><question type="ddwtos"><name><text>Drag me</text></name></question></quiz>'

    with pytest.raises(ExamInputError, match="'Drag me'.*'ddwtos'"):
        parse_moodle_xml(quiz, name="dd.xml")


@pytest.mark.parametrize(
    "document",
    [
        b'<?xml version="1.0"?><!DOCTYPE quiz [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;">]><quiz>&b;</quiz>',
        b'<?xml version="1.0"?><!DOCTYPE quiz [<!ENTITY x SYSTEM "file:///etc/passwd">]><quiz>&x;</quiz>',
    ],
    ids=["entity-expansion", "external-entity"],
)
def test_moodle_xml_refuses_dtds_and_entities(document: bytes) -> None:
    with pytest.raises(ExamInputError, match="refused"):
        parse_moodle_xml(document, name="evil.xml")


def test_moodle_xml_names_malformed_xml() -> None:
    with pytest.raises(ExamInputError, match="broken.xml is not well-formed XML"):
        parse_moodle_xml(b"<quiz><question>", name="broken.xml")


def _numerical(answer: str, grade: str = "1") -> bytes:
    return f"""<quiz><question type="numerical">
  <name><text>Born</text></name>
  <questiontext><text>Grant was born in?</text></questiontext>
  <defaultgrade>{grade}</defaultgrade>
  {answer}
</question></quiz>""".encode()


@pytest.mark.parametrize(
    ("document", "fragment"),
    [
        (
            _numerical('<answer fraction="100"><text>1e999</text></answer>'),
            "the answer '1e999', not a finite number",
        ),
        (
            _numerical('<answer fraction="100"><text>nan</text></answer>'),
            "the answer 'nan', not a finite number",
        ),
        (
            _numerical(
                '<answer fraction="100"><text>1822</text><tolerance>nan</tolerance></answer>'
            ),
            "<tolerance> 'nan', not a finite number",
        ),
        (
            _numerical(
                '<answer fraction="100"><text>1822</text><tolerance>-inf</tolerance></answer>'
            ),
            "<tolerance> '-inf', not a finite number",
        ),
        (
            _numerical('<answer fraction="100"><text>1822</text></answer>', "1e999"),
            "<defaultgrade> '1e999', not a finite number",
        ),
        (
            _numerical('<answer fraction="inf"><text>1822</text></answer>'),
            "answer fraction 'inf', not a finite number",
        ),
    ],
    ids=[
        "value-overflow",
        "value-nan",
        "tolerance-nan",
        "tolerance-inf",
        "grade",
        "fraction",
    ],
)
def test_moodle_xml_refuses_a_number_that_is_not_finite_naming_the_question(
    document: bytes, fragment: str
) -> None:
    with pytest.raises(ExamInputError) as raised:
        parse_moodle_xml(document, name="born.xml")

    message = str(raised.value)
    assert message.startswith("born.xml: ") and "'Born' (question 1)" in message
    assert fragment in message
    assert raised.value.question == "'Born' (question 1)"


@pytest.mark.parametrize("encoding", ["UTF-XX", "shift_jis", "rot13"])
def test_moodle_xml_refuses_an_encoding_it_cannot_read_naming_it(encoding: str) -> None:
    document = f'<?xml version="1.0" encoding="{encoding}"?><quiz/>'.encode()

    with pytest.raises(ExamInputError, match="odd.xml declares an encoding") as raised:
        parse_moodle_xml(document, name="odd.xml")

    assert "save it as UTF-8" in str(raised.value)


def _essays(*idnumbers: str | None) -> bytes:
    questions = "".join(
        f'<question type="essay"><name><text>E{position}</text></name>'
        f"<questiontext><text>Explain {position}.</text></questiontext>"
        + (f"<idnumber>{idnumber}</idnumber>" if idnumber is not None else "")
        + "</question>"
        for position, idnumber in enumerate(idnumbers, start=1)
    )
    return f"<quiz>{questions}</quiz>".encode()


@pytest.mark.parametrize(
    ("idnumbers", "ids"),
    [
        ((None, "Q1"), ["Q2", "Q1"]),
        ((None, "q1"), ["Q2", "q1"]),
        ((None, None, " Q1 "), ["Q3", "Q2", "Q1"]),
        ((None, "Q1", None, "Q4"), ["Q2", "Q1", "Q3", "Q4"]),
        (("Q2", None, None), ["Q2", "Q4", "Q3"]),
        ((None, "", "x"), ["Q1", "Q2", "x"]),
    ],
)
def test_moodle_xml_made_up_ids_never_take_an_idnumber_the_file_gives(
    idnumbers: tuple[str | None, ...], ids: list[str]
) -> None:
    exam = parse_moodle_xml(_essays(*idnumbers))

    assert [q.id for q in exam.questions] == ids
    assert [q.title for q in exam.questions] == [
        f"E{n}" for n in range(1, len(ids) + 1)
    ]


@pytest.mark.parametrize("idnumbers", [("Q1", "Q1"), ("a", None, " A ")])
def test_moodle_xml_still_refuses_two_questions_with_one_idnumber(
    idnumbers: tuple[str | None, ...],
) -> None:
    duplicate = "dup.xml: two questions have the idnumber"

    with pytest.raises(ExamInputError, match=duplicate):
        parse_moodle_xml(_essays(*idnumbers), name="dup.xml")
