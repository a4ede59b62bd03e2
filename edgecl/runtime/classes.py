"""The learner's classes: the user's labels, one output row each, and rows that grow.

:class:`OutputClasses` is the part of :class:`~edgecl.runtime.learner.Learner` that maps
labels to output rows and grows the output layer when a new label arrives; the learner
inherits it, so the loop in ``learner.py`` keeps working on rows. It uses these learner
attributes: ``model``, ``head`` (once split), ``latent_layer``, ``latent_shape``,
``strategy``, ``buffer``, ``config``, ``seed``, ``n_updates``, ``planned_state_bytes`` and
``_stream_samples``.

Growth is all or nothing: the new size is checked against the memory budget (the strategy's
planned state for the bigger head, plus, for a growing learner, the output layer itself,
next to the replay buffer's allocation) before anything changes. Rows added before the
backbone is pretrained start as ``nn.Linear``'s do; rows added after start at zero.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from edgecl._state import tensor_json
from edgecl.backbones import split_model
from edgecl.errors import BudgetError, CheckpointError, DataError, UsageError
from edgecl.heads.growth import output_bytes, resize_output
from edgecl.labels import LabelMap, preview, show
from edgecl.memory.buffer import _MAX_LABEL as _MAX_REPLAY_ROW  # replay labels are int16


class OutputClasses:
    """Labels <-> output rows for the learner, and the growth of its output layer."""

    labels: LabelMap          # the user's label of each output row
    _learned: np.ndarray      # int64 (n_classes,): samples learned per row

    @property
    def n_classes(self) -> int:
        """Output rows: one per class known (it grows without a fixed ``n_classes``)."""
        return len(self.labels)

    @property
    def classes(self) -> list[int | str]:
        """The user's label of each output row, in row order."""
        return list(self.labels.labels)

    @property
    def learned_rows(self) -> np.ndarray:
        """Output rows of the classes with a learned sample: the only ones predicted."""
        return np.flatnonzero(self._learned)

    def _rows_for(self, labels: np.ndarray) -> torch.Tensor:
        """The output row of each checked label. New labels grow the output layer (all or
        nothing) or, with a fixed ``n_classes``, are refused."""
        rows = self.labels.rows(labels)
        if (rows < 0).any():
            if self.labels.fixed:
                raise DataError(self._not_a_class(labels))
            self._grow(self.labels.unknown(labels))
            rows = self.labels.rows(labels)
        return torch.as_tensor(rows, dtype=torch.long)

    def _not_a_class(self, labels: np.ndarray) -> str:
        if self.labels.is_identity:  # Learner(n_classes=K): the labels are 0..K-1
            return (f"labels must be in 0..{self.n_classes - 1}, got "
                    f"{labels.min()}..{labels.max()}")
        new = self.labels.unknown(labels)
        return (f"label {show(new[0])} is not one of this learner's {self.n_classes} classes "
                f"({preview(self.classes)}); a learner created without n_classes grows when "
                "a new label arrives")

    def _grow(self, new: list[int | str]) -> None:
        """Add an output row per new label: checked against the memory budget first, so a
        growth that does not fit raises BudgetError and changes nothing."""
        n = self.n_classes + len(new)
        what = f"new class{'es' if len(new) > 1 else ''} {', '.join(map(show, new[:3]))}"
        if self.buffer is not None and n - 1 > _MAX_REPLAY_ROW:
            raise BudgetError(f"{what}: {n:,} classes are more than the replay buffer's "
                              f"labels can hold ({_MAX_REPLAY_ROW + 1:,})")
        planned = self._plan_state(n)
        budget = self.config.memory_bytes
        replay = self.buffer.nbytes if self.buffer is not None else 0
        if budget is not None and sum(planned.values()) + replay > budget:
            parts = ", ".join(f"{part}: {b:,} B" for part, b in planned.items())
            raise BudgetError(f"{what}: {n} classes need {sum(planned.values()):,} bytes of "
                              f"state ({parts}) next to the replay buffer's {replay:,}, more "
                              f"than the memory budget of {budget:,} bytes; nothing was "
                              "learned from this batch (raise --memory-mb, or give the replay "
                              "buffer less)")
        # Rows added before pretraining start as nn.Linear's do (pretraining trains them);
        # after it, at zero: CWR*'s rule for a class it has no weights for yet, and a
        # neutral logit for the others, where a random row would be a random guess.
        init = None if self.is_pretrained else linear_init(self.seed + self.n_classes)
        self._resize_classes(n, init)
        self.labels = self.labels.extended(new)
        self._learned = np.concatenate([self._learned, np.zeros(len(new), dtype=np.int64)])
        self.planned_state_bytes = planned

    def _resize_classes(self, n: int, init: Callable[[torch.Tensor], None] | None = None
                        ) -> None:
        resize_output(list(self.model.children())[-1], n, init)
        if self.is_pretrained:  # else configure() sees the new size when the head is split
            self.strategy.output_resized(self.head)

    def _priced_head(self) -> nn.Sequential:
        """The head whose FLOPs seed the scheduler's cost model: a head with no class yet is
        priced with one output row (a loss needs one); the online refit follows growth."""
        if self.n_classes:
            return self.head
        head = copy.deepcopy(self.head)
        resize_output(head[-1], 1)
        return head

    @contextmanager
    def _undo_growth_on_error(self) -> Iterator[None]:
        """A call that grew the head and then failed before any update (the backbone gave
        NaN latents, an interrupt) leaves the learner with the classes it had."""
        before = (self.labels, self._learned, self.planned_state_bytes, self.n_updates,
                  self.is_pretrained)
        try:
            yield
        except BaseException:
            labels, learned, planned, n_updates, pretrained = before
            if ((self.n_updates, self.is_pretrained) == (n_updates, pretrained)
                    and self.n_classes != len(labels)):
                self._resize_classes(len(labels))
                self.labels, self._learned, self.planned_state_bytes = labels, learned, planned
            raise

    def _plan_state(self, n_classes: int) -> dict[str, int]:
        """The state the strategy plans for a head of ``n_classes`` rows; a growing learner
        adds its output layer, whose size it does not know up front."""
        head = split_model(self.model, self.latent_layer).head
        name, output = list(head.named_children())[-1]
        # A stand-in of the planned size on the meta device: sized, never allocated. The
        # split head is a new Sequential, so the model keeps its own layer.
        stand_in = nn.Linear(output.in_features, 1, bias=output.bias is not None,
                             device="meta")
        resize_output(stand_in, n_classes)
        setattr(head, name, stand_in)
        planned = self.strategy.planned_state_bytes(
            head, latent_dim=math.prod(self.latent_shape), stream_samples=self._stream_samples)
        if not self.labels.fixed:
            planned[f"output layer ({n_classes} classes of {output.in_features} weights, "
                    "grows with new classes)"] = output_bytes(output, n_classes)
        return planned

    def _restored_labels(self, state: Mapping[str, torch.Tensor]
                         ) -> tuple[LabelMap, np.ndarray]:
        """The label map and learned counts of a checkpoint, checked against this learner."""
        if "labels" not in state:
            # Written before checkpoints kept labels: rows 0..K-1, every class learned.
            if not self.labels.fixed:
                raise CheckpointError("checkpoint has no label state (an older edgecl wrote "
                                      "it); only a learner with n_classes can restore it")
            return self.labels, np.ones(self.n_classes, dtype=np.int64)
        data = tensor_json(state["labels"], what="learner labels")
        try:
            labels = LabelMap.from_json(data, fixed=self.labels.fixed)
            learned = data["learned"]
            if (not isinstance(learned, list) or len(learned) != len(labels)
                    or not all(type(n) is int and n >= 0 for n in learned)):
                raise ValueError("learned counts do not match the labels")
        except (DataError, KeyError, TypeError, ValueError) as error:
            raise CheckpointError(f"learner label state in the checkpoint is malformed: "
                                  f"{error}") from None
        if self.labels.fixed and labels.labels != self.labels.labels:
            raise CheckpointError(f"checkpoint's classes ({preview(labels.labels)}) are not "
                                  f"this learner's ({preview(self.labels.labels)})")
        return labels, np.asarray(learned, dtype=np.int64)


