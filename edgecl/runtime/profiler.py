"""``edgecl profile``: what each stage costs here, and what the roofline predicts on a device.

For one backbone, head, strategy and codec, every stage of the runtime is timed on this
machine (p50 / p95 / max over repeats, after warm-up): the frozen backbone's forward per
backend, one streaming update of the head, the replay codec's encode and decode, predict.
Next to each measured figure stand two predictions from the same FLOP and byte counts
(``torch.utils.flop_counter``): one from a roofline calibrated on this host, whose distance
to the measurement says how far to trust the model, and one from the profile's device
figures, which is what a user without the device wants to know. Every figure says which
it is: ``measured_here`` or ``predicted_host`` / ``predicted_device``.
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from edgecl.errors import EdgeclWarning, UsageError
from edgecl.memory import capacity_from_megabytes
from edgecl.memory.codec_choice import codec_candidates
from edgecl.profiles import Profile, resolve_execution_providers
from edgecl.runtime.cost import (
    Roofline,
    UpdateCostModel,
    count_forward,
    count_train_step,
    measure_host_rates,
)
from edgecl.runtime.learner import BACKENDS, Learner, LearnerConfig

# A host roofline off its own measurement by more than this factor, either way, does not
# describe that stage on this machine; its device prediction is then suspect by as much.
ROOFLINE_MISS_FACTOR = 2.0


@dataclass(frozen=True)
class ProfileRequest:
    """What to profile; the CLI flags map onto these fields."""

    input_shape: tuple[int, ...] = (1, 8, 8)
    n_classes: int = 10
    backbone: str | None = None        # None: the default for the input shape
    strategy: str = "ar1*"
    codec: str | None = None           # None: the strategy's, else the profile's replay_codec
    backends: tuple[str, ...] = BACKENDS
    batch: int = 32                    # the larger batch timed for backbone and predict
    repeats: int = 30
    warmup: int = 5
    threads: int | None = None         # None: the profile's, at most this machine's cores


def _percentiles(samples_ms: list[float]) -> dict[str, float]:
    arr = np.asarray(samples_ms)
    return {"p50": float(np.percentile(arr, 50)), "p95": float(np.percentile(arr, 95)),
            "max": float(arr.max())}


def time_call(fn: Callable[[], object], *, repeats: int, warmup: int) -> dict[str, float]:
    """p50 / p95 / max wall time of ``fn()`` in ms, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    return _percentiles(samples)


@contextmanager
def _threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def profile_stages(profile: Profile, request: ProfileRequest,
                   progress: Callable[[str], None] | None = None) -> dict[str, object]:
    """Measure and predict every stage; returns the JSON-able profile report."""
    if request.repeats < 3 or request.warmup < 0 or request.batch < 1:
        raise UsageError("profile needs repeats >= 3, warmup >= 0 and batch >= 1")
    unknown = [b for b in request.backends if b not in BACKENDS]
    if unknown:
        raise UsageError(f"unknown backend {unknown[0]!r}; available: {', '.join(BACKENDS)}")
    say = progress or (lambda _message: None)
    threads = request.threads or min(profile.device.threads, os.cpu_count() or 1)
    notes: list[str] = []
    with (_threads(threads), warnings.catch_warnings(record=True) as caught,
          tempfile.TemporaryDirectory(prefix="edgecl-profile-") as scratch):
        warnings.simplefilter("always", EdgeclWarning)
        say("calibrating this host's roofline")
        host = measure_host_rates(threads=threads)
        device = Roofline.from_profile(profile, like=host)
        learner, x = _warm_learner(profile, request, threads, say)
        report = _report(profile, request, learner, x, host, device, threads, say,
                         Path(scratch))
    notes += [str(w.message) for w in caught if issubclass(w.category, EdgeclWarning)]
    if learner.codec_choice is not None and learner.codec_choice.note():
        notes.append(learner.codec_choice.note())
    providers, provider_note = resolve_execution_providers(profile)
    if provider_note:
        notes.append(provider_note)
    if profile.device.torch_device != "cpu":
        notes.append(f"{profile.name} runs torch on {profile.device.torch_device}; measured "
                     "figures here are this machine's CPU, the device ones are predicted")
    report["notes"] = notes
    report["warnings"] = roofline_warnings(report["stages"], profile.name)
    return report


