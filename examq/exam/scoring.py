"""Scoring a responses CSV against an exam model, by each question type's rules.

The responses CSV has one row per student and one column per question, as the
common exports have it. The student id column is the first of ``student``,
``student_id``, ``id``, ``username``, ``email``, ``email address`` that the header
has, else the first column. A question's column is found, case-insensitively, by its
id, then its title, then its position (``Q3``, ``Question 3``, ``Item3``,
``Response 3`` or ``3`` for the third question). Other columns are ignored.

Rules, per type (a blank or missing cell scores 0 for every type):

- single choice: the cell names a choice by its id (``B``, or the QTI identifier) or
  by its text, ignoring case and surrounding spaces; the choice's weight is the
  fraction earned (it may be negative). A cell naming no choice earns 0.
- multiple response: the cell lists choices separated by ``;``, ``|`` or ``,``;
  each distinct choice adds its weight and the sum is clamped to the question's
  bounds ([0, 1] for Moodle); all-or-nothing questions (QTI match_correct) need
  exactly the right set. Names that are no choice are ignored.
- true/false: ``true``, ``t``, ``yes``, ``1`` or ``false``, ``f``, ``no``, ``0``,
  any case.
- short answer: the first accepted answer the text matches gives its weight, as in
  Moodle: surrounding spaces ignored, Unicode normalised (NFC), case ignored unless
  the question is case-sensitive, ``*`` matching any run of characters in Moodle
  answers (``\\*`` a literal star); inner spaces must match. Otherwise the
  question's unmatched weight (0 unless QTI's defaultValue says otherwise).
- numerical: the cell is a number (``-3.5``, ``1e3``, or ``3,5`` with a decimal
  comma); the first answer whose interval holds it (tolerance or range, ends
  included) gives its weight; a cell that is no number earns 0.
- matching: the cell lists pairs ``prompt -> answer`` (``:`` or ``=`` also work)
  separated by ``;``, ``|`` or new lines; each right pair earns its share (equal
  shares unless weighted); all-or-nothing questions need every pair right.

Points are the fraction times the question's points. Essays are not scored.
"""

from __future__ import annotations

import csv
import io
import math
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from examq.exam.errors import ExamInputError
from examq.exam.model import (
    Choice,
    Exam,
    Matching,
    MultipleResponse,
    Numerical,
    Question,
    ShortAnswer,
    SingleChoice,
    TrueFalse,
    max_points,
)
from examq.exam.text import collapse_spaces, csv_delimiter, html_to_text

STUDENT_ID_COLUMNS = (
    "student",
    "student_id",
    "id",
    "username",
    "email",
    "email address",
)
_POSITIONAL = re.compile(r"^(?:q|question|item|response|r)?\s*[-_#.]?\s*0*(\d+)$")

# The distractor key of an empty cell; a cell naming no option is kept as written
# (trimmed, at most OTHER_LENGTH characters), so its answers can be counted too.
BLANK = "(blank)"
OTHER_LENGTH = 40

_TRUE = {"true", "t", "yes", "y", "1"}
_FALSE = {"false", "f", "no", "n", "0"}


@dataclass
class ScoredExam:
    """The scores of every student on every gradable question, and what they chose."""

    exam: Exam
    questions: list[Question]
    student_ids: list[str]
    points: np.ndarray  # students x questions
    max_points: list[float]
    blank: np.ndarray  # students x questions, True where the cell was empty
    # For choice questions: per question, per student, the option keys chosen.
    selections: dict[str, list[tuple[str, ...]]]


