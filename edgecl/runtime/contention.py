"""Other processes on the same cores: how much of an update they stole, and how many
threads the learner should use while they are there.

A device that runs ROS nodes, a camera pipeline or a web server beside the learner shares
its cores. The wall time of an update then holds two things: the update's own work, and
the time the thread sat runnable while another process had the CPU. Only the first is the
update's cost; a cost model that learns the second grows its error margin without bound
and stops the learner (`edgecl learn --profile rpi4 --scenario online` beside two busy
loops planned "nothing fits" for most samples before this module existed).

    UpdateClock     wall time of an interval and the part of it stolen by other processes
    ThreadGovernor  all the configured intra-op threads on a quiet machine, one under
                    contention

On Linux the stolen part is the thread's run-queue delay, from ``/proc/thread-self/schedstat``
(time spent runnable but not running; its second field, in ns): exactly the time another
task had the core. Elsewhere it is wall time minus the thread's CPU time, which also counts
time the thread was blocked (on a GPU kernel, an ONNX Runtime worker) as stolen; on a GPU
the clock therefore reports nothing stolen unless the run-queue delay is available.

Why one thread under contention: intra-op parallel regions end at a barrier, and a worker
preempted by another process makes every other thread of the region spin or wait for it.
Measured here (2 cores, a 3-step update of a 512-256-10 head, p50 / p99 ms): 2 threads,
quiet 1.53 / 1.99; beside 1 busy process 1.56 / 114; beside 2, 1.95 / 190. One thread
beside 1 busy process 2.50 / 3.09, beside 2, 2.59 / 7.86. The own time (wall minus run-queue
delay) of the 2-thread update was inflated too (p99 58-96 ms): the spinning is the process's
own work, so no clock can subtract it; only fewer threads avoid it.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from edgecl.errors import CheckpointError, UsageError

__all__ = ["ClockMark", "ThreadGovernor", "UpdateClock", "UpdateTime"]


@dataclass(frozen=True)
class ClockMark:
    """A point in time for :meth:`UpdateClock.since`: wall seconds and stolen seconds."""

    wall_s: float
    stolen_s: float


@dataclass(frozen=True)
class UpdateTime:
    """How long an interval took, and how much of it other processes had the CPU."""

    wall_ms: float
    stolen_ms: float

    @property
    def own_ms(self) -> float:
        """The interval's own work: wall time less the stolen part."""
        return max(self.wall_ms - self.stolen_ms, 0.0)


class UpdateClock:
    """Measures intervals in wall time and in time stolen by other processes.

    ``source`` is "schedstat" (Linux run-queue delay), "thread-cpu" (wall minus this
    thread's CPU time) or "none" (nothing is ever stolen: wall time is own time); the
    default picks the first that works here. Reading it costs about 1 us.
    """

    SOURCES = ("schedstat", "thread-cpu", "none")

    def __init__(self, source: str | None = None) -> None:
        if source is not None and source not in self.SOURCES:
            raise UsageError(f"unknown clock source {source!r}; use one of {self.SOURCES}")
        self._fds: dict[int, int] = {}  # native thread id -> open schedstat file
        if source is None:
            source = "schedstat" if self._schedstat_s() is not None else "thread-cpu"
        self.source = source

    def mark(self) -> ClockMark:
        """Now, to measure an interval from."""
        return ClockMark(time.perf_counter(), self._stolen_s(None))

    def since(self, mark: ClockMark) -> UpdateTime:
        """The interval from ``mark`` to now."""
        wall = time.perf_counter() - mark.wall_s
        stolen = self._stolen_s(wall + mark.wall_s) - mark.stolen_s
        return UpdateTime(wall_ms=wall * 1000, stolen_ms=min(max(stolen, 0.0), wall) * 1000)

    def _stolen_s(self, wall_now: float | None) -> float:
        """A running count of stolen seconds (only differences mean anything)."""
        if self.source == "schedstat":
            value = self._schedstat_s()
            return 0.0 if value is None else value
        if self.source == "thread-cpu":
            # Not running = wall - CPU; the wall clock read here and in since() differ by
            # the ~1 us between the two calls, which is noise.
            wall = time.perf_counter() if wall_now is None else wall_now
            return wall - time.thread_time()
        return 0.0

    def _schedstat_s(self) -> float | None:
        """This thread's run-queue delay in seconds, or None where it cannot be read."""
        tid = threading.get_native_id()
        try:
            fd = self._fds.get(tid)
            if fd is None:
                fd = self._fds[tid] = os.open("/proc/thread-self/schedstat", os.O_RDONLY)
            return int(os.pread(fd, 128, 0).split()[1]) / 1e9
        except (OSError, ValueError, IndexError):
            return None

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def __getstate__(self) -> dict[str, Any]:  # a copy opens its own files
        return {"source": self.source, "_fds": {}}

    def __del__(self) -> None:  # pragma: no cover - interpreter shutdown order varies
        with contextlib.suppress(Exception):
            self.close()


