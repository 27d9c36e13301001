"""The QTI 2.1 importer: the IMS multiple-response example with its mapping, templates, packages."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable

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


CAPITAL_DECLARATION = (
    '<responseDeclaration identifier="RESPONSE" cardinality="single" baseType="identifier">'
    "<correctResponse><value>B</value></correctResponse></responseDeclaration>"
)


LYON = '<simpleChoice identifier="A">Lyon</simpleChoice>'


def _capital(first_choice: str = LYON) -> bytes:
    return _item(
        "capital",
        CAPITAL_DECLARATION,
        '<p>Capital of France?</p><choiceInteraction responseIdentifier="RESPONSE" maxChoices="1">'
        f'{first_choice}<simpleChoice identifier="B">Paris</simpleChoice>'
        "</choiceInteraction>",
    )


@pytest.mark.parametrize(
    ("item", "element"),
    [
        (_capital('<simpleChoice identifier="">Lyon</simpleChoice>'), "simpleChoice"),
        (_capital("<simpleChoice>Lyon</simpleChoice>"), "simpleChoice"),
        (_capital('<simpleChoice identifier="  ">Lyon</simpleChoice>'), "simpleChoice"),
        (
            _item(
                "capital",
                CAPITAL_DECLARATION,
                '<p>Capital: <inlineChoiceInteraction responseIdentifier="RESPONSE">'
                '<inlineChoice identifier="">Lyon</inlineChoice>'
                '<inlineChoice identifier="B">Paris</inlineChoice></inlineChoiceInteraction></p>',
            ),
            "inlineChoice",
        ),
        (
            _item(
                "capital",
                '<responseDeclaration identifier="RESPONSE" cardinality="multiple" baseType="directedPair">'
                "<correctResponse><value>C P</value></correctResponse></responseDeclaration>",
                '<matchInteraction responseIdentifier="RESPONSE">'
                '<simpleMatchSet><simpleAssociableChoice identifier="C">France</simpleAssociableChoice></simpleMatchSet>'
                '<simpleMatchSet><simpleAssociableChoice identifier="P">Paris</simpleAssociableChoice>'
                '<simpleAssociableChoice identifier="">Lyon</simpleAssociableChoice></simpleMatchSet>'
                "</matchInteraction>",
            ),
            "simpleAssociableChoice",
        ),
    ],
    ids=["empty", "missing", "blank", "inline", "match"],
)
def test_qti_refuses_a_choice_without_an_identifier_naming_the_item(
    item: bytes, element: str
) -> None:
    with pytest.raises(ExamInputError) as raised:
        parse_qti(item, name="capital.xml")

    assert str(raised.value) == (
        f"capital.xml: item 'capital title' has a {element} without an identifier"
    )
    assert raised.value.question == "'capital title'"


@pytest.mark.parametrize(
    ("mapping", "fragment"),
    [
        (
            '<mapping><mapEntry mapKey="B" mappedValue="1e999"/></mapping>',
            "mappedValue='1e999'",
        ),
        (
            '<mapping><mapEntry mapKey="B" mappedValue="NaN"/></mapping>',
            "mappedValue='NaN'",
        ),
        (
            '<mapping defaultValue="-inf"><mapEntry mapKey="B" mappedValue="1"/></mapping>',
            "defaultValue='-inf'",
        ),
        (
            '<mapping upperBound="inf"><mapEntry mapKey="B" mappedValue="1"/></mapping>',
            "upperBound='inf'",
        ),
    ],
)
def test_qti_refuses_a_mapped_number_that_is_not_finite(
    mapping: str, fragment: str
) -> None:
    item = _item(
        "capital",
        '<responseDeclaration identifier="RESPONSE" cardinality="single" baseType="identifier">'
        f"{mapping}</responseDeclaration>",
        '<choiceInteraction responseIdentifier="RESPONSE" maxChoices="1">'
        '<simpleChoice identifier="A">Lyon</simpleChoice><simpleChoice identifier="B">Paris</simpleChoice>'
        "</choiceInteraction>",
        template="map_response",
    )

    with pytest.raises(ExamInputError) as raised:
        parse_qti(item, name="capital.xml")

    assert str(raised.value) == (
        f"capital.xml: item 'capital title' has {fragment}, not a finite number"
    )


def test_qti_refuses_a_text_mapping_without_entries() -> None:
    item = _item(
        "word",
        '<responseDeclaration identifier="RESPONSE" cardinality="single" baseType="string">'
        '<mapping defaultValue="1"/></responseDeclaration>',
        '<p>Type it: <textEntryInteraction responseIdentifier="RESPONSE"/></p>',
        template="map_response",
    )

    with pytest.raises(ExamInputError) as raised:
        parse_qti(item, name="word.xml")

    assert str(raised.value) == (
        "word.xml: item 'word title' uses map_response but its mapping has no mapEntry"
    )


def test_qti_refuses_two_items_whose_identifiers_differ_in_case_and_spaces() -> None:
    second = _capital().replace(b'identifier="capital"', b'identifier=" CAPITAL "')
    package = _package({"a.xml": _capital(), "b.xml": second})

    with pytest.raises(ExamInputError) as raised:
        parse_qti(package, name="pack.zip")

    assert str(raised.value) == "pack.zip: two items have the identifier 'CAPITAL'"


def _package(
    items: dict[str, bytes], compression: int = zipfile.ZIP_STORED
) -> bytes:
    resources = "".join(
        f'<resource type="imsqti_item_xmlv2p1" href="{href}"/>' for href in items
    )
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        manifest = f"<manifest><resources>{resources}</resources></manifest>"
        archive.writestr("imsmanifest.xml", manifest)
        for href, item in items.items():
            archive.writestr(href, item)
    return buffer.getvalue()


def _patched(data: bytes, offset_in_header: dict[bytes, int], value: bytes) -> bytes:
    """The archive with ``value`` written at an offset of each local and central
    header."""
    patched = bytearray(data)
    for signature, offset in offset_in_header.items():
        start = patched.find(signature)
        while start >= 0:
            patched[start + offset : start + offset + len(value)] = value
            start = patched.find(signature, start + 4)
    return bytes(patched)


def _bad_crc() -> bytes:
    data = bytearray(_package({"item.xml": _capital()}))
    data[data.find(b"Capital of France")] ^= 0x01
    return bytes(data)


def _corrupt_deflate() -> bytes:
    data = _package({"item.xml": _capital() * 20}, zipfile.ZIP_DEFLATED)
    start = data.find(b"item.xml") + len(b"item.xml") + 40
    return data[:start] + b"\xff" * 40 + data[start + 40 :]


LOCAL, CENTRAL = b"PK\x03\x04", b"PK\x01\x02"


@pytest.mark.parametrize(
    ("package", "fragment"),
    [
        (
            _bad_crc,
            "the zip archive is damaged: item.xml cannot be unpacked (Bad CRC-32",
        ),
        (
            _corrupt_deflate,
            "the zip archive is damaged: item.xml cannot be unpacked (Error -3",
        ),
        (
            lambda: _package({"item.xml": _capital()})[:-30],
            "the zip archive is damaged",
        ),
        (
            lambda: _patched(
                _package({"item.xml": _capital()}, zipfile.ZIP_DEFLATED),
                {LOCAL: 8, CENTRAL: 10},
                (99).to_bytes(2, "little"),
            ),
            "imsmanifest.xml is packed with zip compression method 99, which examq cannot unpack",
        ),
        (
            lambda: _patched(
                _package({"item.xml": _capital()}), {LOCAL: 6, CENTRAL: 8}, b"\x01"
            ),
            "imsmanifest.xml is encrypted in the zip archive",
        ),
    ],
    ids=["bad-crc", "corrupt-deflate", "truncated", "method-99", "encrypted"],
)
def test_qti_refuses_a_damaged_or_unreadable_zip_saying_what_is_wrong(
    package: Callable[[], bytes], fragment: str
) -> None:
    with pytest.raises(ExamInputError) as raised:
        parse_qti(package(), name="pack.zip")

    assert str(raised.value).startswith(f"pack.zip: {fragment}")


def test_qti_reads_a_deeply_nested_item_body_without_running_out_of_stack() -> None:
    depth = 5000
    nested = "<div>" * depth + "deep" + "</div>" * depth
    item = _item(
        "capital",
        CAPITAL_DECLARATION,
        f"<p>Capital <b>of</b> France?</p>{nested}"
        '<choiceInteraction responseIdentifier="RESPONSE" maxChoices="1">'
        f"<prompt>Pick one.</prompt>{LYON}"
        '<simpleChoice identifier="B">Paris</simpleChoice></choiceInteraction> Go.',
    )

    question = parse_qti(item).questions[0]

    assert question.stem == "Capital of France? deep Pick one. Go."
