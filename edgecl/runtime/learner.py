"""The learner: one loop that every strategy runs through.

    raw x ──► frozen backbone (no grad, once per new sample) ──► latent z
    z (+ replayed latents) ──► head ──► loss (+ strategy penalty) ──► optimizer step

The backbone is pretrained on the first batch it sees (the first experience), unless a
pretrained one is passed, and frozen below the latent layer afterwards.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import tempfile
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgecl._state import json_tensor, tensor_entry, tensor_json, under_prefix, with_prefix
from edgecl.backbones import (
    Backbone,
    create_backbone,
    default_backbone_name,
    freeze,
    replace_batchnorm_with_renorm,
    split_model,
)
from edgecl.errors import BudgetError, CheckpointError, DataError, EdgeclWarning, UsageError
from edgecl.heads.growth import resize_output
from edgecl.memory import ReplayBuffer, create_buffer, create_codec
from edgecl.memory.codec_choice import CodecChoice, choose_codec
from edgecl.runtime.classes import OutputClasses, initial_labels
from edgecl.runtime.contention import ClockMark, ThreadGovernor, UpdateClock, UpdateTime
from edgecl.runtime.cost import Roofline, UpdateCostModel, count_forward, count_train_step
from edgecl.runtime.scheduler import UpdatePlan, UpdateScheduler
from edgecl.runtime.timing import StageTimer
from edgecl.strategies import Strategy, UpdateContext, create_strategy

BACKENDS = ("torch", "ort", "ort-int8")  # where the frozen backbone runs
GROWTH_FACTOR = 4  # default scheduler cap on replay per step, times the fixed plan's
_CALIBRATION_SAMPLES = 256  # int8 calibration inputs, taken from the first batch learned
MAX_INPUT_MAGNITUDE = 1e6   # larger inputs are refused (see Learner._check_inputs)
MAX_LATENT_MAGNITUDE = 1e9  # larger latents are refused before the head sees them


@dataclass(frozen=True)
class LearnerConfig:
    """Training settings; the defaults suit small heads on 2-core CPUs."""

    epochs: int = 8                 # passes over a batch of new latents (online streams use 1)
    batch_size: int = 32            # new latents per optimizer step
    replay_batch_size: int = 32     # replayed latents mixed into each step (1:1 with new data)
    lr: float = 0.01                # SGD on the head (0.05 was unstable across seeds on digits)
    momentum: float = 0.9
    weight_decay: float = 5e-4      # as in AR1*'s CORe50 runs
    pretrain_epochs: int = 20       # backbone warm-up on the first batch, end to end
    pretrain_lr: float = 1e-3       # Adam: robust without tuning on small first batches
    replay_samples: int | None = 200  # replay capacity in samples (None: bytes only)
    replay_bytes: int | None = None   # replay capacity in bytes (None: samples only)
    memory_bytes: int | None = None   # budget for replay plus strategy state (None: no limit)
    codec: str | None = None          # replay storage; None: the strategy's codec, else fp32
    quantize_eval: bool | None = None  # evaluate through the codec; None: strategy or codec
    batch_renorm: bool = True       # BatchRenorm instead of BatchNorm in the head
    update_budget_ms: float | None = None  # schedule streaming updates to fit it (None: off)
    # The scheduler's caps. It shrinks the fixed plan (the strategy's replay, one step) to
    # fit a tight budget and spends a generous one on more replay, up to GROWTH_FACTOR times
    # the fixed replay: with new_share fixed, more replay only sharpens the replay term.
    # More steps are opt-in: each repeats the new samples, which changes what is learned.
    max_replay_per_step: int | None = None  # None: GROWTH_FACTOR x the fixed replay per step
    max_steps: int = 1
    # Share of a streaming step's loss that goes to its new samples when it replays, the
    # replayed ones sharing the rest. None: the strategy's (AR1*: 0.25), else the share they
    # have in the fixed plan's plain mean, n / (n + replay_batch_size). It does not change
    # with the number replayed, so the scheduler's replay changes only how precisely the
    # replay term is estimated, not what is learned. Experience-at-once steps: plain mean.
    new_share: float | None = None
    eval_batch_size: int = 512

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "pretrain_epochs", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise UsageError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.replay_batch_size < 0:
            raise UsageError(f"replay_batch_size must be >= 0, got {self.replay_batch_size}")
        if not (self.lr > 0 and self.pretrain_lr > 0):
            raise UsageError("learning rates must be positive")
        if self.update_budget_ms is not None and not self.update_budget_ms > 0:
            raise UsageError(f"update_budget_ms must be positive, got {self.update_budget_ms}")
        if (self.max_replay_per_step is not None and self.max_replay_per_step < 0
                or self.max_steps < 1):
            raise UsageError("max_replay_per_step must be >= 0 and max_steps >= 1")
        if self.new_share is not None and not 0 < self.new_share < 1:
            raise UsageError(f"new_share must be in (0, 1), got {self.new_share}")


class Learner(OutputClasses):
    """A frozen backbone, a trainable head, a strategy and (if it replays) a buffer.

    >>> learner = Learner(strategy="ar1*", input_shape=(1, 8, 8))
    >>> learner.learn_many(x_first, y_first)     # pretrains the backbone, then learns
    >>> learner.learn_one(x, "a new class")      # one sample at a time afterwards
    >>> learner.predict_many(x_test)             # the user's labels

    Labels are the user's own (integers or strings, see :mod:`edgecl.labels`). Without
    ``n_classes`` the output layer has a row per label seen so far (plus ``classes`` given
    up front) and grows when a new one arrives; ``n_classes=K`` fixes it at K rows for the
    labels 0..K-1 (or for ``classes``, a list of K labels) and refuses others. A class with
    no learned sample yet is never predicted.

    ``codec_candidates`` (least lossy first, e.g. ``codec_candidates("pq")`` from
    :mod:`edgecl.memory.codec_choice`): when neither the config nor the strategy names a
    replay codec, use the candidate that fits the replay budget best (``codec_choice``).
    """

    def __init__(
        self,
        *,
        strategy: Strategy | str,
        input_shape: tuple[int, ...],
        n_classes: int | None = None,
        classes: Iterable[int | str] | None = None,
        backbone: str | Backbone | None = None,
        latent_layer: str | int | None = None,
        pretrained: bool = False,
        config: LearnerConfig | None = None,
        device: str = "cpu",
        seed: int = 0,
        backend: str = "torch",
        execution_providers: Sequence[str] | None = None,
        backend_threads: int | None = None,
        onnx_dir: str | os.PathLike[str] | None = None,
        stream_samples: int | None = None,
        roofline: Roofline | None = None,
        codec_candidates: Sequence[str] | None = None,
    ) -> None:
        if backend not in BACKENDS:
            raise UsageError(f"unknown backend {backend!r}; available: {', '.join(BACKENDS)}")
        _check_constructor_arguments(strategy, input_shape, n_classes, seed, device)
        self.input_shape = tuple(int(d) for d in input_shape)
        # The user's label of each output row; n_classes fixes the rows, else they grow.
        self.labels = initial_labels(n_classes, classes)
        self._fixed_n_classes = None if n_classes is None else int(n_classes)
        self._given_classes = None if classes is None else list(self.labels.labels)
        self._learned = np.zeros(self.n_classes, dtype=np.int64)  # samples learned per row
        self.config = config or LearnerConfig()
        self.device = torch.device(device)
        self.seed = seed
        self.strategy = create_strategy(strategy) if isinstance(strategy, str) else strategy
        built = backbone is None or isinstance(backbone, str)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            if built:
                name = backbone or default_backbone_name(self.input_shape)
                backbone = create_backbone(name, input_shape=self.input_shape,
                                           n_classes=max(1, self.n_classes))
        self.backbone = backbone
        self.model = backbone.model.to(self.device)
        output = list(self.model.children())[-1]
        if built and self.n_classes == 0:
            resize_output(output, 0)  # built with one row: torch warns on an empty layer
        if not isinstance(output, nn.Linear) or output.out_features != self.n_classes:
            raise UsageError(f"the model's last layer must be nn.Linear with {self.n_classes} "
                             "outputs, one per class (n_classes, or the classes given; a "
                             "learner without either starts with none)")
        self.latent_layer = latent_layer if latent_layer is not None else backbone.latent_layer
        self.latent_shape = self._probe_latent_shape()
        self._generator = torch.Generator().manual_seed(seed)
        self.timer = StageTimer()
        self.buffer: ReplayBuffer | None = None
        self.codec_name = self.config.codec or self.strategy.codec or "fp32"
        # The strategy's own state is planned first; the replay buffer gets what is left of
        # the memory budget (at most its own byte limit).
        self._stream_samples = stream_samples
        self.planned_state_bytes = self._plan_state(self.n_classes)
        self.replay_bytes = self._replay_room()
        # A default codec (a profile's) becomes the candidate that fits the buffer best; the
        # choice is written into the config, so a checkpoint rebuilds the same learner.
        self.codec_choice: CodecChoice | None = None
        if codec_candidates and not (self.config.codec or self.strategy.codec):
            self._choose_codec(codec_candidates)
        if self.strategy.uses_replay:
            self.buffer = create_buffer(
                self.strategy.buffer_kind, max_samples=self.config.replay_samples,
                max_bytes=self.replay_bytes, codec=create_codec(self.codec_name), seed=seed)
            # Fail now, before any training, if not even one latent fits the budget.
            try:
                self.buffer.reserve(math.prod(self.latent_shape))
            except BudgetError as error:
                if self.replay_bytes == self.config.replay_bytes:
                    raise
                raise BudgetError(f"{error} (the strategy's state takes "
                                  f"{sum(self.planned_state_bytes.values()):,} of the "
                                  f"{self.config.memory_bytes:,}-byte memory budget)") from None
        self.n_updates = 0      # learn calls completed (an experience or an online mini-batch)
        self.n_steps = 0        # optimizer steps taken on the head
        self.frozen: nn.Sequential | None = None
        self.head: nn.Sequential | None = None
        # ONNX Runtime backends: the frozen part is exported to ``onnx_dir`` (a temporary
        # directory unless given) once it is frozen, and runs in an ORT session from then on.
        self.backend = backend
        self.execution_providers = list(execution_providers or ["CPUExecutionProvider"])
        self.backend_threads = backend_threads
        self._onnx_tmp = None
        if onnx_dir is None and backend != "torch":
            self._onnx_tmp = tempfile.TemporaryDirectory(prefix="edgecl-onnx-")
            onnx_dir = self._onnx_tmp.name
        self.onnx_dir = Path(onnx_dir) if onnx_dir is not None else None
        self._runner = None  # OrtRunner once the backbone is frozen (ort backends)
        # The update scheduler's cost prior prices FLOPs at this roofline (default: the cpu
        # profile's); measured update times then correct it to the machine it runs on.
        self.roofline = roofline
        self.scheduler: UpdateScheduler | None = None
        self._governor: ThreadGovernor | None = None  # with the scheduler
        self._clock = UpdateClock()  # wall time, and the part other processes took
        self._warned_deferral = False
        if pretrained:
            self._split_and_freeze()

    # -- public API -------------------------------------------------------------------------
    @property
    def is_pretrained(self) -> bool:
        return self.frozen is not None

    def pretrain(self, x: np.ndarray, y: np.ndarray) -> None:
        """Train the whole network end to end on (x, y), then freeze below the latent layer."""
        if self.is_pretrained:
            raise UsageError("the backbone is already pretrained and frozen")
        xt, labels = self._check_batch(x, y)
        yt = self._rows_for(labels)
        self._pretrain(xt, yt)
        self._split_and_freeze()
        np.add.at(self._learned, yt.numpy(), 1)

    def save_backbone(self, path: str | os.PathLike[str]) -> None:
        """Write the network's weights (a plain tensor state dict) for ``load_backbone``.

        Written atomically: a crash leaves either the old file or the new one, never half.
        """
        if not self.is_pretrained:
            raise UsageError("nothing to save yet: the backbone is not pretrained")
        from edgecl._files import atomic_path

        with atomic_path(path) as tmp:
            torch.save(self.model.state_dict(), tmp)

    def load_backbone(self, path: str | os.PathLike[str]) -> None:
        """Load pretrained weights (from ``save_backbone`` or a ``state_dict`` of the same
        architecture) and freeze below the latent layer; no pretraining then happens."""
        if self.is_pretrained:
            raise UsageError("the backbone is already pretrained; load weights before learning")
        try:
            # weights_only: an untrusted file cannot run code while it loads.
            state = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise UsageError(f"backbone weights {path}: no such file") from None
        except Exception as error:  # truncated, not a torch file, pickled code objects ...
            raise UsageError(f"backbone weights {path}: not a readable weights file "
                             f"({type(error).__name__})") from None
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor)
                                                  for v in state.values()):
            raise UsageError(f"backbone weights {path}: expected a state dict of tensors")
        own = self.model.state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        wrong = [k for k in own if k in state and state[k].shape != own[k].shape]
        if missing or unexpected or wrong:
            detail = (f"missing {missing[:3]}" if missing else
                      f"unexpected {unexpected[:3]}" if unexpected else
                      f"shape of {wrong[0]} is {tuple(state[wrong[0]].shape)}, "
                      f"expected {tuple(own[wrong[0]].shape)}")
            hint = ("; a learner without n_classes has an output row per class it knows: "
                    "pass classes=[...] with the labels of the file's rows"
                    if not self.labels.fixed else "")
            raise UsageError(f"backbone weights {path} do not fit the {self.backbone.name} "
                             f"backbone for inputs {self.input_shape} and {self.n_classes} "
                             f"classes: {detail}{hint}")
        self.model.load_state_dict(state)
        self._split_and_freeze()

    def learn_many(self, x: np.ndarray, y: np.ndarray, *, epochs: int | None = None) -> None:
        """Learn a batch of new samples (an experience). The first call pretrains the backbone.

        ``y`` holds the user's labels (integers or strings); a label not seen before gets a
        new output row, unless ``n_classes`` fixed them. Input is checked first: bad values
        raise DataError (a growth beyond the memory budget BudgetError) and leave the
        learner unchanged.
        """
        entered = self._clock.mark()  # a streaming update's latency includes the checks
        if epochs is not None and (not isinstance(epochs, (int, np.integer))
                                   or isinstance(epochs, bool) or epochs < 1):
            raise UsageError(f"epochs must be an integer >= 1, got {epochs!r}")
        xt, labels = self._check_batch(x, y)
        with self._undo_growth_on_error():
            self._learn_rows(xt, self._rows_for(labels), epochs, entered)

    def _learn_rows(self, xt: torch.Tensor, yt: torch.Tensor, epochs: int | None,
                    entered: ClockMark) -> None:
        """learn_many on checked inputs and their output rows."""
        if not self.is_pretrained:
            self._pretrain(xt, yt)
            self._split_and_freeze()
            entered = self._clock.mark()  # one-off work is no update's cost
        if self.backend != "torch" and self._runner is None:
            self._start_ort(calibration=xt)
            entered = self._clock.mark()
        if epochs == 1:  # streaming: each mini-batch is one update, timed whole
            if self.scheduler is not None:
                self._learn_scheduled(xt, yt, entered)
            else:
                with self.timer.stage("backbone"):
                    latents = self._latents(xt)
                self._check_latents(latents)
                self._update(latents, yt, epochs=1, time_steps=False, stream=True)
                self._finish_device_work()
                self.timer.record("update", self._clock.since(entered).wall_ms)
            return
        with self.timer.stage("backbone"):
            latents = self._latents(xt)
        self._check_latents(latents)
        if epochs is None:
            epochs = self.strategy.step_plan.epochs or self.config.epochs
        self._update(latents, yt, epochs=epochs)

    def sleep(self, budget_ms: float) -> list[str]:
        """Idle-time consolidation (SIESTA's "sleep"): with no data arriving, learn the
        samples the scheduler deferred, then replay more, within ``budget_ms``. Returns the
        reason of each update made. Needs an update budget (``update_budget_ms``)."""
        if (not isinstance(budget_ms, (int, float, np.number)) or isinstance(budget_ms, bool)
                or not math.isfinite(budget_ms) or budget_ms < 0):
            raise UsageError(f"sleep budget must be a number of ms >= 0, got {budget_ms!r}")
        if self.scheduler is None or not self.is_pretrained:
            return []
        done = []
        for plan in self.scheduler.idle(budget_ms, replay_available=self._replay_available()):
            mark = self._clock.mark()
            with self._intra_op_threads():
                if plan.items:
                    x = torch.stack([x for x, _ in plan.items])
                    y = torch.stack([y for _, y in plan.items])
                    self._update(self._latents(x), y, epochs=plan.n_steps,
                                 replay_per_step=plan.replay_per_step, time_steps=False,
                                 stream=True)
                else:
                    self._replay_only(plan.replay_per_step, plan.n_steps)
                self._finish_device_work()
            self._observe(plan, self._clock.since(mark))
            done.append(plan.reason)
        return done

    def learn_one(self, x: np.ndarray, y: int | str) -> None:
        """Learn one sample (one pass, mixed with replay when the strategy replays)."""
        if not self.is_pretrained:
            raise UsageError("learn_one needs a pretrained backbone: call learn_many or "
                             "pretrain on a first batch, or pass pretrained=True")
        self.learn_many(np.asarray(x)[None], [y], epochs=1)

    def predict_many(self, x: np.ndarray) -> np.ndarray:
        """The user's labels (an int64 array for integer labels, str for strings) for a
        batch of inputs; only classes with a learned sample are ever predicted."""
        return self.labels.decode(self._predict_rows(x))

    def predict_one(self, x: np.ndarray) -> int | str:
        return self.predict_many(np.asarray(x)[None])[0].item()

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> float:
        """Accuracy on (x, y); NaN for an empty set (no inputs and no labels).

        A label this learner does not know is an error with a fixed ``n_classes`` (it can
        never be one of its classes); a growing learner scores it as wrong (a class not
        learned yet, as in the accuracy matrix's rows for experiences still to come)."""
        if np.size(x) == 0 and np.size(y) == 0:
            return float("nan")
        _, labels = self._check_batch(x, y)
        rows = self.labels.rows(labels)
        if self.labels.fixed and (rows < 0).any():
            raise DataError(self._not_a_class(labels))
        return float((self._predict_rows(x) == rows).mean())

    def _predict_rows(self, x: np.ndarray) -> np.ndarray:
        if not self.is_pretrained:
            raise UsageError("nothing learned yet: call learn_many first, or pass a pretrained "
                             "backbone with pretrained=True")
        xt = self._check_inputs(x)
        if not self._learned.any():
            raise UsageError("no class learned yet: learn at least one labelled sample before "
                             "predicting")
        if self.backend != "torch" and self._runner is None:
            self._start_ort(calibration=xt)
        with self.timer.stage("predict"):
            scores = self._scores(xt)
            if not self._learned.all():
                # A class without a learned sample has an untrained row: never an answer.
                scores[:, torch.from_numpy(self._learned == 0)] = -math.inf
            return scores.argmax(dim=1).numpy()

    def memory_stats(self) -> dict[str, object]:
        stats = (self.buffer.stats() if self.buffer is not None else
                 {"buffer_bytes": 0, "bytes_per_sample": 0, "n_stored": 0, "capacity": 0,
                  "codec": self.codec_name})
        stats["strategy_state_bytes"] = self.strategy.state_bytes()
        stats["peak_rss_mb"] = self.timer.peak_rss_bytes / 2**20
        return stats

    def _choose_codec(self, candidates: Sequence[str]) -> None:
        name = candidates[-1]  # no replay: nothing to size, the preferred one is reported
        if self.strategy.uses_replay:
            self.codec_choice = choose_codec(
                candidates, buffer_kind=self.strategy.buffer_kind,
                dim=math.prod(self.latent_shape), max_samples=self.config.replay_samples,
                max_bytes=self.replay_bytes)
            name = self.codec_choice.codec
        self.config = dataclasses.replace(self.config, codec=name)
        self.codec_name = name

    def _replay_room(self) -> int | None:
        """Replay bytes: the configured limit, within what the memory budget leaves after the
        strategy's planned state; BudgetError naming the parts if that state does not fit."""
        budget = self.config.memory_bytes
        if budget is None:
            return self.config.replay_bytes
        state = sum(self.planned_state_bytes.values())
        if state > budget:
            parts = ", ".join(f"{what}: {n:,} B" for what, n in self.planned_state_bytes.items())
            raise BudgetError(f"strategy {self.strategy.name} needs {state:,} bytes of state "
                              f"({parts}), more than the memory budget of {budget:,} bytes; "
                              "raise --memory-mb or choose a lighter strategy")
        room = budget - state
        return room if self.config.replay_bytes is None else min(self.config.replay_bytes, room)

    # -- checkpoints ------------------------------------------------------------------------
    def identity(self) -> dict[str, Any]:
        """What a checkpoint must match to be restored into this learner."""
        return {
            "backbone": self.backbone.name,
            "input_shape": list(self.input_shape),
            "n_classes": self._fixed_n_classes,  # None: it grows
            **({} if self._given_classes is None else {"classes": self._given_classes}),
            "latent_layer": str(self.latent_layer),
            "strategy": self.strategy.name,
            "strategy_config": repr(self.strategy),
            "codec": self.codec_name if self.buffer is not None else None,
            "backend": self.backend,
            "config": asdict(self.config),
            "seed": self.seed,
        }

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The whole learned state as a flat dict of tensors (no pickled objects): weights,
        the strategy's and the buffer's state, the random generator, counters and timings.
        Taken between updates; optimizers live within one update, so none is pending."""
        counters = {"n_updates": self.n_updates, "n_steps": self.n_steps,
                    "pretrained": self.is_pretrained,
                    "frozen_sha256": self._frozen_digest() if self.is_pretrained else None,
                    "onnx_file": self._runner.path.name if self._runner is not None else None}
        state = {"generator": self._generator.get_state(), "counters": json_tensor(counters),
                 "labels": json_tensor({**self.labels.to_json(),
                                        "learned": self._learned.tolist()})}
        if self.is_pretrained:
            state |= with_prefix("frozen", self.frozen.state_dict())
            state |= with_prefix("head", self.head.state_dict())
        else:
            state |= with_prefix("model", self.model.state_dict())
        state |= with_prefix("strategy", self.strategy.state_dict())
        if self.buffer is not None:
            state |= with_prefix("buffer", self.buffer.state_dict())
        state |= with_prefix("timer", self.timer.state_dict())
        if self.scheduler is not None:
            state["scheduler"] = json_tensor(self.scheduler.state_dict())
            state["threads"] = json_tensor(self._governor.state_dict())
        return {k: v.detach().clone() for k, v in state.items()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restore what ``state_dict`` returned. All or nothing: if any part does not fit,
        CheckpointError is raised and the learner is left as it was."""
        was_pretrained = self.is_pretrained
        before = self.state_dict()
        try:
            self._load_state(state)
        except Exception as error:
            if not was_pretrained and self.is_pretrained:
                self._unsplit()
            self._load_state(before)
            if isinstance(error, CheckpointError):
                raise
            raise CheckpointError(f"checkpoint does not fit this learner: "
                                  f"{type(error).__name__}: {error}") from None

    def save_checkpoint(self, directory: str | os.PathLike[str], *,
                        extra: Mapping[str, torch.Tensor] | None = None,
                        meta: Mapping[str, Any] | None = None, keep: int = 2,
                        step: int | None = None) -> Path:
        """Write the learner's state (plus ``extra`` tensors and ``meta``) as a new
        checkpoint in ``directory``; atomic, see :mod:`edgecl.runtime.checkpoint`.
        ``step`` (default: updates done) must grow from one checkpoint to the next."""
        from edgecl.runtime.checkpoint import save_checkpoint

        tensors = with_prefix("learner", self.state_dict()) | dict(extra or {})
        # Identity keys sit at the top level, so a mismatch names the key that differs.
        info = {**self.identity(), "backend_info": self.backend_info(), **dict(meta or {})}
        return save_checkpoint(directory, tensors=tensors, meta=info, keep=keep,
                               step=self.n_updates if step is None else step)

    def load_checkpoint(self, directory: str | os.PathLike[str], *,
                        expect: Mapping[str, Any] | None = None):
        """Restore the newest valid checkpoint in ``directory`` (older ones if the newest is
        damaged; see ``.skipped``). Returns it, so callers can read their ``extra`` tensors
        and ``meta``. CheckpointError if none fits this learner; the learner is unchanged."""
        from edgecl.runtime.checkpoint import load_checkpoint

        expected = {**self.identity(), **dict(expect or {})}
        checkpoint = load_checkpoint(directory, expect=expected)
        self._check_onnx_file(checkpoint.meta.get("backend_info"))
        self.load_state_dict(under_prefix("learner", checkpoint.tensors))
        return checkpoint

    @classmethod
    def from_checkpoint(cls, directory: str | os.PathLike[str], *,
                        device: str = "cpu") -> Learner:
        """A learner rebuilt from the newest valid checkpoint in ``directory``: the same
        backbone, strategy (with its default settings), configuration and backend (whose
        ONNX files are kept in ``directory/backbone``), with its state loaded, on ``device``
        (a checkpoint does not depend on the device it was written on)."""
        from edgecl.runtime.checkpoint import load_checkpoint

        _check_device(device)  # before the checkpoint: a bad argument is not a bad file
        meta = load_checkpoint(directory).meta
        try:
            config = LearnerConfig(**meta["config"])
            learner = cls(strategy=str(meta["strategy"]),
                          input_shape=tuple(int(d) for d in meta["input_shape"]),
                          n_classes=None if meta["n_classes"] is None
                          else int(meta["n_classes"]), classes=meta.get("classes"),
                          backbone=str(meta["backbone"]),
                          latent_layer=meta["latent_layer"], config=config,
                          seed=int(meta["seed"]), backend=str(meta["backend"]),
                          onnx_dir=Path(directory) / "backbone", device=device)
        except (KeyError, TypeError, ValueError, IndexError, RuntimeError, UsageError
                ) as error:
            raise CheckpointError(f"checkpoint in {directory} does not describe a learner: "
                                  f"{type(error).__name__}: {error}") from None
        learner.load_checkpoint(directory)
        return learner

    def _load_state(self, state: Mapping[str, torch.Tensor]) -> None:
        counters = tensor_json(state.get("counters"), what="learner counters")
        generator = tensor_entry(state, "generator", what="learner", dtype=torch.uint8)
        try:
            n_updates, n_steps = int(counters["n_updates"]), int(counters["n_steps"])
            pretrained, onnx_file = bool(counters["pretrained"]), counters["onnx_file"]
        except (KeyError, TypeError, ValueError):
            raise CheckpointError("learner checkpoint counters are malformed") from None
        labels, learned = self._restored_labels(state)
        if len(labels) != self.n_classes:  # regrow (or shrink) the head before its tensors
            self._resize_classes(len(labels))
        if pretrained:
            if not self.is_pretrained:
                _load_module(split_model(self.model, self.latent_layer).frozen,
                             under_prefix("frozen", state), "frozen backbone")
                self._split_and_freeze()
            else:
                _load_module(self.frozen, under_prefix("frozen", state), "frozen backbone")
            _load_module(self.head, under_prefix("head", state), "head")
            if counters.get("frozen_sha256") != self._frozen_digest():
                raise CheckpointError("frozen backbone weights in the checkpoint do not match "
                                      "their recorded hash")
        else:
            if self.is_pretrained:
                raise CheckpointError("checkpoint was taken before the backbone was "
                                      "pretrained; this learner is past that point")
            _load_module(self.model, under_prefix("model", state), "network")
        self.strategy.load_state_dict(under_prefix("strategy", state))
        if self.buffer is not None:
            self.buffer.load_state_dict(under_prefix("buffer", state))
        self.timer.load_state_dict(under_prefix("timer", state))
        if self.scheduler is not None and "scheduler" in state:
            self.scheduler.load_state_dict(tensor_json(state["scheduler"], what="scheduler"))
        if self.scheduler is not None and "threads" in state:  # absent in older checkpoints
            self._governor.load_state_dict(tensor_json(state["threads"], what="threads"))
        self._generator.set_state(generator.clone())
        self.n_updates, self.n_steps = n_updates, n_steps
        self.labels, self._learned = labels, learned
        self.planned_state_bytes = self._plan_state(len(labels))
        self._restore_runner(onnx_file if pretrained else None)

    def _check_onnx_file(self, info: Any) -> None:
        """The ONNX backbone a checkpoint ran on must be the very file it recorded."""
        if self.backend == "torch" or not isinstance(info, dict) or not info.get("onnx_file"):
            return
        from edgecl.backbones.onnx import file_sha256

        path = self.onnx_dir / str(info["onnx_file"])
        if path.exists() and file_sha256(path) != info.get("onnx_sha256"):
            raise CheckpointError(f"{path} is not the ONNX backbone the checkpoint ran on "
                                  "(its SHA-256 differs): the file was changed or damaged")

    def _restore_runner(self, onnx_file: str | None) -> None:
        """Reopen the ONNX backbone a checkpoint ran on; the fp32 one can be re-exported from
        the weights, the int8 one cannot (its calibration data is gone), so it must exist."""
        self._runner = None
        if self.backend == "torch" or onnx_file is None:
            return
        path = self.onnx_dir / onnx_file
        if path.exists():
            self._open_runner(path)
        elif self.backend == "ort":
            self._start_ort(calibration=None)
        else:
            raise CheckpointError(f"the int8 backbone {path} the checkpoint ran on is "
                                  "missing; it is kept next to the checkpoints")

    def _unsplit(self) -> None:
        """Undo ``_split_and_freeze`` (used only to roll back a failed restore)."""
        for p in self.model.parameters():
            p.requires_grad_(True)
        self.model.train()
        self.frozen = self.head = self._runner = self.scheduler = self._governor = None

    # -- checks -----------------------------------------------------------------------------
    def _check_inputs(self, x: np.ndarray) -> torch.Tensor:
        try:
            x = np.asarray(x)
        except (ValueError, TypeError) as error:  # ragged nested lists, odd objects
            raise DataError(f"inputs are not a rectangular numeric array: {error}") from None
        if x.dtype.kind not in "fiub":
            raise DataError(f"inputs must be numeric, got dtype {x.dtype}")
        if x.ndim != len(self.input_shape) + 1 or tuple(x.shape[1:]) != self.input_shape:
            raise DataError(f"inputs must have shape (N, {', '.join(map(str, self.input_shape))})"
                            f", got {tuple(x.shape)}")
        if x.shape[0] == 0:
            raise DataError("empty batch: nothing to learn or predict")
        # Cast first: a float64 1e39 is finite until it becomes float32.
        with np.errstate(over="ignore", invalid="ignore"):
            x32 = x.astype(np.float32)
        finite = np.isfinite(x32)
        if not finite.all():
            raise DataError(f"inputs contain {int((~finite).sum())} NaN or infinite values (as "
                            "float32); clean or drop those samples")
        # Values this large overflow the head's statistics (squares pass float32's 3e38);
        # real inputs (pixels, sensor readings, standardised features) are far smaller.
        largest = float(np.abs(x32).max())
        if largest > MAX_INPUT_MAGNITUDE:
            raise DataError(f"inputs reach {largest:.3g} in magnitude, above the "
                            f"{MAX_INPUT_MAGNITUDE:.0e} edgecl accepts; scale them first "
                            "(e.g. to [0, 1] or standardised)")
        return torch.from_numpy(x32)

    def _check_latents(self, latents: torch.Tensor) -> None:
        """The backbone's output must be finite and of sane size before the head sees it."""
        if not torch.isfinite(latents).all():
            raise DataError("the backbone produced NaN or infinite latents for these inputs; "
                            "nothing was learned (check the input scaling)")
        largest = float(latents.abs().max()) if latents.numel() else 0.0
        if largest > MAX_LATENT_MAGNITUDE:
            raise DataError(f"the backbone produced latents of magnitude {largest:.3g}, above "
                            f"{MAX_LATENT_MAGNITUDE:.0e}; nothing was learned (check the input "
                            "scaling)")

    def _check_batch(self, x: np.ndarray, y: object) -> tuple[torch.Tensor, np.ndarray]:
        """Checked inputs, and labels of this learner's kind (int64 or str), one each."""
        xt = self._check_inputs(x)
        return xt, self.labels.check(y, n=xt.shape[0])

    # -- internals --------------------------------------------------------------------------
    def _pretrain(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.model.train()
        optimizer = torch.optim.Adam(self.model.parameters(), lr=self.config.pretrain_lr)
        batch = self.config.batch_size
        for _ in range(self.config.pretrain_epochs):
            order = torch.randperm(len(x), generator=self._generator)
            for start in range(0, len(x), batch):
                idx = order[start:start + batch]
                if len(idx) < 2:  # BatchNorm needs two samples
                    continue
                loss = F.cross_entropy(self.model(x[idx].to(self.device)), y[idx].to(self.device))
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()

    @torch.no_grad()
    def _probe_latent_shape(self) -> tuple[int, ...]:
        frozen = split_model(self.model, self.latent_layer).frozen
        was_training = self.model.training
        frozen.eval()
        shape = tuple(frozen(torch.zeros(1, *self.input_shape, device=self.device)).shape[1:])
        self.model.train(was_training)
        return shape

    def _split_and_freeze(self) -> None:
        split = split_model(self.model, self.latent_layer)
        self.frozen = freeze(split.frozen)
        self.head = split.head
        if self.config.batch_renorm:
            replace_batchnorm_with_renorm(self.head)
        self.strategy.configure(self.head)
        if self.config.update_budget_ms is not None:
            self.scheduler = self._make_scheduler(self.config.update_budget_ms)
            # Scheduled updates drop to one intra-op thread while other processes compete
            # for the cores (see edgecl.runtime.contention), from the threads torch has now.
            self._governor = ThreadGovernor(torch.get_num_threads())

    def _make_scheduler(self, budget_ms: float) -> UpdateScheduler:
        """A scheduler whose cost prior is the FLOPs of this backbone and head."""
        cost = self.update_cost_model()
        cap = self.config.max_replay_per_step
        if cap is None or self.buffer is None:
            cap = GROWTH_FACTOR * self.fixed_replay_per_step
        return UpdateScheduler(budget_ms=budget_ms, cost=cost, max_replay_per_step=cap,
                               max_steps=self.config.max_steps,
                               replay_available=self._replay_available)

    def update_cost_model(self) -> UpdateCostModel:
        """A fresh model of an update's time whose prior prices this backbone's and head's
        FLOPs and bytes at ``self.roofline`` (the profile's device; default: the cpu
        profile's). The scheduler starts from it and corrects it with times measured here;
        as it comes, it is the roofline's prediction for the device. Needs the backbone
        split (after pretraining)."""
        roofline = self.roofline
        if roofline is None:
            from edgecl.profiles import load_profile

            roofline = Roofline.from_profile(load_profile("cpu"))
        if roofline.overhead_ms == 0:
            # A profile states rates only; eager PyTorch pays ~15 us per op on a CPU, which
            # dominates a small head's update. The online fit corrects it either way.
            roofline = dataclasses.replace(roofline, overhead_ms=0.015)
        batch = self.config.batch_size
        head = self._priced_head()
        return UpdateCostModel.from_counts(
            roofline, backbone=count_forward(self.frozen, self.input_shape),
            head=count_forward(head, self.latent_shape),
            train_flops_per_sample=count_train_step(head, self.latent_shape,
                                                    batch=batch) / batch)

    @property
    def fixed_replay_per_step(self) -> int:
        """Replayed latents per step without the scheduler: the strategy's own (REMIND: 50),
        else the config's; 0 for strategies that do not replay."""
        if self.buffer is None:
            return 0
        plan = self.strategy.step_plan
        return (plan.replay_per_step if plan.replay_per_step is not None
                else self.config.replay_batch_size)

    def _replay_available(self) -> int:
        return len(self.buffer) if self.buffer is not None else 0

    def _learn_scheduled(self, x: torch.Tensor, y: torch.Tensor, entered: ClockMark) -> None:
        """Streaming updates sized by the scheduler: one per mini-batch of new samples; what
        does not fit the budget now is deferred to ``sleep``. The first update's time counts
        from ``entered`` (when the caller handed the data over: checking it is part of the
        latency the caller sees, and the cost model learns it as part of the fixed cost)."""
        chunk = self.strategy.step_plan.new_per_step or self.config.batch_size
        for start in range(0, len(x), chunk):
            x_new, y_new = x[start:start + chunk], y[start:start + chunk]
            mark = entered if start == 0 else self._clock.mark()
            plan = self.scheduler.plan(len(x_new))
            k = plan.n_new_now
            if k:
                with self._intra_op_threads():
                    with self.timer.stage("backbone"):
                        latents = self._latents(x_new[:k])
                    self._check_latents(latents)
                    self._update(latents, y_new[:k], epochs=plan.n_steps,
                                 replay_per_step=plan.replay_per_step, time_steps=False,
                                 stream=True)
                    self._finish_device_work()
            took = self._clock.since(mark)
            self._observe(plan, took)
            if k:
                self.timer.record("update", took.wall_ms)
            if plan.n_deferred:
                self.scheduler.defer(zip(x_new[k:], y_new[k:], strict=True))
            if plan.n_deferred and not self._warned_deferral:
                self._warned_deferral = True
                warnings.warn(f"update budget too small for some updates ({plan.reason}); "
                              "samples that do not fit are deferred to idle time (--sleep-ms, "
                              "Learner.sleep) and dropped when its queue is full; the report "
                              "counts both", EdgeclWarning, stacklevel=4)

    @property
    def thread_governor(self) -> ThreadGovernor | None:
        """The intra-op thread policy of scheduled updates (None without a scheduler)."""
        return self._governor

    def _observe(self, plan: UpdatePlan, took: UpdateTime) -> None:
        """Teach the scheduler a plan's own time and wall time, and the thread governor
        how much of it other processes took."""
        self.scheduler.observe(plan, took.own_ms, wall_ms=took.wall_ms)
        if plan.n_steps or plan.n_new_now:
            self._governor.observe(took.wall_ms, took.stolen_ms)

    @contextmanager
    def _intra_op_threads(self) -> Iterator[None]:
        """Run the block with the governor's thread count (one under contention), then give
        the caller back the threads it had; switching costs well under a microsecond."""
        before = torch.get_num_threads()
        wanted = min(self._governor.threads, before)
        if wanted == before:
            yield
            return
        torch.set_num_threads(wanted)
        try:
            yield
        finally:
            torch.set_num_threads(before)

    def stream_new_share(self, n_new: int = 1) -> float | None:
        """The share of a streaming step's loss that its ``n_new`` new samples get when it
        replays: the config's, else the strategy's, else the fixed plan's n / (n + replay);
        None for a learner that does not replay."""
        share = self.config.new_share or self.strategy.step_plan.stream_new_share
        if share is None:
            fixed = self.fixed_replay_per_step
            if fixed == 0:
                return None
            share = n_new / (n_new + fixed)
        return share

    def _new_share(self, n_new: int, n_replayed: int) -> float | None:
        """The share to weigh a streaming step by; None where it is the plain mean's (so
        fixed plans compute exactly what they always did)."""
        share = self.stream_new_share(n_new)
        if share is None or math.isclose(share, n_new / (n_new + n_replayed)):
            return None
        return share

    def _finish_device_work(self) -> None:
        """Wait for queued GPU kernels: an update is timed, and over, when its work is done,
        not when its last kernel was launched."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _replay_only(self, replay_per_step: int, n_steps: int) -> None:
        """Steps on replayed latents alone (idle-time consolidation); stores nothing."""
        old_x, old_y = self._sample_replay(replay_per_step)
        self._update(old_x.view(-1, *self.latent_shape), old_y, epochs=n_steps,
                     replay_per_step=0, time_steps=False, store=False)

    @torch.no_grad()
    def _latents(self, x: torch.Tensor) -> torch.Tensor:
        step = self.config.eval_batch_size
        if self._runner is not None:
            chunks = [self._runner.run_torch(x[i:i + step]).to(self.device)
                      for i in range(0, len(x), step)]
        else:
            chunks = [self.frozen(x[i:i + step].to(self.device))
                      for i in range(0, len(x), step)]
        return torch.cat(chunks)

    def _start_ort(self, *, calibration: torch.Tensor | None) -> None:
        """Export the frozen part to ONNX (int8: quantized, calibrated on the first inputs
        seen) and open an ONNX Runtime session on it."""
        from edgecl.backbones.onnx import export_onnx, quantize_int8

        self.onnx_dir.mkdir(parents=True, exist_ok=True)
        digest = self._frozen_digest()[:16]
        path = self.onnx_dir / f"frozen-{digest}.onnx"
        if not path.exists():
            export_onnx(self.frozen, path, input_shape=self.input_shape)
        if self.backend == "ort-int8":
            fp32_path, path = path, self.onnx_dir / f"frozen-{digest}-int8.onnx"
            if not path.exists():
                if calibration is None:
                    raise UsageError("the int8 backbone needs calibration inputs: learn a "
                                     "first batch before predicting")
                # A fixed stride, not a random draw: the learner's generator must not move, so
                # runs differ from the torch backend only by the backbone's arithmetic.
                stride = max(1, len(calibration) // _CALIBRATION_SAMPLES)
                quantize_int8(fp32_path, path,
                              calibration=calibration[::stride].numpy().astype(np.float32))
        self._open_runner(path)

    def _open_runner(self, path: Path) -> None:
        from edgecl.backbones.onnx import OrtRunner

        self._runner = OrtRunner(path, providers=self.execution_providers,
                                 threads=self.backend_threads, input_shape=self.input_shape)

    def _frozen_digest(self) -> str:
        """SHA-256 of the frozen part's weights and buffers (names, dtypes, shapes, bytes)."""
        digest = hashlib.sha256()
        for name, tensor in self.frozen.state_dict().items():
            t = tensor.detach().cpu().contiguous()
            digest.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()

    def backend_info(self) -> dict[str, object]:
        """Where the frozen backbone runs: backend, execution provider actually used, and
        the ONNX file with its SHA-256 (ORT backends, once the backbone is frozen)."""
        info: dict[str, object] = {"backend": self.backend,
                                   "execution_provider": "torch:" + str(self.device)}
        if self._runner is not None:
            from edgecl.backbones.onnx import file_sha256

            info.update(execution_provider=self._runner.provider,
                        onnx_file=self._runner.path.name,
                        onnx_sha256=file_sha256(self._runner.path))
        return info

    @property
    def quantizes_eval(self) -> bool:
        """Whether the head sees new and test latents through the codec, as replayed ones:
        the config decides if set, else on for REMIND-like strategies and coarse codecs."""
        if self.buffer is None:
            return False
        wanted = (self.config.quantize_eval if self.config.quantize_eval is not None
                  else self.strategy.quantize_eval or self.buffer.codec.coarse)
        return bool(wanted and self.buffer is not None and self.buffer.codec.is_fitted)

    @torch.no_grad()
    def _scores(self, x: torch.Tensor) -> torch.Tensor:
        self.head.eval()
        return self.head(self._through_codec(self._latents(x))).cpu()

    def _through_codec(self, latents: torch.Tensor) -> torch.Tensor:
        """With quantized evaluation on, latents as the buffer would give them back.

        As REMIND does, this applies to new training latents too, so the head sees new,
        replayed and test latents alike; otherwise it would learn new classes from exact
        latents and be tested on their reconstructions.
        """
        if not self.quantizes_eval:
            return latents
        codec = self.buffer.codec
        flat = latents.reshape(len(latents), -1).cpu()  # codecs and the buffer live on the CPU
        return codec.decode(codec.encode(flat)).to(latents.device).view_as(latents)

    def _sample_replay(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` replayed latents and labels, on the learner's device."""
        old_x, old_y = self.buffer.sample(n, self._generator)
        return old_x.to(self.device), old_y.to(self.device)

    def _train_forward(self, batch: torch.Tensor) -> torch.Tensor:
        if len(batch) > 1:
            return self.head(batch)
        # One sample has no batch statistics: BatchNorm uses its running ones for this step.
        norms = [m for m in self.head.modules()
                 if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
        for m in norms:
            m.eval()
        try:
            return self.head(batch)
        finally:
            for m in norms:
                m.train()

    def _set_trainable(self, params: list[nn.Parameter]) -> None:
        wanted = {id(p) for p in params}
        for module in self.head.modules():
            own = list(module.parameters(recurse=False))
            for p in own:
                p.requires_grad_(id(p) in wanted)
            # A normalisation layer whose parameters are frozen keeps its statistics too.
            module.train(any(id(p) in wanted for p in own) if own else True)

    def _update(self, latents: torch.Tensor, labels: torch.Tensor, *, epochs: int,
                replay_per_step: int | None = None, time_steps: bool = True,
                store: bool = True, stream: bool = False) -> None:
        """Train the head on new latents (``epochs`` passes, mini-batches mixed with replay).

        ``replay_per_step`` overrides the strategy's and the config's (the scheduler's
        choice); ``time_steps`` records each step as an "update" (experience mode; streaming
        updates are timed whole by the caller); ``stream`` weighs new against replayed
        samples by ``new_share`` (streaming updates), else every sample counts the same."""
        cfg = self.config
        if self.buffer is not None and not self.buffer.codec.is_fitted:
            # Codecs are fitted on the first update's latents (the first experience).
            self.buffer.codec.fit(latents.reshape(len(latents), -1).cpu())
        labels = labels.to(self.device)
        data, targets = self.strategy.training_data(self._through_codec(latents), labels)
        counts = Counter(targets.tolist())
        if self.buffer is not None:  # CWR* and AR1* count the replayed classes too
            counts.update(self.buffer.class_counts())
        ctx = UpdateContext(head=self.head, class_counts=dict(counts),
                            update_index=self.n_updates)
        self.strategy.before_update(ctx)
        params = self.strategy.trainable_parameters(self.head, first_update=self.n_updates == 0)
        self._set_trainable(params)
        optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                                    weight_decay=cfg.weight_decay)
        plan = self.strategy.step_plan
        new_per_step = plan.new_per_step or cfg.batch_size
        if replay_per_step is None:
            replay_per_step = self.fixed_replay_per_step
        timed = self.timer.stage if time_steps else _untimed
        for _ in range(epochs):
            order = torch.randperm(len(data), generator=self._generator)
            for idx in _minibatches(order, new_per_step):
                with timed("update"):
                    batch_x, batch_y = data[idx], targets[idx]
                    if replay_per_step > 0 and self.buffer is not None and len(self.buffer):
                        old_x, old_y = self._sample_replay(replay_per_step)
                        batch_x = torch.cat([batch_x, old_x.view(-1, *self.latent_shape)])
                        batch_y = torch.cat([batch_y, old_y])
                    batch_x, batch_y = self.strategy.augment(
                        batch_x, batch_y, n_new=len(idx), generator=self._generator)
                    logits = self._train_forward(batch_x)
                    share = self._new_share(len(idx), len(batch_y) - len(idx)) if stream else None
                    if share is None:
                        loss = F.cross_entropy(logits, batch_y)
                    else:
                        loss = _weighted_loss(logits, batch_y, n_new=len(idx), new_share=share)
                    penalty = self.strategy.penalty(self.head)
                    if penalty is not None:
                        loss = loss + penalty
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                    self.strategy.after_step(self.head)
                    self.n_steps += 1
                    if plan.store_each_step and self.buffer is not None and store:
                        # Streaming: a sample can be replayed from the very next step on.
                        self.buffer.add(data[idx].cpu(), targets[idx].cpu())
        self.strategy.after_update(ctx)
        if self.buffer is not None and not plan.store_each_step and store:
            self.buffer.add(latents.cpu(), labels.cpu())
        if store:  # new samples learned (store=False: idle-time replay, nothing new)
            np.add.at(self._learned, labels.cpu().numpy(), 1)
        self.head.eval()
        self.n_updates += 1


def _weighted_loss(logits: torch.Tensor, targets: torch.Tensor, *, n_new: int,
                   new_share: float) -> torch.Tensor:
    """Cross-entropy in which the first ``n_new`` samples share ``new_share`` of the loss
    and the replayed rest share the remainder.

    Without replayed samples the new ones keep their share alone (a smaller step than the
    fixed plan's, not a larger one)."""
    per_sample = F.cross_entropy(logits, targets, reduction="none")
    loss = new_share * per_sample[:n_new].mean()
    if len(per_sample) > n_new:
        loss = loss + (1 - new_share) * per_sample[n_new:].mean()
    return loss


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check_constructor_arguments(strategy: object, input_shape: object, n_classes: object,
                                 seed: object, device: object) -> None:
    if not isinstance(strategy, (str, Strategy)):
        raise UsageError(f"strategy must be a registered name or a Strategy, got {strategy!r}")
    if (not isinstance(input_shape, (tuple, list)) or not input_shape
            or not all(_is_int(d) and d > 0 for d in input_shape)):
        raise UsageError(f"input_shape must be a non-empty tuple of positive integers (one "
                         f"sample, no batch dimension), got {input_shape!r}")
    if n_classes is not None and (not _is_int(n_classes) or n_classes < 2):
        raise UsageError(f"n_classes must be an integer >= 2 (or None: grow as labels "
                         f"arrive), got {n_classes!r}")
    if not _is_int(seed) or not 0 <= seed < 2**63:
        raise UsageError(f"seed must be an integer in 0..2**63-1, got {seed!r}")
    _check_device(device)


def _check_device(device: object) -> None:
    try:
        kind = torch.device(device).type
    except (RuntimeError, TypeError):
        raise UsageError(f"unknown device {device!r}; use 'cpu' or 'cuda'") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {device!r}: this machine has no CUDA device that torch "
                         f"{torch.__version__} can use; use 'cpu'")


@contextmanager
def _untimed(stage: str) -> Iterator[None]:
    yield


def _load_module(module: nn.Module, state: Mapping[str, torch.Tensor], what: str) -> None:
    own = module.state_dict()
    if set(own) != set(state):
        missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        raise CheckpointError(f"{what} in the checkpoint does not fit: missing {missing[:3]}, "
                              f"unexpected {extra[:3]} (another backbone or head?)")
    for key, value in own.items():
        got = state[key]
        fits = isinstance(got, torch.Tensor) and (got.shape, got.dtype) == (value.shape,
                                                                           value.dtype)
        if not fits:
            raise CheckpointError(f"{what} in the checkpoint does not fit: {key} is "
                                  f"{tuple(getattr(got, 'shape', ()))}, expected "
                                  f"{tuple(value.shape)} {value.dtype}")
    module.load_state_dict(dict(state))


def _minibatches(order: torch.Tensor, size: int) -> list[torch.Tensor]:
    """Cut ``order`` into mini-batches of ``size``; a last batch of one joins the one before,
    so normalisation layers see batch statistics whenever there is more than one sample."""
    batches = list(order.split(size))
    if size > 1 and len(batches) > 1 and len(batches[-1]) == 1:
        batches[-2:] = [torch.cat(batches[-2:])]
    return batches
