"""Contention: the clock that separates an update's own time from time other processes
took, the thread governor, and a learner that keeps learning beside busy processes."""

from __future__ import annotations

import json
import multiprocessing
import time

import numpy as np
import pytest
import torch

from edgecl import Learner, LearnerConfig
from edgecl.errors import CheckpointError, UsageError
from edgecl.runtime.contention import ThreadGovernor, UpdateClock, UpdateTime


def _spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def _busy_forever() -> None:  # pragma: no cover - runs in a child process
    while True:
        pass


def test_a_sleeping_thread_is_not_robbed_but_thread_cpu_counts_blocking_as_stolen():
    schedstat = UpdateClock()
    if schedstat.source != "schedstat":
        pytest.skip("no /proc/thread-self/schedstat here")
    thread_cpu = UpdateClock("thread-cpu")
    marks = schedstat.mark(), thread_cpu.mark()
    time.sleep(0.05)  # blocked, not waiting for a core
    slept = [clock.since(mark) for clock, mark in zip((schedstat, thread_cpu), marks,
                                                       strict=True)]
    assert slept[0].wall_ms >= 50 and slept[0].stolen_ms < 10
    assert slept[1].stolen_ms >= 45  # the documented limit of the fallback
    none = UpdateClock("none")
    mark = none.mark()
    time.sleep(0.01)
    took = none.since(mark)
    assert took.stolen_ms == 0 and took.own_ms == took.wall_ms


def test_busy_processes_on_every_core_show_up_as_stolen_time():
    clock = UpdateClock()
    if clock.source != "schedstat":
        pytest.skip("no /proc/thread-self/schedstat here")
    n = 2 * (multiprocessing.cpu_count() or 1) + 1
    hogs = [multiprocessing.get_context("spawn").Process(target=_busy_forever, daemon=True)
            for _ in range(n)]
    for hog in hogs:
        hog.start()
    try:
        time.sleep(0.3)  # let them start spinning
        mark = clock.mark()
        _spin(0.4)
        took = clock.since(mark)
    finally:
        for hog in hogs:
            hog.kill()
            hog.join()
    # Twice as many runnable processes as cores: this thread waits about half the time.
    assert took.stolen_ms > 0.15 * took.wall_ms
    assert took.own_ms == pytest.approx(took.wall_ms - took.stolen_ms)


def test_the_clock_rejects_an_unknown_source_and_copies_safely():
    with pytest.raises(UsageError, match="unknown clock source"):
        UpdateClock("sundial")
    import copy

    clock = UpdateClock()
    twin = copy.deepcopy(clock)
    twin.close()
    assert clock.since(clock.mark()).wall_ms >= 0  # the original's file is still open


def test_the_governor_drops_to_one_thread_under_contention_and_tries_again_later():
    governor = ThreadGovernor(4, window=4, retry_after=10, max_retry_after=40)
    for _ in range(20):
        governor.observe(2.0, 0.0)
    assert governor.threads == 4
    governor.observe(2.0, 1.5)  # one badly preempted update pushes the window over 5 %
    assert governor.threads == 1 and governor.stats()["n_reductions"] == 1
    for _ in range(9):
        governor.observe(2.5, 0.0)
    assert governor.threads == 1
    governor.observe(2.5, 0.0)  # 10 quiet updates on one thread: try all again
    assert governor.threads == 4
    governor.observe(2.0, 1.0)  # still contended with 4 threads: back to one ...
    assert governor.threads == 1
    for _ in range(19):
        governor.observe(2.5, 0.0)
    assert governor.threads == 1  # ... and the next try waits twice as long
    governor.observe(2.5, 0.0)
    assert governor.threads == 4
    for _ in range(50):
        governor.observe(2.0, 0.0)  # contention is over: all threads stay
    assert governor.threads == 4
    stats = governor.stats()  # 10 + 20 updates ran on one thread
    assert stats["reduced_fraction"] == pytest.approx(30 / governor.n_updates)


def test_contention_on_one_thread_keeps_it_at_one():
    governor = ThreadGovernor(2, window=4, retry_after=8)
    for _ in range(100):
        governor.observe(3.0, 1.0)
    assert governor.threads == 1 and governor.n_switches == 1
    single = ThreadGovernor(1)
    for _ in range(20):
        single.observe(3.0, 2.0)
    assert single.threads == 1 and single.stats()["reduced_fraction"] == 0