def score_responses(
    exam: Exam,
    text: str,
    *,
    name: str = "responses.csv",
    on_progress: Callable[[int, int], None] | None = None,
) -> ScoredExam:
    """Parse a responses CSV and score it against ``exam``.

    ``on_progress(done, total)`` is called after each chunk of students. Raises
    ExamInputError naming the file for malformed CSV, a missing question column, a
    blank or repeated student id, or no students.
    """
    header, rows = _read_rows(text, name)
    questions = exam.gradable()
    columns = _question_columns(exam, header, name)
    id_column = _student_column(header, set(columns.values()), name)

    student_ids: list[str] = []
    cells: list[list[str]] = []
    first_line: dict[str, int] = {}
    for line, row in rows:
        student = _cell(row, id_column).strip()
        if not student:
            raise ExamInputError(f"{name} line {line} has no student id", line=line)
        if student in first_line:
            raise ExamInputError(
                f"{name} has student id '{student}' twice (lines {first_line[student]} and {line})",
                line=line,
            )
        first_line[student] = line
        student_ids.append(student)
        cells.append([_cell(row, columns[q.id]) for q in questions])
    if not student_ids:
        raise ExamInputError(f"{name} has a header but no student rows")

    scorers = [_scorer(q) for q in questions]
    points = np.zeros((len(student_ids), len(questions)), dtype=float)
    blank = np.zeros_like(points, dtype=bool)
    selections: dict[str, list[tuple[str, ...]]] = {
        q.id: []
        for q in questions
        if isinstance(q, SingleChoice | MultipleResponse | TrueFalse)
    }
    chunk = max(100, math.ceil(len(student_ids) / 10))
    for index, row_cells in enumerate(cells):
        for column, (question, scorer, cell) in enumerate(
            zip(questions, scorers, row_cells, strict=True)
        ):
            value = cell.strip()
            blank[index, column] = not value
            fraction, chosen = scorer(value) if value else (0.0, (BLANK,))
            points[index, column] = fraction * question.points
            if question.id in selections:
                selections[question.id].append(chosen)
        if on_progress is not None and (
            (index + 1) % chunk == 0 or index + 1 == len(cells)
        ):
            on_progress(index + 1, len(cells))

    return ScoredExam(
        exam=exam,
        questions=questions,
        student_ids=student_ids,
        points=points,
        max_points=[max_points(q) for q in questions],
        blank=blank,
        selections=selections,
    )


# Reading the CSV ----------------------------------------------------------------


def _read_rows(text: str, name: str) -> tuple[list[str], list[tuple[int, list[str]]]]:
    # Strict mode turns a stray quote into an error instead of merging rows.
    delimiter, text = csv_delimiter(text)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    try:
        rows = [(reader.line_num, row) for row in reader if any(c.strip() for c in row)]
    except csv.Error as exc:
        raise ExamInputError(
            f"{name} is not valid CSV (line {reader.line_num}: {exc})"
        ) from exc
    if not rows:
        raise ExamInputError(f"{name} is empty")
    return rows[0][1], rows[1:]


def _question_columns(exam: Exam, header: list[str], name: str) -> dict[str, int]:
    """The column of each gradable question: by title or id, then by number.

    A question's title is tried before an id the importer made up from its place in
    the file (GIFT and Moodle questions without an id number get Q1, Q2, ...): a bank
    exported in title order (Q1, Q10, Q2, ...) must not be graded against the columns
    of the file order. Columns named by number alone (Q3, Response 3, 3) are matched
    by the number a question's id or title carries, so that a question left out of
    the key does not shift the later ones; only when no question carries a usable
    number are they taken in file order.
    """
    folded = [collapse_spaces(h).casefold() for h in header]
    taken: set[int] = set()
    found: dict[str, int] = {}
    gradable = {q.id for q in exam.gradable()}

    def claim(question: Question, wanted: str | None) -> bool:
        if not wanted:
            return False
        key = collapse_spaces(wanted).casefold()
        matches = [i for i, h in enumerate(folded) if h == key and i not in taken]
        if len(matches) > 1:
            raise ExamInputError(
                f"{name} has the column '{header[matches[0]]}' more than once"
            )
        if matches:
            found[question.id] = matches[0]
            taken.add(matches[0])
            return True
        return False

    made_up = {q.id for place, q in enumerate(exam.questions, start=1) if q.id == f"Q{place}"}
    for question in exam.questions:
        if question.id in made_up:
            claim(question, question.title)
    for question in exam.questions:
        if question.id not in found:
            claim(question, question.id)
    for question in exam.questions:
        if question.id not in found:
            claim(question, question.title)

    positions: dict[int, int] = {}
    for index, heading in enumerate(folded):
        match = _POSITIONAL.match(heading)
        if match and index not in taken:
            positions.setdefault(int(match.group(1)), index)
    left = [q for q in exam.questions if q.id not in found]
    numbers = [_number_of(q, made_up) for q in left]
    if left and all(n is not None and n in positions for n in numbers):
        # Every question left names a numbered column: match by that number.
        pairs = zip(left, numbers)
    elif left and not any(n is not None for n in numbers):
        # Nothing to go by but the order of the file.
        pairs = ((q, place) for place, q in enumerate(exam.questions, start=1) if q.id not in found)
    else:
        # Some questions carry numbers the header does not have: matching the rest by
        # order could pair a question with another's column. They stay unmatched.
        pairs = iter(())
    for question, number in pairs:
        if number in positions and positions[number] not in taken:
            found[question.id] = positions[number]
            taken.add(positions[number])

    missing = [
        f"{q.id} ({q.title})" if q.title else q.id
        for q in exam.questions
        if q.id in gradable and q.id not in found
    ]
    if missing:
        raise ExamInputError(
            f"{name} has no column for question(s) {', '.join(missing)}"
            " (name columns by question id, title or position, e.g. Q1)"
        )
    return {qid: column for qid, column in found.items() if qid in gradable}


