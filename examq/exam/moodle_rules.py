"""Rules Moodle applies to every question it imports, whatever the file format.

Moodle accepts only the answer grades of its own list (question_bank's
fraction_options_full: 100%, 90%, 83.33333%, ... 5%, 0 and their negatives) and
refuses a whole import when an answer's grade is not one of them, naming the question
(question/format.php, importprocess). GIFT and Moodle XML files are imported under
that rule here too, so a file examq accepts is a file Moodle accepts.
"""

from __future__ import annotations

from collections.abc import Iterable

from examq.exam.errors import ExamInputError

# Moodle lists the repeating ones to seven places (0.3333333); they stand for the
# exact fractions, so that three answers of 33.33333% add up to a whole point.
_POSITIVE_FRACTIONS = (
    1.0, 0.9, 5 / 6, 0.8, 0.75, 0.7, 2 / 3, 0.6, 0.5, 0.4, 1 / 3,
    0.3, 0.25, 0.2, 1 / 6, 1 / 7, 0.125, 1 / 9, 0.1, 0.05,
)  # fmt: skip

ALLOWED_FRACTIONS = tuple(
    sorted({0.0, *_POSITIVE_FRACTIONS, *(-f for f in _POSITIVE_FRACTIONS)})
)

# Moodle's match_grade_options('error') accepts a grade within this of an allowed one.
_TOLERANCE = 0.00001


def snap_fraction(fraction: float) -> float | None:
    """Return the allowed fraction ``fraction`` stands for, or None if there is none."""
    for allowed in ALLOWED_FRACTIONS:
        if abs(fraction - allowed) < _TOLERANCE:
            return allowed
    return None


def check_fractions(
    question: str, fractions: Iterable[float], *, file: str
) -> list[float]:
    """Return the fractions snapped to Moodle's list; raise naming the question if any is not on it."""
    snapped: list[float] = []
    invalid: list[float] = []
    for fraction in fractions:
        allowed = snap_fraction(fraction)
        if allowed is None:
            invalid.append(fraction)
        else:
            snapped.append(allowed)

    if invalid:
        grades = ", ".join(f"{100 * f:g}%" for f in invalid)
        raise ExamInputError(
            f"{file}: question {question} has answer grade(s) {grades} that Moodle does not"
            " allow; use one of 100%, 90%, 83.33333%, 80%, 75%, 70%, 66.66667%, 60%, 50%,"
            " 40%, 33.33333%, 30%, 25%, 20%, 16.66667%, 14.28571%, 12.5%, 11.11111%, 10%,"
            " 5%, 0% or their negatives",
            question=question,
        )
    return snapped
