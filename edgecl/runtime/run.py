"""Run a whole scenario through a learner and build the JSON report (DESIGN.md contract).

:func:`iter_run` is a generator that yields one event dict per step (River-style), so the CLI
can show progress; :func:`run` drains it and returns the report. A run with checkpoints can
be stopped at a safe point (``stop``) and resumed; its report then covers the whole run.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from edgecl import metrics
from edgecl._files import check_writable_directory, check_writable_file
from edgecl.data import Experience, build_scenario, load_dataset
from edgecl.errors import CheckpointError, EdgeclWarning, UsageError
from edgecl.memory import capacity_from_megabytes
from edgecl.memory.codec_choice import codec_candidates
from edgecl.profiles import (
    Profile,
    load_profile,
    resolve_execution_providers,
    resolve_torch_device,
)
from edgecl.runtime.checkpoint import list_checkpoints
from edgecl.runtime.cost import Roofline
from edgecl.runtime.figures import device_prediction, experience_warnings
from edgecl.runtime.learner import BACKENDS, Learner, LearnerConfig
from edgecl.strategies import create_strategy


@dataclass(frozen=True)
class RunSpec:
    """Everything that defines a run; the CLI flags map one to one onto these fields."""

    profile: str = "cpu"
    dataset: str = "digits"
    scenario: str = "class-incremental"
    strategy: str = "ar1*"
    n_experiences: int = 5
    seed: int = 0
    memory_mb: float | None = None       # replay + strategy state; None: the profile's memory_mb
    replay_mb: float | None = None       # replay buffer bytes; None: the profile's replay_mb
    replay_samples: int | None = 200     # replay capacity in samples, on top of the bytes
    codec: str | None = None             # None: the strategy's codec, else the profile's
    quantize_eval: bool | None = None    # None: the strategy decides (REMIND: yes)
    update_budget_ms: float | None = None  # None: the profile's update_ms
    schedule: str = "budget"             # budget: size streaming updates to fit update_ms;
                                         # fixed: configured replay and steps (reproducible)
    sleep_ms: float = 0.0                # idle-time consolidation after each experience
    max_replay_per_step: int | None = None  # scheduler caps (None: 4x the strategy's replay)
    max_steps: int = 1
    new_share: float | None = None       # loss share of new samples in streaming steps
    backend: str = "torch"
    online_batch_size: int = 1
    backbone_weights: str | None = None  # load a pretrained network instead of pretraining
    save_backbone: str | None = None     # write the network's weights at the end of the run
    threads: int | None = None           # torch threads; None: the profile's, at most the cores
    checkpoint_dir: str | None = None    # save checkpoints here (and resume from them)
    checkpoint_every: int | None = 50    # updates between checkpoints (and each experience end)
    checkpoint_seconds: float | None = None  # also save when this much time has passed
    resume: bool = False                 # continue from the newest valid checkpoint
    config: LearnerConfig = field(default_factory=LearnerConfig)


def _version() -> str:
    from edgecl import __version__

    return __version__


def _report_skeleton(spec: RunSpec, profile: Profile, device: str) -> dict[str, object]:
    return {
        "edgecl_version": _version(),
        "profile": profile.name,
        "strategy": spec.strategy,
        "dataset": spec.dataset,
        "scenario": spec.scenario,
        "seed": spec.seed,
        "backend": spec.backend,
        "device": device,
        "backbone_weights": spec.backbone_weights,
    }


@contextmanager
def _collect_warnings(into: list[str]) -> Iterator[list[str]]:
    """Catch EdgeclWarnings raised inside the block; yields the list of the new ones.

    Only used around calls that do not yield, so the warning filters are never left
    changed while the caller runs.
    """
    new: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", EdgeclWarning)
        yield new
    for record in caught:
        if issubclass(record.category, EdgeclWarning):
            new.append(str(record.message))
        else:  # not ours: pass it on as it came
            warnings.warn_explicit(record.message, record.category, record.filename,
                                   record.lineno)
    into.extend(new)


def iter_run(spec: RunSpec, *, stop: Callable[[], bool] | None = None
             ) -> Iterator[dict[str, object]]:
    """Yield ``{"event": "start" | "progress" | "experience" | "done", ...}`` dicts.

    A "progress" event carries the samples learned since the last one and the warnings
    raised meanwhile (after an experience, one may carry warnings only, with 0 samples).
    The "done" event carries the full report under ``"report"``. The "start" event lists,
    under ``"experiences_done"``, the "experience" events of a resumed run's earlier parts.

    ``stop`` is asked at every safe point (between two online updates, between two
    experiences; never during an update or a checkpoint write): once it returns True the run
    saves a checkpoint (with ``checkpoint_dir``, unless the newest one is of this very
    point) and ends with ``{"event": "stopped", "checkpoint": path or None, ...}``, no report.
    """
    if spec.backend not in BACKENDS:
        raise UsageError(f"unknown backend {spec.backend!r}; available: {', '.join(BACKENDS)}")
    started = time.perf_counter()
    notes: list[str] = []
    profile = load_profile(spec.profile)
    device, warning = resolve_torch_device(profile)
    if warning:
        notes.append(warning)
    threads_before = torch.get_num_threads()
    threads = spec.threads or min(profile.device.threads, os.cpu_count() or 1)
    torch.set_num_threads(max(1, threads))
    try:
        yield from _run_stream(spec, profile, device, notes, started, stop)
    finally:
        torch.set_num_threads(threads_before)


def _run_stream(spec: RunSpec, profile: Profile, device: str, notes: list[str],
                started: float, stop: Callable[[], bool] | None
                ) -> Iterator[dict[str, object]]:
    # Where the results go is checked first: not after minutes of loading and pretraining.
    checkpoints = _Checkpointer.from_spec(spec)
    if spec.save_backbone is not None:
        check_writable_file(spec.save_backbone, "--save-backbone")
    dataset = load_dataset(spec.dataset, seed=spec.seed)
    batch = {"batch_size": spec.online_batch_size} if spec.scenario == "online" else {}
    scenario = build_scenario(spec.scenario, dataset, n_experiences=spec.n_experiences,
                              seed=spec.seed, **batch)
    memory_mb = spec.memory_mb if spec.memory_mb is not None else profile.budget.memory_mb
    replay_mb = spec.replay_mb if spec.replay_mb is not None else profile.budget.replay_mb
    update_ms = (spec.update_budget_ms if spec.update_budget_ms is not None
                 else profile.budget.update_ms)
    strategy = create_strategy(spec.strategy)
    config = LearnerConfig(**{**asdict(spec.config),
                              "replay_samples": spec.replay_samples,
                              "replay_bytes": capacity_from_megabytes(replay_mb),
                              "memory_bytes": capacity_from_megabytes(memory_mb),
                              "codec": spec.codec or strategy.codec,  # else the profile's
                              "quantize_eval": spec.quantize_eval,
                              "update_budget_ms": update_ms if spec.schedule == "budget"
                              else None,
                              "max_replay_per_step": spec.max_replay_per_step,
                              "max_steps": spec.max_steps,
                              "new_share": spec.new_share})
    providers, provider_warning = resolve_execution_providers(profile)
    if spec.backend != "torch" and provider_warning:
        notes.append(provider_warning)
    # The learner takes the user's labels; the dataset's order makes its output rows the
    # dataset's class indices, so learning is the same as on the indices themselves.
    labels = np.asarray(dataset.classes)
    learner = Learner(strategy=strategy, input_shape=scenario.input_shape,
                      n_classes=scenario.n_classes, classes=dataset.classes, config=config,
                      device=device, seed=spec.seed,
                      backend=spec.backend,
                      execution_providers=providers,
                      backend_threads=spec.threads or min(profile.device.threads,
                                                          os.cpu_count() or 1),
                      onnx_dir=checkpoints.onnx_dir if checkpoints else None,
                      stream_samples=sum(len(e.y) for e in scenario.experiences),
                      roofline=Roofline.from_profile(profile),
                      codec_candidates=codec_candidates(profile.budget.replay_codec))
    if learner.codec_choice is not None and learner.codec_choice.note():
        notes.append(learner.codec_choice.note())
    learner.timer.stages["update"].budget_ms = update_ms
    progress = _Progress(started=started)
    restored = checkpoints.restore(learner) if spec.resume else None
    if restored is not None:
        progress = restored.progress
        progress.started = started
        notes.extend(w for w in restored.notes if w not in notes)
    else:
        if spec.resume:  # a restart before the first checkpoint: nothing is lost
            notes.append(checkpoints.fresh_start_note)
        if spec.backbone_weights is not None:
            learner.load_backbone(spec.backbone_weights)
    experiences = scenario.experiences
    total = sum(len(e.y) for e in experiences)
    yield {"event": "start", "total_samples": total, "warnings": list(notes),
           "n_experiences": len(experiences), "resumed_at": progress.samples_done,
           "resumed_from": checkpoints.restored_from if checkpoints else None,
           "experiences_done": [_experience_event(e, row, dataset.classes) for e, row in
                                zip(experiences[:len(progress.matrix)], progress.matrix,
                                    strict=True)]}

    for exp in experiences[progress.experience:]:
        if stop is not None and stop():
            yield _stopped(checkpoints, learner, progress, notes)
            return
        # Online streams: the first experience warms the backbone up as a batch; after it,
        # every mini-batch is predicted first (test-then-train) and learned in one pass.
        if scenario.online and learner.is_pretrained:
            step = scenario.batch_size
            for start in range(progress.offset, len(exp.y), step):
                if stop is not None and stop():
                    yield _stopped(checkpoints, learner, progress, notes)
                    return
                x, y = exp.x[start:start + step], exp.y[start:start + step]
                progress.streaming.update(learner.predict_many(x), labels[y])
                with _collect_warnings(notes) as new:
                    learner.learn_many(x, labels[y], epochs=1)
                progress.advance(len(y), offset=start + len(y))
                if checkpoints:
                    checkpoints.maybe_save(learner, progress, notes)
                yield {"event": "progress", "samples": len(y), "warnings": new}
        else:
            with _collect_warnings(notes) as new:
                learner.learn_many(exp.x, labels[exp.y])
            progress.advance(len(exp.y), offset=len(exp.y))
            yield {"event": "progress", "samples": len(exp.y), "warnings": new}
        if spec.sleep_ms > 0:
            with _collect_warnings(notes):
                learner.sleep(spec.sleep_ms)
        row = [learner.evaluate(e.x_test, labels[e.y_test]) for e in experiences]
        progress.finish_experience(row)
        found = experience_warnings(learner, profile, experiences, exp.index, row, notes)
        notes.extend(found)
        if checkpoints:
            checkpoints.save(learner, progress, notes)
        if found:
            yield {"event": "progress", "samples": 0, "warnings": found}
        yield _experience_event(exp, row, dataset.classes)

    stalled = learner.scheduler.stall_advice() if learner.scheduler is not None else None
    if stalled:
        notes.append(stalled)
    matrix = progress.matrix
    latency = learner.timer.summary()
    memory = learner.memory_stats()
    report = _report_skeleton(spec, profile, device)
    report.update({
        "n_experiences": len(experiences),
        "profile_details": profile.to_dict(),
        "accuracy_matrix": matrix,
        **metrics.summarize(matrix),
        "test_accuracy": learner.evaluate(dataset.x_test, labels[dataset.y_test]),
        "streaming_accuracy": progress.streaming.value if scenario.online else None,
        "class_order": [dataset.classes[c] for c in scenario.class_order],  # user labels
        "labels": learner.classes,  # the user's label of each output row
        "memory": {k: memory[k] for k in ("buffer_bytes", "bytes_per_sample", "n_stored",
                                          "codec", "peak_rss_mb", "strategy_state_bytes")}
                  | {"replay_budget_mb": replay_mb, "replay_samples_cap": spec.replay_samples,
                     "replay_bytes_granted": learner.replay_bytes,
                     "planned_state_bytes": learner.planned_state_bytes,
                     "codec_choice": _codec_source(spec, learner, profile)},
        "latency_ms": {stage: {k: v[k] for k in ("p50", "p95", "max")}
                       for stage, v in latency.items()},
        "budget": _budget_section(learner, spec, update_ms, memory_mb),
        "device_prediction": device_prediction(
            learner, profile, online_batch=spec.online_batch_size if scenario.online else None),
        "backend_info": learner.backend_info(),
        # wall_s_this_part: this process's share of wall_s (a resumed run's last part)
        "checkpoints": (checkpoints.summary()
                        | {"wall_s_this_part": time.perf_counter() - started}
                        if checkpoints else None),
        "warnings": notes,
        "wall_s": progress.wall_s(),  # all the run's parts
    })
    if spec.save_backbone is not None:
        learner.save_backbone(spec.save_backbone)
    yield {"event": "done", "report": report}


def _experience_event(exp: Experience, row: list[float], labels: Sequence[object]
                      ) -> dict[str, object]:
    """The event of a learned experience; its classes as the user's labels."""
    return {"event": "experience", "index": exp.index,
            "classes": [labels[c] for c in exp.classes],
            "accuracy_row": row, "seen_accuracy": float(np.nanmean(row[: exp.index + 1]))}


