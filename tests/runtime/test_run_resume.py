"""A run stopped anywhere and resumed from its checkpoints ends with the same report."""

from __future__ import annotations

import itertools

import pytest

from edgecl import CheckpointError, UsageError
from edgecl._state import tensor_json
from edgecl.runtime.checkpoint import list_checkpoints, load_checkpoint
from edgecl.runtime.learner import LearnerConfig
from edgecl.runtime.run import RunSpec, iter_run, run

# Timing and bookkeeping fields differ between any two runs; everything else must not.
_VOLATILE = {"wall_s", "latency_ms", "checkpoints", "budget"}
_CONFIG = LearnerConfig(pretrain_epochs=2, epochs=2)


def _spec(tmp_path, **changes) -> RunSpec:
    base = dict(dataset="digits", scenario="online", n_experiences=3, online_batch_size=16,
                strategy="ar1*", checkpoint_dir=str(tmp_path / "ck"), checkpoint_every=3,
                config=_CONFIG, threads=1,
                # The budget scheduler sizes updates by measured time, which differs from run
                # to run; the fixed schedule is what makes a run reproducible bitwise.
                schedule="fixed")
    return RunSpec(**(base | changes))


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """The report of the default spec, never stopped (with checkpoints, which change
    nothing learned)."""
    return run(_spec(tmp_path_factory.mktemp("reference")))


def _stable(report: dict) -> dict:
    out = {k: v for k, v in report.items() if k not in _VOLATILE}
    out["memory"] = {k: v for k, v in report["memory"].items() if k != "peak_rss_mb"}
    return out


def _stop_after(spec: RunSpec, n_events: int) -> None:
    """Run ``spec`` and abandon it after ``n_events`` events, as a crash would."""
    events = iter_run(spec)
    list(itertools.islice(events, n_events))
    events.close()


def _rows_and_report(spec: RunSpec) -> tuple[list[dict], dict]:
    """What the CLI shows: one row per experience (a resumed run's earlier ones included),
    and the report."""
    events = list(iter_run(spec))
    rows = events[0]["experiences_done"] + [e for e in events if e["event"] == "experience"]
    return rows, events[-1]["report"]


@pytest.mark.parametrize("strategy", ["ar1*", "remind", "exstream"])
def test_stopped_and_resumed_run_gives_the_same_report(tmp_path, strategy):
    ref_rows, reference = _rows_and_report(_spec(tmp_path / "a", strategy=strategy))
    # The first run saves a checkpoint when its first experience ends (event 3); each
    # resumed run then goes a little further before it is stopped again.
    _stop_after(_spec(tmp_path / "b", strategy=strategy), 4)
    for stop in (5, 9, 40):
        _stop_after(_spec(tmp_path / "b", strategy=strategy, resume=True), stop)
    rows, resumed = _rows_and_report(_spec(tmp_path / "b", strategy=strategy, resume=True))
    assert resumed["checkpoints"]["resumed_from"] is not None
    assert _stable(resumed) == _stable(reference)
    # The whole run, not only its last part: every experience's row of the table ...
    assert len(rows) == 3 and rows == ref_rows
    # ... and the counters (checkpoints land where an unstopped run saves them).
    assert resumed["budget"]["n_updates"] == reference["budget"]["n_updates"]
    assert resumed["checkpoints"]["n_saved"] == reference["checkpoints"]["n_saved"]
    assert resumed["checkpoints"]["n_saved_this_part"] < resumed["checkpoints"]["n_saved"]
    assert resumed["checkpoints"]["n_resumed"] >= 1


def test_resumed_run_reports_the_wall_time_of_all_its_parts(tmp_path):
    spec = _spec(tmp_path)
    _stop_after(spec, 12)
    earlier = load_checkpoint(spec.checkpoint_dir).meta["progress"]["wall_s"]
    assert earlier > 0
    report = run(_spec(tmp_path, resume=True))
    this_part = report["checkpoints"]["wall_s_this_part"]
    assert report["wall_s"] == pytest.approx(earlier + this_part, abs=0.05)
    assert report["checkpoints"]["n_resumed"] == 1


def test_budget_schedule_counters_add_up_across_a_resume(tmp_path):
    # Timing decides what the budget scheduler defers, so only what does not depend on it
    # is compared with an unstopped run: one plan per mini-batch, and deferral counts that
    # go on from the checkpoint's. A 0.05 ms budget defers in every update.
    budget = dict(schedule="budget", update_budget_ms=0.05)
    reference = run(_spec(tmp_path / "a", **budget))
    _stop_after(_spec(tmp_path / "b", **budget), 20)
    tensors = load_checkpoint(tmp_path / "b" / "ck").tensors
    saved = tensor_json(tensors["learner.scheduler"], what="scheduler")
    assert saved["n_deferred_total"] > 0
    resumed = run(_spec(tmp_path / "b", resume=True, **budget))
    scheduled, expected = resumed["budget"]["scheduler"], reference["budget"]["scheduler"]
    assert scheduled["n_plans"] == expected["n_plans"]
    assert scheduled["n_deferred_total"] > saved["n_deferred_total"]
    assert scheduled["n_dropped_total"] >= saved["n_dropped_total"]


