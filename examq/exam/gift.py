"""GIFT importer: Moodle's plain-text question format, parsed with a lark grammar.

The grammar (``gift.lark``) parses one question block; this module splits a file
into blocks the way Moodle does (at blank lines, with ``//`` comment lines blanked
out), builds the exam model from each parse, and applies Moodle's rules:

- the question type follows from the answers: none is an essay, ``#`` a numerical
  question, any ``~`` multiple choice (several right answers allowed when no answer
  has ``=``), ``=`` with ``->`` matching, ``T``/``F``/``TRUE``/``FALSE`` true-false,
  otherwise short answer;
- ``=`` answers earn full credit and ``~`` answers nothing unless ``%n%`` says
  otherwise, and every weight must be one of Moodle's grades (``moodle_rules``);
- multiple choice and matching need two answers, short answer and numerical one;
- ``$CATEGORY: path`` puts the questions after it in that category;
- ``\\~ \\= \\# \\{ \\} \\:`` stand for the characters, ``\\n`` for a line break and
  ``\\\\`` for a backslash; other backslashes are kept (so LaTeX survives).

Text follows the reference GIFT parser (GIFT-grammar-PEG.js, whose expected output
the tests compare against): runs of white space, line breaks included, become one
space; answers inside a sentence leave ``_____`` with a space on each side.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from lark import Lark, Token, Transformer, v_args
from lark.exceptions import (
    UnexpectedCharacters,
    UnexpectedEOF,
    UnexpectedInput,
    UnexpectedToken,
)

from examq.exam import moodle_rules
from examq.exam.errors import ExamInputError, question_values
from examq.exam.model import (
    BLANK,
    Choice,
    Essay,
    Exam,
    Matching,
    MatchPair,
    MultipleResponse,
    Numerical,
    NumericAnswer,
    Question,
    ShortAnswer,
    SingleChoice,
    TextAnswer,
    TextFormat,
    TrueFalse,
    choice_letter,
)
from examq.exam.text import finite_number, shorten

_GRAMMAR = Path(__file__).with_name("gift.lark")

_ESCAPES = {
    ":": ":",
    "#": "#",
    "=": "=",
    "{": "{",
    "}": "}",
    "~": "~",
    "n": "\n",
    "\\": "\\",
}
_FORMAT_PREFIX = re.compile(r"^\s*\[(html|moodle|plain|markdown)\]")

# How the parser's pattern terminals read in an error message; literal ones read as
# themselves.
_TERMINAL_NAMES = {
    "NUMBER": "a number", "TEXT": "text", "STEM": "question text", "TF": "TRUE or FALSE",
    "WEIGHT": "a weight like %50%", "TITLE": "a ::title::", "FORMAT": "a [format] tag",
    "CATEGORY": "$CATEGORY:", "$END": "the end of the question",
}  # fmt: skip


@lru_cache(maxsize=1)
def _parser() -> Lark:
    return Lark(
        _GRAMMAR.read_text(encoding="utf-8"),
        parser="lalr",
        lexer="contextual",
        maybe_placeholders=False,
    )


def parse_gift(text: str, *, name: str = "exam.gift", title: str | None = None) -> Exam:
    """Import a GIFT file into the exam model.

    Raises ExamInputError naming the file, the line and the question when a question
    is malformed, has too few answers, or has a weight Moodle does not allow.
    """
    text = text.removeprefix("\ufeff")
    questions: list[Question] = []
    warnings: list[str] = []
    category: str | None = None

    for line, block in _blocks(text):
        try:
            tree = _parser().parse(block)
        except UnexpectedInput as exc:
            raise ExamInputError(
                _syntax_message(name, line, block, exc), line=line
            ) from exc
        parsed = _ToParts().transform(tree)

        if isinstance(parsed, _Category):
            category = parsed.path or None
            continue
        if parsed.answers is _NO_ANSWER_BLOCK:
            warnings.append(
                f"line {line}: a description without answers was skipped (not a question)"
            )
            continue
        questions.append(_build(parsed, f"Q{len(questions) + 1}", category, name, line))

    if not questions:
        raise ExamInputError(f"{name}: no GIFT questions found")
    return Exam(
        title=title, source_format="gift", questions=questions, warnings=warnings
    )


def _blocks(text: str) -> list[tuple[int, str]]:
    """Split a file into (first line number, text) blocks at blank lines, blanking comments."""
    blocks: list[tuple[int, str]] = []
    lines: list[str] = []
    first = 0
    for number, line in enumerate(text.splitlines() + [""], start=1):
        if not line.strip():
            block = "\n".join(lines).strip()
            if block:
                blocks.append((first, block))
            lines = []
            continue
        if not lines:
            first = number
        # Moodle replaces a comment line by a space, so it neither ends the question
        # nor adds to its text.
        lines.append(" " if line.strip().startswith("//") else line)
    return blocks


# Parsing: the tree becomes plain parts ------------------------------------------

_NO_ANSWER_BLOCK = object()


@dataclass
class _Category:
    path: str


@dataclass
class _Answer:
    mark: str  # "=" or "~"
    weight: float | None
    text: str | None
    arrow: bool = False
    match: str | None = None
    feedback: str | None = None


@dataclass
class _Numeric:
    """A numeric answer as written; its numbers are read (and checked) by _numerical."""

    weight: float | None
    value: str | None = None
    tolerance: str | None = None
    low: str | None = None
    high: str | None = None
    feedback: str | None = None


@dataclass
class _Parts:
    title: str | None = None
    text_format: str | None = None
    before: str | None = None
    after: str | None = None
    answers: Any = None
    general_feedback: str | None = None


@v_args(inline=True)
class _ToParts(Transformer):
    """Turns the parse tree into plain parts; raw text keeps its escapes until _text()."""

    def start(self, item: Any) -> Any:
        return item

    def category(self, token: Token) -> _Category:
        return _Category(path=_text(str(token)[len("$CATEGORY:") :]))

    @v_args(inline=False)
    def question(self, items: list[Any]) -> _Parts:
        parts = _Parts()
        stems: list[str] = []
        for item in items:
            if isinstance(item, Token) and item.type == "TITLE":
                parts.title = _text(str(item)[2:-2])
            elif isinstance(item, Token) and item.type == "FORMAT":
                parts.text_format = str(item).strip()[1:-1]
            elif isinstance(item, Token) and item.type == "STEM":
                stems.append(str(item))
                if parts.answers is not None:
                    parts.after = str(item)
            elif isinstance(item, tuple):
                parts.answers, parts.general_feedback = item
        if parts.after is not None:
            stems.pop()
        parts.before = stems[0] if stems else None
        return parts

    @v_args(inline=False)
    def description(self, items: list[Any]) -> _Parts:
        parts = self.question(items)
        parts.answers = _NO_ANSWER_BLOCK
        return parts

    @v_args(inline=False)
    def answer_block(self, items: list[Any]) -> tuple[Any, str | None]:
        answers: Any = ("essay", None)
        general = None
        for item in items:
            if isinstance(item, _GeneralFeedback):
                general = item.text
            else:
                answers = item
        return answers, general

    @v_args(inline=False)
    def truefalse(self, items: list[Any]) -> tuple[str, Any]:
        return "truefalse", (str(items[0]), [f.text for f in items[1:]])

    @v_args(inline=False)
    def numeric(self, items: list[Any]) -> tuple[str, Any]:
        answers: list[_Numeric] = []
        wrong: str | None = None
        bare: _Numeric | None = None
        for item in items:
            if isinstance(item, _Numeric):
                answers.append(item)
            elif isinstance(item, dict) and "spec" in item:
                bare = item["spec"]
                answers.append(bare)
            elif isinstance(item, _Feedback) and bare is not None:
                bare.feedback = item.text
            elif isinstance(item, _WrongFeedback):
                wrong = item.text
        return "numeric", (answers, wrong)

    @v_args(inline=False)
    def numeric_answer(self, items: list[Any]) -> _Numeric:
        weight = None
        spec: _Numeric | None = None
        feedback = None
        for item in items:
            if isinstance(item, Token) and item.type == "WEIGHT":
                weight = _weight(str(item))
            elif isinstance(item, dict):
                spec = item["spec"]
            elif isinstance(item, _Feedback):
                feedback = item.text
        assert spec is not None
        spec.weight, spec.feedback = weight, feedback
        return spec

    @v_args(inline=False)
    def numeric_wrong(self, items: list[Any]) -> _WrongFeedback:
        feedback = next((i.text for i in items if isinstance(i, _Feedback)), None)
        return _WrongFeedback(feedback)

    def numeric_exact(self, value: Token) -> dict[str, _Numeric]:
        return {"spec": _Numeric(weight=None, value=str(value), tolerance="0")}

    def numeric_tolerance(self, value: Token, tolerance: Token) -> dict[str, _Numeric]:
        return {
            "spec": _Numeric(weight=None, value=str(value), tolerance=str(tolerance))
        }

    def numeric_range(self, low: Token, high: Token) -> dict[str, _Numeric]:
        return {"spec": _Numeric(weight=None, low=str(low), high=str(high))}

    @v_args(inline=False)
    def choices(self, items: list[_Answer]) -> tuple[str, list[_Answer]]:
        return "choices", items

    @v_args(inline=False)
    def choice(self, items: list[Any]) -> _Answer:
        answer = _Answer(mark=str(items[0]), weight=None, text=None)
        for item in items[1:]:
            if isinstance(item, _Feedback):
                answer.feedback = item.text
            elif item.type == "WEIGHT":
                answer.weight = _weight(str(item))
            elif item.type == "ARROW":
                answer.arrow = True
            elif item.type == "TEXT" and answer.arrow:
                answer.match = str(item)
            elif item.type == "TEXT":
                answer.text = str(item)
        return answer

    @v_args(inline=False)
    def feedback(self, items: list[Token]) -> _Feedback:
        return _Feedback(str(items[0]) if items else None)

    @v_args(inline=False)
    def general_feedback(self, items: list[Token]) -> _GeneralFeedback:
        return _GeneralFeedback(_text(str(items[0])) if items else None)


@dataclass
class _Feedback:
    raw: str | None

    @property
    def text(self) -> str | None:
        return _text(self.raw) if self.raw is not None else None


@dataclass
class _WrongFeedback:
    text: str | None


@dataclass
class _GeneralFeedback:
    text: str | None = field(default=None)


def _weight(token: str) -> float:
    """``%50%`` -> 0.5."""
    return float(token.strip("%")) / 100


def _text(raw: str, text_format: str | None = None) -> str:
    """Decode GIFT text: collapse white space, then resolve escapes."""
    if text_format == "markdown":
        collapsed = re.sub(r"[ \t\r\f\v]+", " ", raw)
    else:
        collapsed = re.sub(r"\s+", " ", raw)
    decoded = re.sub(
        r"\\(.)",
        lambda m: _ESCAPES.get(m.group(1), m.group(0)),
        collapsed,
        flags=re.DOTALL,
    )
    return decoded.strip()


def _answer_text(raw: str | None) -> str:
    """Answer text without a leading [format] tag (Moodle allows one per answer)."""
    if raw is None:
        return ""
    return _FORMAT_PREFIX.sub("", _text(raw), count=1)


# Building the model -------------------------------------------------------------


def _build(
    parts: _Parts, question_id: str, category: str | None, file: str, line: int
) -> Question:
    """Turn one parsed block into a question of the type Moodle would give it."""
    text_format: TextFormat = parts.text_format or "moodle"  # type: ignore[assignment]
    before = _text(parts.before or "", text_format)
    after = _text(parts.after or "", text_format)
    has_blank = bool(after)
    stem = f"{before} {BLANK} {after}".strip() if has_blank else before
    label = _label(parts.title, stem, line)
    common: dict[str, Any] = {
        "id": question_id,
        "title": parts.title,
        "stem": stem,
        "stem_format": text_format,
        "category": category,
        "general_feedback": parts.general_feedback or None,
        "has_blank": has_blank,
    }
    kind, body = parts.answers

    with question_values(file, label):
        if kind == "essay":
            return Essay(**common)
        if kind == "truefalse":
            return _truefalse(common, body, label, file)
        if kind == "numeric":
            return _numerical(common, body, label, file)
        answers: list[_Answer] = body

        if any(a.mark == "~" for a in answers):
            return _multichoice(common, answers, label, file)
        if any(a.arrow for a in answers):
            return _matching(common, answers, label, file)
        return _short_answer(common, answers, label, file)


def _label(title: str | None, stem: str, line: int) -> str:
    """How an error names a question: its title, or the start of its text, and its line."""
    name = title or (stem[:40] + ("..." if len(stem) > 40 else ""))
    return f"'{name}' (line {line})"


def _truefalse(common: dict[str, Any], body: Any, label: str, file: str) -> TrueFalse:
    value, feedbacks = body
    if len(feedbacks) > 2:
        raise ExamInputError(
            f"{file}: true/false question {label} has more than two feedbacks"
            " (the syntax is {TRUE#for a wrong answer#for a right answer})",
            question=label,
        )
    wrong = feedbacks[0] if feedbacks else None
    right = feedbacks[1] if len(feedbacks) > 1 else None
    correct = value in ("T", "TRUE")
    return TrueFalse(
        **common,
        correct=correct,
        feedback_true=(right if correct else wrong) or None,
        feedback_false=(wrong if correct else right) or None,
    )


def _numerical(common: dict[str, Any], body: Any, label: str, file: str) -> Numerical:
    entries, wrong_feedback = body
    numbers = [_numbers(entry, label, file) for entry in entries]
    for value, tolerance, low, high in numbers:
        if low is not None and high is not None and low > high:
            raise ExamInputError(
                f"{file}: numerical question {label} has the range {low:g}..{high:g},"
                " whose minimum is above its maximum",
                question=label,
            )
    weights = moodle_rules.check_fractions(
        label, [1.0 if e.weight is None else e.weight for e in entries], file=file
    )
    answers = [
        NumericAnswer(
            value=value,
            tolerance=abs(tolerance) if tolerance is not None else None,
            low=low,
            high=high,
            weight=weight,
            feedback=e.feedback or None,
        )
        for e, (value, tolerance, low, high), weight in zip(
            entries, numbers, weights, strict=True
        )
    ]
    if wrong_feedback is not None:
        # Moodle stores "~#feedback" as a zero-credit answer accepting any number.
        answers.append(NumericAnswer(weight=0.0, feedback=wrong_feedback or None))
    return Numerical(**common, answers=answers)


def _numbers(
    entry: _Numeric, label: str, file: str
) -> tuple[float | None, float | None, float | None, float | None]:
    """The value, tolerance, minimum and maximum of a numeric answer, each finite."""
    numbers: list[float | None] = []
    for what, raw in (
        ("value", entry.value),
        ("tolerance", entry.tolerance),
        ("minimum", entry.low),
        ("maximum", entry.high),
    ):
        if raw is None:
            numbers.append(None)
            continue
        try:
            numbers.append(finite_number(raw))
        except ValueError as exc:
            raise ExamInputError(
                f"{file}: numerical question {label} has the {what} {shorten(raw, 40)},"
                " which is not a finite number",
                question=label,
            ) from exc
    value, tolerance, low, high = numbers
    return value, tolerance, low, high


def _multichoice(
    common: dict[str, Any], answers: list[_Answer], label: str, file: str
) -> Question:
    if len(answers) < 2:
        raise ExamInputError(
            f"{file}: multiple-choice question {label} needs at least two answers",
            question=label,
        )
    if any(a.arrow for a in answers):
        raise ExamInputError(
            f"{file}: question {label} mixes '->' matching pairs with '~' choices",
            question=label,
        )
    raw = [
        a.weight if a.weight is not None else (1.0 if a.mark == "=" else 0.0)
        for a in answers
    ]
    weights = moodle_rules.check_fractions(label, raw, file=file)
    choices = [
        Choice(
            id=choice_letter(i),
            text=_answer_text(a.text),
            weight=w,
            feedback=_feedback(a),
        )
        for i, (a, w) in enumerate(zip(answers, weights, strict=True))
    ]
    # Moodle: several answers may be picked when no answer is marked "=" (right).
    if any(a.mark == "=" for a in answers):
        return SingleChoice(**common, choices=choices)
    return MultipleResponse(**common, choices=choices)


def _matching(
    common: dict[str, Any], answers: list[_Answer], label: str, file: str
) -> Matching:
    missing = [a.text or "" for a in answers if not a.arrow]
    if missing:
        raise ExamInputError(
            f"{file}: matching question {label} has an answer without '->': {_text(missing[0])!r}",
            question=label,
        )
    pairs: list[MatchPair] = []
    distractors: list[str] = []
    for answer in answers:
        prompt, match = _answer_text(answer.text), _text(answer.match or "")
        if not match:
            raise ExamInputError(
                f"{file}: matching question {label} has a pair with no answer after '->'",
                question=label,
            )
        if prompt:
            pairs.append(MatchPair(prompt=prompt, answer=match))
        else:
            # Moodle: a pair with an empty prompt offers a wrong answer to choose.
            distractors.append(match)
    if len(pairs) + len(distractors) < 2 or not pairs:
        raise ExamInputError(
            f"{file}: matching question {label} needs at least two pairs",
            question=label,
        )
    return Matching(**common, pairs=pairs, distractors=distractors)


def _short_answer(
    common: dict[str, Any], answers: list[_Answer], label: str, file: str
) -> ShortAnswer:
    texts = [_answer_text(a.text) for a in answers]
    if not any(texts):
        raise ExamInputError(
            f"{file}: short-answer question {label} has no answer text", question=label
        )
    weights = moodle_rules.check_fractions(
        label, [1.0 if a.weight is None else a.weight for a in answers], file=file
    )
    return ShortAnswer(
        **common,
        answers=[
            TextAnswer(text=text, weight=weight, feedback=_feedback(a), wildcards=True)
            for text, weight, a in zip(texts, weights, answers, strict=True)
        ],
    )


def _feedback(answer: _Answer) -> str | None:
    return _text(answer.feedback) or None if answer.feedback is not None else None


def _terminal_name(name: str) -> str:
    if name in _TERMINAL_NAMES:
        return _TERMINAL_NAMES[name]
    try:
        pattern = _parser().get_terminal(name).pattern
    except KeyError:
        return name
    return repr(pattern.value) if pattern.type == "str" else name


def _syntax_message(
    file: str, first_line: int, block: str, exc: UnexpectedInput
) -> str:
    """Say where a block stopped parsing and what was expected there."""
    line = first_line + (
        exc.line - 1 if getattr(exc, "line", None) not in (None, -1) else 0
    )
    column = getattr(exc, "column", None)
    where = f"line {line}" + (f", column {column}" if column not in (None, -1) else "")
    expected = sorted(
        {_terminal_name(t) for t in (getattr(exc, "expected", None) or ())}
    )
    start = block.splitlines()[0][:60]
    if isinstance(exc, UnexpectedEOF):
        found = "the end of the question"
    elif isinstance(exc, UnexpectedCharacters):
        found = (
            repr(block[exc.pos_in_stream])
            if exc.pos_in_stream < len(block)
            else "the end"
        )
    elif isinstance(exc, UnexpectedToken):
        found = (
            "the end of the question"
            if exc.token.type == "$END"
            else repr(str(exc.token))
        )
    else:
        found = "something unexpected"
    message = f"{file}: the GIFT question starting on line {first_line} ({start!r}) cannot be read: {found} at {where}"
    if expected:
        message += f"; expected {', '.join(expected[:8])}"
    if expected and set(expected) <= {"<END-OF-FILE>", _TERMINAL_NAMES["$END"]} and "\n" in block.strip():
        # The question before it was complete: most often two questions with no
        # blank line between them, which GIFT reads as one.
        message += " (separate questions with a blank line)"
    return message
