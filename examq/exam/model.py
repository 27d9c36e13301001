"""The exam model every importer produces and every later step reads.

An exam is a list of questions, each of one type with the data its scoring rule
needs. Weights are fractions of the question's points (1.0 is full credit, -0.5 takes
half the points away), as Moodle stores them; QTI's absolute mapped values are
converted to fractions of the question's points by the QTI importer. The model is
plain data: it serialises to JSON (a job's result, the next job's payload) and
validates back, so a grading job can receive the exam that an import job produced.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

TextFormat = Literal["moodle", "html", "plain", "markdown"]
SourceFormat = Literal["gift", "moodle_xml", "qti", "key_csv"]
QuestionType = Literal[
    "single_choice",
    "multiple_response",
    "true_false",
    "short_answer",
    "numerical",
    "matching",
    "essay",
]

# The blank that a missing-word question shows where its answers stood.
BLANK = "_____"


class _Strict(BaseModel):
    """Base of the model's classes: unknown fields are refused, values are finite."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Choice(_Strict):
    """One option of a choice question; ``id`` is what a response names."""

    id: str = Field(min_length=1)
    text: str
    weight: float = 0.0
    feedback: str | None = None


class TextAnswer(_Strict):
    """An accepted answer of a short-answer question and the credit it earns."""

    text: str
    weight: float = 1.0
    feedback: str | None = None
    case_sensitive: bool = False
    # Moodle's short answers treat an unescaped * as "any run of characters".
    wildcards: bool = False


class NumericAnswer(_Strict):
    """An accepted number: a value with a tolerance, a closed range, or any number."""

    value: float | None = None
    tolerance: float | None = None
    low: float | None = None
    high: float | None = None
    weight: float = 1.0
    feedback: str | None = None

    @model_validator(mode="after")
    def _one_form(self) -> NumericAnswer:
        has_value = self.value is not None
        has_range = self.low is not None or self.high is not None
        if has_value and has_range:
            raise ValueError(
                "a numeric answer is a value with a tolerance or a range, not both"
            )
        if has_range and (
            self.low is None or self.high is None or self.low > self.high
        ):
            raise ValueError("a numeric range needs low <= high")
        if self.tolerance is not None and (not has_value or self.tolerance < 0):
            raise ValueError("a tolerance needs a value and must not be negative")
        return self

    @property
    def is_any(self) -> bool:
        """True for Moodle's ``*`` answer, which accepts every number."""
        return self.value is None and self.low is None

    def bounds(self) -> tuple[float, float]:
        """The closed interval of accepted numbers (infinite for ``*``)."""
        if self.is_any:
            return -math.inf, math.inf
        if self.value is not None:
            tolerance = self.tolerance or 0.0
            return self.value - tolerance, self.value + tolerance
        return self.low, self.high  # type: ignore[return-value]


class MatchPair(_Strict):
    """A prompt and the answer that belongs to it, with the credit for getting it right."""

    prompt: str
    answer: str
    # Identifiers a response may use instead of the texts (QTI's choice identifiers).
    prompt_id: str | None = None
    answer_id: str | None = None
    # None shares the question's credit equally among its pairs.
    weight: float | None = None


class _Question(_Strict):
    """What every question has, whatever its type."""

    id: str = Field(min_length=1)
    title: str | None = None
    stem: str
    stem_format: TextFormat = "moodle"
    points: float = Field(default=1.0, ge=0)
    category: str | None = None
    general_feedback: str | None = None
    # True when the answers stood inside the sentence (GIFT's missing-word form).
    has_blank: bool = False


class SingleChoice(_Question):
    """Pick one choice; it earns its weight."""

    type: Literal["single_choice"] = "single_choice"
    choices: list[Choice] = Field(min_length=1)


class MultipleResponse(_Question):
    """Pick any choices; the weights of the picked ones add up, then are clamped.

    Moodle clamps the sum to [0, 1]; QTI to its mapping's bounds. With
    ``all_or_nothing`` (QTI's match_correct), full credit needs exactly the choices
    of positive weight and nothing else.
    """

    type: Literal["multiple_response"] = "multiple_response"
    choices: list[Choice] = Field(min_length=1)
    min_fraction: float = 0.0
    max_fraction: float = 1.0
    all_or_nothing: bool = False


