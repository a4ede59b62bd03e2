"""The ExStream buffer: merges instead of dropping, within budget, the closest pair first."""

from __future__ import annotations

import io
from collections import Counter

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from edgecl.errors import BudgetError, CheckpointError, DataError, UsageError
from edgecl.memory import ClassBalancedBuffer, create_codec, list_codecs
from edgecl.memory.buffer import BUFFERS
from edgecl.memory.exstream import ExStreamBuffer

COUNT_BYTES = 4 + 16  # int32 count and 16-byte neighbour-cache entry, besides code and label


def expected_quotas(labels: list[int], capacity: int) -> dict[int, int]:
    """The documented rule: capacity // k slots each, the remainder to the earliest classes."""
    order = list(dict.fromkeys(labels))
    k = len(order)
    return {c: capacity // k + (rank < capacity % k) for rank, c in enumerate(order)}


def distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # Exact differences: the default matrix-product form is off by ~1e-3 for equal vectors.
    return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist")


def by_class(buffer: ExStreamBuffer) -> dict[int, list[tuple[list[float], int]]]:
    """Each class's prototypes and counts, sorted, so tests do not depend on slot order."""
    latents, labels = buffer.all()
    out: dict[int, list[tuple[list[float], int]]] = {}
    for v, c, n in zip(latents.tolist(), labels.tolist(), buffer.prototype_counts().tolist(),
                       strict=True):
        out.setdefault(c, []).append((v, n))
    return {c: sorted(rows) for c, rows in sorted(out.items())}


def represented(buffer: ExStreamBuffer) -> dict[int, int]:
    """How many offered samples each class's prototypes stand for together."""
    total: Counter[int] = Counter()
    for c, n in zip(buffer.all()[1].tolist(), buffer.prototype_counts().tolist(), strict=True):
        total[c] += n
    return dict(total)


# -- budget and counting invariants, over random streams -----------------------------------

@settings(max_examples=40, deadline=None)
@given(labels=st.lists(st.integers(0, 9), min_size=30, max_size=300),
       batch=st.integers(1, 16), dim=st.integers(1, 12), max_fit=st.integers(1, 30),
       slack=st.integers(0, 100), limit=st.sampled_from(["bytes", "samples", "both"]),
       coarse=st.booleans(), seed=st.integers(0, 2**16))
def test_budget_quotas_and_counts_hold_over_random_streams(
        labels: list[int], batch: int, dim: int, max_fit: int, slack: int, limit: str,
        coarse: bool, seed: int) -> None:
    per_sample = 4 * dim + 2 + COUNT_BYTES
    max_bytes = max_fit * per_sample + slack % per_sample  # room for max_fit prototypes
    max_samples = max(1, max_fit - slack % 5)
    buffer = ExStreamBuffer(max_bytes=max_bytes if limit != "samples" else None,
                            max_samples=max_samples if limit != "bytes" else None)
    capacity = {"bytes": max_fit, "samples": max_samples,
                "both": min(max_fit, max_samples)}[limit]
    rng = np.random.default_rng(seed)
    # Coarse latents (a few integer values) make duplicates and distance ties common.
    values = (rng.integers(0, 3, (len(labels), dim)) if coarse
              else rng.normal(size=(len(labels), dim)))
    latents = torch.as_tensor(values, dtype=torch.float32)

    for start in range(0, len(labels), batch):
        buffer.add(latents[start:start + batch],
                   torch.tensor(labels[start:start + batch], dtype=torch.long))
        seen = labels[:start + batch]
        offered = Counter(seen)
        quotas = expected_quotas(seen, capacity)
        if limit != "samples":
            assert buffer.nbytes <= max_bytes
        assert buffer.capacity == capacity  # the budget is used, not only respected
        assert len(buffer) <= capacity
        assert buffer.class_counts() == {c: min(offered[c], quotas[c])
                                         for c in sorted(offered) if quotas[c]}
        # Nothing is lost, only merged: a class with a slot stands for all it was offered.
        assert represented(buffer) == {c: offered[c] for c in offered if quotas[c]}


def test_the_byte_budget_counts_code_label_and_count_bytes() -> None:
    buffer = ExStreamBuffer(max_samples=8, seed=0)
    buffer.add(torch.randn(5, 16), torch.tensor([0, 1, 2, 0, 1]))
    assert buffer.stats() == {
        "buffer_bytes": 8 * (4 * 16 + 2 + COUNT_BYTES),  # allocated at full capacity
        "bytes_per_sample": 4 * 16 + 2 + COUNT_BYTES,
        "n_stored": 5,
        "capacity": 8,
        "codec": "fp32",
        "buffer": "exstream",
    }


# -- the merge rule ------------------------------------------------------------------------

def test_a_full_class_merges_its_closest_pair_into_the_count_weighted_mean() -> None:
    buffer = ExStreamBuffer(max_samples=2)
    points = torch.tensor([[0.0, 0.0], [1.0, 0.0], [10.0, 0.0]])
    buffer.add(points, torch.zeros(3, dtype=torch.long))
    # (0,0) and (1,0) are closest (1 apart, against 9 and 10): their mean stands for both.
    assert by_class(buffer) == {0: [([0.5, 0.0], 2), ([10.0, 0.0], 1)]}

    buffer.add(torch.tensor([[2.0, 3.0]]), torch.tensor([0]))
    # (2,3) is closest to (0.5,0) [count 2]: the mean weighs that prototype twice,
    # ((0.5, 0) * 2 + (2, 3)) / 3 = (1, 1), where an unweighted mean would give (1.25, 1.5).
    assert by_class(buffer) == {0: [([1.0, 1.0], 3), ([10.0, 0.0], 1)]}


def test_the_new_sample_stays_whole_when_two_stored_prototypes_are_closer() -> None:
    buffer = ExStreamBuffer(max_samples=2)
    buffer.add(torch.tensor([[0.0], [1.0], [3.5]]), torch.zeros(3, dtype=torch.long))
    buffer.add(torch.tensor([[30.0]]), torch.tensor([0]))
    # 0.5 [2] and 3.5 are 3 apart, 3.5 and 30 are 26.5 apart: the stored pair merges.
    assert by_class(buffer) == {0: [([1.5], 3), ([30.0], 1)]}  # (0.5 * 2 + 3.5) / 3


class BruteForceExStream:
    """The rule as stated, with every pairwise distance recomputed at every merge: O(b²·D)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.classes: dict[int, list[tuple[torch.Tensor, int]]] = {}

    def quota(self, label: int) -> int:
        return expected_quotas(list(self.classes), self.capacity)[label]

    def add(self, x: torch.Tensor, label: int) -> None:
        if label not in self.classes:
            self.classes[label] = []
            for c in self.classes:
                while len(self.classes[c]) > self.quota(c):
                    self.merge(c)
        if self.quota(label):
            self.classes[label].append((x, 1))
            if len(self.classes[label]) > self.quota(label):
                self.merge(label)

    def merge(self, label: int) -> None:
        protos = self.classes[label]
        vectors = torch.stack([v for v, _ in protos]).double()
        dist = ((vectors[:, None] - vectors[None]) ** 2).sum(-1)
        dist.fill_diagonal_(float("inf"))
        i, j = sorted(divmod(int(dist.argmin()), len(protos)))
        (vi, ni), (vj, nj) = protos[i], protos[j]
        protos[i] = ((vi * ni + vj * nj) / (ni + nj), ni + nj)
        del protos[j]


def assert_same_prototypes(buffer: ExStreamBuffer, reference: BruteForceExStream) -> None:
    latents, labels = buffer.all()
    counts = buffer.prototype_counts()
    for c, protos in reference.classes.items():
        own = labels == c
        assert int(own.sum()) == len(protos), c
        if not protos:
            continue
        want = torch.stack([v for v, _ in protos])
        # Match prototypes by position in space; merges in another order would move them.
        dist = distances(want, latents[own])
        match = dist.argmin(dim=1)
        assert sorted(match.tolist()) == list(range(len(protos)))
        assert float(dist.min(dim=1).values.max()) < 1e-4
        assert counts[own][match].tolist() == [n for _, n in protos]


def assert_nearest_neighbours_exact(buffer: ExStreamBuffer) -> None:
    # White box: the cache the fast closest-pair search relies on holds, for every prototype,
    # the distance to its nearest neighbour within its class (infinite when it is alone), and
    # a lower bound on the distance to any other prototype of the class.
    latents, labels = buffer.all()
    slots = buffer._used_slots()
    for c in labels.unique().tolist():
        own = labels == c
        dist = distances(latents[own], latents[own]).fill_diagonal_(float("inf"))
        sorted_dist = torch.cat([dist.sort(dim=1).values, torch.full((len(dist), 1), np.inf)], 1)
        cached = torch.from_numpy(buffer._nn_dist[slots[own].numpy()])
        bound = torch.from_numpy(buffer._nn_bound[slots[own].numpy()])
        torch.testing.assert_close(cached, sorted_dist[:, 0], rtol=1e-5, atol=1e-5)
        assert bool((bound <= sorted_dist[:, 1] + 1e-5).all())


@pytest.mark.parametrize(("capacity", "n_classes", "n"), [(30, 1, 400), (24, 4, 500)])
def test_merges_match_a_brute_force_closest_pair_search(capacity: int, n_classes: int,
                                                        n: int) -> None:
    # Clustered data, so nearest neighbours are shared and merges chain through hubs.
    rng = np.random.default_rng(capacity)
    centers = rng.normal(0.0, 4.0, size=(6, 8))
    latents = torch.as_tensor(centers[rng.integers(0, 6, n)] + rng.normal(size=(n, 8)),
                              dtype=torch.float32)
    # Classes arrive one after another, so earlier ones are merged down on each arrival.
    labels = np.sort(rng.integers(0, n_classes, n)) if n_classes > 1 else np.zeros(n, int)
    buffer = ExStreamBuffer(max_samples=capacity)
    reference = BruteForceExStream(capacity)
    for i in range(n):
        buffer.add(latents[i:i + 1], torch.tensor([int(labels[i])]))
        reference.add(latents[i], int(labels[i]))
        if i % 25 == 0 or i == n - 1:
            assert_same_prototypes(buffer, reference)
            assert_nearest_neighbours_exact(buffer)


def hub_and_spokes(dim: int = 256, n_pairs: int = 149) -> torch.Tensor:
    """A hub at 0, one point 0.5 from it, and pairs of points about 1 from the hub and 1.01
    from each other (random directions in 256-d are about 1.4 apart): the hub is every
    point's nearest neighbour, and once it merges with the near point and moves 0.25, it is
    no longer provably nearest for most of them, so most nearest neighbours are recomputed."""
    rng = np.random.default_rng(0)
    u = torch.nn.functional.normalize(torch.as_tensor(rng.normal(size=(n_pairs, dim))), dim=1)
    w = torch.as_tensor(rng.normal(size=(n_pairs, dim)))
    w = torch.nn.functional.normalize(w - (w * u).sum(1, keepdim=True) * u, dim=1)
    angle = 2 * np.arcsin(0.505)                       # a chord of 1.01 on the unit sphere
    pairs = torch.stack([u, np.cos(angle) * u + np.sin(angle) * w], 1).reshape(-1, dim)
    pairs *= (1 + torch.arange(len(pairs)) * 1e-5)[:, None]  # no two distances tie
    near = 0.5 * torch.nn.functional.normalize(torch.as_tensor(rng.normal(size=(1, dim))))
    far = 10 * torch.nn.functional.normalize(torch.as_tensor(rng.normal(size=(3, dim))))
    return torch.cat([torch.zeros(1, dim), near, pairs, far]).to(torch.float32)


def test_merging_a_hub_that_is_every_prototypes_nearest_neighbour() -> None:
    latents = hub_and_spokes()
    buffer = ExStreamBuffer(max_samples=len(latents) - 3)
    reference = BruteForceExStream(len(latents) - 3)
    for i in range(len(latents)):
        buffer.add(latents[i:i + 1], torch.tensor([0]))
        reference.add(latents[i], 0)
    assert_same_prototypes(buffer, reference)
    assert_nearest_neighbours_exact(buffer)


# -- classes arriving ----------------------------------------------------------------------

def test_older_classes_shrink_to_the_new_quota_closest_pairs_first() -> None:
    buffer = ExStreamBuffer(max_samples=4)
    buffer.add(torch.tensor([[0.0], [1.0], [3.5], [30.0]]), torch.zeros(4, dtype=torch.long))
    assert buffer.class_counts() == {0: 4}

    buffer.add(torch.tensor([[100.0]]), torch.tensor([1]))  # quotas 2 + 2
    # First 0 and 1 merge (1 apart), then 0.5 [2] and 3.5 (3 apart, against 26.5).
    assert by_class(buffer) == {0: [([1.5], 3), ([30.0], 1)], 1: [([100.0], 1)]}

    buffer.add(torch.tensor([[200.0]]), torch.tensor([2]))  # quotas 2 + 1 + 1
    assert buffer.class_counts() == {0: 2, 1: 1, 2: 1}
    buffer.add(torch.tensor([[300.0]]), torch.tensor([3]))  # quotas 1 each
    assert by_class(buffer)[0] == [([8.625], 4)]  # (1.5 * 3 + 30) / 4
    assert len(buffer) == 4


def test_a_class_keeps_standing_for_all_its_samples_as_its_quota_shrinks() -> None:
    buffer = ExStreamBuffer(max_samples=12)
    buffer.add(torch.randn(30, 5), torch.zeros(30, dtype=torch.long))
    for new_class, quota in [(1, 6), (2, 4), (3, 3)]:
        buffer.add(torch.randn(1, 5), torch.tensor([new_class]))
        assert buffer.class_counts()[0] == quota
        assert represented(buffer)[0] == 30


def test_classes_beyond_the_capacity_store_nothing() -> None:
    buffer = ExStreamBuffer(max_samples=2)
    buffer.add(torch.randn(6, 3), torch.tensor([0, 1, 2, 2, 0, 1]))
    assert buffer.class_counts() == {0: 1, 1: 1}
    assert represented(buffer) == {0: 2, 1: 2}


# -- codecs --------------------------------------------------------------------------------

@pytest.mark.parametrize("codec_name", list_codecs())
def test_every_codec_keeps_the_budget_and_the_counts(codec_name: str) -> None:
    max_bytes = 64 * 1024
    buffer = ExStreamBuffer(max_samples=40, max_bytes=max_bytes, codec=create_codec(codec_name))
    rng = np.random.default_rng(0)
    latents = torch.as_tensor(rng.normal(size=(600, 16)), dtype=torch.float32)
    labels = torch.as_tensor(np.sort(rng.integers(0, 5, 600)))
    for start, stop in [(0, 128), (128, 300), (300, 600)]:  # fitted on the first 128
        buffer.add(latents[start:stop], labels[start:stop])
        assert buffer.nbytes <= max_bytes
        assert len(buffer) <= buffer.capacity
    offered = Counter(labels.tolist())
    quotas = expected_quotas(labels.tolist(), buffer.capacity)
    assert buffer.class_counts() == {c: min(offered[c], quotas[c]) for c in sorted(offered)}
    assert represented(buffer) == dict(offered)
    stored, stored_labels = buffer.all()
    assert stored.shape == (len(buffer), 16) and stored.dtype == torch.float32
    assert torch.isfinite(stored).all()


# -- reading -------------------------------------------------------------------------------

def test_samples_are_stored_prototypes_with_their_labels() -> None:
    buffer = ExStreamBuffer(max_samples=9)
    buffer.add(torch.randn(60, 2, 3), torch.arange(60) % 3)  # image-like latents: flattened
    stored, stored_labels = buffer.all()
    latents, labels = buffer.sample(50, torch.Generator().manual_seed(0))
    assert latents.shape == (50, 6) and latents.dtype == torch.float32
    assert labels.shape == (50,) and labels.dtype == torch.long
    rows = distances(latents, stored).argmin(dim=1)
    assert torch.equal(stored[rows], latents)
    assert torch.equal(stored_labels[rows], labels)


@pytest.mark.parametrize(("weighted", "share"), [(False, 0.5), (True, 0.9)])
def test_weighted_sampling_follows_the_counts(weighted: bool, share: float) -> None:
    buffer = ExStreamBuffer(max_samples=2, weighted=weighted)
    # Class 0: one prototype for 9 samples; class 1: one sample.
    buffer.add(torch.cat([torch.zeros(9, 4), torch.ones(1, 4)]),
               torch.tensor([0] * 9 + [1]))
    _, labels = buffer.sample(4000, torch.Generator().manual_seed(1))
    assert float((labels == 0).float().mean()) == pytest.approx(share, abs=0.03)


def test_same_stream_gives_the_same_buffer_and_samples_whatever_the_seed() -> None:
    rng = np.random.default_rng(0)
    latents = torch.as_tensor(rng.normal(size=(300, 6)), dtype=torch.float32)
    labels = torch.as_tensor(rng.integers(0, 4, 300))

    def run(seed: int) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        buffer = ExStreamBuffer(max_samples=20, seed=seed)
        for start in range(0, 300, 7):
            buffer.add(latents[start:start + 7], labels[start:start + 7])
        return buffer.state_dict(), *buffer.sample(30, torch.Generator().manual_seed(5))

    first, second, other_seed = run(7), run(7), run(8)
    for run_ in (second, other_seed):  # ExStream makes no random choice
        assert first[0].keys() == run_[0].keys()
        assert all(torch.equal(first[0][k], run_[0][k]) for k in first[0])
        assert torch.equal(first[1], run_[1]) and torch.equal(first[2], run_[2])


def test_a_checkpoint_resumes_exactly_where_the_stream_left_off() -> None:
    rng = np.random.default_rng(1)
    latents = torch.as_tensor(rng.normal(size=(200, 6)), dtype=torch.float32)
    labels = torch.as_tensor(np.sort(rng.integers(0, 5, 200)))
    whole = ExStreamBuffer(max_samples=15)
    whole.add(latents[:120], labels[:120])

    saved = io.BytesIO()
    torch.save(whole.state_dict(), saved)
    saved.seek(0)
    resumed = ExStreamBuffer(max_samples=15)
    resumed.load_state_dict(torch.load(saved, weights_only=True))  # tensors only
    assert by_class(resumed) == by_class(whole)

    whole.add(latents[120:], labels[120:])
    resumed.add(latents[120:], labels[120:])
    assert by_class(resumed) == by_class(whole)


def test_a_checkpoint_of_another_capacity_is_refused() -> None:
    buffer = ExStreamBuffer(max_samples=15)
    buffer.add(torch.randn(20, 6), torch.arange(20) % 3)
    with pytest.raises(CheckpointError, match="same limits"):
        ExStreamBuffer(max_samples=10).load_state_dict(buffer.state_dict())


# -- errors and interface ------------------------------------------------------------------

def test_byte_budget_too_small_for_one_latent_raises_budget_error() -> None:
    one = 4 * 10 + 2 + COUNT_BYTES
    buffer = ExStreamBuffer(max_bytes=one - 1)
    with pytest.raises(BudgetError, match=rf"{one - 1} bytes holds no latent of 10 values "
                                          rf"\({one} bytes"):
        buffer.reserve(10)
    buffer = ExStreamBuffer(max_bytes=one)
    buffer.add(torch.zeros(2, 10), torch.tensor([0, 0]))
    assert len(buffer) == 1 and buffer.nbytes == one


@pytest.mark.parametrize(("latents", "labels", "error", "message"), [
    (torch.zeros(1, 9), torch.tensor([0]), UsageError, "latent has 9 values, buffer holds 8"),
    (torch.zeros(1, 8), torch.tensor([40000]), UsageError, "labels must be in 0..32767"),
    (torch.zeros(1, 8), torch.tensor([-1]), UsageError, "labels must be in 0..32767"),
    (torch.zeros(2, 8), torch.tensor([0]), UsageError, r"need \(2,\) labels"),
    (torch.full((1, 8), float("nan")), torch.tensor([0]), DataError, "NaN"),
])
def test_bad_inserts_are_refused_and_leave_the_buffer_unchanged(
        latents: torch.Tensor, labels: torch.Tensor, error: type[Exception],
        message: str) -> None:
    buffer = ExStreamBuffer(max_samples=4)
    buffer.add(torch.ones(2, 8), torch.tensor([0, 1]))
    with pytest.raises(error, match=message):
        buffer.add(latents, labels)
    assert by_class(buffer) == {0: [([1.0] * 8, 1)], 1: [([1.0] * 8, 1)]}


def test_sampling_an_empty_buffer_or_nothing_raises_usage_error() -> None:
    buffer = ExStreamBuffer(max_samples=4)
    with pytest.raises(UsageError, match="empty replay buffer"):
        buffer.sample(1)
    buffer.add(torch.zeros(1, 3), torch.tensor([0]))
    with pytest.raises(UsageError, match="sample size must be positive"):
        buffer.sample(0)


@pytest.mark.parametrize("options", [{}, {"max_samples": -1}, {"max_bytes": -5}])
def test_missing_or_negative_limits_raise_usage_error(options: dict[str, int]) -> None:
    with pytest.raises(UsageError, match="max_samples|max_bytes"):
        ExStreamBuffer(**options)


def test_it_offers_everything_the_class_balanced_buffer_does_and_is_registered() -> None:
    public = {n for n in dir(ClassBalancedBuffer) if not n.startswith("_")} | {"__len__"}
    assert public <= set(dir(ExStreamBuffer))
    buffer = BUFFERS.create("exstream", max_samples=5, max_bytes=None,
                            codec=create_codec("fp32"), seed=0)
    assert isinstance(buffer, ExStreamBuffer)
    reference = ClassBalancedBuffer(max_samples=5)
    for b in (buffer, reference):
        b.add(torch.randn(3, 4), torch.tensor([0, 1, 1]))
    assert set(buffer.stats()) == set(reference.stats()) | {"buffer"}
