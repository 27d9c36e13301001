"""The ``exam.grade`` handler: score responses against a key and analyse the exam.

With an exam model (``exam_model``, or ``parent_result.exam_model`` in a chain) the
payload is graded by ``examq.exam.grading`` instead, by each question type's rules.

The plain payload carries two CSV texts, ``key_csv`` and ``responses_csv`` (strings, or
UTF-8 bytes; a leading byte order mark is dropped), each at most
``EXAMQ_MAX_INPUT_BYTES`` long in UTF-8. The key has a header with the
columns ``item`` and ``key``; the responses have a header with a student id column
(``student``, ``student_id`` or ``id``, else the first column) and one column per
item of the key. Other columns of either file are ignored. Column names, item names
included, are matched case-insensitively after stripping surrounding whitespace;
student ids are compared exactly after stripping. Blank rows are skipped, and a
stray or unterminated quote makes the file invalid.

Scoring rule: an answer scores 1 when it equals the item's key after both are
stripped of surrounding whitespace and compared case-insensitively (``b`` matches
``B``), and 0 otherwise; a blank or missing answer scores 0. Statistics that the data
leave undefined are ``null`` in the result: alpha and KR-20 with fewer than two
students or two items or when every student has the same total, the SD with one
student, an item-rest correlation when the item or the rest score does not vary.
"""

from __future__ import annotations

import csv
import io
import math
import os
import stat
from dataclasses import dataclass
from typing import Any

import numpy as np

from examq import analysis
from examq.errors import PermanentError
from examq.exam import grading
from examq.exam.scoring import answer_set
from examq.exam.storage import check_text_size
from examq.exam.text import csv_delimiter, decode_upload
from examq.handlers import JobContext

JOB_TYPE = "exam.grade"

# Looked up in this order; the first that the header has is the student id column.
STUDENT_ID_COLUMNS = ("student", "student_id", "id")

# Scoring reports progress once per chunk: about ten chunks, never smaller than
# this many students, so a big exam does not flood the queue with progress calls.
_SCORING_CHUNKS = 10
_MIN_CHUNK_STUDENTS = 100


@dataclass(frozen=True)
class _Key:
    """The answer key: item names as the key spells them, and each item's answer."""

    items: list[str]
    answers: list[str]


@dataclass(frozen=True)
class _Responses:
    """Student ids in file order and each student's raw answers, in key item order."""

    student_ids: list[str]
    answers: list[list[str]]


