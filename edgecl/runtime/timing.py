"""Wall time of each runtime stage and the process's peak resident memory.

Memory stays flat however long the stream: each stage keeps its last ``window`` durations
in a fixed ring (percentiles are over that window) plus exact running counts, the maximum
and, for a stage with a budget, how many calls went over it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import psutil
import torch

from edgecl._state import json_tensor, tensor_entry, tensor_json, under_prefix, with_prefix
from edgecl.errors import CheckpointError

STAGES = ("backbone", "update", "predict")
OVERRUN_TOLERANCE = 1.2  # "far over budget": more than 20% over (the target)


class StageLatency:
    """Durations of one stage: a ring of the most recent ones plus exact totals."""

    def __init__(self, window: int) -> None:
        self._ring = np.zeros(window, dtype=np.float64)
        self.count = 0
        self.max_ms = 0.0
        self.budget_ms: float | None = None
        self.n_over = 0        # calls longer than the budget
        self.n_far_over = 0    # calls longer than the budget x OVERRUN_TOLERANCE

    def record(self, ms: float) -> None:
        self._ring[self.count % len(self._ring)] = ms
        self.count += 1
        self.max_ms = max(self.max_ms, ms)
        if self.budget_ms is not None:
            self.n_over += ms > self.budget_ms
            self.n_far_over += ms > self.budget_ms * OVERRUN_TOLERANCE

    def recent(self) -> np.ndarray:
        """The durations in the window, oldest first."""
        n = min(self.count, len(self._ring))
        start = self.count % len(self._ring) if self.count > len(self._ring) else 0
        return np.roll(self._ring, -start)[:n]

    def summary(self) -> dict[str, float]:
        values = self.recent()
        if not values.size:
            return {"p50": 0.0, "p95": 0.0, "max": 0.0, "count": 0}
        return {"p50": float(np.percentile(values, 50)), "p95": float(np.percentile(values, 95)),
                "max": self.max_ms, "count": self.count}

    def state_dict(self) -> dict[str, torch.Tensor]:
        totals = {"count": self.count, "max_ms": self.max_ms, "n_over": self.n_over,
                  "n_far_over": self.n_far_over}
        return {"ring": torch.from_numpy(self._ring.copy()), "totals": json_tensor(totals)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        ring = tensor_entry(state, "ring", what="timer", shape=self._ring.shape,
                            dtype=torch.float64)
        totals = tensor_json(state.get("totals"), what="timer totals")
        try:
            count, max_ms = int(totals["count"]), float(totals["max_ms"])
            n_over, n_far_over = int(totals["n_over"]), int(totals["n_far_over"])
        except (KeyError, TypeError, ValueError):
            raise CheckpointError("timer checkpoint totals are malformed") from None
        self._ring[:] = ring.numpy()
        self.count, self.max_ms, self.n_over, self.n_far_over = count, max_ms, n_over, n_far_over


class StageTimer:
    """Times each stage per call and samples RSS after each call."""

    def __init__(self, *, window: int = 50_000) -> None:
        self.stages = {stage: StageLatency(window) for stage in STAGES}
        self._process = psutil.Process()
        self.peak_rss_bytes = self._process.memory_info().rss

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.record(name, (time.perf_counter() - start) * 1000.0)

    def record(self, name: str, ms: float) -> None:
        self.stages[name].record(ms)
        self.sample_rss()

    def sample_rss(self) -> None:
        self.peak_rss_bytes = max(self.peak_rss_bytes, self._process.memory_info().rss)

    def summary(self) -> dict[str, dict[str, float]]:
        """p50 / p95 (over the recent window) and max (over the run) in ms, per stage."""
        return {stage: latency.summary() for stage, latency in self.stages.items()}

    def state_dict(self) -> dict[str, torch.Tensor]:
        state: dict[str, torch.Tensor] = {}
        for stage, latency in self.stages.items():
            state.update(with_prefix(stage, latency.state_dict()))
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for stage, latency in self.stages.items():
            latency.load_state_dict(under_prefix(stage, state))