def _number_of(question: Question, made_up: set[str]) -> int | None:
    """The number a question's own id or title carries (3 for '3', 'Q3', 'Item 03')."""
    names = [question.title] if question.id in made_up else [question.id, question.title]
    for text in names:
        match = _POSITIONAL.match(collapse_spaces(text or "").casefold())
        if match:
            return int(match.group(1))
    if question.id in made_up:
        return int(question.id[1:])
    return None


def _student_column(header: list[str], question_columns: set[int], name: str) -> int:
    folded = [collapse_spaces(h).casefold() for h in header]
    for candidate in STUDENT_ID_COLUMNS:
        if candidate in folded:
            index = folded.index(candidate)
            if index in question_columns:
                raise ExamInputError(
                    f"{name}: column '{header[index]}' cannot be both the student id and a question"
                )
            return index
    if 0 in question_columns:
        raise ExamInputError(
            f"{name} has no student id column ({', '.join(STUDENT_ID_COLUMNS)}) and its first"
            f" column, '{header[0]}', is a question"
        )
    return 0


def _cell(row: list[str], column: int) -> str:
    return row[column] if column < len(row) else ""


# Scoring by type ----------------------------------------------------------------

Scorer = Callable[[str], tuple[float, tuple[str, ...]]]


def _scorer(question: Question) -> Scorer:
    if isinstance(question, SingleChoice):
        return _single_choice(question)
    if isinstance(question, MultipleResponse):
        return _multiple_response(question)
    if isinstance(question, TrueFalse):
        return _true_false(question)
    if isinstance(question, ShortAnswer):
        return _short_answer(question)
    if isinstance(question, Numerical):
        return _numerical(question)
    if isinstance(question, Matching):
        return _matching(question)
    raise ValueError(f"question {question.id} of type {question.type} is not scored")


def _fold(text: str) -> str:
    return collapse_spaces(unicodedata.normalize("NFC", text)).casefold()


def answer_set(text: str) -> str | None:
    """Several answers separated by ``;`` or ``|``, in one order (``c;a`` is ``a;c``);
    None for a single answer."""
    parts = sorted({p for p in (part.strip().casefold() for part in re.split(r"[;|]", text)) if p})
    return ";".join(parts) if len(parts) > 1 else None


