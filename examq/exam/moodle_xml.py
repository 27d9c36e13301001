"""Moodle XML importer (question/format/xml in Moodle), parsed with defusedxml.

A ``<quiz>`` holds ``<question type="...">`` elements. Read here as Moodle reads
them: ``<name><text>``, ``<questiontext format="html"><text>`` (CDATA or escaped,
HTML kept), ``<defaultgrade>`` as the points, ``<answer fraction="50">`` with a
percentage that must be one of Moodle's grades (the whole file is refused, naming the
question, when one is not), ``<single>`` for multichoice (``false`` or empty allows
several answers), ``<usecase>`` for short answers, ``<tolerance>`` for numerical
answers (``*`` accepts any number), ``<subquestion>`` pairs for matching (an empty one
offers a wrong answer), and ``type="category"`` entries setting the category of the
questions after them. Descriptions are skipped; types examq cannot grade (cloze,
calculated, drag and drop, ...) are refused by name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from xml.etree.ElementTree import Element

from examq.exam import moodle_rules
from examq.exam.errors import ExamInputError, question_values
from examq.exam.model import (
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
    id_key,
)
from examq.exam.text import finite_number, html_to_text, shorten
from examq.exam.xml import child, children, local_name, parse_xml

# Builds one question from its element, the fields every question has, its label
# and the file's name.
_Builder = Callable[[Element, dict[str, Any], str, str], Question]

_FORMATS: dict[str, TextFormat] = {
    "html": "html",
    "moodle_auto_format": "moodle",
    "plain_text": "plain",
    "markdown": "markdown",
    "wiki_like": "plain",
}


def parse_moodle_xml(
    data: bytes | str, *, name: str = "exam.xml", title: str | None = None
) -> Exam:
    """Import a Moodle XML file into the exam model.

    Raises ExamInputError naming the file and the question for unsafe or malformed
    XML, a grade Moodle does not allow, or a question type examq cannot grade.
    """
    root = parse_xml(data, name)
    if local_name(root) != "quiz":
        raise ExamInputError(
            f"{name}: a Moodle XML file has a <quiz> root, not <{local_name(root)}>"
        )

    gradable: list[tuple[Element, str, str | None, _Builder]] = []
    warnings: list[str] = []
    category: str | None = None
    for position, element in enumerate(children(root, "question"), start=1):
        kind = (element.get("type") or "").strip()
        if kind == "category":
            category = _text_of(child(element, "category")) or None
            continue
        if kind == "description":
            warnings.append(
                f"question {position}: a description was skipped (not a question)"
            )
            continue

        label = _label(element, position)
        builder = _BUILDERS.get(kind)
        if builder is None:
            raise ExamInputError(
                f"{name}: question {label} has type {kind!r}, which examq cannot grade"
                f" (it grades {', '.join(sorted(_BUILDERS))})",
                question=label,
            )
        gradable.append((element, label, category, builder))
    if not gradable:
        raise ExamInputError(f"{name}: the file has no questions examq can grade")

    ids = _question_ids([_idnumber(entry[0]) for entry in gradable])
    questions: list[Question] = []
    for (element, label, category, builder), question_id in zip(
        gradable, ids, strict=True
    ):
        with question_values(name, label):
            common = _common(element, question_id, category, label, name)
            questions.append(builder(element, common, label, name))
    _check_unique_ids(questions, name)
    return Exam(
        title=title, source_format="moodle_xml", questions=questions, warnings=warnings
    )


def _label(element: Element, position: int) -> str:
    """How messages name a question: its name as Moodle shows it (tags dropped), and its position."""
    name = html_to_text(_text_of(child(element, "name")))
    return f"'{name}' (question {position})" if name else f"{position}"


def _text_of(element: Element | None) -> str:
    """The trimmed content of an element's <text> child (CDATA and entities already resolved)."""
    if element is None:
        return ""
    text = child(element, "text")
    return (text.text or "").strip() if text is not None else ""


