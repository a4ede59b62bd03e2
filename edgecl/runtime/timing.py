"""Wall time of each runtime stage and the process's peak resident memory."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import psutil

STAGES = ("backbone", "update", "predict")


class StageTimer:
    """Collects per-call durations (ms) of each stage and samples RSS after each call."""

    def __init__(self) -> None:
        self.samples_ms: dict[str, list[float]] = {stage: [] for stage in STAGES}
        self._process = psutil.Process()
        self.peak_rss_bytes = self._process.memory_info().rss

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.samples_ms[name].append((time.perf_counter() - start) * 1000.0)
            self.sample_rss()

    def sample_rss(self) -> None:
        self.peak_rss_bytes = max(self.peak_rss_bytes, self._process.memory_info().rss)

    def summary(self) -> dict[str, dict[str, float]]:
        """p50 / p95 / max in ms for each stage (zeros for a stage that never ran)."""
        out = {}
        for stage, values in self.samples_ms.items():
            if values:
                arr = np.asarray(values)
                out[stage] = {"p50": float(np.percentile(arr, 50)),
                              "p95": float(np.percentile(arr, 95)),
                              "max": float(arr.max()), "count": len(values)}
            else:
                out[stage] = {"p50": 0.0, "p95": 0.0, "max": 0.0, "count": 0}
        return out