def _stopped(checkpoints: _Checkpointer | None, learner: Learner, progress: _Progress,
             notes: list[str]) -> dict[str, object]:
    """The event that ends a run stopped at a safe point, naming the checkpoint that
    --resume will continue from (None: nothing was saved)."""
    path = checkpoints.save_for_stop(learner, progress, notes) if checkpoints else None
    return {"event": "stopped", "checkpoint": path, "samples_done": progress.samples_done}


def _codec_source(spec: RunSpec, learner: Learner, profile: Profile) -> dict[str, object]:
    """Where the replay codec came from: --codec, the method's own, or the profile's default
    (with the candidates it was chosen from, edgecl.memory.codec_choice)."""
    if learner.codec_choice is not None:
        return {"from": f"profile {profile.name}", **learner.codec_choice.to_dict()}
    source = ("--codec" if spec.codec else f"strategy {learner.strategy.name}"
              if learner.strategy.codec else f"profile {profile.name}")
    return {"from": source, "codec": learner.codec_name}


def _budget_section(learner: Learner, spec: RunSpec, update_ms: float, memory_mb: float
                    ) -> dict[str, object]:
    """How well the run kept its time and memory budgets (the report's "budget")."""
    updates = learner.timer.stages["update"]
    latency = updates.summary()
    n = updates.count
    section: dict[str, object] = {
        "update_ms": update_ms,
        "memory_mb": memory_mb,
        "schedule": spec.schedule,
        "n_updates": n,
        "over_budget_fraction": updates.n_over / n if n else 0.0,
        "far_over_budget_fraction": updates.n_far_over / n if n else 0.0,  # > 1.2x budget
        "update_latency_ms": {k: latency[k] for k in ("p50", "p95", "max")},
        "memory_used_bytes": learner.memory_stats()["buffer_bytes"]
                             + learner.strategy.state_bytes(),
        "memory_budget_bytes": learner.config.memory_bytes,
    }
    # The scheduler sizes streaming updates only; a run that learned whole experiences
    # used the fixed plan throughout.
    if learner.scheduler is not None and learner.scheduler.n_plans:
        stats = learner.scheduler.stats() | {"threads": learner.thread_governor.stats()}
        section["scheduler"] = stats
        section["learning_stalled"] = stats["learning_stalled"]
        section["replay_per_update"] = stats["mean_replay_per_step"] * stats["mean_steps"]
        section["new_share"] = learner.stream_new_share(spec.online_batch_size)
    else:
        section["replay_per_update"] = learner.fixed_replay_per_step
    return section


