"""The error an importer or the grader raises for input it cannot accept."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from pydantic import ValidationError

from examq.errors import PermanentError


class ExamInputError(PermanentError):
    """An exam file or a responses file is malformed or breaks its format's rules.

    It is a ``PermanentError``, so a job that hits it fails at once with the message,
    which names the file, the question (``question``) and the line when known.
    """

    def __init__(
        self, message: str, *, question: str | None = None, line: int | None = None
    ) -> None:
        super().__init__(message)
        self.question = question
        self.line = line


def describe_validation_error(exc: ValidationError) -> str:
    """The model's complaint in one line: the field of the part at fault, and why."""
    problems = []
    for error in exc.errors():
        where = ".".join(str(part) for part in (exc.title, *error["loc"]))
        found = f" (found {_shorten(repr(error['input']))})" if error["loc"] else ""
        problems.append(f"{where}: {error['msg']}{found}")
    return "; ".join(problems)


@contextmanager
def question_values(file: str, label: str, *, noun: str = "question") -> Iterator[None]:
    """Turn a value of the question's data that the exam model refuses into an
    ExamInputError naming the file, the question and the field.

    The importers check what their format's rules say; this catches the rest (a
    number that overflows once divided, say), so such a file is refused for good
    instead of failing a job as if the fault were passing.
    """
    try:
        yield
    except ValidationError as exc:
        raise ExamInputError(
            f"{file}: {noun} {label} has a value examq cannot use: "
            + describe_validation_error(exc),
            question=label,
        ) from exc


def _shorten(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
