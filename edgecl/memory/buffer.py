"""Class-balanced latent replay buffer with a capacity in samples and/or bytes."""

from __future__ import annotations

import math
from typing import Protocol

import numpy as np
import torch

from edgecl._registry import Registry
from edgecl._state import json_tensor, tensor_entry, tensor_json, under_prefix, with_prefix
from edgecl.errors import BudgetError, CheckpointError, UsageError
from edgecl.memory.codecs import Codec, Float32Codec

# Labels are stored as int16: enough for 32k classes, and 2 bytes instead of 8 per sample.
_LABEL_DTYPE = torch.int16
_MAX_LABEL = torch.iinfo(_LABEL_DTYPE).max


class ReplayBuffer(Protocol):
    """What the learner needs from a replay buffer (class-balanced, ExStream, ...)."""

    codec: Codec

    def reserve(self, dim: int) -> None: ...
    def add(self, latents: torch.Tensor, labels: torch.Tensor) -> None: ...
    def sample(self, n: int, generator: torch.Generator | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]: ...
    def all(self) -> tuple[torch.Tensor, torch.Tensor]: ...
    def class_counts(self) -> dict[int, int]: ...
    def stats(self) -> dict[str, object]: ...
    def __len__(self) -> int: ...
    def state_dict(self) -> dict[str, torch.Tensor]: ...
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None: ...


BUFFERS: Registry[ReplayBuffer] = Registry("replay buffer")


def create_buffer(kind: str, *, max_samples: int | None, max_bytes: int | None, codec: Codec,
                  seed: int = 0) -> ReplayBuffer:
    """Build a registered buffer (``class-balanced``, ``exstream``) with its limits."""
    return BUFFERS.create(kind, max_samples=max_samples, max_bytes=max_bytes, codec=codec,
                          seed=seed)


