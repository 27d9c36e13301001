"""An answer key CSV (``item,key``) as an exam: one single-choice question per item.

This is the ``exam.grade`` plain key turned into the exam model, so a key goes
through the same pipeline as a GIFT, Moodle XML or QTI file. Each item's one listed
choice is its key, worth full credit; an answer scores when it names that choice,
ignoring case and surrounding spaces, exactly as ``exam.grade`` scores a plain key.
Any other answer (another letter, a blank) scores 0 and is still counted in the
item's distractor table.
"""

from __future__ import annotations

import csv
import io

from examq.exam.errors import ExamInputError
from examq.exam.model import Choice, Exam, SingleChoice
from examq.exam.text import csv_delimiter


def parse_key_csv(
    text: str, *, name: str = "key.csv", title: str | None = None
) -> Exam:
    """Build an exam from a key CSV with the columns ``item`` and ``key``.

    Raises ExamInputError naming the file for a missing column, a blank or repeated
    item, or a blank key.
    """
    delimiter, text = csv_delimiter(text)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    try:
        rows = [
            (reader.line_num, row)
            for row in reader
            if any(cell.strip() for cell in row)
        ]
    except csv.Error as exc:
        raise ExamInputError(
            f"{name} is not valid CSV (line {reader.line_num}: {exc})"
        ) from exc
    if not rows:
        raise ExamInputError(f"{name} is empty")

    header = [cell.strip().casefold() for cell in rows[0][1]]
    if "item" not in header or "key" not in header:
        raise ExamInputError(
            f"{name} needs the columns 'item' and 'key' (its header is: {', '.join(rows[0][1])})"
        )
    item_column, key_column = header.index("item"), header.index("key")

    questions: list[SingleChoice] = []
    seen: dict[str, int] = {}
    for line, row in rows[1:]:
        item = row[item_column].strip() if item_column < len(row) else ""
        key = row[key_column].strip() if key_column < len(row) else ""
        if not item:
            raise ExamInputError(f"{name} line {line} has no item name", line=line)
        if not key:
            raise ExamInputError(
                f"{name}: item '{item}' has no key", question=item, line=line
            )
        if item.casefold() in seen:
            raise ExamInputError(
                f"{name} lists item '{item}' twice (lines {seen[item.casefold()]} and {line})",
                line=line,
            )
        seen[item.casefold()] = line
        questions.append(
            SingleChoice(
                id=item,
                stem=item,
                stem_format="plain",
                choices=[Choice(id=key, text=key, weight=1.0)],
            )
        )

    if not questions:
        raise ExamInputError(f"{name} has a header but no items")
    return Exam(title=title, source_format="key_csv", questions=questions)
