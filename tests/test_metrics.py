"""Continual-learning metrics over an accuracy matrix, checked against hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgecl.errors import UsageError
from edgecl.metrics import (
    StreamingAccuracy,
    average_accuracy,
    backward_transfer,
    final_accuracy,
    forgetting,
    summarize,
)

NAN = float("nan")

# Row i: accuracies after learning experience i; column j: test set of experience j.
MATRIX = [
    [0.90, 0.90, 0.00],  # 0.90 on experience 1 before it was learned: not knowledge to forget
    [0.95, 0.80, 0.20],
    [0.50, 0.60, 0.90],
]
# final:      (0.50 + 0.60 + 0.90) / 3                          = 0.666667
# average:    (0.90 + (0.95 + 0.80) / 2 + 0.666667) / 3
#             = (0.90 + 0.875 + 0.666667) / 3                    = 0.813889
# forgetting: exp 0: max(0.90, 0.95) - 0.50 = 0.45
#             exp 1: max(0.80)       - 0.60 = 0.20  (row 0 does not count)
#             mean                                                = 0.325
# bwt:        exp 0: 0.50 - 0.90 = -0.40; exp 1: 0.60 - 0.80 = -0.20; mean = -0.30

# Experience 1 had an empty test set: its column is NaN and every mean skips it.
WITH_NAN = [
    [0.9, NAN, 0.0],
    [0.7, NAN, 0.1],
    [0.6, NAN, 0.8],
]
# final:      (0.6 + 0.8) / 2                 = 0.7
# average:    (0.9 + 0.7 + (0.6 + 0.8) / 2) / 3 = 2.3 / 3 = 0.766667
# forgetting: exp 0: max(0.9, 0.7) - 0.6 = 0.3; exp 1 skipped -> 0.3
# bwt:        exp 0: 0.6 - 0.9 = -0.3;          exp 1 skipped -> -0.3


def test_final_accuracy() -> None:
    assert final_accuracy(MATRIX) == pytest.approx(2.0 / 3.0)


def test_average_accuracy_averages_over_experiences_seen_so_far() -> None:
    assert average_accuracy(MATRIX) == pytest.approx(0.813889, abs=1e-6)


def test_forgetting_is_the_drop_from_the_best_accuracy_since_learning() -> None:
    assert forgetting(MATRIX) == pytest.approx(0.325)


def test_backward_transfer_compares_final_with_just_learned() -> None:
    assert backward_transfer(MATRIX) == pytest.approx(-0.30)


def test_nan_entries_are_skipped() -> None:
    assert summarize(WITH_NAN) == pytest.approx({
        "final_accuracy": 0.7,
        "average_accuracy": 2.3 / 3,
        "forgetting": 0.3,
        "bwt": -0.3,
    })


def test_all_nan_gives_nan_not_an_error() -> None:
    all_nan = [[NAN, NAN], [NAN, NAN]]
    for metric in (final_accuracy, average_accuracy, forgetting, backward_transfer):
        assert math.isnan(metric(all_nan))


def test_one_experience_has_nothing_to_forget() -> None:
    assert final_accuracy([[0.8]]) == pytest.approx(0.8)
    assert average_accuracy([[0.8]]) == pytest.approx(0.8)
    assert forgetting([[0.8]]) == 0.0
    assert backward_transfer([[0.8]]) == 0.0


def test_metrics_accept_a_numpy_matrix_and_do_not_modify_it() -> None:
    m = np.array(MATRIX)
    before = m.copy()
    assert forgetting(m) == pytest.approx(0.325)
    assert np.array_equal(m, before)


@pytest.mark.parametrize("bad", [[[0.9, 0.8, 0.7], [0.6, 0.5, 0.4]], [], [0.9, 0.8],
                                 np.zeros((2, 2, 2))])
@pytest.mark.parametrize("metric", [final_accuracy, average_accuracy, forgetting,
                                    backward_transfer])
def test_a_matrix_that_is_not_square_raises_usage_error(bad, metric) -> None:
    with pytest.raises(UsageError, match="must be square and non-empty"):
        metric(bad)


def test_a_ragged_matrix_raises_usage_error() -> None:
    with pytest.raises(UsageError, match="square"):
        final_accuracy([[0.9], [0.8, 0.7]])


def test_streaming_accuracy_counts_correct_predictions() -> None:
    acc = StreamingAccuracy()
    assert math.isnan(acc.value)  # nothing seen yet

    acc.update(np.array([1, 2, 3]), np.array([1, 0, 3]))
    assert (acc.correct, acc.total) == (2, 3)
    acc.update(4, 4)  # one sample at a time, as test-then-train does
    acc.update([0, 0], [1, 1])
    assert (acc.correct, acc.total) == (3, 6)
    assert acc.value == pytest.approx(0.5)
