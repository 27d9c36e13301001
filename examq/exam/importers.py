"""Choosing the importer for an exam file: by the format asked for, or by its content."""

from __future__ import annotations

import re
from typing import Literal

from examq.exam.errors import ExamInputError
from examq.exam.gift import parse_gift
from examq.exam.keys import parse_key_csv
from examq.exam.model import Exam
from examq.exam.moodle_xml import parse_moodle_xml
from examq.exam.qti import parse_qti
from examq.exam.text import decode_upload

ExamFormat = Literal["gift", "moodle_xml", "qti", "key_csv"]
FORMATS: tuple[ExamFormat, ...] = ("gift", "moodle_xml", "qti", "key_csv")

_XML_ROOT = re.compile(
    rb"<\s*(?:[A-Za-z_][\w.-]*:)?(quiz|assessmentItem|questestinterop|assessmentTest)\b"
)


def detect_format(data: bytes, name: str) -> ExamFormat:
    """Tell an exam file's format from its content, then its name; raise if neither says."""
    head = data[:4096].lstrip(b"\xef\xbb\xbf").lstrip()
    if data[:4] == b"PK\x03\x04":
        return "qti"
    if head.startswith(b"<"):
        match = _XML_ROOT.search(data[:65536])
        if match and match.group(1) == b"quiz":
            return "moodle_xml"
        if match:
            return "qti"
        raise ExamInputError(
            f"{name}: an XML file that is neither Moodle XML (<quiz>) nor QTI (<assessmentItem>)"
        )
    lowered = name.lower()
    if lowered.endswith((".gift", ".txt")):
        return "gift"
    if lowered.endswith(".csv"):
        return "key_csv"
    first_line = head.split(b"\n", 1)[0].decode("utf-8", "replace").casefold()
    if "item" in first_line and "key" in first_line and "," in first_line:
        return "key_csv"
    if b"{" in data and b"}" in data:
        return "gift"
    raise ExamInputError(
        f"{name}: cannot tell the exam format; give format as gift, moodle_xml, qti or key_csv"
    )


def import_exam(
    data: bytes, name: str, *, exam_format: str | None = None, title: str | None = None
) -> Exam:
    """Parse an exam file in the given format (detected when None) into the exam model.

    Raises ExamInputError naming the file for an unknown format, a text file that is
    not UTF-8, or any problem its importer finds.
    """
    if exam_format is not None and exam_format not in FORMATS:
        raise ExamInputError(
            f"unknown exam format {exam_format!r}; use one of {', '.join(FORMATS)}"
        )
    chosen = exam_format or detect_format(data, name)

    if chosen == "moodle_xml":
        return parse_moodle_xml(data, name=name, title=title)
    if chosen == "qti":
        return parse_qti(data, name=name, title=title)
    text = decode_text(data, name)
    if chosen == "gift":
        return parse_gift(text, name=name, title=title)
    return parse_key_csv(text, name=name, title=title)


def decode_text(data: bytes, name: str) -> str:
    """UTF-8 text without a byte order mark; raise ExamInputError naming the file otherwise."""
    return decode_upload(data, name)
