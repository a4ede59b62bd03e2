"""Latent replay (Pellegrini et al. 2020, "Latent Replay for Real-Time Continual Learning").

Stored latents of past data are mixed into every mini-batch of new latents; the whole head
is fine-tuned. Without CWR* or SI this is the plain latent-replay baseline of the paper.
"""

from __future__ import annotations

from edgecl.strategies.base import STRATEGIES, Strategy


@STRATEGIES.register("latent-replay")
class LatentReplay(Strategy):
    """Fine-tunes the head on new latents mixed with class-balanced replayed latents."""

    name = "latent-replay"
    uses_replay = True
