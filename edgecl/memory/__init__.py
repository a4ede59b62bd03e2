"""Replay memory: buffers of latents and the codecs that store them compactly."""

from edgecl.memory.buffer import (
    BUFFERS,
    ClassBalancedBuffer,
    ReplayBuffer,
    capacity_from_megabytes,
    create_buffer,
)
from edgecl.memory.codecs import Codec, Float32Codec, create_codec, list_codecs

__all__ = [
    "BUFFERS",
    "ClassBalancedBuffer",
    "Codec",
    "Float32Codec",
    "ReplayBuffer",
    "capacity_from_megabytes",
    "create_buffer",
    "create_codec",
    "list_codecs",
]
