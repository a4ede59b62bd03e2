"""Helpers for component state dicts: everything a checkpoint holds is a flat tensor dict.

Small structured values (a numpy generator's state, counters) travel as UTF-8 JSON in a
uint8 tensor, so a checkpoint never needs pickle and loads with ``weights_only=True``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import torch

from edgecl.errors import CheckpointError


def json_tensor(value: Any) -> torch.Tensor:
    """``value`` (JSON-able) as a uint8 tensor of its UTF-8 JSON text."""
    data = json.dumps(value, sort_keys=True).encode()
    return torch.tensor(list(data), dtype=torch.uint8)


def tensor_json(tensor: Any, *, what: str) -> Any:
    """Inverse of :func:`json_tensor`; CheckpointError if ``tensor`` is not such a tensor."""
    if not isinstance(tensor, torch.Tensor) or tensor.dtype != torch.uint8 or tensor.ndim != 1:
        raise CheckpointError(f"checkpoint entry {what!r} is missing or not JSON text")
    try:
        return json.loads(bytes(tensor.tolist()).decode())
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(f"checkpoint entry {what!r} is not valid JSON") from None


def with_prefix(prefix: str, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{key}": value for key, value in state.items()}


def under_prefix(prefix: str, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The entries of ``state`` whose key starts with ``prefix.``, with the prefix removed."""
    start = prefix + "."
    return {key[len(start):]: value for key, value in state.items() if key.startswith(start)}


def tensor_entry(state: Mapping[str, Any], key: str, *, what: str,
                 shape: tuple[int, ...] | None = None,
                 dtype: torch.dtype | None = None) -> torch.Tensor:
    """``state[key]``, checked to be a tensor of the given shape and dtype."""
    value = state.get(key)
    if not isinstance(value, torch.Tensor):
        raise CheckpointError(f"{what} checkpoint has no tensor {key!r}")
    if shape is not None and tuple(value.shape) != tuple(shape):
        raise CheckpointError(f"{what} checkpoint {key!r} has shape {tuple(value.shape)}, "
                              f"expected {tuple(shape)}")
    if dtype is not None and value.dtype != dtype:
        raise CheckpointError(f"{what} checkpoint {key!r} has dtype {value.dtype}, "
                              f"expected {dtype}")
    return value
