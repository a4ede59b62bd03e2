"""A run stopped anywhere and resumed from its checkpoints ends with the same report."""

from __future__ import annotations

import itertools

import pytest

from edgecl import CheckpointError, UsageError
from edgecl.runtime.checkpoint import list_checkpoints
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


def _stable(report: dict) -> dict:
    out = {k: v for k, v in report.items() if k not in _VOLATILE}
    out["memory"] = {k: v for k, v in report["memory"].items() if k != "peak_rss_mb"}
    return out


def _stop_after(spec: RunSpec, n_events: int) -> None:
    """Run ``spec`` and abandon it after ``n_events`` events, as a crash would."""
    events = iter_run(spec)
    list(itertools.islice(events, n_events))
    events.close()


@pytest.mark.parametrize("strategy", ["ar1*", "remind", "exstream"])
def test_stopped_and_resumed_run_gives_the_same_report(tmp_path, strategy):
    reference = run(_spec(tmp_path / "a", strategy=strategy, checkpoint_dir=None))
    # The first run saves a checkpoint when its first experience ends (event 3); each
    # resumed run then goes a little further before it is stopped again.
    _stop_after(_spec(tmp_path / "b", strategy=strategy), 4)
    for stop in (5, 9, 40):
        _stop_after(_spec(tmp_path / "b", strategy=strategy, resume=True), stop)
    resumed = run(_spec(tmp_path / "b", strategy=strategy, resume=True))
    assert resumed["checkpoints"]["resumed_from"] is not None
    assert _stable(resumed) == _stable(reference)


def test_resume_falls_back_past_a_damaged_checkpoint(tmp_path):
    reference = run(_spec(tmp_path / "a", checkpoint_dir=None))
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


def test_resume_without_checkpoints_says_so(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        run(_spec(tmp_path, resume=True))
