"""Choosing the importer for an exam file: by the format asked for, or by its content."""

from __future__ import annotations

import re
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

from pydantic import ValidationError

from examq.exam.errors import ExamInputError, describe_validation_error
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
    not UTF-8, or any problem its importer finds, including a malformed input no
    importer check foresaw (see ``_refused_as_input``).
    """
    if exam_format is not None and exam_format not in FORMATS:
        raise ExamInputError(
            f"unknown exam format {exam_format!r}; use one of {', '.join(FORMATS)}"
        )
    chosen = exam_format or detect_format(data, name)

    with _refused_as_input(name):
        if chosen == "moodle_xml":
            return parse_moodle_xml(data, name=name, title=title)
        if chosen == "qti":
            return parse_qti(data, name=name, title=title)
        text = decode_text(data, name)
        if chosen == "gift":
            return parse_gift(text, name=name, title=title)
        return parse_key_csv(text, name=name, title=title)


@contextmanager
def _refused_as_input(name: str) -> Iterator[None]:
    """Turn the exceptions that only a file's content can cause into ExamInputError.

    The importers refuse what they know to be wrong with a message of their own; this
    is the backstop for what they did not foresee. Without it such a file would fail
    its job with a raw traceback and be retried as if the fault were passing, though
    every attempt fails the same way. Only exception kinds that data drives are
    caught: a value the exam model refuses, a damaged zip archive or deflate stream,
    text that cannot be decoded or an unknown encoding. KeyError, IndexError,
    TypeError and the like are programming errors and propagate.
    """
    try:
        yield
    except ValidationError as exc:
        raise ExamInputError(
            f"{name}: the exam cannot be built from it: "
            + describe_validation_error(exc)
        ) from exc
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error) as exc:
        raise ExamInputError(f"{name}: the zip archive is damaged: {exc}") from exc
    except UnicodeError as exc:
        raise ExamInputError(f"{name}: its text cannot be decoded: {exc}") from exc
    except LookupError as exc:
        if isinstance(exc, KeyError | IndexError):
            raise
        raise ExamInputError(
            f"{name} names an encoding examq does not know: {exc}"
        ) from exc


def decode_text(data: bytes, name: str) -> str:
    """UTF-8 text without a byte order mark; raise ExamInputError naming the file otherwise."""
    return decode_upload(data, name)