class TrueFalse(_Question):
    """True or false; the right one earns full credit."""

    type: Literal["true_false"] = "true_false"
    correct: bool
    feedback_true: str | None = None
    feedback_false: str | None = None


class ShortAnswer(_Question):
    """Type a word or phrase; the first accepted answer it matches gives the credit."""

    type: Literal["short_answer"] = "short_answer"
    answers: list[TextAnswer] = Field(min_length=1)
    # What a response matching no answer earns (QTI mapping's defaultValue).
    unmatched_weight: float = 0.0
    min_fraction: float | None = None
    max_fraction: float | None = None


class Numerical(_Question):
    """Type a number; the first accepted answer whose interval holds it gives the credit."""

    type: Literal["numerical"] = "numerical"
    answers: list[NumericAnswer] = Field(min_length=1)


class Matching(_Question):
    """Match each prompt to an answer; each right pair earns its share of the credit."""

    type: Literal["matching"] = "matching"
    pairs: list[MatchPair] = Field(min_length=1)
    # Answers offered that belong to no prompt.
    distractors: list[str] = []
    all_or_nothing: bool = False


class Essay(_Question):
    """Free text, graded by a person: not scored here and left out of the statistics."""

    type: Literal["essay"] = "essay"


Question = Annotated[
    SingleChoice
    | MultipleResponse
    | TrueFalse
    | ShortAnswer
    | Numerical
    | Matching
    | Essay,
    Field(discriminator="type"),
]

CHOICE_TYPES = ("single_choice", "multiple_response", "true_false")


class Exam(_Strict):
    """An exam: its questions in order, and where it came from."""

    title: str | None = None
    source_format: SourceFormat
    questions: list[Question] = Field(min_length=1)
    # Notes an importer wants the teacher to read (skipped descriptions, ...).
    warnings: list[str] = []

    @model_validator(mode="after")
    def _unique_ids(self) -> Exam:
        seen: dict[str, str] = {}
        for question in self.questions:
            folded = id_key(question.id)
            if folded in seen:
                raise ValueError(f"two questions have the id {question.id!r}")
            seen[folded] = question.id
        return self

    def gradable(self) -> list[Question]:
        """The questions that are scored automatically (all but essays)."""
        return [q for q in self.questions if q.type != "essay"]


def id_key(question_id: str) -> str:
    """The form of a question id that uniqueness is checked on: ids differing only in
    case or surrounding spaces name the same question (a responses column matches
    either)."""
    return question_id.strip().casefold()


def choice_letter(index: int) -> str:
    """The id of the choice at ``index`` as answer sheets label them: 0 -> A, 25 -> Z, 26 -> AA."""
    letters = ""
    index += 1
    while index:
        index, remainder = divmod(index - 1, 26)
        letters = chr(ord("A") + remainder) + letters
    return letters


def max_fraction(question: Question) -> float:
    """The largest fraction of its points a response to ``question`` can earn."""
    if isinstance(question, SingleChoice):
        return max(0.0, max(c.weight for c in question.choices))
    if isinstance(question, MultipleResponse):
        if question.all_or_nothing:
            return 1.0
        best = sum(c.weight for c in question.choices if c.weight > 0)
        return max(question.min_fraction, min(question.max_fraction, best))
    if isinstance(question, ShortAnswer):
        best = max([a.weight for a in question.answers] + [question.unmatched_weight])
        return _clamp(max(0.0, best), question.min_fraction, question.max_fraction)
    if isinstance(question, Numerical):
        return max(0.0, max(a.weight for a in question.answers))
    if isinstance(question, Essay):
        return 0.0
    return 1.0


def max_points(question: Question) -> float:
    """The most points a response to ``question`` can earn."""
    return question.points * max_fraction(question)


def _clamp(value: float, low: float | None, high: float | None) -> float:
    if low is not None:
        value = max(low, value)
    if high is not None:
        value = min(high, value)
    return value