def roofline_warnings(stages: list[dict[str, object]], device: str) -> list[str]:
    """One warning per stage whose ``host_measured_over_predicted`` is beyond
    ROOFLINE_MISS_FACTOR either way: the same model predicts ``device``, so that prediction
    is likely off by a similar factor, in the same direction."""
    out = []
    for row in stages:
        ratio = row["host_measured_over_predicted"]
        if ratio is None or 1 / ROOFLINE_MISS_FACTOR <= ratio <= ROOFLINE_MISS_FACTOR:
            continue
        backend = row.get("backend") or row.get("codec")
        why = (" (the model prices PyTorch's eager layers one by one; ONNX Runtime fuses "
               "them)" if str(backend).startswith("ort") else "")
        device_ms = row["predicted_device_ms"]
        out.append(f"{row['stage']} ({backend}, batch {row['batch']}) took {ratio:.2f}x the "
                   f"host roofline's prediction here ({row['measured_here_ms']['p50']:.3f} ms "
                   f"measured, {row['predicted_host_ms']:.3f} ms predicted){why}: the same "
                   f"model's prediction for {device}"
                   + (f" ({device_ms:.3f} ms)" if device_ms is not None else "")
                   + f" is likely too {'low' if ratio > 1 else 'high'} by a similar factor")
    return out


def _warm_learner(profile: Profile, request: ProfileRequest, threads: int,
                  say: Callable[[str], None]) -> tuple[Learner, np.ndarray]:
    """A learner past its first experience, on synthetic inputs: weights do not change
    speed, and the replay buffer then holds latents to replay and a fitted codec."""
    say("building the learner on synthetic inputs")
    rng = np.random.default_rng(0)
    n = max(4 * request.batch, 2 * request.n_classes)
    x = rng.normal(size=(n, *request.input_shape)).astype(np.float32)
    y = np.arange(n) % request.n_classes
    # The replay memory `edgecl learn` would have: the profile's bytes, its default codec
    # chosen as the run would choose it (edgecl.memory.codec_choice).
    config = LearnerConfig(pretrain_epochs=1, epochs=1, codec=request.codec,
                           replay_bytes=capacity_from_megabytes(profile.budget.replay_mb))
    learner = Learner(strategy=request.strategy, input_shape=request.input_shape,
                      n_classes=request.n_classes, backbone=request.backbone, config=config,
                      codec_candidates=codec_candidates(profile.budget.replay_codec))
    learner.learn_many(x, y)
    return learner, x