class BudgetedBuffer:
    """What every replay buffer shares: sample and byte limits, the capacity they allow for
    a codec, and the checks on what is offered and asked for.

    Subclasses allocate their storage in ``_allocate(dim)``, starting from
    ``_planned_capacity(dim)``, and may store more per sample than the code and the label
    (``_extra_bytes_per_sample``), which then counts in the budget too.
    """

    _extra_bytes_per_sample = 0
    kind = "buffer"  # the registered name, reported in stats()

    def __init__(self, *, max_samples: int | None, max_bytes: int | None,
                 codec: Codec | None) -> None:
        if max_samples is None and max_bytes is None:
            raise UsageError("a replay buffer needs max_samples, max_bytes or both")
        if max_samples is not None and max_samples < 0:
            raise UsageError(f"max_samples must be >= 0, got {max_samples}")
        if max_bytes is not None and max_bytes < 0:
            raise UsageError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_samples = max_samples
        self.max_bytes = max_bytes
        self.codec = codec if codec is not None else Float32Codec()
        self._dim: int | None = None
        self._codes: torch.Tensor | None = None
        self._size = 0

    def bytes_per_sample(self, dim: int) -> int:
        """Bytes one stored latent costs: its code, an int16 label and any extra state."""
        return (self.codec.bytes_per_sample(dim) + _LABEL_DTYPE.itemsize
                + self._extra_bytes_per_sample)

    def capacity_for(self, dim: int) -> int:
        """How many latents of ``dim`` values fit in the sample and byte limits."""
        limits = []
        if self.max_samples is not None:
            limits.append(self.max_samples)
        if self.max_bytes is not None:
            room = self.max_bytes - self.codec.overhead_bytes()
            limits.append(max(0, room // self.bytes_per_sample(dim)))
        return int(min(limits))

    @property
    def capacity(self) -> int:
        if self._codes is None:
            return self.max_samples if self.max_samples is not None else 0
        return self._codes.shape[0]

    def __len__(self) -> int:
        return self._size

    def reserve(self, dim: int) -> None:
        """Allocate storage for latents of ``dim`` values now; fails if none would fit."""
        if self._dim is None:
            self._allocate(dim)
        elif dim != self._dim:
            raise UsageError(f"latent has {dim} values, buffer holds {self._dim}")

    def _allocate(self, dim: int) -> None:
        raise NotImplementedError

    def _planned_capacity(self, dim: int) -> int:
        """Configure the codec for ``dim`` and return the capacity, or BudgetError if 0."""
        self.codec.configure(dim, max_bytes=self.max_bytes)
        capacity = self.capacity_for(dim)
        if capacity == 0:
            if self.max_samples == 0:
                raise BudgetError("replay buffer has max_samples=0: it can hold nothing")
            raise BudgetError(
                f"replay memory of {self.max_bytes} bytes holds no latent of {dim} values "
                f"({self.bytes_per_sample(dim)} bytes each); raise --replay-mb")
        self._dim = dim
        return capacity

    def planned_size(self, dim: int) -> tuple[int, int]:
        """(latents, bytes) this buffer would hold and allocate for latents of ``dim``
        values, codec parameters included, without allocating; BudgetError if none fits.
        Configures the codec, as ``reserve`` would."""
        capacity = self._planned_capacity(dim)
        return capacity, capacity * self.bytes_per_sample(dim) + self.codec.overhead_bytes()

    @staticmethod
    def _check_labels(labels: torch.Tensor) -> None:
        if len(labels) and (int(labels.min()) < 0 or int(labels.max()) > _MAX_LABEL):
            raise UsageError(f"replay labels must be in 0..{_MAX_LABEL}")

    @property
    def nbytes(self) -> int:
        raise NotImplementedError

    def stats(self) -> dict[str, object]:
        dim = self._dim or 0
        return {
            "buffer_bytes": self.nbytes,
            "bytes_per_sample": self.bytes_per_sample(dim) if dim else 0,
            "n_stored": self._size,
            "capacity": self.capacity,
            "codec": self.codec.name,
            "buffer": self.kind,
        }

    def _reserve_restored(self, dim: int) -> bool:
        """Check a checkpoint's latent size against this buffer and allocate for it; False
        for an empty checkpoint (nothing to restore), CheckpointError if it cannot fit."""
        if dim == 0:
            if self._size:
                raise CheckpointError("replay buffer checkpoint is empty, this buffer is not")
            return False
        if self._dim is not None and dim != self._dim:
            raise CheckpointError(f"replay buffer checkpoint holds latents of {dim} values, "
                                  f"this buffer {self._dim}")
        self.reserve(dim)
        return True

    def _check_sample_size(self, n: int) -> None:
        if self._size == 0:
            raise UsageError("cannot sample from an empty replay buffer")
        if n <= 0:
            raise UsageError(f"sample size must be positive, got {n}")


@BUFFERS.register("class-balanced")
class ClassBalancedBuffer(BudgetedBuffer):
    """Stores encoded latents; when full, evicts from the largest class to keep balance.

    Inserting a sample of class ``c`` into a full buffer: if ``c`` holds fewer samples than
    the largest class, a random sample of the largest class makes room. Otherwise ``c`` is
    (one of) the largest and the sample replaces a random stored one of its own class with
    probability ``stored_c / seen_c`` (reservoir sampling within the class), so each class
    keeps a uniform sample of everything it has seen.

    Storage is allocated once, at ``reserve`` or the first insert, at full capacity: the byte
    budget is a ceiling on what is allocated, not only on what is used.
    """

    kind = "class-balanced"

    def __init__(
        self,
        *,
        max_samples: int | None = None,
        max_bytes: int | None = None,
        codec: Codec | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(max_samples=max_samples, max_bytes=max_bytes, codec=codec)
        self._rng = np.random.default_rng(seed)
        self._labels: torch.Tensor | None = None
        self._class_slots: dict[int, list[int]] = {}
        self._seen_per_class: dict[int, int] = {}

    # -- capacity ---------------------------------------------------------------------------
    @property
    def nbytes(self) -> int:
        """Bytes allocated: codes and labels at full capacity, plus codec parameters."""
        if self._codes is None:
            return 0
        return (self._codes.nelement() * self._codes.element_size()
                + self._labels.nelement() * self._labels.element_size()
                + self.codec.overhead_bytes())

    def class_counts(self) -> dict[int, int]:
        return {c: len(slots) for c, slots in sorted(self._class_slots.items()) if slots}

    # -- updates ----------------------------------------------------------------------------
    def _allocate(self, dim: int) -> None:
        capacity = self._planned_capacity(dim)
        self._codes = torch.zeros((capacity, self.codec.code_width(dim)),
                                  dtype=self.codec.storage_dtype)
        self._labels = torch.zeros(capacity, dtype=_LABEL_DTYPE)

    def add(self, latents: torch.Tensor, labels: torch.Tensor) -> None:
        """Offer (N, ...) latents with (N,) labels; the buffer keeps a class-balanced subset."""
        flat = latents.reshape(latents.shape[0], -1)
        self._check_labels(labels)
        self.reserve(flat.shape[1])
        if not self.codec.is_fitted:  # on the first latents offered: the first experience
            self.codec.fit(flat)
        slots = np.full(flat.shape[0], -1, dtype=np.int64)
        for i, label in enumerate(labels.tolist()):
            slots[i] = self._choose_slot(int(label))
        # A slot chosen twice in one call keeps the later sample, as sequential inserts would.
        order = np.flatnonzero(slots >= 0)[::-1]
        _, first_in_reversed = np.unique(slots[order], return_index=True)
        keep = np.sort(order[first_in_reversed])
        if keep.size:
            keep_t = torch.from_numpy(keep)
            rows = torch.from_numpy(slots[keep])
            self._codes[rows] = self.codec.encode(flat[keep_t])
            self._labels[rows] = labels[keep_t].to(_LABEL_DTYPE)

    def _choose_slot(self, label: int) -> int:
        seen = self._seen_per_class.get(label, 0) + 1
        self._seen_per_class[label] = seen
        own = self._class_slots.setdefault(label, [])
        capacity = self._codes.shape[0]
        if self._size < capacity:
            slot = self._size
            self._size += 1
            own.append(slot)
            return slot
        largest = max(self._class_slots, key=lambda c: (len(self._class_slots[c]), -c))
        if len(own) < len(self._class_slots[largest]):
            victims = self._class_slots[largest]
            slot = victims.pop(int(self._rng.integers(len(victims))))
            own.append(slot)
            return slot
        if own and self._rng.random() < len(own) / seen:
            return own[int(self._rng.integers(len(own)))]
        return -1

    # -- reading ----------------------------------------------------------------------------
    def sample(self, n: int, generator: torch.Generator | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` decoded latents drawn uniformly with replacement, with their labels."""
        self._check_sample_size(n)
        idx = torch.randint(self._size, (n,), generator=generator)
        return self.codec.decode(self._codes[idx]), self._labels[idx].long()

    def all(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every stored latent, decoded, with its label."""
        if self._codes is None:
            return torch.empty(0), torch.empty(0, dtype=torch.long)
        return self.codec.decode(self._codes[: self._size]), self._labels[: self._size].long()

    # -- checkpoints ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Storage at full capacity, per-class slot lists and seen counts, the eviction
        generator's state and the codec's parameters (keys ``codec.*``)."""
        if self._codes is None:
            return {"dim": torch.tensor(0)}
        bookkeeping = {
            "size": self._size,
            "class_slots": {str(c): slots for c, slots in self._class_slots.items()},
            "seen": {str(c): n for c, n in self._seen_per_class.items()},
            "rng": self._rng.bit_generator.state,
        }
        return {"dim": torch.tensor(self._dim), "codes": self._codes.clone(),
                "labels": self._labels.clone(), "bookkeeping": json_tensor(bookkeeping),
                **with_prefix("codec", self.codec.state_dict())}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what ``state_dict`` returned into a buffer with the same limits and codec;
        CheckpointError, with the buffer unchanged, if it does not fit."""
        dim = int(tensor_entry(state, "dim", what="replay buffer", shape=()))
        if not self._reserve_restored(dim):
            return
        codes = tensor_entry(state, "codes", what="replay buffer", shape=self._codes.shape,
                             dtype=self._codes.dtype)
        labels = tensor_entry(state, "labels", what="replay buffer", shape=self._labels.shape,
                              dtype=self._labels.dtype)
        book = tensor_json(state.get("bookkeeping"), what="replay buffer bookkeeping")
        try:
            size = int(book["size"])
            slots = {int(c): [int(s) for s in v] for c, v in book["class_slots"].items()}
            seen = {int(c): int(n) for c, n in book["seen"].items()}
            rng = np.random.default_rng()
            rng.bit_generator.state = book["rng"]
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise CheckpointError(f"replay buffer checkpoint bookkeeping is malformed: "
                                  f"{error}") from None
        used = sorted(s for v in slots.values() for s in v)
        if used != list(range(size)) or size > self.capacity:
            raise CheckpointError("replay buffer checkpoint is corrupted: its slot lists do "
                                  "not cover the stored samples exactly once")
        self.codec.load_state_dict(under_prefix("codec", state))
        self._codes.copy_(codes)
        self._labels.copy_(labels)
        self._size, self._class_slots, self._seen_per_class, self._rng = size, slots, seen, rng



def capacity_from_megabytes(megabytes: float) -> int:
    """Bytes in a (possibly fractional) number of MiB, rounded down."""
    if not math.isfinite(megabytes) or megabytes < 0:
        raise UsageError(f"memory budget must be a non-negative number of MB, got {megabytes}")
    return int(megabytes * 1024 * 1024)
