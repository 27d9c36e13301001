"""Classical item analysis of a scored exam, built on ``examq.analysis``.

For every gradable question: difficulty p (mean points over the most a response can
earn), the corrected item-rest correlation, Cronbach's alpha if the item is deleted,
and for choice questions the distractor table (how many students chose each option,
left it blank, or wrote something that is no option, and their mean total). For the
exam: mean, SD, the five-number summary, a histogram of totals, Cronbach's alpha,
KR-20 when every item is scored 0/1, and the standard error of measurement.

Missing answers. ``missing_policy="zero"`` (the default) scores a blank as 0, as a
mark sheet does, and every statistic uses every student. ``"listwise"`` keeps the
totals but computes the item and reliability statistics only on students who
answered every gradable question (what statistics packages call listwise deletion);
with it, no statistic mixes students who skipped with those who did not.

Flags. An item is flagged ``negative`` when its item-rest correlation is below 0
(stronger students do worse on it: often a wrong key), ``near zero`` when it is
below 0.10 (it does not tell stronger from weaker students), and ``no variance``
when everyone scored the same on it.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, Literal

import numpy as np

from examq import analysis
from examq.exam.model import CHOICE_TYPES, MultipleResponse, SingleChoice, TrueFalse
from examq.exam.scoring import BLANK, ScoredExam
from examq.exam.text import plain_text, shorten

MissingPolicy = Literal["zero", "listwise"]
NEAR_ZERO_R = 0.10

MISSING_RULES = {
    "zero": "A blank or missing answer scores 0; every statistic uses every student.",
    "listwise": (
        "A blank or missing answer scores 0 in the totals; item and reliability statistics"
        " use only the students who answered every gradable question."
    ),
}
FLAG_RULE = (
    "Flagged: item-rest correlation below 0 (negative discrimination) or below 0.10"
    " (near-zero discrimination), or no variance."
)


def analyse(
    scored: ScoredExam, *, missing_policy: MissingPolicy = "zero"
) -> dict[str, Any]:
    """Return the summary, item table, distractors and score distribution as JSON-ready data."""
    if missing_policy not in MISSING_RULES:
        raise ValueError(
            f"missing_policy must be zero or listwise, not {missing_policy!r}"
        )
    points = scored.points
    totals = points.sum(axis=1)

    rows = np.ones(len(scored.student_ids), dtype=bool)
    if missing_policy == "listwise":
        rows = ~scored.blank.any(axis=1)
    used = points[rows]
    item_max = [m if m > 0 else 1.0 for m in scored.max_points]

    p_values = (
        analysis.item_difficulty(used, item_max)
        if len(used)
        else [None] * len(scored.questions)
    )
    item_rest = analysis.item_rest_correlations(used)
    alpha_without = analysis.alpha_if_deleted(used)
    alpha = analysis.cronbach_alpha(used)
    kr20 = analysis.kr20(used) if _is_dichotomous(used, scored.max_points) else None

    mean, sd = analysis.mean_and_sd(totals)
    summary = {
        "students": len(scored.student_ids),
        "students_in_statistics": int(rows.sum()),
        "items": len(scored.questions),
        "max_score": _plain(sum(scored.max_points)),
        "mean": mean,
        "sd": sd,
        "min": _plain(totals.min()),
        "q1": _plain(np.percentile(totals, 25)),
        "median": _plain(np.median(totals)),
        "q3": _plain(np.percentile(totals, 75)),
        "max": _plain(totals.max()),
        "alpha": alpha,
        "kr20": kr20,
        "sem": _plain(sd * math.sqrt(1 - alpha))
        if sd is not None and alpha is not None and alpha <= 1
        else None,
        "missing_answers": int(scored.blank.sum()),
        "missing_policy": missing_policy,
    }

    items = []
    for index, question in enumerate(scored.questions):
        r = item_rest[index]
        items.append(
            {
                "item": question.id,
                "title": question.title,
                "stem": shorten(plain_text(question.stem, question.stem_format), 160),
                "type": question.type,
                "points": question.points,
                "max_points": scored.max_points[index],
                "key": _key(question),
                "p": p_values[index],
                "mean_points": _plain(used[:, index].mean()) if len(used) else None,
                "item_rest_r": r,
                "alpha_if_deleted": alpha_without[index],
                "blanks": int(scored.blank[:, index].sum()),
                "flag": _flag(r),
                "distractors": _distractors(scored, index, totals)
                if question.type in CHOICE_TYPES
                else None,
            }
        )

    return {
        "summary": summary,
        "items": items,
        "distribution": _distribution(totals, float(sum(scored.max_points))),
        "rules": {"missing": MISSING_RULES[missing_policy], "flags": FLAG_RULE},
    }


def _is_dichotomous(points: np.ndarray, maxima: list[float]) -> bool:
    """KR-20 applies when every item is worth 1 and every score is 0 or 1."""
    return (
        bool(len(points))
        and all(m == 1.0 for m in maxima)
        and bool(np.isin(points, (0.0, 1.0)).all())
    )


def _flag(r: float | None) -> str | None:
    if r is None:
        return "no variance"
    if r < 0:
        return "negative"
    if r < NEAR_ZERO_R:
        return "near zero"
    return None


def _key(question: Any) -> str | None:
    """The right answer(s) in a short form, for the item table."""
    if isinstance(question, TrueFalse):
        return "True" if question.correct else "False"
    if isinstance(question, SingleChoice):
        best = max(c.weight for c in question.choices)
        return (
            ", ".join(c.id for c in question.choices if c.weight == best and best > 0)
            or None
        )
    if isinstance(question, MultipleResponse):
        return ", ".join(c.id for c in question.choices if c.weight > 0) or None
    return None


# Answers that name no option are listed one by one, the most frequent first, up to
# this many; the rest are counted together.
_MAX_OTHER_ANSWERS = 8
OTHER = "(other)"


def _distractors(
    scored: ScoredExam, index: int, totals: np.ndarray
) -> list[dict[str, Any]]:
    """Each option's count, share and choosers' mean total; other answers, then blanks, last."""
    question = scored.questions[index]
    chosen = scored.selections[question.id]
    if isinstance(question, TrueFalse):
        options = [
            ("True", "True", question.correct),
            ("False", "False", not question.correct),
        ]
    else:
        options = [
            (c.id, shorten(plain_text(c.text, question.stem_format), 60), c.weight > 0)
            for c in question.choices  # type: ignore[union-attr]
        ]
    known = {option for option, _, _ in options}
    others = Counter(
        pick
        for picks in chosen
        for pick in picks
        if pick not in known and pick != BLANK
    )
    listed = [value for value, _ in others.most_common(_MAX_OTHER_ANSWERS)]
    # A key CSV lists only the right answer, so the other letters are its distractors.
    from_key = scored.exam.source_format == "key_csv"
    if from_key:
        listed.sort()
    options += [(value, "" if from_key else "not an option", False) for value in listed]
    rest = set(others) - set(listed)

    students = len(chosen)
    table = []
    for option, text, is_key in options + [
        (OTHER, "other answers", False),
        (BLANK, "left blank", False),
    ]:
        if option == OTHER:
            mask = np.array(
                [any(p in rest for p in picks) for picks in chosen], dtype=bool
            )
        else:
            mask = np.array([option in picks for picks in chosen], dtype=bool)
        count = int(mask.sum())
        if option in (BLANK, OTHER) and count == 0:
            continue
        table.append(
            {
                "option": option,
                "text": text,
                "is_key": is_key,
                "count": count,
                "proportion": count / students if students else None,
                "mean_total": _plain(totals[mask].mean()) if count else None,
            }
        )
    return table


def _distribution(totals: np.ndarray, max_score: float) -> dict[str, Any]:
    """A histogram of totals: one bin per point when totals are whole, else up to 20 bins."""
    low = min(0.0, float(totals.min()))
    high = max(max_score, float(totals.max()))
    whole = bool(np.all(totals == np.round(totals))) and high - low <= 60
    if whole:
        edges = np.arange(math.floor(low), math.floor(high) + 2) - 0.5
    else:
        edges = np.linspace(low, high if high > low else low + 1, 21)
    counts, edges = np.histogram(totals, bins=edges)
    return {
        "whole_points": whole,
        "bins": [
            {"low": _plain(a), "high": _plain(b), "count": int(c)}
            for a, b, c in zip(edges[:-1], edges[1:], counts, strict=True)
        ],
    }


def _plain(value: Any) -> float | None:
    number = float(value)
    return number if math.isfinite(number) else None