def _format_of(element: Element | None, default: TextFormat) -> TextFormat:
    if element is None or element.get("format") is None:
        return default
    return _FORMATS.get(element.get("format", "").strip(), "html")


def _number(element: Element, tag: str, default: float, label: str, file: str) -> float:
    node = child(element, tag)
    if node is None or not (node.text or "").strip():
        return default
    try:
        return finite_number(node.text.strip())
    except ValueError as exc:
        raise ExamInputError(
            f"{file}: question {label} has <{tag}> {shorten(node.text.strip(), 40)!r},"
            " not a finite number",
            question=label,
        ) from exc


def _fraction(answer: Element, label: str, file: str) -> float:
    raw = answer.get("fraction", "0").strip() or "0"
    try:
        return finite_number(raw) / 100
    except ValueError as exc:
        raise ExamInputError(
            f"{file}: question {label} has an answer fraction {shorten(raw, 40)!r},"
            " not a finite number",
            question=label,
        ) from exc


def _idnumber(element: Element) -> str:
    node = child(element, "idnumber")
    return (node.text or "").strip() if node is not None else ""


def _question_ids(idnumbers: list[str]) -> list[str]:
    """Each question's id: its idnumber, else ``Q`` and its position.

    A made-up id must not take an idnumber the file gives, or the two questions would
    be refused as duplicates (and a responses column could go to the wrong one). A
    question whose ``Q<position>`` is given to another gets the next ``Q<n>`` that no
    question has or would have, so every other question keeps its id.
    """
    given = {id_key(idnumber) for idnumber in idnumbers if idnumber}
    taken = given | {
        id_key(f"Q{position}")
        for position, idnumber in enumerate(idnumbers, start=1)
        if not idnumber
    }
    ids: list[str] = []
    for position, idnumber in enumerate(idnumbers, start=1):
        made_up = f"Q{position}"
        if not idnumber and id_key(made_up) in given:
            number = position + 1
            while id_key(f"Q{number}") in taken:
                number += 1
            made_up = f"Q{number}"
            taken.add(id_key(made_up))
        ids.append(idnumber or made_up)
    return ids


def _common(
    element: Element, question_id: str, category: str | None, label: str, file: str
) -> dict[str, Any]:
    questiontext = child(element, "questiontext")
    stem_format = _format_of(questiontext, "html")
    return {
        "id": question_id,
        "title": html_to_text(_text_of(child(element, "name"))) or None,
        "stem": _text_of(questiontext),
        "stem_format": stem_format,
        "points": max(0.0, _number(element, "defaultgrade", 1.0, label, file)),
        "category": category,
        "general_feedback": _text_of(child(element, "generalfeedback")) or None,
    }


def _feedback(answer: Element) -> str | None:
    return _text_of(child(answer, "feedback")) or None


def _multichoice(
    element: Element, common: dict[str, Any], label: str, file: str
) -> Question:
    answers = children(element, "answer")
    if len(answers) < 2:
        raise ExamInputError(
            f"{file}: multichoice question {label} needs at least two answers",
            question=label,
        )
    weights = moodle_rules.check_fractions(
        label, [_fraction(a, label, file) for a in answers], file=file
    )
    choices = [
        Choice(id=choice_letter(i), text=_text_of(a), weight=w, feedback=_feedback(a))
        for i, (a, w) in enumerate(zip(answers, weights, strict=True))
    ]
    # Moodle's trans_single: "false", "0" or empty allow several answers.
    single = (
        (child(element, "single").text or "").strip()
        if child(element, "single") is not None
        else "true"
    )
    if single in ("false", "0", ""):
        return MultipleResponse(**common, choices=choices)
    return SingleChoice(**common, choices=choices)


