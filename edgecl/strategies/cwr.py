"""CWR and CWR* (Lomonaco & Maltoni 2017; Lomonaco et al. 2020): rehearsal-free head updates.

After the first update, only the output layer learns; the layers between the latent and the
output stay as the first update left them. See :mod:`edgecl.heads.cwr` for the rules.
Difference here: the first update's hidden layers are trained during backbone pretraining.
"""

from __future__ import annotations

import torch
from torch import nn

from edgecl.heads.cwr import ConsolidatedOutput
from edgecl.strategies.base import STRATEGIES, Strategy, UpdateContext


class _CWRFamily(Strategy):
    load_consolidated = False  # CWR* starts training weights from cw; CWR from zero
    learned_nothing_hint = (
        "after the first experience only the output layer learns, on hidden features fit to "
        "the first experience's classes, which need not separate the new ones; use "
        "--strategy 'ar1*' (it also trains the hidden layers, with latent replay) or a "
        "backbone pretrained on broad data (--backbone-weights)")

    def __init__(self) -> None:
        self.consolidated: ConsolidatedOutput | None = None

    def configure(self, head: nn.Sequential) -> None:
        self.consolidated = ConsolidatedOutput(head[-1])

    def trainable_parameters(self, head: nn.Sequential, *, first_update: bool
                             ) -> list[nn.Parameter]:
        return [head[-1].weight]

    def output_resized(self, head: nn.Sequential) -> None:
        self.consolidated.resize(head[-1].out_features)

    def before_update(self, ctx: UpdateContext) -> None:
        self.consolidated.start_batch(ctx.output, ctx.classes,
                                      from_consolidated=self.load_consolidated)

    def state_bytes(self) -> int:
        c = self.consolidated
        return 0 if c is None else c.weight.nbytes + c.past.nbytes

    def planned_state_bytes(self, head: nn.Sequential, *, latent_dim: int,
                            stream_samples: int | None) -> dict[str, int]:
        output = head[-1]
        return {"consolidated output weights and class counts":
                output.weight.nbytes + 8 * output.out_features}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {} if self.consolidated is None else self.consolidated.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if self.consolidated is None:
            super().load_state_dict(state)
        else:
            self.consolidated.load_state_dict(state)


@STRATEGIES.register("cwr")
class CWR(_CWRFamily):
    """CWR: output weights retrained from zero per batch and copied for its classes."""

    name = "cwr"

    def after_update(self, ctx: UpdateContext) -> None:
        self.consolidated.consolidate_copy(ctx.output, ctx.class_counts)


@STRATEGIES.register("cwr*")
class CWRStar(_CWRFamily):
    """CWR*: per-class weighted averaging of output weights, no replay."""

    name = "cwr*"
    load_consolidated = True

    def after_update(self, ctx: UpdateContext) -> None:
        self.consolidated.consolidate_star(ctx.output, ctx.class_counts)
