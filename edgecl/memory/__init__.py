"""Replay memory: buffers of latents and the codecs that store them compactly."""

from edgecl.memory.buffer import (
    BUFFERS,
    ClassBalancedBuffer,
    ReplayBuffer,
    capacity_from_megabytes,
    create_buffer,
)
from edgecl.memory.codecs import Codec, Float32Codec, create_codec, list_codecs
from edgecl.memory.exstream import ExStreamBuffer  # registers the "exstream" buffer

__all__ = [
    "BUFFERS",
    "ClassBalancedBuffer",
    "Codec",
    "ExStreamBuffer",
    "Float32Codec",
    "ReplayBuffer",
    "capacity_from_megabytes",
    "create_buffer",
    "create_codec",
    "list_codecs",
]