@dataclass
class _Progress:
    """Where a run is in its stream, and what it has measured so far (checkpointed)."""

    experience: int = 0      # the experience being learned (or next to learn)
    offset: int = 0          # samples of it already learned (online streams)
    samples_done: int = 0
    matrix: list[list[float]] = field(default_factory=list)
    streaming: metrics.StreamingAccuracy = field(default_factory=metrics.StreamingAccuracy)
    # Wall time of the run's earlier parts, each up to its last checkpoint (work after that
    # was lost and done again), and when this part started (time.perf_counter()).
    wall_s_before: float = 0.0
    started: float = field(default_factory=time.perf_counter)

    def wall_s(self) -> float:
        return self.wall_s_before + time.perf_counter() - self.started

    def advance(self, n: int, *, offset: int) -> None:
        self.samples_done += n
        self.offset = offset

    def finish_experience(self, row: list[float]) -> None:
        self.matrix.append(row)
        self.experience += 1
        self.offset = 0

    def to_json(self) -> dict[str, object]:
        return {"experience": self.experience, "offset": self.offset,
                "samples_done": self.samples_done,
                # JSON has no NaN (an empty test set's accuracy): stored as null
                "matrix": [[None if v != v else v for v in row] for row in self.matrix],
                "streaming": [self.streaming.correct, self.streaming.total],
                "wall_s": self.wall_s()}

    @classmethod
    def from_json(cls, data: object) -> _Progress:
        try:
            progress = cls(experience=int(data["experience"]), offset=int(data["offset"]),
                           samples_done=int(data["samples_done"]),
                           matrix=[[float("nan") if v is None else float(v) for v in row]
                                   for row in data["matrix"]],
                           # absent from older checkpoints: their time is not known
                           wall_s_before=float(data.get("wall_s", 0.0)))
            progress.streaming.correct, progress.streaming.total = (
                int(v) for v in data["streaming"])
        except (AttributeError, KeyError, TypeError, ValueError):
            raise CheckpointError("checkpoint's stream position is malformed") from None
        return progress


