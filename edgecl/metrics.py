"""Continual-learning metrics over an accuracy matrix, and streaming accuracy.

``matrix[i][j]`` is the accuracy on experience j's test set after learning experience i
(Lopez-Paz & Ranzato 2017; Chaudhry et al. 2018 for forgetting). Entries for experiences
with an empty test set are NaN and are skipped by every mean.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edgecl.errors import UsageError


def _as_matrix(matrix: Sequence[Sequence[float]]) -> np.ndarray:
    try:
        m = np.asarray(matrix, dtype=float)
    except (ValueError, TypeError):
        raise UsageError("an accuracy matrix must be square and non-empty, "
                         "with one number per entry") from None
    if m.ndim != 2 or m.shape[0] == 0 or m.shape[0] != m.shape[1]:
        raise UsageError(f"an accuracy matrix must be square and non-empty, got shape {m.shape}")
    return m


def _nanmean(values: np.ndarray) -> float:
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else float("nan")


def final_accuracy(matrix: Sequence[Sequence[float]]) -> float:
    """Mean accuracy over every experience after the last one was learned."""
    return _nanmean(_as_matrix(matrix)[-1])


def average_accuracy(matrix: Sequence[Sequence[float]]) -> float:
    """Mean over steps i of the mean accuracy on experiences 0..i (seen so far)."""
    m = _as_matrix(matrix)
    return _nanmean(np.array([_nanmean(m[i, : i + 1]) for i in range(len(m))]))


def forgetting(matrix: Sequence[Sequence[float]]) -> float:
    """Mean over experiences j < T-1 of (best accuracy on j before the end − final on j)."""
    m = _as_matrix(matrix)
    if len(m) < 2:
        return 0.0
    drops = [np.nanmax(m[j:-1, j]) - m[-1, j] if not np.isnan(m[j:-1, j]).all() else np.nan
             for j in range(len(m) - 1)]
    return _nanmean(np.array(drops))


def backward_transfer(matrix: Sequence[Sequence[float]]) -> float:
    """Mean over experiences j < T-1 of (final accuracy on j − accuracy just after learning j)."""
    m = _as_matrix(matrix)
    if len(m) < 2:
        return 0.0
    return _nanmean(np.array([m[-1, j] - m[j, j] for j in range(len(m) - 1)]))


class StreamingAccuracy:
    """Test-then-train (prequential) accuracy: predict each sample before learning it."""

    def __init__(self) -> None:
        self.correct = 0
        self.total = 0

    def update(self, predicted: np.ndarray, target: np.ndarray) -> None:
        predicted, target = np.asarray(predicted), np.asarray(target)
        self.correct += int((predicted == target).sum())
        self.total += int(target.size)

    @property
    def value(self) -> float:
        return self.correct / self.total if self.total else float("nan")


def summarize(matrix: Sequence[Sequence[float]]) -> dict[str, float]:
    return {
        "final_accuracy": final_accuracy(matrix),
        "average_accuracy": average_accuracy(matrix),
        "forgetting": forgetting(matrix),
        "bwt": backward_transfer(matrix),
    }
