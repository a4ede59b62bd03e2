"""Baselines: naive fine-tuning (the lower bound) and cumulative training (the upper bound).

Both act on the head above the latent layer; the backbone below it is frozen for every
strategy, so these bound what a strategy can do with the same frozen features.
"""

from __future__ import annotations

import torch

from edgecl._state import tensor_entry
from edgecl.strategies.base import STRATEGIES, Strategy, tensor_bytes


@STRATEGIES.register("naive")
class Naive(Strategy):
    """Fine-tunes the head on each new batch only; forgets (the lower bound)."""

    name = "naive"


@STRATEGIES.register("cumulative")
class Cumulative(Strategy):
    """Retrains the head on every latent seen so far (the upper bound; unbounded memory)."""

    name = "cumulative"

    def __init__(self) -> None:
        self._latents: list[torch.Tensor] = []
        self._labels: list[torch.Tensor] = []

    def training_data(self, latents: torch.Tensor, labels: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        if self._latents and self._latents[0].device != latents.device:
            # Restored from a checkpoint (loaded on the CPU) into a learner on a GPU.
            self._latents = [torch.cat(self._latents).to(latents.device)]
            self._labels = [torch.cat(self._labels).to(latents.device)]
        self._latents.append(latents)
        self._labels.append(labels)
        return torch.cat(self._latents), torch.cat(self._labels)

    def state_bytes(self) -> int:
        return tensor_bytes(self._latents) + tensor_bytes(self._labels)

    def planned_state_bytes(self, head: torch.nn.Sequential, *, latent_dim: int,
                            stream_samples: int | None) -> dict[str, int]:
        # Every latent of the stream, as float32, with an int64 label. Unknown length: the
        # check happens as it grows (see state_bytes in the report).
        if stream_samples is None:
            return {}
        return {f"every latent of the stream ({stream_samples} x {latent_dim} float32)":
                stream_samples * (4 * latent_dim + 8)}

    def state_dict(self) -> dict[str, torch.Tensor]:
        if not self._latents:
            return {}
        return {"latents": torch.cat(self._latents), "labels": torch.cat(self._labels)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if not state:
            self._latents, self._labels = [], []
            return
        latents = tensor_entry(state, "latents", what="cumulative", dtype=torch.float32)
        labels = tensor_entry(state, "labels", what="cumulative", shape=(len(latents),),
                              dtype=torch.long)
        self._latents, self._labels = [latents.clone()], [labels.clone()]