def _choice_finder(choices: list[Choice]) -> Callable[[str], Choice | None]:
    """Find the choice a cell names: by id first, then by its text (HTML read as text)."""
    by_id: dict[str, Choice] = {}
    by_text: dict[str, Choice] = {}
    by_set: dict[str, Choice] = {}
    for choice in choices:
        by_id.setdefault(_fold(choice.id), choice)
        # A key CSV's "A;C" is one choice: "C;A" names it too.
        if (as_set := answer_set(choice.id)) is not None:
            by_set.setdefault(as_set, choice)
    for choice in choices:
        for text in (choice.text, html_to_text(choice.text)):
            by_text.setdefault(_fold(text), choice)

    def find(cell: str) -> Choice | None:
        key = _fold(cell)
        found = by_id.get(key) or by_text.get(key)
        if found is None and by_set and (as_set := answer_set(cell)) is not None:
            found = by_set.get(as_set)
        return found

    return find


def _single_choice(question: SingleChoice) -> Scorer:
    find = _choice_finder(question.choices)

    def score(cell: str) -> tuple[float, tuple[str, ...]]:
        choice = find(cell)
        if choice is None:
            return 0.0, (_as_written(cell),)
        return choice.weight, (choice.id,)

    return score


def _multiple_response(question: MultipleResponse) -> Scorer:
    find = _choice_finder(question.choices)
    right = {c.id for c in question.choices if c.weight > 0}

    def score(cell: str) -> tuple[float, tuple[str, ...]]:
        chosen: list[Choice] = []
        unknown: list[str] = []
        for part in _split_selection(cell, find):
            choice = find(part)
            if choice is None:
                unknown.append(_as_written(part))
            elif choice not in chosen:
                chosen.append(choice)
        ids = tuple(c.id for c in chosen) + tuple(unknown)
        if question.all_or_nothing:
            return (
                1.0 if {c.id for c in chosen} == right and not unknown else 0.0
            ), ids
        total = sum(c.weight for c in chosen)
        return min(max(total, question.min_fraction), question.max_fraction), ids

    return score


def _as_written(cell: str) -> str:
    return cell.strip()[:OTHER_LENGTH]


def _split_selection(cell: str, find: Callable[[str], Choice | None]) -> list[str]:
    """The parts of a multiple-response cell; a cell that names one choice is not split."""
    if find(cell) is not None:
        return [cell]
    for separator in (";", "|", ","):
        if separator in cell:
            return [part for part in (p.strip() for p in cell.split(separator)) if part]
    # Answer sheets scanned by machine write the letters run together ("ACD"): split
    # them when every letter names a choice and the run as a whole names none.
    letters = cell.strip()
    if len(letters) > 1 and letters.isascii() and letters.isalpha() and all(find(c) is not None for c in letters):
        return list(letters)
    return [cell]


def _true_false(question: TrueFalse) -> Scorer:
    def score(cell: str) -> tuple[float, tuple[str, ...]]:
        value = cell.strip().casefold()
        if value in _TRUE:
            return (1.0 if question.correct else 0.0), ("True",)
        if value in _FALSE:
            return (0.0 if question.correct else 1.0), ("False",)
        return 0.0, (_as_written(cell),)

    return score


def _short_answer(question: ShortAnswer) -> Scorer:
    matchers = [
        (_text_matcher(a.text, a.case_sensitive, a.wildcards), a.weight)
        for a in question.answers
    ]

    def score(cell: str) -> tuple[float, tuple[str, ...]]:
        response = unicodedata.normalize("NFC", cell.strip())
        fraction = next(
            (weight for matches, weight in matchers if matches(response)),
            question.unmatched_weight,
        )
        if question.min_fraction is not None:
            fraction = max(fraction, question.min_fraction)
        if question.max_fraction is not None:
            fraction = min(fraction, question.max_fraction)
        return fraction, ()

    return score


@lru_cache(maxsize=4096)
def _text_matcher(
    answer: str, case_sensitive: bool, wildcards: bool
) -> Callable[[str], bool]:
    """A test for one accepted answer, built as Moodle's compare_string_with_wildcard does."""
    pattern_text = unicodedata.normalize("NFC", answer.strip())
    if wildcards:
        # Runs of unescaped * match anything; \* is a literal star.
        bits = re.split(r"(?<!\\)\*+", pattern_text)
        pattern = ".*".join(re.escape(bit.replace("\\*", "*")) for bit in bits)
    else:
        pattern = re.escape(pattern_text)
    compiled = re.compile(
        f"^{pattern}$", re.DOTALL | (0 if case_sensitive else re.IGNORECASE)
    )
    return lambda response: compiled.match(response) is not None