def grade_exam(payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """Grade the responses against the key and return totals and item statistics.

    Raises PermanentError when the payload or either CSV is malformed, with a
    message that names the file and the problem; JobCancelled from
    ``ctx.report_progress`` propagates unchanged.
    """
    if not isinstance(payload, dict):
        raise PermanentError(f"{JOB_TYPE}: the payload must be an object")
    if grading.has_exam_model(payload):
        # An exam model (inline, or from the exam.import step of a chain) is scored
        # by each question type's rules; see examq/exam/grading.py.
        return grading.grade_with_model(payload, ctx)
    key_text = _payload_text(payload, "key_csv")
    responses_text = _payload_text(payload, "responses_csv")

    ctx.report_progress(2, "parsing the answer key")
    key = _parse_key(key_text)

    ctx.report_progress(5, "parsing the responses")
    responses = _parse_responses(responses_text, key)

    ctx.report_progress(10, f"scoring {len(responses.student_ids)} students")
    scores = _score(responses, key, ctx, first_percent=10, last_percent=70)

    ctx.report_progress(75, "computing exam statistics")
    totals = analysis.total_scores(scores)
    mean, sd = analysis.mean_and_sd(totals)
    summary = {
        "students": len(responses.student_ids),
        "items": len(key.items),
        "mean": mean,
        "sd": sd,
        "kr20": analysis.kr20(scores),
        "alpha": analysis.cronbach_alpha(scores),
        "max_score": len(key.items),
    }

    ctx.report_progress(85, "computing item statistics")
    items = [
        {
            "item": item,
            "key": answer,
            "p": p,
            "item_rest_r": item_rest_r,
            "alpha_if_deleted": alpha_without,
        }
        for item, answer, p, item_rest_r, alpha_without in zip(
            key.items,
            key.answers,
            analysis.item_difficulty(scores),
            analysis.item_rest_correlations(scores),
            analysis.alpha_if_deleted(scores),
            strict=True,
        )
    ]

    # Totals of 0/1 scores are whole numbers held exactly in floats, so int() only
    # changes their JSON spelling (12 rather than 12.0).
    students = [
        {"student": student_id, "total": int(total)}
        for student_id, total in zip(responses.student_ids, totals, strict=True)
    ]

    ctx.report_progress(100, "graded")
    return {"summary": summary, "items": items, "students": students}


def read_text_file(path: str | os.PathLike[str]) -> str:
    """Return a file's text decoded as UTF-8, without a leading byte order mark.

    Raises PermanentError naming the path if the file cannot be read or is not UTF-8.
    """
    try:
        with open(path, "rb") as handle:
            # Only regular files: a FIFO would block and a device never ends.
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise PermanentError(f"cannot read {path}: not a regular file")
            if info.st_size > MAX_FILE_BYTES:
                raise PermanentError(
                    f"cannot read {path}: {info.st_size} bytes is more than the "
                    f"{MAX_FILE_BYTES // 2**20} MiB an exam file may have"
                )
            data = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise PermanentError(f"cannot read {path}: {exc.strerror or exc}") from exc
    return _decode_utf8(data, str(path))


# Larger than any tier's payload limit: a file beyond it could never be enqueued.
MAX_FILE_BYTES = 64 * 2**20


def payload_problem(payload: dict[str, Any]) -> str | None:
    """Why ``payload`` could never be graded (a CSV field missing or not text), or None.

    Checked before a submission is enqueued, so that a job that can only fail is
    refused with the reason instead of dead-lettered; the CSVs themselves are read by
    the job.
    """
    if "exam_model" in payload:
        if not isinstance(payload["exam_model"], dict):
            return f"{JOB_TYPE}: exam_model must be an exam model object, not {type(payload['exam_model']).__name__}"
        if "key_csv" in payload:
            return f"{JOB_TYPE}: give either exam_model or key_csv, not both"
        return None
    if grading.has_exam_model(payload):
        return None
    for field in ("key_csv", "responses_csv"):
        if field not in payload:
            return f"{JOB_TYPE}: the payload has no {field} (the answer key and responses as CSV text)"
        if not isinstance(payload[field], str):
            return f"{JOB_TYPE}: {field} must be CSV text, not {type(payload[field]).__name__}"
        if not payload[field].strip():
            return f"{JOB_TYPE}: {field} is empty"
    return None


def _payload_text(payload: dict[str, Any], field: str) -> str:
    """Return a payload field as text, decoding bytes as UTF-8.

    Raises PermanentError when the text is larger than EXAMQ_MAX_INPUT_BYTES, the
    limit every exam input is held to.
    """
    if field not in payload:
        raise PermanentError(f"{JOB_TYPE}: the payload has no {field}")

    value = payload[field]
    if not isinstance(value, str | bytes | bytearray):
        raise PermanentError(
            f"{JOB_TYPE}: {field} must be CSV text, not {type(value).__name__}"
        )
    check_text_size(value, f"{JOB_TYPE}: {field}")
    if isinstance(value, bytes | bytearray):
        return _decode_utf8(bytes(value), field)
    return value.removeprefix("\ufeff")


def _decode_utf8(data: bytes, name: str) -> str:
    """Decode an uploaded file (see decode_upload); PermanentError names the file."""
    return decode_upload(data, name)


def _parse_key(text: str) -> _Key:
    """Parse the key CSV into item names and answers."""
    rows = _read_rows(text, "key_csv")
    (_, header), body = rows[0], rows[1:]

    item_column = _find_column(header, ("item",))
    key_column = _find_column(header, ("key",))
    missing = [
        f"'{name}'"
        for name, column in (("item", item_column), ("key", key_column))
        if column is None
    ]
    if missing:
        raise PermanentError(
            f"{JOB_TYPE}: key_csv has no {' and no '.join(missing)} column"
            f" (its header is: {', '.join(header)})"
        )

    items: list[str] = []
    answers: list[str] = []
    line_of_item: dict[str, int] = {}
    for line, row in body:
        item = _cell(row, item_column).strip()
        answer = _cell(row, key_column).strip()
        if not item:
            raise PermanentError(f"{JOB_TYPE}: key_csv line {line} has no item name")
        if not answer:
            raise PermanentError(f"{JOB_TYPE}: key_csv item '{item}' has no key")
        if item.casefold() in line_of_item:
            raise PermanentError(
                f"{JOB_TYPE}: key_csv lists item '{item}' twice"
                f" (lines {line_of_item[item.casefold()]} and {line})"
            )
        line_of_item[item.casefold()] = line
        items.append(item)
        answers.append(answer)

    if not items:
        raise PermanentError(f"{JOB_TYPE}: key_csv has a header but no items")
    return _Key(items=items, answers=answers)


def _parse_responses(text: str, key: _Key) -> _Responses:
    """Parse the responses CSV into student ids and answers to the key's items."""
    rows = _read_rows(text, "responses_csv")
    (_, header), body = rows[0], rows[1:]

    folded_header = [name.strip().casefold() for name in header]
    for item in key.items:
        if folded_header.count(item.casefold()) > 1:
            raise PermanentError(
                f"{JOB_TYPE}: responses_csv has column '{item}' more than once"
            )
    missing = [item for item in key.items if item.casefold() not in folded_header]
    if missing:
        raise PermanentError(
            f"{JOB_TYPE}: responses_csv has no column for item(s) of the key:"
            f" {', '.join(missing)}"
        )
    item_columns = [folded_header.index(item.casefold()) for item in key.items]

    id_column = _find_column(header, STUDENT_ID_COLUMNS)
    if id_column is None and 0 in item_columns:
        raise PermanentError(
            f"{JOB_TYPE}: responses_csv has no student id column"
            f" ({', '.join(STUDENT_ID_COLUMNS)}) and its first column,"
            f" '{header[0]}', is an item of the key"
        )
    if id_column in item_columns:
        raise PermanentError(
            f"{JOB_TYPE}: responses_csv column '{header[id_column]}' cannot be both"
            " the student id and an item of the key"
        )
    if id_column is None:
        id_column = 0

    student_ids: list[str] = []
    answers: list[list[str]] = []
    line_of_student: dict[str, int] = {}
    for line, row in body:
        student_id = _cell(row, id_column).strip()
        if not student_id:
            raise PermanentError(
                f"{JOB_TYPE}: responses_csv line {line} has no student id"
            )
        if student_id in line_of_student:
            raise PermanentError(
                f"{JOB_TYPE}: responses_csv has student id '{student_id}' twice"
                f" (lines {line_of_student[student_id]} and {line})"
            )
        line_of_student[student_id] = line
        student_ids.append(student_id)
        answers.append([_cell(row, column) for column in item_columns])

    if not student_ids:
        raise PermanentError(
            f"{JOB_TYPE}: responses_csv has a header but no student rows"
        )
    return _Responses(student_ids=student_ids, answers=answers)


def _score(
    responses: _Responses,
    key: _Key,
    ctx: JobContext,
    *,
    first_percent: float,
    last_percent: float,
) -> np.ndarray:
    """Score every answer 1 or 0 in chunks of students, reporting each chunk."""
    # Keys are never blank, so a blank answer never matches and scores 0.
    keys = np.array([_normalise_answer(answer) for answer in key.answers], dtype=str)
    student_count = len(responses.answers)
    scores = np.empty((student_count, len(keys)), dtype=float)
    chunk = max(_MIN_CHUNK_STUDENTS, math.ceil(student_count / _SCORING_CHUNKS))

    for start in range(0, student_count, chunk):
        stop = min(start + chunk, student_count)
        answers = np.array(
            [
                [_normalise_answer(answer) for answer in row]
                for row in responses.answers[start:stop]
            ],
            dtype=str,
        )
        scores[start:stop] = answers == keys
        percent = first_percent + (last_percent - first_percent) * stop / student_count
        ctx.report_progress(percent, f"scored {stop} of {student_count} students")

    return scores


def _read_rows(text: str, name: str) -> list[tuple[int, list[str]]]:
    """Return the non-blank CSV rows with their line numbers, the header first."""
    # Strict mode turns a stray or unterminated quote into an error instead of
    # silently running the rest of the file into one cell.
    delimiter, text = csv_delimiter(text)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    try:
        rows = [(reader.line_num, row) for row in reader if any(c.strip() for c in row)]
    except csv.Error as exc:
        raise PermanentError(
            f"{JOB_TYPE}: {name} is not valid CSV (line {reader.line_num}: {exc})"
        ) from exc

    if not rows:
        raise PermanentError(f"{JOB_TYPE}: {name} is empty")
    return rows


def _find_column(header: list[str], names: tuple[str, ...]) -> int | None:
    """Return the index of the first of ``names`` that the header has, or None."""
    folded = [cell.strip().casefold() for cell in header]
    for name in names:
        if name in folded:
            return folded.index(name)
    return None


def _cell(row: list[str], column: int) -> str:
    """Return a row's cell, or an empty string when the row is too short to have it."""
    return row[column] if column < len(row) else ""


def _normalise_answer(answer: str) -> str:
    """Return an answer or key in the form that scoring compares: trimmed, case
    folded, and several answers (``A;C``, ``C | A``) in one order."""
    return answer_set(answer) or answer.strip().casefold()
