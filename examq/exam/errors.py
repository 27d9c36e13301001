"""The error an importer or the grader raises for input it cannot accept."""

from __future__ import annotations

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
