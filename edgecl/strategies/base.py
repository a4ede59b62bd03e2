"""The strategy contract: a small object with a few hooks; the runtime owns the loop.

One *update* is one call of the learner on a batch of new data: a whole experience, or a
mini-batch of an online stream. Around it the runtime calls::

    before_update(ctx)                       # e.g. CWR*: reset / load output weights
    for each optimizer step:
        loss = cross_entropy + penalty(head) # e.g. AR1*: Synaptic Intelligence penalty
        step; after_step(head)               # e.g. SI: accumulate the path integral
    after_update(ctx)                        # e.g. CWR*: consolidate; SI: importances

and, outside updates, ``output_resized(head)`` when the output layer got rows for new
classes (a learner without a fixed ``n_classes``; also when a checkpoint restores another
size). Strategies with per-class state grow it there: cwr, cwr* and ar1* (consolidated
weights and class counts) and remind (the width of its mixup targets).

Hooks return values or act on the head they are given; they never reach into the runtime.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from edgecl._registry import Registry
from edgecl.errors import CheckpointError


@dataclass(frozen=True)
class StepPlan:
    """How a method cuts an update into optimizer steps; None falls back to LearnerConfig."""

    new_per_step: int | None = None     # new latents per step (REMIND: 1)
    replay_per_step: int | None = None  # replayed latents per step (REMIND: 50)
    epochs: int | None = None           # passes over the new data (streaming methods: 1)
    store_each_step: bool = False       # store new latents after each step, not after the
                                        # update, so they are replayed at once (REMIND)
    # Share of a streaming step's loss that goes to its new samples when it replays (AR1*:
    # 0.2); None: the share they have in the plain mean of the fixed plan, n / (n + replay).
    stream_new_share: float | None = None


@dataclass(frozen=True)
class UpdateContext:
    """What a strategy may know about the update in progress."""

    head: nn.Sequential
    class_counts: dict[int, int]  # samples per class in this update: new data plus replay
    update_index: int             # updates done before this one (0 for the first)

    @property
    def output(self) -> nn.Linear:
        return self.head[-1]

    @property
    def classes(self) -> list[int]:
        return sorted(self.class_counts)


class Strategy:
    """Base class: plain fine-tuning of the whole head with no replay (the `naive` method)."""

    name = "strategy"
    uses_replay = False  # True: the runtime keeps a replay buffer and mixes it into batches
    buffer_kind = "class-balanced"  # which replay buffer (see edgecl.memory.BUFFERS)
    codec: str | None = None  # the codec the method is defined with (REMIND: pq); None: any
    quantize_eval = False  # evaluate on latents passed through the buffer's codec (REMIND)
    step_plan = StepPlan()
    # The likely cause, and the alternative, when an experience is learned next to nothing
    # (below chance on its own test set right after learning it; the run warns with this).
    # None: generic advice. CWR and CWR* set it.
    learned_nothing_hint: str | None = None

    def configure(self, head: nn.Sequential) -> None:
        """Called once, after the backbone is split and frozen."""

    def trainable_parameters(self, head: nn.Sequential, *, first_update: bool
                             ) -> list[nn.Parameter]:
        """Parameters the optimizer steps in this update (default: the whole head)."""
        return list(head.parameters())

    def training_data(self, latents: torch.Tensor, labels: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """The data to train on in this update, given the new latents (default: just them)."""
        return latents, labels

    def before_update(self, ctx: UpdateContext) -> None:
        """Before the first optimizer step of an update."""

    def augment(self, latents: torch.Tensor, targets: torch.Tensor, *, n_new: int,
                generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Transform a training batch (the first ``n_new`` rows are new data, the rest
        replayed). Targets may become class probabilities (N, n_classes). Default: none."""
        return latents, targets

    def penalty(self, head: nn.Sequential) -> torch.Tensor | None:
        """A regularisation term added to the cross-entropy loss, or None."""
        return None

    def after_step(self, head: nn.Sequential) -> None:
        """After each optimizer step."""

    def after_update(self, ctx: UpdateContext) -> None:
        """After the last optimizer step of an update."""

    def output_resized(self, head: nn.Sequential) -> None:
        """The output layer ``head[-1]`` now has a row per class known (new classes: zero
        rows at the end, the others unchanged); per-class state must follow. Called after
        ``configure``, between updates."""

    def state_bytes(self) -> int:
        """Bytes of strategy state (importances, old weights, stored data) for the report."""
        return 0

    def planned_state_bytes(self, head: nn.Sequential, *, latent_dim: int,
                            stream_samples: int | None) -> dict[str, int]:
        """Bytes of state the strategy will hold for this head, by what it is, before any
        training: the learner checks them against the memory budget and refuses to start
        if they do not fit. ``stream_samples`` (None: unknown) sizes state that grows with
        the stream."""
        return {}

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Everything the strategy learned (consolidated weights, importances, stored data),
        as tensors, for checkpoints. Stateless strategies return an empty dict."""
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what ``state_dict`` returned (after ``configure``); CheckpointError if it
        does not fit this strategy, leaving the strategy unchanged."""
        if state:
            raise CheckpointError(f"strategy {self.name} keeps no state, but the checkpoint "
                                  f"has some ({', '.join(sorted(state)[:3])}): another strategy?")

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


STRATEGIES: Registry[Strategy] = Registry("strategy")


def create_strategy(name: str) -> Strategy:
    """Build a registered strategy by name, e.g. ``create_strategy("ar1*")``."""
    return STRATEGIES.create(name)


def list_strategies() -> list[str]:
    return STRATEGIES.names()


def tensor_bytes(tensors: list[torch.Tensor] | tuple[torch.Tensor, ...]) -> int:
    return sum(t.nelement() * t.element_size() for t in tensors)
