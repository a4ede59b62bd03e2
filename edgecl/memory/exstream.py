"""ExStream: a replay buffer that merges, rather than evicts, when a class is full.

Hayes, Cahill & Kanan, "Memory Efficient Experience Replay for Streaming Learning", ICRA 2019
(arXiv:1809.05922). Each class keeps at most its quota of prototypes, and each prototype
counts the offered samples it stands for. A sample of a class that is full joins the class,
then the two closest prototypes of that class (Euclidean; the new sample is a candidate) are
replaced by their count-weighted mean with the summed count. Nothing offered is dropped: it is
averaged in.

What is different here:

- One global budget (samples and/or bytes, as for :class:`ClassBalancedBuffer`) shared by a
  number of classes that is not known in advance. A class's quota is its share of the
  capacity among the classes seen so far; when a class appears, classes over their new quota
  are merged down to it, closest pairs first.
- The closest pair is not searched among all O(b²) pairs: each prototype keeps its nearest
  neighbour within its class, so an insert usually costs O(b·D) (see :class:`ExStreamBuffer`).
- Prototypes are stored through a codec. A merge decodes the two prototypes, averages them in
  float32 and encodes the result, so with a lossy codec a merged prototype is quantized again.
"""

from __future__ import annotations

import numpy as np
import torch

from edgecl.errors import CheckpointError, DataError, UsageError
from edgecl.memory.buffer import _LABEL_DTYPE, BUFFERS, BudgetedBuffer
from edgecl.memory.codecs import Codec

# How many samples a prototype stands for: exact up to 2**31 samples, 4 bytes per slot.
_COUNT_DTYPE = torch.int32
# Nearest-neighbour cache per slot: neighbour (int32), its distance and a lower bound on the
# others (float32 each), and the slot's position in its class list (int32).
_INDEX_BYTES_PER_SLOT = 16
# Rows of a distance matrix computed at once when many nearest neighbours are recomputed.
_DIST_CHUNK = 256


