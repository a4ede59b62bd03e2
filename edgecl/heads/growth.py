"""Output layers that grow a row per new class, and per-class state that follows them.

Growing keeps the existing rows bit for bit and appends the new ones at the end, so the
row of every class learned so far, and everything indexed by it (replay labels, CWR*
weights and counts), stays where it was.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def resized_rows(tensor: torch.Tensor, n: int) -> torch.Tensor:
    """``tensor`` with ``n`` rows (dim 0): the first rows kept, new ones zero, extra cut."""
    out = tensor.new_zeros((n, *tensor.shape[1:]))
    keep = min(n, tensor.shape[0])
    out[:keep] = tensor[:keep]
    return out


@torch.no_grad()
def resize_output(layer: nn.Linear, n: int,
                  init: Callable[[torch.Tensor], None] | None = None) -> None:
    """Give ``layer`` ``n`` output rows in place (the module object stays the same, so the
    model and its head, which share it, both see the change).

    New rows are zero, or set by ``init`` (called on the new rows of the weight); a bias
    gets zeros for them. Parameters are replaced, so no optimizer may hold the old ones:
    the learner builds its optimizer per update.
    """
    old = layer.weight.detach()
    weight = resized_rows(old, n)
    if init is not None and n > old.shape[0]:
        init(weight[old.shape[0]:])
    layer.weight = nn.Parameter(weight, requires_grad=layer.weight.requires_grad)
    if layer.bias is not None:
        layer.bias = nn.Parameter(resized_rows(layer.bias.detach(), n),
                                  requires_grad=layer.bias.requires_grad)
    layer.out_features = n


def output_bytes(layer: nn.Linear, n: int) -> int:
    """Bytes of ``layer``'s parameters with ``n`` output rows."""
    per_row = layer.in_features + (1 if layer.bias is not None else 0)
    return n * per_row * layer.weight.element_size()
