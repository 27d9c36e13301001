"""Classical test theory statistics over a scored matrix (students x items).

Every function takes the scores as a 2-D array-like, one row per student and one
column per item, holding 0/1 or partial-credit numbers, and returns plain Python
floats (or lists of them) so that results go into JSON unchanged. A statistic that
the data leave undefined (a zero variance, too few students or items) is ``None``,
never NaN. Variances are sample variances (``ddof=1``) throughout, so that KR-20
equals Cronbach's alpha on dichotomous data.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike


def total_scores(scores: ArrayLike) -> list[float]:
    """Return each student's total score (the sum of their row)."""
    return [float(total) for total in _as_matrix(scores).sum(axis=1)]


def mean_and_sd(totals: ArrayLike) -> tuple[float | None, float | None]:
    """Return the mean and sample SD (ddof=1) of the totals; None where undefined."""
    values = np.asarray(totals, dtype=float)
    if values.size == 0:
        return None, None

    mean = _plain(values.mean())
    if values.size < 2:
        return mean, None

    return mean, _plain(values.std(ddof=1))


def item_difficulty(
    scores: ArrayLike, item_max: float | Sequence[float] = 1.0
) -> list[float | None]:
    """Return each item's difficulty p: mean item score over the item's maximum.

    ``item_max`` is one maximum for every item or one per item; for 0/1 items the
    default of 1 makes p the proportion of students who answered correctly.
    Raises ValueError if a maximum is not positive or their count does not match.
    """
    matrix = _as_matrix(scores)
    maxima = np.broadcast_to(np.asarray(item_max, dtype=float), (matrix.shape[1],))
    if np.any(maxima <= 0):
        raise ValueError("every item maximum must be positive")
    if matrix.shape[0] == 0:
        return [None] * matrix.shape[1]

    return [_plain(p) for p in matrix.mean(axis=0) / maxima]


def item_rest_correlations(scores: ArrayLike) -> list[float | None]:
    """Return each item's corrected item-rest correlation.

    That is the Pearson correlation of the item with the total minus the item. It
    is None when the item or the rest score does not vary, as with one student.
    """
    matrix = _as_matrix(scores)
    rest = matrix.sum(axis=1, keepdims=True) - matrix

    correlations: list[float | None] = []
    for item in range(matrix.shape[1]):
        item_scores, rest_scores = matrix[:, item], rest[:, item]
        # Checking for constant columns first keeps np.corrcoef from dividing by a
        # zero standard deviation, which warns and yields NaN.
        if _is_constant(item_scores) or _is_constant(rest_scores):
            correlations.append(None)
            continue
        correlations.append(_plain(np.corrcoef(item_scores, rest_scores)[0, 1]))

    return correlations


def cronbach_alpha(scores: ArrayLike) -> float | None:
    """Return Cronbach's alpha with sample variances (ddof=1).

    Alpha is None with fewer than two students or two items, or when every student
    has the same total.
    """
    matrix = _as_matrix(scores)
    students, items = matrix.shape
    if students < 2 or items < 2:
        return None

    totals = matrix.sum(axis=1)
    if _is_constant(totals):
        return None

    item_variance_sum = matrix.var(axis=0, ddof=1).sum()
    return _plain(items / (items - 1) * (1 - item_variance_sum / totals.var(ddof=1)))


def kr20(scores: ArrayLike) -> float | None:
    """Return KR-20 for dichotomous (0/1) scores; None where alpha is undefined.

    The item variances p*q are rescaled by n/(n-1) to match the sample variance of
    the totals, so KR-20 equals ``cronbach_alpha`` on the same 0/1 data.
    Raises ValueError if a score is neither 0 nor 1.
    """
    matrix = _as_matrix(scores)
    if not np.isin(matrix, (0.0, 1.0)).all():
        raise ValueError("KR-20 needs dichotomous scores (every score 0 or 1)")
    students, items = matrix.shape
    if students < 2 or items < 2:
        return None

    totals = matrix.sum(axis=1)
    if _is_constant(totals):
        return None

    p = matrix.mean(axis=0)
    pq_sum = (p * (1 - p)).sum() * students / (students - 1)
    return _plain(items / (items - 1) * (1 - pq_sum / totals.var(ddof=1)))


def alpha_if_deleted(scores: ArrayLike) -> list[float | None]:
    """Return, for each item, Cronbach's alpha of the other items; None if undefined."""
    matrix = _as_matrix(scores)
    return [
        cronbach_alpha(np.delete(matrix, item, axis=1))
        for item in range(matrix.shape[1])
    ]


def _as_matrix(scores: ArrayLike) -> np.ndarray:
    """Return the scores as a 2-D float array; raise ValueError if they are not one."""
    matrix = np.asarray(scores, dtype=float)
    if matrix.ndim != 2:
        raise ValueError(f"scores must be a 2-D matrix, got {matrix.ndim} dimension(s)")
    if not np.isfinite(matrix).all():
        raise ValueError("scores must be finite numbers (no NaN or infinity)")
    return matrix


def _is_constant(values: np.ndarray) -> bool:
    """Tell whether every value is the same (so its variance is zero)."""
    # np.ptp is exact where a computed variance of equal floats can come out as a
    # tiny positive number and turn an undefined statistic into a huge one.
    return values.size == 0 or np.ptp(values) == 0


def _plain(value: float) -> float | None:
    """Return a numpy scalar as a Python float, or None if it is not finite."""
    number = float(value)
    return number if math.isfinite(number) else None
