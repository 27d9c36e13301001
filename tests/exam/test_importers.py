"""The import entry point: a malformed file of any format is refused as input, never
left to fail its job as if the fault were passing; a programming error surfaces."""

from __future__ import annotations

import io
import zipfile
import zlib

import pytest
from pydantic import ValidationError

from examq.errors import PermanentError
from examq.exam import importers
from examq.exam.errors import ExamInputError
from examq.exam.importers import import_exam
from examq.exam.model import Choice

QTI_CHOICE_WITHOUT_IDENTIFIER = b"""<assessmentItem identifier="capital" title="Capital">
  <responseDeclaration identifier="RESPONSE" cardinality="single" baseType="identifier">
    <correctResponse><value>B</value></correctResponse></responseDeclaration>
  <itemBody><choiceInteraction responseIdentifier="RESPONSE" maxChoices="1">
    <simpleChoice identifier="">Lyon</simpleChoice><simpleChoice identifier="B">Paris</simpleChoice>
  </choiceInteraction></itemBody>
  <responseProcessing template="match_correct"/>
</assessmentItem>"""


def _zip_with_bad_crc() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(
            "imsmanifest.xml",
            '<manifest><resources><resource type="imsqti_item_xmlv2p1" href="item.xml"/>'
            "</resources></manifest>",
        )
        archive.writestr("item.xml", QTI_CHOICE_WITHOUT_IDENTIFIER)
    data = bytearray(buffer.getvalue())
    data[data.find(b"Paris")] ^= 0x01
    return bytes(data)


@pytest.mark.parametrize(
    ("data", "name", "fragment"),
    [
        (b"::Q1:: What? {#1e999}", "q.gift", "numerical question 'Q1' (line 1)"),
        (
            b'<quiz><question type="numerical"><name><text>N</text></name>'
            b'<answer fraction="100"><text>1e999</text></answer></question></quiz>',
            "q.xml",
            "numerical question 'N' (question 1) has the answer '1e999'",
        ),
        (
            b'<?xml version="1.0" encoding="UTF-XX"?><quiz/>',
            "q.xml",
            "declares an encoding examq cannot read",
        ),
        (QTI_CHOICE_WITHOUT_IDENTIFIER, "q.xml", "simpleChoice without an identifier"),
        (_zip_with_bad_crc(), "q.zip", "the zip archive is damaged"),
    ],
    ids=[
        "gift-overflow",
        "moodle-overflow",
        "unknown-encoding",
        "qti-identifier",
        "zip-crc",
    ],
)
def test_import_exam_refuses_the_reported_malformed_files_as_input(
    data: bytes, name: str, fragment: str
) -> None:
    with pytest.raises(ExamInputError) as raised:
        import_exam(data, name)

    assert isinstance(raised.value, PermanentError)
    assert str(raised.value).startswith(name) and fragment in str(raised.value)


def _validation_error() -> ValidationError:
    try:
        Choice(id="", text="Lyon")
    except ValidationError as exc:
        return exc
    raise AssertionError("an empty choice id was accepted")


@pytest.mark.parametrize(
    ("error", "fragment"),
    [
        (
            _validation_error(),
            "the exam cannot be built from it: Choice.id: String should have at least 1 character",
        ),
        (zipfile.BadZipFile("Bad magic"), "the zip archive is damaged: Bad magic"),
        (zlib.error("Error -3 while decompressing"), "the zip archive is damaged"),
        (LookupError("unknown encoding: UTF-XX"), "names an encoding examq does not"),
        (
            UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"),
            "its text cannot be decoded",
        ),
    ],
    ids=["validation", "bad-zip", "zlib", "lookup", "unicode"],
)
def test_import_exam_turns_unforeseen_data_errors_into_input_errors(
    monkeypatch: pytest.MonkeyPatch, error: Exception, fragment: str
) -> None:
    def parse(*args: object, **kwargs: object) -> None:
        raise error

    monkeypatch.setattr(importers, "parse_gift", parse)

    with pytest.raises(ExamInputError) as raised:
        import_exam(b"Q {=a}", "q.gift")

    assert str(raised.value).startswith("q.gift")
    assert fragment in str(raised.value)
    assert raised.value.__cause__ is error


@pytest.mark.parametrize(
    "error",
    [TypeError("call"), AttributeError("field"), KeyError("id"), IndexError("index")],
)
def test_import_exam_lets_programming_errors_propagate(
    monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    def parse(*args: object, **kwargs: object) -> None:
        raise error

    monkeypatch.setattr(importers, "parse_gift", parse)

    with pytest.raises(type(error)) as raised:
        import_exam(b"Q {=a}", "q.gift")

    assert raised.value is error