def _truefalse(
    element: Element, common: dict[str, Any], label: str, file: str
) -> TrueFalse:
    answers = children(element, "answer")
    if not answers:
        raise ExamInputError(
            f"{file}: true/false question {label} has no answers", question=label
        )
    correct: bool | None = None
    feedback: dict[bool, str | None] = {True: None, False: None}
    for index, answer in enumerate(answers[:2]):
        text = _text_of(answer).lower()
        # Old exports have localised texts; Moodle then assumes true first, false second.
        value = text == "true" if text in ("true", "false") else index == 0
        feedback[value] = _feedback(answer)
        if _fraction(answer, label, file) == 1.0:
            correct = value
    if correct is None:
        raise ExamInputError(
            f"{file}: true/false question {label} has no answer with fraction 100",
            question=label,
        )
    return TrueFalse(
        **common,
        correct=correct,
        feedback_true=feedback[True],
        feedback_false=feedback[False],
    )


def _shortanswer(
    element: Element, common: dict[str, Any], label: str, file: str
) -> ShortAnswer:
    answers = children(element, "answer")
    if not answers:
        raise ExamInputError(
            f"{file}: short-answer question {label} has no answers", question=label
        )
    weights = moodle_rules.check_fractions(
        label, [_fraction(a, label, file) for a in answers], file=file
    )
    usecase = (
        (child(element, "usecase").text or "0").strip()
        if child(element, "usecase") is not None
        else "0"
    )
    case_sensitive = usecase not in ("0", "", "false")
    return ShortAnswer(
        **common,
        answers=[
            TextAnswer(
                text=_text_of(a),
                weight=w,
                feedback=_feedback(a),
                case_sensitive=case_sensitive,
                wildcards=True,
            )
            for a, w in zip(answers, weights, strict=True)
        ],
    )


def _numerical(
    element: Element, common: dict[str, Any], label: str, file: str
) -> Numerical:
    answers = children(element, "answer")
    if not answers:
        raise ExamInputError(
            f"{file}: numerical question {label} has no answers", question=label
        )
    weights = moodle_rules.check_fractions(
        label, [_fraction(a, label, file) for a in answers], file=file
    )
    parsed: list[NumericAnswer] = []
    for answer, weight in zip(answers, weights, strict=True):
        text = _text_of(answer) or (answer.text or "").strip()
        if text == "*":
            parsed.append(NumericAnswer(weight=weight, feedback=_feedback(answer)))
            continue
        try:
            value = finite_number(text)
        except ValueError as exc:
            raise ExamInputError(
                f"{file}: numerical question {label} has the answer"
                f" {shorten(text, 40)!r}, not a finite number",
                question=label,
            ) from exc
        tolerance = abs(_number(answer, "tolerance", 0.0, label, file))
        parsed.append(
            NumericAnswer(
                value=value,
                tolerance=tolerance,
                weight=weight,
                feedback=_feedback(answer),
            )
        )
    return Numerical(**common, answers=parsed)


def _match(element: Element, common: dict[str, Any], label: str, file: str) -> Matching:
    pairs: list[MatchPair] = []
    distractors: list[str] = []
    for subquestion in children(element, "subquestion"):
        prompt = _text_of(subquestion)
        answer = _text_of(child(subquestion, "answer"))
        if not answer:
            continue
        if prompt:
            pairs.append(MatchPair(prompt=prompt, answer=answer))
        else:
            distractors.append(answer)
    if not pairs:
        raise ExamInputError(
            f"{file}: matching question {label} has no pairs", question=label
        )
    return Matching(**common, pairs=pairs, distractors=distractors)


def _essay(element: Element, common: dict[str, Any], label: str, file: str) -> Essay:
    return Essay(**common)


_BUILDERS: dict[str, _Builder] = {
    "multichoice": _multichoice,
    "truefalse": _truefalse,
    "shortanswer": _shortanswer,
    "numerical": _numerical,
    "matching": _match,
    "essay": _essay,
}


def _check_unique_ids(questions: list[Question], file: str) -> None:
    seen: set[str] = set()
    for question in questions:
        if id_key(question.id) in seen:
            raise ExamInputError(
                f"{file}: two questions have the idnumber {question.id!r};"
                " idnumbers must be unique"
            )
        seen.add(id_key(question.id))
