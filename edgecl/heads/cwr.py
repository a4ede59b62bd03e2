"""Copy Weight with Re-init (CWR, CWR*): consolidation of the output layer, one row per class.

CWR (Lomonaco & Maltoni, 2017) trains temporary output weights ``tw`` from zero on each
batch and copies them into the consolidated weights ``cw`` used for inference. CWR*
(Lomonaco et al., 2020, "Rehearsal-free continual learning over small non-i.i.d. batches")
starts ``tw`` from ``cw`` for the classes in the batch and averages instead of copying::

    for each class j in the batch:
        w_past_j = sqrt(past_j / cur_j)
        cw[j]    = (cw[j] * w_past_j + (tw[j] - mean(tw[batch classes]))) / (w_past_j + 1)
        past_j  += cur_j

``mean(tw[batch classes])`` is one scalar, the mean of every weight of the batch's classes,
as in the authors' code (ar1-pytorch) and Avalanche; subtracting it keeps classes trained in
different batches on a comparable scale.
"""

from __future__ import annotations

import torch
from torch import nn

from edgecl._state import tensor_entry
from edgecl.errors import UsageError
from edgecl.heads.growth import resized_rows


def cwr_star_consolidate(
    consolidated: torch.Tensor,
    past_counts: torch.Tensor,
    trained: torch.Tensor,
    class_counts: dict[int, int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply the CWR* rule; returns new (consolidated weights, past counts), inputs untouched.

    consolidated, trained: (n_classes, dim); past_counts: (n_classes,) float64;
    class_counts: samples of each class seen in this batch (the batch's classes are its keys).
    """
    classes = sorted(class_counts)
    new_cw = consolidated.clone()
    new_past = past_counts.clone()
    mean = trained[classes].mean()
    for j in classes:
        w_past = torch.sqrt(past_counts[j] / class_counts[j]).to(trained.dtype)
        new_cw[j] = (consolidated[j] * w_past + (trained[j] - mean)) / (w_past + 1)
        new_past[j] = past_counts[j] + class_counts[j]
    return new_cw, new_past


class ConsolidatedOutput:
    """Consolidated output weights ``cw`` and per-class sample counts for the CWR family."""

    def __init__(self, output: nn.Linear) -> None:
        if output.bias is not None:
            raise UsageError("CWR consolidation needs a bias-free output layer "
                             "(nn.Linear(..., bias=False) as the model's last layer)")
        self.weight = torch.zeros_like(output.weight.detach())  # cw: (n_classes, dim)
        self.past = torch.zeros(output.out_features, dtype=torch.float64)

    @torch.no_grad()
    def start_batch(self, output: nn.Linear, classes: list[int], *, from_consolidated: bool
                    ) -> None:
        """Zero the training weights; CWR* then loads ``cw`` for the batch's classes."""
        output.weight.zero_()
        if from_consolidated:
            output.weight[classes] = self.weight[classes]

    @torch.no_grad()
    def consolidate_star(self, output: nn.Linear, class_counts: dict[int, int]) -> None:
        self.weight, self.past = cwr_star_consolidate(
            self.weight, self.past, output.weight.detach(), class_counts)
        output.weight.copy_(self.weight)

    @torch.no_grad()
    def consolidate_copy(self, output: nn.Linear, class_counts: dict[int, int]) -> None:
        classes = sorted(class_counts)
        self.weight[classes] = output.weight[classes]
        for j in classes:
            self.past[j] += class_counts[j]
        output.weight.copy_(self.weight)

    def resize(self, n_classes: int) -> None:
        """Follow the output layer to ``n_classes`` rows: a new class starts with zero
        weights and no past samples, as every class does before its first batch."""
        self.weight = resized_rows(self.weight, n_classes)
        self.past = resized_rows(self.past, n_classes)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"weight": self.weight.clone(), "past": self.past.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        weight = tensor_entry(state, "weight", what="CWR", shape=self.weight.shape,
                              dtype=self.weight.dtype)
        past = tensor_entry(state, "past", what="CWR", shape=self.past.shape,
                            dtype=self.past.dtype)
        # Checkpoints load on the CPU; the weights stay on the output layer's device.
        self.weight, self.past = weight.to(self.weight.device, copy=True), past.clone()