def _report(profile: Profile, request: ProfileRequest, learner: Learner, x: np.ndarray,
            host: Roofline, device: Roofline, threads: int,
            say: Callable[[str], None], scratch: Path) -> dict[str, object]:
    batch = request.batch
    backbone_cost = count_forward(learner.frozen, learner.input_shape)
    head_cost = count_forward(learner.head, learner.latent_shape)
    train_flops = count_train_step(learner.head, learner.latent_shape, batch=batch) / batch
    stages: list[dict[str, object]] = []

    def add(stage: str, measured: dict[str, float], *, host_ms: float | None,
            device_ms: float | None, **details: object) -> None:
        entry: dict[str, object] = {"stage": stage, **details, "measured_here_ms": measured}
        entry["predicted_host_ms"] = host_ms
        entry["host_measured_over_predicted"] = (measured["p50"] / host_ms
                                                 if host_ms else None)
        entry["predicted_device_ms"] = device_ms
        stages.append(entry)

    reps = {"repeats": request.repeats, "warmup": request.warmup}
    for backend in request.backends:
        say(f"timing the backbone forward ({backend})")
        runner = _backbone_runner(learner, backend, x, threads, scratch)
        for b in (1, batch):
            xb = torch.from_numpy(x[:b])
            with torch.inference_mode():
                measured = time_call(lambda xb=xb, runner=runner: runner(xb), **reps)
            fp32 = backend != "ort-int8"  # the roofline prices fp32 arithmetic
            add("backbone forward", measured, backend=backend, batch=b,
                host_ms=host.predict_forward_ms(backbone_cost, batch=b) if fp32 else None,
                device_ms=device.predict_forward_ms(backbone_cost, batch=b) if fp32 else None)

    say("timing streaming updates of the head")
    replay = learner.fixed_replay_per_step
    counts = {"backbone": backbone_cost, "head": head_cost,
              "train_flops_per_sample": train_flops}
    host_update = UpdateCostModel.from_counts(host, **counts)
    device_update = UpdateCostModel.from_counts(device, **counts)
    for b in (1, batch):
        xb, yb = x[:b], np.arange(b) % learner.n_classes
        measured = time_call(lambda xb=xb, yb=yb: learner.learn_many(xb, yb, epochs=1), **reps)
        add("update (backbone + 1 step + store)", measured, backend="torch", batch=b,
            replay_per_step=replay, host_ms=host_update.predict_ms(b, replay, 1),
            device_ms=device_update.predict_ms(b, replay, 1))

    if learner.buffer is not None:
        codec = learner.buffer.codec
        say(f"timing the {codec.name} codec")
        with torch.no_grad():
            flat = learner._latents(torch.from_numpy(x[:batch])).reshape(batch, -1)
        codes = codec.encode(flat)
        add("replay encode", time_call(lambda: codec.encode(flat), **reps), codec=codec.name,
            batch=batch, host_ms=None, device_ms=None)
        add("replay decode", time_call(lambda: codec.decode(codes), **reps), codec=codec.name,
            batch=batch, host_ms=None, device_ms=None)

    say("timing predict")
    for b in (1, batch):
        xb = x[:b]
        measured = time_call(lambda xb=xb: learner.predict_many(xb), **reps)
        fwd_host = (host.predict_forward_ms(backbone_cost, batch=b)
                    + host.predict_forward_ms(head_cost, batch=b))
        fwd_device = (device.predict_forward_ms(backbone_cost, batch=b)
                      + device.predict_forward_ms(head_cost, batch=b))
        add("predict", measured, backend="torch", batch=b, host_ms=fwd_host,
            device_ms=fwd_device)

    memory = learner.memory_stats()
    return {
        "profile": profile.name,
        "device": profile.description,
        "labels": {"measured_here_ms": f"measured on this machine ({platform.machine()}, "
                                       f"{threads} thread(s))",
                   "predicted_host_ms": "roofline prediction for this machine, calibrated "
                                        "here (how far to trust the model)",
                   "predicted_device_ms": f"roofline prediction for {profile.name}: "
                                          f"{profile.device.sustained_gflops:g} GFLOP/s, "
                                          f"{profile.device.memory_bandwidth_gbs:g} GB/s"},
        "host_roofline": _roofline_dict(host),
        "device_roofline": _roofline_dict(device),
        "model": {
            "backbone": learner.backbone.name, "input_shape": list(learner.input_shape),
            "latent_shape": list(learner.latent_shape), "strategy": learner.strategy.name,
            "backbone_flops_per_sample": backbone_cost.flops,
            "backbone_params": backbone_cost.params,
            "backbone_activation_bytes_per_sample": backbone_cost.activation_bytes,
            "head_flops_per_sample": head_cost.flops,
            "head_train_flops_per_sample": train_flops,
            "head_params": head_cost.params,
            "head_activation_bytes_per_sample": head_cost.activation_bytes,
        },
        "stages": stages,
        "memory": {"peak_rss_mb": memory["peak_rss_mb"], "codec": memory["codec"],
                   "bytes_per_sample": memory["bytes_per_sample"],
                   "replay_bytes_at_profile_budget": _replay_bytes(learner, profile),
                   "strategy_state_bytes": memory["strategy_state_bytes"],
                   "codec_choice": (learner.codec_choice.to_dict()
                                    if learner.codec_choice is not None else None)},
        "threads": threads,
    }


def _backbone_runner(learner: Learner, backend: str, x: np.ndarray, threads: int,
                     directory: Path) -> Callable[[torch.Tensor], object]:
    if backend == "torch":
        return learner.frozen
    from edgecl.backbones.onnx import OrtRunner, export_onnx, quantize_int8

    path = directory / f"profile-{backend}.onnx"
    export_onnx(learner.frozen, path, input_shape=learner.input_shape)
    if backend == "ort-int8":
        quantized = directory / "profile-int8.onnx"
        quantize_int8(path, quantized, calibration=x)
        path = quantized
    return OrtRunner(path, threads=threads).run_torch


def _replay_bytes(learner: Learner, profile: Profile) -> dict[str, int] | None:
    if learner.buffer is None:
        return None
    per_sample = int(learner.memory_stats()["bytes_per_sample"])
    budget = int(profile.budget.replay_mb * 2**20)
    return {"budget_bytes": budget, "bytes_per_sample": per_sample,
            "latents_that_fit": budget // max(per_sample, 1)}


def _roofline_dict(roofline: Roofline) -> dict[str, object]:
    return {"gflops": roofline.gflops, "grouped_gflops": roofline.grouped_gflops,
            "bandwidth_gbs": roofline.bandwidth_gbs, "pool_gbs": roofline.pool_gbs,
            "overhead_ms": roofline.overhead_ms}