def initial_labels(n_classes: int | None, classes: Iterable[object] | None) -> LabelMap:
    """A learner's first label map: ``classes`` (fixed when ``n_classes`` is given too),
    else 0..n_classes-1 (fixed), else none yet (it grows)."""
    if classes is None:
        return LabelMap() if n_classes is None else LabelMap.identity(int(n_classes))
    if isinstance(classes, (str, bytes)) or not isinstance(classes, Iterable):
        raise UsageError(f"classes must be a list of labels, got {classes!r}")
    labels = LabelMap(classes, fixed=n_classes is not None)
    if n_classes is not None and len(labels) != n_classes:
        raise UsageError(f"n_classes is {n_classes} but classes lists {len(labels)} labels")
    return labels


def linear_init(seed: int) -> Callable[[torch.Tensor], None]:
    """nn.Linear's default weight initialisation, drawn on the CPU from ``seed`` (the same
    rows on any device, and the learner's generator does not move)."""
    def init(rows: torch.Tensor) -> None:
        cpu = torch.empty(rows.shape, dtype=rows.dtype)
        generator = torch.Generator().manual_seed(seed % 2**63)
        nn.init.kaiming_uniform_(cpu, a=math.sqrt(5), generator=generator)
        rows.copy_(cpu)
    return init
