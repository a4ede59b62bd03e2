"""ExStream (Hayes, Cahill & Kanan 2019, "Memory Efficient Experience Replay for Streaming
Learning"): latent replay from per-class prototype buffers that merge their two closest
vectors when full, instead of dropping samples.

Difference here: the head is trained with the same mini-batch loop as ``latent-replay``
(new latents mixed 1:1 with replayed prototypes), so the two differ only in the buffer.
"""

from __future__ import annotations

from edgecl.strategies.base import STRATEGIES, Strategy


@STRATEGIES.register("exstream")
class ExStream(Strategy):
    """Latent replay from an ExStream buffer: full classes merge their closest prototypes."""

    name = "exstream"
    uses_replay = True
    buffer_kind = "exstream"
