"""Replay memory: buffers of latents and the codecs that store them compactly."""

from edgecl.memory.buffer import ClassBalancedBuffer, capacity_from_megabytes
from edgecl.memory.codecs import Codec, Float32Codec, create_codec, list_codecs

__all__ = [
    "ClassBalancedBuffer",
    "Codec",
    "Float32Codec",
    "capacity_from_megabytes",
    "create_codec",
    "list_codecs",
]
