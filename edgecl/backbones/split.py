"""Split a Sequential-like model at a latent layer into a frozen part and a trainable head."""

from __future__ import annotations

import operator
from dataclasses import dataclass

from torch import nn

from edgecl.errors import UsageError


@dataclass
class SplitModel:
    """``frozen`` maps raw input to latents; ``head`` maps latents to class scores."""

    frozen: nn.Sequential
    head: nn.Sequential
    latent_layer: str


def _layer_index(names: list[str], latent_layer: str | int) -> int:
    if not isinstance(latent_layer, str):
        try:
            latent_layer = operator.index(latent_layer)  # int or numpy integer
        except TypeError:
            raise UsageError(f"latent layer must be a name or an index, got {latent_layer!r}"
                             ) from None
        index = latent_layer if latent_layer >= 0 else len(names) + latent_layer
        if not 0 <= index < len(names) - 1:
            raise UsageError(f"latent layer index {latent_layer} out of range: the model has "
                             f"{len(names)} layers and the head needs at least the last one")
        return index
    if latent_layer not in names:
        raise UsageError(f"no layer named {latent_layer!r}; layers: {', '.join(names)}")
    index = names.index(latent_layer)
    if index == len(names) - 1:
        raise UsageError(f"cannot cut at the last layer {latent_layer!r}: the head would be empty")
    return index


def split_model(model: nn.Module, latent_layer: str | int) -> SplitModel:
    """Cut ``model`` after ``latent_layer`` (a child name or index; the latent is its output).

    Works for any module whose children run in order (``nn.Sequential`` or a module that
    only chains its children). The parts share parameters with ``model``; nothing is copied.
    """
    children = list(model.named_children())
    if len(children) < 2:
        raise UsageError("split_model needs a Sequential-like model with at least two layers")
    names = [name for name, _ in children]
    index = _layer_index(names, latent_layer)
    frozen = nn.Sequential()
    head = nn.Sequential()
    for i, (name, layer) in enumerate(children):
        (frozen if i <= index else head).add_module(name, layer)
    return SplitModel(frozen=frozen, head=head, latent_layer=names[index])


def freeze(module: nn.Module) -> nn.Module:
    """Stop gradients and statistic updates in ``module`` (eval mode, no grad)."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module