def test_governor_state_round_trip_and_garbage():
    governor = ThreadGovernor(2, window=4, retry_after=8)
    for _ in range(10):
        governor.observe(3.0, 1.0)
    restored = ThreadGovernor(2, window=4, retry_after=8)
    restored.load_state_dict(json.loads(json.dumps(governor.state_dict())))
    assert restored.stats() == governor.stats()
    for garbage in (None, {}, {**governor.state_dict(), "wait": -1},
                    {**governor.state_dict(), "version": 2}):
        with pytest.raises(CheckpointError):
            restored.load_state_dict(garbage)
    with pytest.raises(UsageError):
        ThreadGovernor(0)


class StolenClock(UpdateClock):
    """The real clock, plus ``stolen_ms`` of waiting for a core in every interval: what
    the learner would see beside busy processes, without needing them."""

    def __init__(self, stolen_ms: float) -> None:
        super().__init__()
        self.stolen = stolen_ms

    def since(self, mark):
        took = super().since(mark)  # real contention on this machine is stolen time too
        return UpdateTime(wall_ms=took.wall_ms + self.stolen,
                          stolen_ms=took.stolen_ms + self.stolen)


def _stream(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 4
    return (np.eye(4, 16)[y] * 3 + rng.normal(size=(n, 16))).astype(np.float32), y


def test_a_learner_beside_busy_processes_keeps_learning_on_one_thread():
    x, y = _stream()
    learner = Learner(strategy="latent-replay", input_shape=(16,), n_classes=4, seed=0,
                      config=LearnerConfig(pretrain_epochs=2, update_budget_ms=20.0))
    torch.set_num_threads(2)
    try:
        learner.learn_many(x[:100], y[:100])  # pretrains; the scheduler starts with 2 threads
        learner._clock = StolenClock(stolen_ms=60.0)  # 3x the budget stolen, every update
        seen_threads = []
        update = learner._update

        def spy(*args, **kwargs):
            seen_threads.append(torch.get_num_threads())
            return update(*args, **kwargs)

        learner._update = spy
        for i in range(100, 400):
            learner.learn_one(x[i], int(y[i]))
        assert torch.get_num_threads() == 2  # the caller's threads, given back
    finally:
        torch.set_num_threads(1)
    stats = learner.scheduler.stats()
    assert stats["n_offered_total"] == 300  # every sample learned on arrival
    assert stats["n_deferred_total"] == 0 and not stats["learning_stalled"]
    assert stats["stolen_share"] > 0.5
    assert learner.scheduler.cost.margin(0.99) < 2.5  # the own-time errors, uncapped
    assert seen_threads[0] == 2 and set(seen_threads[16:]) == {1}
    assert learner.thread_governor.stats()["n_reductions"] == 1
    # The wall time, not the own time, is what the report holds against the budget.
    assert stats["over_budget_fraction"] == 1.0


def test_a_run_that_cannot_keep_up_says_learning_stalled_in_the_table_and_report(tmp_path):
    from click.testing import CliRunner

    from edgecl.cli import cli

    report = tmp_path / "r.json"
    result = CliRunner().invoke(cli, [
        "learn", "--dataset", "mnist1d:600", "--scenario", "online", "--experiences", "3",
        "--strategy", "latent-replay", "--update-budget-ms", "0.05", "--report", str(report)])
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text())
    budget = data["budget"]
    assert budget["learning_stalled"] is True
    assert budget["scheduler"]["not_learned_fraction"] > 0.5
    line = next(line for line in result.stdout.splitlines()
                if line.startswith("learning stalled"))
    assert "streamed samples not learned" in line and "--update-budget-ms" in line
    assert any(w.startswith("learning stalled") for w in data["warnings"])
    # A budget that fits says nothing of the kind.
    result = CliRunner().invoke(cli, [
        "learn", "--dataset", "mnist1d:600", "--scenario", "online", "--experiences", "3",
        "--strategy", "latent-replay", "--update-budget-ms", "500", "--report", str(report)])
    assert result.exit_code == 0 and "learning stalled" not in result.output
    assert json.loads(report.read_text())["budget"]["learning_stalled"] is False