@BUFFERS.register("exstream")
class ExStreamBuffer(BudgetedBuffer):
    """Per-class prototypes with counts; a full class merges its two closest prototypes.

    Quotas: with capacity ``C`` and ``k`` classes seen, the class that arrived ``r``-th
    (from 0) may hold ``(C - 1 - r) // k + 1`` prototypes if ``r < C`` and none otherwise:
    ``C // k`` each, the ``C % k`` remainder slots going to the earliest classes. A quota never
    grows as classes arrive. Slots a class has not filled yet stay free for it rather than
    being lent to fuller classes. With more classes than slots, classes beyond the first
    ``C`` store nothing (their samples are dropped, the one case where samples are lost).

    Cost of one insert into a class holding ``b`` prototypes of ``D`` values, where an
    all-pairs search costs O(b²·D): decoding the class and the new sample's distances to it,
    O(b·D); the closest stored pair, the argmin of the cached nearest-neighbour distances,
    O(b); after a merge, fresh distance rows for the one or two changed prototypes, O(b·D),
    from which every other prototype's entry is updated in O(b). A prototype whose nearest
    neighbour moved or left takes the nearest changed prototype if that is within its cached
    lower bound on all its other distances; only the others, ``s`` of them, are recomputed,
    O(s·b·D). On Gaussian, clustered and ReLU-like latents (D=512, b up to 1000) ``s`` averaged
    under 0.03 per insert, but a layout built for it (a hub nearest to all, which then moves)
    makes it close to ``b``.

    Memory: codes, int16 labels, int32 counts and the nearest-neighbour cache (16 bytes per
    slot, ``index_nbytes``) are allocated once, at ``reserve`` or the first ``add``, at full
    capacity, and all count in the budget, so ``nbytes`` never exceeds ``max_bytes``. The
    decoded class held during one insert is transient and not counted.

    Args:
        max_samples: most prototypes stored (None: bytes only).
        max_bytes: most bytes allocated for codes, labels, counts, the neighbour cache and
            codec parameters.
        codec: how prototypes are stored (default lossless fp32).
        seed: accepted for the same signature as ClassBalancedBuffer; ExStream makes no
            random choice (ties go to the first candidate found), so it is unused.
        weighted: False draws stored prototypes uniformly in ``sample``; True draws each in
            proportion to its count, so replay follows the offered stream's class frequencies
            rather than the balanced buffer.
    """

    # Per prototype besides its code and label: an int32 count and its neighbour-cache entry.
    _extra_bytes_per_sample = _COUNT_DTYPE.itemsize + _INDEX_BYTES_PER_SLOT
    kind = "exstream"

    def __init__(
        self,
        *,
        max_samples: int | None = None,
        max_bytes: int | None = None,
        codec: Codec | None = None,
        seed: int = 0,
        weighted: bool = False,
    ) -> None:
        super().__init__(max_samples=max_samples, max_bytes=max_bytes, codec=codec)
        self.seed = seed
        self.weighted = weighted
        self._labels: torch.Tensor | None = None    # (capacity,) int16
        self._counts: torch.Tensor | None = None    # (capacity,) int32; 0 in a free slot
        self._count_of = np.zeros(0, dtype=np.int32)  # a numpy view of _counts
        self._class_slots: dict[int, list[int]] = {}  # label -> slots, in order of arrival
        self._rank: dict[int, int] = {}              # label -> order of arrival, from 0
        self._free: list[int] = []                   # a stack: the next slot to use is last
        self._used: torch.Tensor | None = None       # sorted used slots, rebuilt when stale
        # Per slot, within its class: the nearest neighbour's slot (-1: none), its distance,
        # and a lower bound on the distance to every other prototype (exact when computed,
        # lowered as prototypes change), which spares most recomputations when a
        # neighbour moves. Together these make finding the closest pair O(b).
        self._nn = np.zeros(0, dtype=np.int32)
        self._nn_dist = np.zeros(0, dtype=np.float32)
        self._nn_bound = np.zeros(0, dtype=np.float32)
        self._pos = np.zeros(0, dtype=np.int32)      # a slot's index in its class's list

    # -- capacity ---------------------------------------------------------------------------
    @property
    def nbytes(self) -> int:
        """Bytes allocated: codes, labels, counts and the neighbour cache at full capacity,
        plus codec parameters."""
        if self._codes is None:
            return 0
        stored = (self._codes, self._labels, self._counts)
        return (sum(t.nelement() * t.element_size() for t in stored) + self.index_nbytes
                + self.codec.overhead_bytes())

    @property
    def index_nbytes(self) -> int:
        """Bytes of the nearest-neighbour cache (part of ``nbytes``)."""
        return (self._nn.nbytes + self._nn_dist.nbytes + self._nn_bound.nbytes
                + self._pos.nbytes)

    def class_counts(self) -> dict[int, int]:
        """Prototypes stored per class (not the samples they stand for: see prototype_counts)."""
        return {c: len(slots) for c, slots in sorted(self._class_slots.items()) if slots}

    def quota(self, label: int) -> int:
        """Most prototypes class ``label`` may hold now; 0 for a class not seen yet."""
        if label not in self._class_slots or self._codes is None:
            return 0
        return _quota(self._rank[label], len(self._rank), self.capacity)

    # -- updates ----------------------------------------------------------------------------
    def _allocate(self, dim: int) -> None:
        capacity = self._planned_capacity(dim)
        self._codes = torch.zeros((capacity, self.codec.code_width(dim)),
                                  dtype=self.codec.storage_dtype)
        self._labels = torch.zeros(capacity, dtype=_LABEL_DTYPE)
        self._counts = torch.zeros(capacity, dtype=_COUNT_DTYPE)
        self._count_of = self._counts.numpy()  # shares memory; scalar reads cost less
        self._free = list(range(capacity - 1, -1, -1))
        self._nn = np.full(capacity, -1, dtype=np.int32)
        self._nn_dist = np.full(capacity, np.inf, dtype=np.float32)
        self._nn_bound = np.full(capacity, np.inf, dtype=np.float32)
        self._pos = np.zeros(capacity, dtype=np.int32)

    def add(self, latents: torch.Tensor, labels: torch.Tensor) -> None:
        """Offer (N, ...) latents with (N,) labels, inserted one after another in order."""
        flat = latents.detach().reshape(latents.shape[0], -1).to(torch.float32)
        if labels.shape != (flat.shape[0],):
            raise UsageError(f"{flat.shape[0]} latents need ({flat.shape[0]},) labels, "
                             f"got shape {tuple(labels.shape)}")
        self._check_labels(labels)
        if not bool(torch.isfinite(flat).all()):
            # A NaN prototype would poison every sample later merged into it.
            raise DataError("replay latents contain NaN or infinite values")
        self.reserve(flat.shape[1])
        if flat.shape[0] == 0:
            return
        if not self.codec.is_fitted:
            self.codec.fit(flat)
        codes = self.codec.encode(flat)
        for i, label in enumerate(labels.tolist()):
            if label not in self._class_slots:
                self._add_class(label)
            self._insert(label, flat[i], codes[i])

    def _add_class(self, label: int) -> None:
        self._rank[label] = len(self._rank)
        self._class_slots[label] = []
        # Quotas only shrink, and a class that holds anything keeps a quota of at least 1,
        # so each merge below has a pair to merge.
        for c, slots in self._class_slots.items():
            quota = _quota(self._rank[c], len(self._rank), self.capacity)
            while len(slots) > quota:
                self._merge_closest_pair(c)

    def _insert(self, label: int, x: torch.Tensor, code: torch.Tensor) -> None:
        """Insert one latent ``x`` (D,) whose encoding is ``code``."""
        slots = self._class_slots[label]
        quota = _quota(self._rank[label], len(self._rank), self.capacity)
        if quota == 0:
            return
        if len(slots) < quota:
            slot = self._free.pop()
            self._write(slot, code, 1, label)
            self._pos[slot] = len(slots)
            slots.append(slot)
            self._size += 1
            self._used = None
            self._refresh(slots, self._decoded(slots), [len(slots) - 1], gone=())
            return
        vectors = self._decoded(slots)                    # (b, D)
        to_new = _distances(x[None], vectors)[0]           # (b,)
        nearest = int(to_new.argmin())
        idx = np.asarray(slots)
        first = int(self._nn_dist[idx].argmin())          # closest stored pair: first, its NN
        if float(to_new[nearest]) <= float(self._nn_dist[slots[first]]):
            # The new sample is closest to a stored prototype: fold it in.
            slot = slots[nearest]
            count = int(self._count_of[slot])
            merged = (vectors[nearest] * count + x) / (count + 1)
            self._write(slot, self.codec.encode(merged[None])[0], count + 1, label)
            changed = [nearest]
        else:
            # Two stored prototypes are closest: merge them, the new sample takes a slot.
            second = int(self._pos[self._nn[slots[first]]])
            a, b = slots[first], slots[second]
            na, nb = int(self._count_of[a]), int(self._count_of[b])
            merged = (vectors[first] * na + vectors[second] * nb) / (na + nb)
            self._write(a, self.codec.encode(merged[None])[0], na + nb, label)
            self._write(b, code, 1, label)
            changed = [first, second]
        vectors[changed] = self._decoded([slots[p] for p in changed])
        self._refresh(slots, vectors, changed, gone=())

    def _merge_closest_pair(self, label: int) -> None:
        """Merge class ``label``'s two closest prototypes into one, freeing a slot."""
        slots = self._class_slots[label]
        idx = np.asarray(slots)
        keep = int(idx[self._nn_dist[idx].argmin()])
        gone = int(self._nn[keep])
        pair = self._decoded([keep, gone])
        na, nb = int(self._count_of[keep]), int(self._count_of[gone])
        merged = (pair[0] * na + pair[1] * nb) / (na + nb)
        self._write(keep, self.codec.encode(merged[None])[0], na + nb, label)
        # Remove ``gone`` by moving the class's last slot into its place: O(1).
        at, last = int(self._pos[gone]), slots.pop()
        if last != gone:
            slots[at] = last
            self._pos[last] = at
        self._count_of[gone] = 0
        self._nn[gone], self._nn_dist[gone], self._nn_bound[gone] = -1, np.inf, np.inf
        self._free.append(gone)
        self._size -= 1
        self._used = None
        self._refresh(slots, self._decoded(slots), [int(self._pos[keep])], gone=(gone,))

    def _write(self, slot: int, code: torch.Tensor, count: int, label: int) -> None:
        self._codes[slot] = code
        self._count_of[slot] = count
        self._labels[slot] = label

    def _decoded(self, slots: list[int]) -> torch.Tensor:
        """The stored prototypes in ``slots``, decoded: (len(slots), D) float32, a copy."""
        rows = self._codes[torch.as_tensor(slots, dtype=torch.long)]
        return self.codec.decode(rows).to(torch.float32)

    def _refresh(self, slots: list[int], vectors: torch.Tensor, changed: list[int],
                 gone: tuple[int, ...]) -> None:
        """Restore every nearest neighbour in one class after the prototypes at positions
        ``changed`` got new vectors and the slots ``gone`` left the class.

        ``vectors`` (b, D) are the class's decoded prototypes in the order of ``slots``.
        """
        idx = np.asarray(slots, dtype=np.int64)
        rows = np.asarray(changed, dtype=np.int64)
        to_changed = _distances(vectors[rows], vectors).numpy()   # (r, b)
        to_changed[np.arange(len(rows)), rows] = np.inf
        # For every prototype: its nearest changed one, and the distance to the next one.
        near = to_changed.argmin(axis=0)                            # (b,)
        d_near = to_changed[near, np.arange(len(idx))]
        d_next = (np.partition(to_changed, 1, axis=0)[1] if len(rows) > 1
                  else np.full(len(idx), np.inf, dtype=np.float32))
        old_nn, old_d, bound = self._nn[idx], self._nn_dist[idx], self._nn_bound[idx]
        others = np.ones(len(idx), dtype=bool)
        others[rows] = False
        lost = others & np.isin(old_nn, np.concatenate([idx[rows], np.asarray(gone, int)]))
        kept = others & ~lost
        # A neighbour that stayed put stays nearest unless a changed prototype came closer;
        # the changed ones now count among the rest, which the bound covers.
        closer = kept & (d_near < old_d)
        new_nn, new_d = np.where(closer, idx[rows[near]], old_nn), np.where(closer, d_near, old_d)
        new_bound = np.where(closer, np.minimum(bound, np.minimum(old_d, d_next)),
                             np.minimum(bound, d_near))
        # A neighbour that moved or left: the nearest changed prototype replaces it if no
        # unchanged one can be nearer (all are at least the bound away); else recompute.
        relinked = lost & (d_near <= bound)
        new_nn = np.where(relinked, idx[rows[near]], new_nn)
        new_d = np.where(relinked, d_near, new_d)
        new_bound = np.where(relinked, np.minimum(bound, d_next), new_bound)
        update = kept | relinked
        self._nn[idx[update]] = new_nn[update]
        self._nn_dist[idx[update]] = new_d[update]
        self._nn_bound[idx[update]] = new_bound[update]
        self._set_nearest(idx, rows, to_changed)
        stale_rows = np.flatnonzero(lost & ~relinked)
        for start in range(0, len(stale_rows), _DIST_CHUNK):
            chunk = stale_rows[start:start + _DIST_CHUNK]
            dist = _distances(vectors[chunk], vectors).numpy()
            dist[np.arange(len(chunk)), chunk] = np.inf
            self._set_nearest(idx, chunk, dist)

    def _set_nearest(self, idx: np.ndarray, rows: np.ndarray, dist: np.ndarray) -> None:
        """Give prototypes ``idx[rows]`` their nearest neighbour and bound from distance rows
        (r, b), in which each prototype's distance to itself is infinite."""
        best = dist.argmin(axis=1)
        closest = dist[np.arange(len(rows)), best]
        self._nn[idx[rows]] = np.where(np.isfinite(closest), idx[best], -1)
        self._nn_dist[idx[rows]] = closest
        self._nn_bound[idx[rows]] = (np.partition(dist, 1, axis=1)[:, 1] if dist.shape[1] > 1
                                     else np.inf)

    # -- reading ----------------------------------------------------------------------------
    def _used_slots(self) -> torch.Tensor:
        if self._used is None:
            slots = [s for own in self._class_slots.values() for s in own]
            self._used = torch.as_tensor(sorted(slots), dtype=torch.long)
        return self._used

    def sample(self, n: int, generator: torch.Generator | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` decoded prototypes drawn with replacement, with their labels: uniformly, or
        in proportion to their counts if the buffer is ``weighted``."""
        self._check_sample_size(n)
        used = self._used_slots()
        if self.weighted:
            weights = self._counts[used].to(torch.float64)
            pick = torch.multinomial(weights, n, replacement=True, generator=generator)
        else:
            pick = torch.randint(len(used), (n,), generator=generator)
        idx = used[pick]
        return self.codec.decode(self._codes[idx]), self._labels[idx].long()

    def all(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every stored prototype, decoded, with its label (in slot order)."""
        if self._codes is None:
            return torch.empty(0), torch.empty(0, dtype=torch.long)
        used = self._used_slots()
        return self.codec.decode(self._codes[used]), self._labels[used].long()

    def prototype_counts(self) -> torch.Tensor:
        """How many offered samples each prototype of ``all()`` stands for, (n_stored,) long."""
        if self._codes is None:
            return torch.empty(0, dtype=torch.long)
        return self._counts[self._used_slots()].long()

    # -- checkpoints ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Everything needed to resume, as tensors: storage at full capacity, the classes in
        order of arrival with their slot lists (concatenated), free slots, the
        nearest-neighbour cache and the codec's parameters (keys ``codec.*``)."""
        if self._codes is None:
            return {"dim": torch.tensor(0)}
        classes = list(self._class_slots)
        state = {
            "dim": torch.tensor(self._dim),
            "codes": self._codes.clone(),
            "labels": self._labels.clone(),
            "counts": self._counts.clone(),
            "classes": torch.tensor(classes, dtype=torch.long),
            "class_sizes": torch.tensor([len(self._class_slots[c]) for c in classes],
                                        dtype=torch.long),
            "class_slots": torch.tensor([s for c in classes for s in self._class_slots[c]],
                                        dtype=torch.long),
            "free_slots": torch.tensor(self._free, dtype=torch.long),
            "nn": torch.from_numpy(self._nn.astype(np.int64)),
            "nn_dist": torch.from_numpy(self._nn_dist.copy()),
            "nn_bound": torch.from_numpy(self._nn_bound.copy()),
        }
        state.update({f"codec.{k}": v for k, v in self.codec.state_dict().items()})
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what ``state_dict`` returned, into a buffer with the same limits and codec."""
        try:
            dim = int(state["dim"])
        except (KeyError, TypeError, ValueError, RuntimeError):
            raise CheckpointError("replay buffer checkpoint has no latent size ('dim')") from None
        if not self._reserve_restored(dim):
            return
        expected = {"codes": self._codes, "labels": self._labels, "counts": self._counts}
        for key, own in expected.items():
            got = state.get(key)
            fits = isinstance(got, torch.Tensor) and (got.shape, got.dtype) == (own.shape,
                                                                                 own.dtype)
            if not fits:
                detail = (f"{tuple(got.shape)} {got.dtype}" if isinstance(got, torch.Tensor)
                          else "missing")
                raise CheckpointError(
                    f"replay buffer checkpoint {key!r} is {detail}, this buffer needs "
                    f"{tuple(own.shape)} {own.dtype}: same limits, codec and latent size?")
        try:
            classes = [int(c) for c in state["classes"].tolist()]
            sizes = [int(s) for s in state["class_sizes"].tolist()]
            flat = [int(s) for s in state["class_slots"].tolist()]
            free = [int(s) for s in state["free_slots"].tolist()]
            nn = state["nn"].numpy().astype(np.int32)
            nn_dist = state["nn_dist"].numpy().astype(np.float32)
            nn_bound = state["nn_bound"].numpy().astype(np.float32)
        except (KeyError, AttributeError, TypeError) as error:
            raise CheckpointError(f"replay buffer checkpoint is incomplete: {error}") from None
        capacity = self.capacity
        if (len(sizes) != len(classes) or sum(sizes) != len(flat)
                or sorted(flat + free) != list(range(capacity))
                or {nn.shape, nn_dist.shape, nn_bound.shape} != {(capacity,)}
                or len(set(classes)) != len(classes)):
            raise CheckpointError("replay buffer checkpoint is corrupted: its slot lists do "
                                  "not cover the buffer's slots exactly once")
        self.codec.load_state_dict({k.removeprefix("codec."): v for k, v in state.items()
                                    if k.startswith("codec.")})
        self._codes.copy_(state["codes"])
        self._labels.copy_(state["labels"])
        self._counts.copy_(state["counts"])
        self._class_slots, start = {}, 0
        self._rank = {c: rank for rank, c in enumerate(classes)}
        for c, size in zip(classes, sizes, strict=True):
            self._class_slots[c] = flat[start:start + size]
            self._pos[self._class_slots[c]] = np.arange(size, dtype=np.int32)
            start += size
        self._free = free
        self._size = len(flat)
        self._nn, self._nn_dist, self._nn_bound = nn, nn_dist, nn_bound
        self._used = None


def _quota(rank: int, n_classes: int, capacity: int) -> int:
    """Slots of the ``rank``-th class when ``capacity`` slots are dealt round-robin among
    ``n_classes`` in order of arrival: ``capacity // n_classes``, +1 for the earliest ones."""
    return 0 if rank >= capacity else (capacity - 1 - rank) // n_classes + 1


def _distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Euclidean distances (r, b) between rows of a (r, D) and b (b, D).

    From differences, not |a|² - 2a·b + |b|², which cancels badly for close pairs, the very
    ones that decide a merge; also faster here, as it needs no (r, b, D) temporary.
    """
    return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist")