_NUMBER = re.compile(r"^[+-]?(?:\d+(?:[.,]\d*)?|[.,]\d+)(?:[eE][+-]?\d+)?$")


# Commas between groups of three digits: 1,000, 12,345,678 and 1,000.5 in English.
# One such comma and no point (1,000) could also be a decimal comma.
_GROUPED = re.compile(r"^[+-]?[1-9]\d{0,2}(?:,\d{3})+(?:\.\d+)?$")


def number_readings(cell: str) -> list[float]:
    """Every number a cell may mean: one, or two for ``1,000`` (1000, or 1.0 with a
    decimal comma); none when it is not a number."""
    text = cell.strip().replace("\u2212", "-").replace(" ", "")
    readings = []
    if _GROUPED.match(text):
        readings.append(float(text.replace(",", "")))
    single = parse_number(cell)
    if single is not None and single not in readings:
        readings.append(single)
    return readings


def parse_number(cell: str) -> float | None:
    """A number from a cell (``3.5``, ``-2``, ``1e3``, ``3,5``); None when it is not one.

    A comma is a decimal comma here; ``number_readings`` also gives the grouped reading.
    """
    text = cell.strip().replace("\u2212", "-").replace(" ", "")
    if not _NUMBER.match(text):
        return None
    if "," in text and "." not in text:
        text = text.replace(",", ".")
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _numerical(question: Numerical) -> Scorer:
    answers = [(a.bounds(), a.weight) for a in question.answers]

    def credit(value: float) -> float:
        for (low, high), weight in answers:
            # Float arithmetic puts 3.1415 - 0.0005 a hair below 3.141; allow that much.
            slack = 1e-12 * max(
                1.0,
                abs(low) if math.isfinite(low) else 1.0,
                abs(high) if math.isfinite(high) else 1.0,
            )
            if low - slack <= value <= high + slack:
                return weight
        return 0.0

    def score(cell: str) -> tuple[float, tuple[str, ...]]:
        # "1,000" is 1000 to an English reader and 1.000 to a French one: the
        # student gets the credit of the reading that earns more.
        readings = number_readings(cell)
        if not readings:
            return 0.0, ()
        return max(credit(value) for value in readings), ()

    return score


_PAIR = re.compile(r"\s*(?:->|→|=|:)\s*")


def _matching(question: Matching) -> Scorer:
    share = 1.0 / len(question.pairs)
    prompts: dict[str, int] = {}
    for index, pair in enumerate(question.pairs):
        for key in (pair.prompt, html_to_text(pair.prompt), pair.prompt_id or ""):
            if key:
                prompts.setdefault(_fold(key), index)

    def right_answer(index: int, given: str) -> bool:
        pair = question.pairs[index]
        wanted = {_fold(pair.answer), _fold(html_to_text(pair.answer))}
        if pair.answer_id:
            wanted.add(_fold(pair.answer_id))
        return _fold(given) in wanted

    def score(cell: str) -> tuple[float, tuple[str, ...]]:
        answered: dict[int, str] = {}
        for part in re.split(r"[;|\n]", cell):
            if not part.strip():
                continue
            pieces = _PAIR.split(part.strip(), maxsplit=1)
            if len(pieces) != 2:
                continue
            index = prompts.get(_fold(pieces[0]))
            if index is not None and index not in answered:
                answered[index] = pieces[1]
        right = [i for i, given in answered.items() if right_answer(i, given)]
        if question.all_or_nothing:
            return (1.0 if len(right) == len(question.pairs) else 0.0), ()
        earned = sum(
            question.pairs[i].weight if question.pairs[i].weight is not None else share
            for i in right
        )
        return min(earned, 1.0), ()

    return score
