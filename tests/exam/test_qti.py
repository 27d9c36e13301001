"""The QTI 2.1 importer: the IMS multiple-response example with its mapping, templates, packages."""

from __future__ import annotations

import io
import zipfile

import pytest

from examq.exam.errors import ExamInputError
from examq.exam.qti import parse_qti
from examq.exam.scoring import score_responses
from tests.conftest import shared_data

NS = 'xmlns="http://www.imsglobal.org/xsd/imsqti_v2p1"'


def _item(
    identifier: str, declaration: str, body: str, template: str = "match_correct"
) -> bytes:
    return f"""<?xml version="1.0"?>
<assessmentItem {NS} identifier="{identifier}" title="{identifier} title" adaptive="false" timeDependent="false">
  {declaration}
  <outcomeDeclaration identifier="SCORE" cardinality="single" baseType="float"/>
  <itemBody>{body}</itemBody>
  <responseProcessing template="http://www.imsglobal.org/question/qti_v2p1/rptemplates/{template}"/>
</assessmentItem>""".encode()


def _scores(exam, cells: list[str]) -> list[float]:
    question = exam.questions[0]
    rows = "\n".join(f"s{i},{cell}" for i, cell in enumerate(cells))
    scored = score_responses(exam, f"student,{question.id}\n{rows}\n")
    return [float(p) for p in scored.points[:, 0]]


def test_qti_multiple_response_scores_as_its_mapping_says() -> None:
    exam = parse_qti(
        shared_data("exams", "choice_multiple.xml").read_bytes(),
        name="choice_multiple.xml",
    )

    question = exam.questions[0]
    assert question.id == "choiceMultiple" and question.title == "Composition of Water"
    assert question.type == "multiple_response" and question.points == 2.0
    assert question.stem == "Which of the following elements are used to form water?"
    assert [c.id for c in question.choices] == ["H", "He", "C", "O", "N", "Cl"]
    # H and O map to 1, Cl to -1, the unmapped choices to the default -2; the sum is
    # clamped to [0, 2]; a blank response scores 0.
    assert _scores(
        exam, ['"H,O"', "H;O;Cl", "H", "H|He", "Hydrogen;Oxygen", "", "O;H;H"]
    ) == [2, 1, 1, 0, 2, 0, 2]


def test_qti_match_correct_single_choice_and_text_entry() -> None:
    choice = _item(
        "capital",
        '<responseDeclaration identifier="RESPONSE" cardinality="single" baseType="identifier">'
        "<correctResponse><value>B</value></correctResponse></responseDeclaration>",
        '<p>Capital of France?</p><choiceInteraction responseIdentifier="RESPONSE" maxChoices="1">'
        '<simpleChoice identifier="A">Lyon</simpleChoice><simpleChoice identifier="B">Paris</simpleChoice>'
        "</choiceInteraction>",
    )
    text = _item(
        "word",
        '<responseDeclaration identifier="RESPONSE" cardinality="single" baseType="string">'
        '<mapping defaultValue="0"><mapEntry mapKey="Paris" mappedValue="2"/>'
        '<mapEntry mapKey="paris" mappedValue="1" caseSensitive="false"/></mapping></responseDeclaration>',
        '<p>Type it: <textEntryInteraction responseIdentifier="RESPONSE"/></p>',
        template="map_response",
    )

    capital = parse_qti(choice).questions[0]
    word_exam = parse_qti(text)

    assert capital.type == "single_choice" and capital.stem == "Capital of France?"
    assert [(c.id, c.weight) for c in capital.choices] == [("A", 0.0), ("B", 1.0)]
    assert (
        word_exam.questions[0].type == "short_answer"
        and word_exam.questions[0].points == 2.0
    )
    assert _scores(word_exam, ["Paris", "PARIS", "Lyon"]) == [2, 1, 0]


def test_qti_content_package_reads_the_items_its_manifest_lists() -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(
            "imsmanifest.xml",
            '<manifest><resources><resource type="imsqti_item_xmlv2p1" href="items/q1.xml"/>'
            '<resource type="webcontent" href="style.css"/></resources></manifest>',
        )
        archive.writestr(
            "items/q1.xml", shared_data("exams", "choice_multiple.xml").read_bytes()
        )
        archive.writestr("style.css", "body {}")

    exam = parse_qti(buffer.getvalue(), name="package.zip")

    assert [q.id for q in exam.questions] == ["choiceMultiple"]


def test_qti_refuses_an_interaction_it_cannot_score() -> None:
    order = _item(
        "order",
        '<responseDeclaration identifier="RESPONSE" cardinality="ordered" baseType="identifier"/>',
        '<orderInteraction responseIdentifier="RESPONSE"><simpleChoice identifier="A">a</simpleChoice></orderInteraction>',
    )

    with pytest.raises(ExamInputError, match="'order title' uses orderInteraction"):
        parse_qti(order, name="order.xml")