class ThreadGovernor:
    """How many intra-op threads the next update may use.

    All ``threads`` while the cores are the learner's; one as soon as other processes take
    more than ``contended_share`` of the wall time of the last ``window`` updates (a quiet
    machine measures about 0.000 here, one busy process beside a one-thread learner 0.003,
    two busy processes 0.16). With one thread the learner cannot tell whether more would
    be contended again, so it tries: after ``retry_after`` quiet updates it goes back to
    all threads, and if contention shows again within a window it returns to one and waits
    twice as long before the next try (at most ``max_retry_after``). A try costs a window of
    updates that may wait for a preempted worker, so tries get rarer the longer contention
    lasts.

    Pure bookkeeping, no clock and no torch: the learner applies :attr:`threads`.
    """

    def __init__(self, threads: int, *, window: int = 16, contended_share: float = 0.05,
                 retry_after: int = 256, max_retry_after: int = 4096) -> None:
        if threads < 1 or window < 1 or retry_after < 1 or max_retry_after < retry_after:
            raise UsageError(f"need threads, window and retry_after >= 1 and "
                             f"max_retry_after >= retry_after, got {threads}, {window}, "
                             f"{retry_after} and {max_retry_after}")
        if not 0 < contended_share < 1:
            raise UsageError(f"contended_share must be in (0, 1), got {contended_share}")
        self.max_threads = int(threads)
        self.window = int(window)
        self.contended_share = float(contended_share)
        self.retry_after = int(retry_after)
        self.max_retry_after = int(max_retry_after)
        self.threads = self.max_threads
        self._recent: deque[tuple[float, float]] = deque(maxlen=self.window)
        self._quiet_updates = 0  # one-thread updates in a row without contention
        self._wait = self.retry_after  # quiet one-thread updates before the next try
        self.n_updates = 0
        self.n_reduced = 0  # updates run with fewer threads than configured
        self.n_switches = 0  # times it went down to one thread

    @property
    def stolen_share(self) -> float:
        """Share of the last window's wall time that other processes took."""
        wall = sum(w for w, _ in self._recent)
        return sum(s for _, s in self._recent) / wall if wall > 0 else 0.0

    def observe(self, wall_ms: float, stolen_ms: float) -> None:
        """One update ran with :attr:`threads` threads; decide the next one's."""
        self.n_updates += 1
        self.n_reduced += self.threads < self.max_threads
        self._recent.append((max(wall_ms, 0.0), max(stolen_ms, 0.0)))
        if self.max_threads == 1:
            return
        contended = self.stolen_share > self.contended_share
        if self.threads > 1:
            if contended:
                self.threads = 1
                self.n_switches += 1
                self._recent.clear()  # judge one thread on its own updates
                self._quiet_updates = 0
            return
        self._quiet_updates = 0 if contended else self._quiet_updates + 1
        if self._quiet_updates >= self._wait:
            # Quiet long enough on one thread: try all of them again. If the first window
            # shows contention, the switch back above doubles the wait.
            self.threads = self.max_threads
            self._recent.clear()
            self._wait = min(2 * self._wait, self.max_retry_after)

    def stats(self) -> dict[str, Any]:
        return {"threads": self.max_threads, "threads_now": self.threads,
                "reduced_fraction": self.n_reduced / self.n_updates if self.n_updates else 0.0,
                "n_reductions": self.n_switches}

    # -- state -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"version": 1, "threads_now": self.threads, "wait": self._wait,
                "quiet_updates": self._quiet_updates, "n_updates": self.n_updates,
                "n_reduced": self.n_reduced, "n_switches": self.n_switches}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        names = ("threads_now", "wait", "quiet_updates", "n_updates", "n_reduced", "n_switches")
        if not isinstance(state, Mapping) or state.get("version") != 1 or not all(
                isinstance(state.get(n), int) and not isinstance(state.get(n), bool)
                and state[n] >= 0 for n in names):
            raise CheckpointError("thread governor state is invalid")
        self.threads = min(max(state["threads_now"], 1), self.max_threads)
        self._wait = max(state["wait"], 1)
        self._quiet_updates = state["quiet_updates"]
        self.n_updates, self.n_reduced = state["n_updates"], state["n_reduced"]
        self.n_switches = state["n_switches"]
        self._recent.clear()