def test_resume_falls_back_past_a_damaged_checkpoint(reference, tmp_path):
    spec = _spec(tmp_path / "b")
    _stop_after(spec, 12)
    newest = list_checkpoints(spec.checkpoint_dir)[-1].path
    payload = newest / "tensors.pt"
    payload.write_bytes(payload.read_bytes()[:100])  # truncated, as by a power cut
    resumed = run(_spec(tmp_path / "b", resume=True))
    assert any("skipped" in w and newest.name in w for w in resumed["warnings"])
    assert _stable(resumed)["accuracy_matrix"] == _stable(reference)["accuracy_matrix"]


def test_resume_refuses_a_checkpoint_of_another_run(tmp_path):
    _stop_after(_spec(tmp_path), 6)
    with pytest.raises(CheckpointError, match="strategy"):
        run(_spec(tmp_path, strategy="latent-replay", resume=True))
    with pytest.raises(CheckpointError, match="seed"):
        run(_spec(tmp_path, seed=1, resume=True))


def test_a_new_run_does_not_overwrite_old_checkpoints(tmp_path):
    _stop_after(_spec(tmp_path), 6)
    with pytest.raises(UsageError, match="--resume"):
        run(_spec(tmp_path))


@pytest.mark.parametrize("state", ["missing", "empty", "lock-and-leftovers"])
def test_resume_before_the_first_checkpoint_starts_a_new_run(reference, tmp_path, state):
    """One command line with --resume survives a power cut that struck before the first
    checkpoint: a directory with no checkpoint in it starts afresh, and says so."""
    directory = tmp_path / "ck"
    if state != "missing":
        directory.mkdir()
    if state == "lock-and-leftovers":  # a writer killed mid-save leaves its lock file too
        (directory / ".lock").write_text("")
        leftover = directory / ".tmp-step-000000001-4242-0123abcd"
        leftover.mkdir()
        (leftover / "tensors.pt").write_bytes(b"half")
    report = run(_spec(tmp_path, resume=True))
    assert any("no checkpoint" in w and "new run" in w for w in report["warnings"])
    assert report["checkpoints"]["resumed_from"] is None
    assert report["checkpoints"]["n_resumed"] == 0
    assert _stable(report) | {"warnings": []} == _stable(reference) | {"warnings": []}
    assert not list(directory.glob(".tmp-*"))  # the first save cleared the leftovers


def test_resume_refuses_to_start_over_when_no_checkpoint_loads(tmp_path):
    """Checkpoints that all fail to load are a run that must not be thrown away."""
    spec = _spec(tmp_path)
    _stop_after(spec, 12)
    for info in list_checkpoints(spec.checkpoint_dir):
        payload = info.path / "tensors.pt"
        payload.write_bytes(payload.read_bytes()[:100])
    before = sorted(p.name for p in (tmp_path / "ck").iterdir())
    with pytest.raises(CheckpointError, match="no intact checkpoint") as excinfo:
        run(_spec(tmp_path, resume=True))
    assert "move" in str(excinfo.value) and "away" in str(excinfo.value)
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == before


def test_stop_saves_a_checkpoint_where_it_stopped_and_resume_ends_the_same(reference, tmp_path):
    seen = []

    def stop() -> bool:  # a stop request after the 7th streaming update
        return len(seen) >= 7

    events = []
    for event in iter_run(_spec(tmp_path, checkpoint_every=1000), stop=stop):
        events.append(event)
        if event["event"] == "progress":
            seen.append(event)
    assert events[-1]["event"] == "stopped"
    assert len(seen) == 7  # at once: after the update during which it was asked
    assert not any(e["event"] == "done" for e in events)
    path = events[-1]["checkpoint"]
    newest = list_checkpoints(tmp_path / "ck")[-1]
    assert path == str(newest.path) and newest.problem is None
    # The checkpoint is of the very point where the run stopped, not the previous save.
    progress = load_checkpoint(tmp_path / "ck").meta["progress"]
    assert progress["samples_done"] == events[-1]["samples_done"]
    assert progress["samples_done"] == sum(e["samples"] for e in seen)
    assert progress["offset"] > 0  # mid-experience: not the save at its end
    resumed = run(_spec(tmp_path, resume=True))
    assert _stable(resumed) == _stable(reference)


def test_stop_without_checkpoints_ends_the_run_and_saves_nothing(tmp_path):
    events = list(iter_run(_spec(tmp_path, checkpoint_dir=None), stop=lambda: True))
    assert [e["event"] for e in events] == ["start", "stopped"]
    assert events[-1]["checkpoint"] is None
