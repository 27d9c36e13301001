"""Tests of examq.analysis: classical test theory statistics over a scored matrix."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from examq import analysis

# Four students, three items: hand-computed item variances 1/4, 1/3, 1/4 (ddof=1),
# total variance 5/3, so alpha = 3/2 * (1 - (5/6) / (5/3)) = 0.75.
STAIRCASE = [[1, 1, 1], [1, 1, 0], [1, 0, 0], [0, 0, 0]]


def _generated_scores(seed: int, students: int = 200, items: int = 12) -> np.ndarray:
    """Return 0/1 scores from a seeded one-parameter model, so items correlate."""
    rng = np.random.default_rng(seed)
    ability = rng.normal(size=(students, 1))
    difficulty = rng.normal(size=(1, items))
    p_correct = 1 / (1 + np.exp(-(ability - difficulty)))
    return (rng.random((students, items)) < p_correct).astype(float)


def _alpha_from_covariance(scores: np.ndarray) -> float:
    """Compute alpha from the covariance matrix C: k/(k-1) * (1 - trace(C) / sum(C))."""
    covariance = np.cov(scores, rowvar=False, ddof=1)
    items = scores.shape[1]
    return items / (items - 1) * (1 - np.trace(covariance) / covariance.sum())


def test_total_scores_sums_each_student_row() -> None:
    assert analysis.total_scores([[1, 0, 1], [0.5, 0.5, 0]]) == [2.0, 1.0]


def test_mean_and_sd_uses_the_sample_sd() -> None:
    mean, sd = analysis.mean_and_sd([2, 4, 4, 4, 5, 5, 7, 9])

    assert mean == 5.0
    assert sd == pytest.approx(math.sqrt(32 / 7))


def test_mean_and_sd_leaves_undefined_values_none() -> None:
    assert analysis.mean_and_sd([7]) == (7.0, None)
    assert analysis.mean_and_sd([]) == (None, None)


def test_item_difficulty_is_the_proportion_correct_on_dichotomous_items() -> None:
    assert analysis.item_difficulty(STAIRCASE) == [0.75, 0.5, 0.25]


def test_item_difficulty_divides_partial_credit_by_the_item_maximum() -> None:
    scores = [[0.5, 2.0], [1.0, 4.0], [0.0, 3.0]]

    assert analysis.item_difficulty(scores, item_max=[1.0, 4.0]) == pytest.approx(
        [0.5, 0.75]
    )


def test_item_difficulty_rejects_a_non_positive_maximum() -> None:
    with pytest.raises(ValueError, match="positive"):
        analysis.item_difficulty(STAIRCASE, item_max=0)


def test_cronbach_alpha_matches_a_hand_computed_value() -> None:
    assert analysis.cronbach_alpha(STAIRCASE) == pytest.approx(0.75)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_cronbach_alpha_matches_the_covariance_formula(seed: int) -> None:
    scores = _generated_scores(seed)

    assert analysis.cronbach_alpha(scores) == pytest.approx(
        _alpha_from_covariance(scores), abs=1e-12
    )


def test_cronbach_alpha_matches_the_covariance_formula_on_partial_credit() -> None:
    rng = np.random.default_rng(7)
    scores = _generated_scores(7) * rng.choice([0.5, 1.0], size=(200, 12))

    assert analysis.cronbach_alpha(scores) == pytest.approx(
        _alpha_from_covariance(scores), abs=1e-12
    )


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_kr20_equals_alpha_on_dichotomous_scores(seed: int) -> None:
    scores = _generated_scores(seed)

    assert analysis.kr20(scores) == pytest.approx(
        analysis.cronbach_alpha(scores), abs=1e-12
    )


def test_kr20_matches_the_textbook_population_formula() -> None:
    # The textbook KR-20 pairs p*q with the population variance of the totals; the
    # n/(n-1) factors of the sample convention cancel, so the values agree.
    scores = _generated_scores(4)
    p = scores.mean(axis=0)
    items = scores.shape[1]
    textbook = (
        items / (items - 1) * (1 - (p * (1 - p)).sum() / scores.sum(axis=1).var())
    )

    assert analysis.kr20(scores) == pytest.approx(textbook, abs=1e-12)


def test_kr20_rejects_partial_credit() -> None:
    with pytest.raises(ValueError, match="dichotomous"):
        analysis.kr20([[0.5, 1], [1, 0], [0, 1]])


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_item_rest_correlations_match_numpy_corrcoef(seed: int) -> None:
    scores = _generated_scores(seed)
    rest = scores.sum(axis=1, keepdims=True) - scores
    # Rows 0..k-1 of the joint correlation matrix are the items, rows k..2k-1 the rests.
    joint = np.corrcoef(np.hstack([scores, rest]), rowvar=False)
    items = scores.shape[1]
    expected = [joint[item, items + item] for item in range(items)]

    assert analysis.item_rest_correlations(scores) == pytest.approx(expected, abs=1e-12)


def test_item_rest_correlations_match_the_covariance_identity() -> None:
    # r(i, T - i) = (cov(i, T) - var(i)) / sqrt(var(i) * var(T - i)), with
    # var(T - i) = var(T) + var(i) - 2 cov(i, T): no correlation routine involved.
    scores = _generated_scores(5)
    covariance = np.cov(
        np.hstack([scores, scores.sum(axis=1, keepdims=True)]), rowvar=False
    )
    item_variance = np.diag(covariance)[:-1]
    item_total = covariance[:-1, -1]
    rest_variance = covariance[-1, -1] + item_variance - 2 * item_total
    expected = (item_total - item_variance) / np.sqrt(item_variance * rest_variance)

    assert analysis.item_rest_correlations(scores) == pytest.approx(
        list(expected), abs=1e-12
    )


@pytest.mark.parametrize("seed", [1, 2])
def test_alpha_if_deleted_is_the_alpha_of_the_other_items(seed: int) -> None:
    scores = _generated_scores(seed)
    expected = [
        _alpha_from_covariance(np.delete(scores, item, axis=1))
        for item in range(scores.shape[1])
    ]

    assert analysis.alpha_if_deleted(scores) == pytest.approx(expected, abs=1e-12)


@pytest.mark.filterwarnings("error")
def test_undefined_statistics_are_none_without_warnings() -> None:
    constant_item = [[1, 1, 0], [1, 0, 1], [1, 1, 1]]
    same_totals = [[1, 0], [0, 1], [1, 0]]

    assert analysis.item_rest_correlations(constant_item)[0] is None
    assert analysis.cronbach_alpha([[1, 0, 1]]) is None
    assert analysis.kr20([[1, 0, 1]]) is None
    assert analysis.cronbach_alpha([[1], [0], [1]]) is None
    assert analysis.kr20([[1], [0], [1]]) is None
    assert analysis.cronbach_alpha(same_totals) is None
    assert analysis.kr20(same_totals) is None
    assert analysis.alpha_if_deleted([[1, 0], [0, 0], [1, 1]]) == [None, None]
    assert analysis.item_rest_correlations([[1, 0, 1]]) == [None, None, None]


def test_results_are_plain_json_floats() -> None:
    scores = _generated_scores(6, students=40, items=5)
    scores[:, 0] = 1.0  # A constant item: its statistics must be None, not NaN.
    values = [
        *analysis.total_scores(scores),
        *analysis.mean_and_sd(analysis.total_scores(scores)),
        *analysis.item_difficulty(scores),
        *analysis.item_rest_correlations(scores),
        *analysis.alpha_if_deleted(scores),
        analysis.cronbach_alpha(scores),
        analysis.kr20(scores),
    ]

    assert all(value is None or type(value) is float for value in values)
    assert None in values
    json.dumps(values, allow_nan=False)


@pytest.mark.parametrize(
    ("scores", "message"),
    [([1, 0, 1], "2-D"), ([[1, float("nan")], [0, 1]], "finite")],
)
def test_analysis_rejects_scores_that_are_not_a_finite_matrix(
    scores: list, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        analysis.cronbach_alpha(scores)
