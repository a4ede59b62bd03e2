"""Storage codecs for replay latents: how one latent vector becomes bytes in the buffer.

A codec is a pluggable piece of the buffer. This module has the lossless ``fp32`` codec;
compressed codecs (fp16, uint8, product quantization) register here under their own names.
"""

from __future__ import annotations

import torch

from edgecl._registry import Registry


class Codec:
    """Encodes (N, D) float32 latents into a compact storage tensor and back.

    Life cycle, driven by the buffer: ``configure(dim, max_bytes=...)`` once, before storage
    is allocated (a codec may size its parameters, e.g. a codebook, to the byte budget);
    ``fit(latents)`` on the first latents offered if ``is_fitted`` is False; then
    ``encode``/``decode`` any number of times.
    """

    name = "codec"
    storage_dtype: torch.dtype = torch.float32

    def configure(self, dim: int, *, max_bytes: int | None) -> None:
        """Choose shape parameters for latents of ``dim`` values within ``max_bytes``
        (codec parameters included); a no-op by default."""

    def fit(self, latents: torch.Tensor) -> None:
        """Fit any parameters (scales, codebooks) on sample latents; a no-op by default."""

    @property
    def is_fitted(self) -> bool:
        return True

    def code_width(self, dim: int) -> int:
        """Number of storage elements one latent of ``dim`` values occupies."""
        return dim

    def bytes_per_sample(self, dim: int) -> int:
        return self.code_width(dim) * self.storage_dtype.itemsize

    def overhead_bytes(self) -> int:
        """Bytes of shared parameters (scales, codebooks) held besides the codes."""
        return 0

    def encode(self, latents: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Fitted parameters as tensors (for checkpoints); empty by default."""
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what ``state_dict`` returned."""


CODECS: Registry[Codec] = Registry("codec")


@CODECS.register("fp32")
class Float32Codec(Codec):
    """Lossless: latents stored as float32 (4 bytes per value)."""

    name = "fp32"
    storage_dtype = torch.float32

    def encode(self, latents: torch.Tensor) -> torch.Tensor:
        return latents.to(torch.float32)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return codes


def create_codec(name: str) -> Codec:
    return CODECS.create(name)


def list_codecs() -> list[str]:
    return CODECS.names()
