"""Which replay codec a profile's default turns into: the one that fits the budget best.

A profile's ``replay_codec`` says how much precision the device trades for memory (fp32 on
a workstation, uint8 on most boards, pq on the 512 MB Pi Zero 2). Taken literally it can
backfire: pq's codebooks are a fixed cost (up to 256 centroids x the padded latent size, in
float32) that only pays off over many latents. With rpi-zero2's 4 MB of replay memory and
the default cap of 200 latents, digits' 1024-value latents take 1,061,776 bytes in pq (a
1 MiB codebook) against 213,392 in uint8, and pq is the coarser of the two.

So when the codec comes from the profile (not ``--codec``, not a method's own codec such as
REMIND's pq), the candidates are the profile's codec and every less lossy one
(``codec_candidates``), each sized as its buffer would be for the planned capacity, counting
everything it allocates (codes, labels, scales, codebooks), and the chosen one:

1. stores the most latents within the sample cap and the replay bytes;
2. among those storing as many, allocates the fewest bytes (the profile asked for a compact
   codec, and it may not take more memory than a finer one for the same latents);
3. among equal bytes, is the least lossy.

pq is therefore chosen only where it stores more latents than uint8 could (a tight byte
budget, or no sample cap), and a profile's fp32 stays fp32.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from edgecl.errors import BudgetError
from edgecl.memory.buffer import create_buffer
from edgecl.memory.codecs import create_codec

# The codecs that keep every latent to within a rounding step, least lossy first. The coarse
# ones (pq, opq) come after them; only a profile that names one makes it a candidate.
FINE_CODECS = ("fp32", "fp16", "uint8")


def codec_candidates(preferred: str) -> tuple[str, ...]:
    """The profile's codec and every less lossy one, least lossy first."""
    if preferred in FINE_CODECS:
        return FINE_CODECS[: FINE_CODECS.index(preferred) + 1]
    return (*FINE_CODECS, preferred)


@dataclass(frozen=True)
class CodecFit:
    """What one codec's buffer would hold and allocate for the planned capacity."""

    codec: str
    latents: int          # latents it stores within the sample cap and the bytes (0: none)
    bytes: int            # what its buffer allocates: codes, labels, codec parameters
    overhead_bytes: int   # of which the codec's shared parameters (scales, codebooks)


@dataclass(frozen=True)
class CodecChoice:
    """The codec chosen among ``fits`` (in candidate order, the profile's one last)."""

    codec: str
    preferred: str        # the profile's codec
    fits: tuple[CodecFit, ...]

    def fit_of(self, codec: str) -> CodecFit:
        return next(f for f in self.fits if f.codec == codec)

    def note(self) -> str | None:
        """Why the profile's codec was not used; None when it was."""
        if self.codec == self.preferred:
            return None
        mine, theirs = self.fit_of(self.codec), self.fit_of(self.preferred)
        if theirs.latents == 0:
            why = "cannot store a single latent in the replay budget"
        else:
            why = (f"would allocate {theirs.bytes:,} bytes for {theirs.latents:,} latents "
                   f"({theirs.overhead_bytes:,} of them for its parameters)")
        return (f"replay codec {self.codec} instead of the profile's {self.preferred}: "
                f"{self.preferred} {why}, {self.codec} stores {mine.latents:,} latents in "
                f"{mine.bytes:,} bytes (use --codec {self.preferred} to insist)")

    def to_dict(self) -> dict[str, object]:
        return {"codec": self.codec, "preferred": self.preferred,
                "rule": "the profile's codec or a less lossy one: the one storing the most "
                        "planned latents, then the fewest bytes, then the least lossy",
                "candidates": [vars(f) for f in self.fits]}


def size_codec(codec: str, *, buffer_kind: str, dim: int, max_samples: int | None,
               max_bytes: int | None) -> CodecFit:
    """Size ``codec``'s buffer for latents of ``dim`` values without allocating it."""
    buffer = create_buffer(buffer_kind, max_samples=max_samples, max_bytes=max_bytes,
                           codec=create_codec(codec))
    try:
        latents, nbytes = buffer.planned_size(dim)
    except BudgetError:  # not even one latent (or the smallest codebooks) fits
        return CodecFit(codec, 0, 0, 0)
    return CodecFit(codec, latents, nbytes, buffer.codec.overhead_bytes())


def choose_codec(candidates: Sequence[str], *, buffer_kind: str, dim: int,
                 max_samples: int | None, max_bytes: int | None) -> CodecChoice:
    """The candidate that fits best (see the module docstring); ``candidates`` is least
    lossy first, the profile's codec last. If none stores a latent, the profile's codec,
    whose buffer then reports the budget error."""
    fits = tuple(size_codec(c, buffer_kind=buffer_kind, dim=dim, max_samples=max_samples,
                            max_bytes=max_bytes) for c in candidates)
    best = min(range(len(fits)), key=lambda i: (-fits[i].latents, fits[i].bytes, i))
    codec = fits[best].codec if fits[best].latents else candidates[-1]
    return CodecChoice(codec=codec, preferred=candidates[-1], fits=fits)
