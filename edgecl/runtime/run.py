"""Run a whole scenario through a learner and build the JSON report (DESIGN.md contract).

:func:`iter_run` is a generator that yields one event dict per step (River-style), so the CLI
can show progress; :func:`run` drains it and returns the report.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from edgecl import metrics
from edgecl.data import build_scenario, load_dataset
from edgecl.errors import EdgeclWarning, UsageError
from edgecl.memory import capacity_from_megabytes
from edgecl.profiles import Profile, load_profile, resolve_torch_device
from edgecl.runtime.learner import Learner, LearnerConfig
from edgecl.strategies import create_strategy

BACKENDS = ("torch",)  # ONNX Runtime backends come with the export issue


@dataclass(frozen=True)
class RunSpec:
    """Everything that defines a run; the CLI flags map one to one onto these fields."""

    profile: str = "cpu"
    dataset: str = "digits"
    scenario: str = "class-incremental"
    strategy: str = "ar1*"
    n_experiences: int = 5
    seed: int = 0
    memory_mb: float | None = None       # replay byte budget; None: the profile's replay_mb
    replay_samples: int | None = 200     # replay capacity in samples, on top of the bytes
    codec: str | None = None             # None: the strategy's codec, else the profile's
    quantize_eval: bool | None = None    # None: the strategy decides (REMIND: yes)
    update_budget_ms: float | None = None  # None: the profile's update_ms
    backend: str = "torch"
    online_batch_size: int = 1
    backbone_weights: str | None = None  # load a pretrained network instead of pretraining
    save_backbone: str | None = None     # write the network's weights at the end of the run
    threads: int | None = None           # torch threads; None: the profile's, at most the cores
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


def iter_run(spec: RunSpec) -> Iterator[dict[str, object]]:
    """Yield ``{"event": "start" | "progress" | "experience" | "done", ...}`` dicts.

    The "done" event carries the full report under ``"report"``.
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
        yield from _run_stream(spec, profile, device, notes, started)
    finally:
        torch.set_num_threads(threads_before)


def _run_stream(spec: RunSpec, profile: Profile, device: str, notes: list[str],
                started: float) -> Iterator[dict[str, object]]:
    dataset = load_dataset(spec.dataset, seed=spec.seed)
    batch = {"batch_size": spec.online_batch_size} if spec.scenario == "online" else {}
    scenario = build_scenario(spec.scenario, dataset, n_experiences=spec.n_experiences,
                              seed=spec.seed, **batch)
    memory_mb = spec.memory_mb if spec.memory_mb is not None else profile.budget.replay_mb
    update_ms = (spec.update_budget_ms if spec.update_budget_ms is not None
                 else profile.budget.update_ms)
    strategy = create_strategy(spec.strategy)
    config = LearnerConfig(**{**asdict(spec.config),
                              "replay_samples": spec.replay_samples,
                              "replay_bytes": capacity_from_megabytes(memory_mb),
                              "codec": spec.codec or strategy.codec or profile.budget.replay_codec,
                              "quantize_eval": spec.quantize_eval})
    learner = Learner(strategy=strategy, input_shape=scenario.input_shape,
                      n_classes=scenario.n_classes, config=config, device=device, seed=spec.seed)
    if spec.backbone_weights is not None:
        learner.load_backbone(spec.backbone_weights)
    experiences = scenario.experiences
    total = sum(len(e.y) for e in experiences)
    yield {"event": "start", "total_samples": total, "warnings": list(notes),
           "n_experiences": len(experiences)}

    matrix: list[list[float]] = []
    streaming = metrics.StreamingAccuracy()
    for exp in experiences:
        # Online streams: the first experience warms the backbone up as a batch; after it,
        # every mini-batch is predicted first (test-then-train) and learned in one pass.
        if scenario.online and learner.is_pretrained:
            step = scenario.batch_size
            for start in range(0, len(exp.y), step):
                x, y = exp.x[start:start + step], exp.y[start:start + step]
                streaming.update(learner.predict_many(x), y)
                with _collect_warnings(notes) as new:
                    learner.learn_many(x, y, epochs=1)
                yield {"event": "progress", "samples": len(y), "warnings": new}
        else:
            with _collect_warnings(notes) as new:
                learner.learn_many(exp.x, exp.y)
            yield {"event": "progress", "samples": len(exp.y), "warnings": new}
        row = [learner.evaluate(e.x_test, e.y_test) for e in experiences]
        matrix.append(row)
        yield {"event": "experience", "index": exp.index, "classes": list(exp.classes),
               "accuracy_row": row, "seen_accuracy": float(np.nanmean(row[: exp.index + 1]))}

    latency = learner.timer.summary()
    update_samples = np.asarray(learner.timer.samples_ms["update"])
    over = float((update_samples > update_ms).mean()) if update_samples.size else 0.0
    memory = learner.memory_stats()
    report = _report_skeleton(spec, profile, device)
    report.update({
        "n_experiences": len(experiences),
        "profile_details": profile.to_dict(),
        "accuracy_matrix": matrix,
        **metrics.summarize(matrix),
        "test_accuracy": learner.evaluate(dataset.x_test, dataset.y_test),
        "streaming_accuracy": streaming.value if scenario.online else None,
        "class_order": list(scenario.class_order),
        "memory": {k: memory[k] for k in ("buffer_bytes", "bytes_per_sample", "n_stored",
                                          "codec", "peak_rss_mb", "strategy_state_bytes")}
                  | {"replay_budget_mb": memory_mb, "replay_samples_cap": spec.replay_samples},
        "latency_ms": {stage: {k: v[k] for k in ("p50", "p95", "max")}
                       for stage, v in latency.items()},
        "budget": {"update_ms": update_ms, "memory_mb": profile.budget.memory_mb,
                   "n_updates": int(update_samples.size), "over_budget_fraction": over},
        "warnings": notes,
        "wall_s": time.perf_counter() - started,
    })
    if spec.save_backbone is not None:
        learner.save_backbone(spec.save_backbone)
    yield {"event": "done", "report": report}


def run(spec: RunSpec) -> dict[str, object]:
    """Run ``spec`` to the end and return its report."""
    report: dict[str, object] = {}
    for event in iter_run(spec):
        if event["event"] == "done":
            report = event["report"]
    return report