@dataclass
class _Restored:
    progress: _Progress
    notes: list[str]


class _Checkpointer:
    """Saves the learner and the run's position every N updates or S seconds, and at the
    end of every experience; restores the newest valid checkpoint on --resume.

    Its counts cover the whole run: each checkpoint records how many were saved and how
    often the run was resumed up to it, and a resume continues from those numbers.
    """

    def __init__(self, directory: Path, *, run_meta: dict[str, object],
                 every_updates: int | None, every_seconds: float | None) -> None:
        self.directory = directory
        self._spec_meta = run_meta
        self.every_updates = every_updates
        self.every_seconds = every_seconds
        self.onnx_dir = directory / "backbone"
        self.n_saved = 0            # in this part of the run
        self.n_saved_before = 0     # in the earlier parts (from the restored checkpoint)
        self.n_resumed = 0
        self.step = 0
        self.save_ms: list[float] = []
        self.restored_from: str | None = None
        self.latest: Path | None = None  # the newest checkpoint, saved or restored
        self._latest_at: tuple[int, int] | None = None  # its (experience, offset)
        self.skipped: list[str] = []
        # About this start only, so not saved: a later resume must not repeat it.
        self.fresh_start_note = (f"--resume: no checkpoint in {directory} yet, starting a "
                                 "new run")
        self._last_updates = 0
        self._last_time = time.monotonic()

    @classmethod
    def from_spec(cls, spec: RunSpec) -> _Checkpointer | None:
        if spec.checkpoint_dir is None:
            if spec.resume:
                raise UsageError("--resume needs --checkpoint DIR")
            return None
        check_writable_directory(spec.checkpoint_dir, "--checkpoint")
        if not spec.resume and list_checkpoints(spec.checkpoint_dir):
            raise UsageError(f"{spec.checkpoint_dir} already holds checkpoints: add --resume "
                             "to continue that run, or choose another directory")
        return cls(Path(spec.checkpoint_dir), run_meta=cls._run_meta(spec),
                   every_updates=spec.checkpoint_every,
                   every_seconds=spec.checkpoint_seconds)

    @staticmethod
    def _run_meta(spec: RunSpec) -> dict[str, object]:
        """The parts of the spec that decide what the stream is: a resume must match them."""
        keys = ("profile", "dataset", "scenario", "n_experiences", "seed", "online_batch_size",
                "backbone_weights")
        return {k: getattr(spec, k) for k in keys}

    def maybe_save(self, learner: Learner, progress: _Progress, notes: list[str]) -> None:
        due_updates = (self.every_updates is not None
                       and learner.n_updates - self._last_updates >= self.every_updates)
        due_time = (self.every_seconds is not None
                    and time.monotonic() - self._last_time >= self.every_seconds)
        if due_updates or due_time:
            self.save(learner, progress, notes)

    def save(self, learner: Learner, progress: _Progress, notes: list[str]) -> None:
        started = time.perf_counter()
        # Steps count checkpoints; a resumed run continues from the one it loaded.
        self.step += 1
        counts = {"n_saved": self.n_saved_before + self.n_saved + 1,
                  "n_resumed": self.n_resumed}
        self.latest = learner.save_checkpoint(
            self.directory, step=self.step,
            meta={**self._spec_meta, "progress": progress.to_json(),
                  "warnings": [n for n in notes if n != self.fresh_start_note],
                  "checkpoints": counts})
        self._latest_at = (progress.experience, progress.offset)
        self.save_ms.append((time.perf_counter() - started) * 1000)
        self.n_saved += 1
        self._last_updates = learner.n_updates
        self._last_time = time.monotonic()

    def save_for_stop(self, learner: Learner, progress: _Progress, notes: list[str]
                      ) -> str | None:
        """Save unless the newest checkpoint is of this very point; the path --resume will
        use, or None when nothing has been learned or saved."""
        if self._latest_at != (progress.experience, progress.offset) and (
                progress.samples_done or self.latest is not None):
            self.save(learner, progress, notes)
        return str(self.latest) if self.latest is not None else None

    def restore(self, learner: Learner) -> _Restored | None:
        """Load the newest valid checkpoint into ``learner``; None when the directory holds
        no checkpoint at all (a lock file and leftovers of an interrupted write aside), so
        that a run killed before its first checkpoint restarts with the same command line.
        Checkpoints that exist but all fail to load stay an error: starting afresh would
        throw that run away."""
        if not list_checkpoints(self.directory):
            return None
        try:
            checkpoint = learner.load_checkpoint(self.directory, expect=self._spec_meta)
        except CheckpointError as error:
            raise CheckpointError(f"{error} (nothing was changed; to start a new run instead, "
                                  f"move {self.directory} away or choose another --checkpoint "
                                  "directory)") from None
        self.restored_from = str(checkpoint.path)
        self.latest = checkpoint.path
        self.step = checkpoint.step
        self.skipped = list(checkpoint.skipped)
        self._last_updates = learner.n_updates
        counts = checkpoint.meta.get("checkpoints", {})
        try:  # absent from older checkpoints: counted from here
            self.n_saved_before = int(counts.get("n_saved", 0))
            self.n_resumed = int(counts.get("n_resumed", 0)) + 1
        except (AttributeError, TypeError, ValueError):
            raise CheckpointError("checkpoint's counts are malformed") from None
        notes = [str(n) for n in checkpoint.meta.get("warnings", [])]
        notes += [f"checkpoint skipped: {why}" for why in checkpoint.skipped]
        progress = _Progress.from_json(checkpoint.meta.get("progress"))
        self._latest_at = (progress.experience, progress.offset)
        return _Restored(progress, notes)

    def summary(self) -> dict[str, object]:
        return {"directory": str(self.directory),
                "n_saved": self.n_saved_before + self.n_saved,  # all the run's parts
                "n_saved_this_part": self.n_saved, "n_resumed": self.n_resumed,
                "save_ms_p50": float(np.median(self.save_ms)) if self.save_ms else None,
                "resumed_from": self.restored_from, "skipped": self.skipped}


def run(spec: RunSpec) -> dict[str, object]:
    """Run ``spec`` to the end and return its report."""
    report: dict[str, object] = {}
    for event in iter_run(spec):
        if event["event"] == "done":
            report = event["report"]
    return report
