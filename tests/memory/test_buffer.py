"""The class-balanced latent replay buffer: within budget, balanced, faithful, reproducible."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from edgecl.errors import BudgetError, UsageError
from edgecl.memory import ClassBalancedBuffer


def tagged(labels: list[int], start: int, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Latents whose every value is the sample's stream position, so tests can trace them."""
    ids = torch.arange(start, start + len(labels), dtype=torch.float32)
    return ids[:, None].repeat(1, dim), torch.tensor(labels, dtype=torch.long)


def stream(buffer: ClassBalancedBuffer, labels: list[int], *, batch: int = 7, dim: int = 3
           ) -> list[int]:
    """Offer ``labels`` in batches; returns each sample's label, indexed by stream position."""
    for start in range(0, len(labels), batch):
        buffer.add(*tagged(labels[start:start + batch], start, dim))
    return labels


def stored_ids(buffer: ClassBalancedBuffer) -> list[int]:
    latents, _ = buffer.all()
    return [int(v) for v in latents[:, 0]]


def assert_faithful(buffer: ClassBalancedBuffer, labels: list[int]) -> None:
    """Every stored latent is an offered one, stored with its own label, and counted."""
    latents, stored_labels = buffer.all()
    ids = [int(v) for v in latents[:, 0]]
    assert len(set(ids)) == len(ids), "a sample is stored twice"
    assert [labels[i] for i in ids] == stored_labels.tolist()
    assert dict(Counter(stored_labels.tolist())) == buffer.class_counts()


label_streams = st.lists(st.integers(0, 5), min_size=1, max_size=120)


@settings(max_examples=50, deadline=None)
@given(labels=label_streams, batch=st.integers(1, 16), dim=st.integers(1, 24),
       max_fit=st.integers(1, 30), slack=st.integers(0, 100))
def test_allocated_bytes_never_exceed_the_byte_budget(labels: list[int], batch: int, dim: int,
                                                     max_fit: int, slack: int) -> None:
    budget = max_fit * (4 * dim + 2) + slack % (4 * dim + 2)  # room for max_fit latents
    buffer = ClassBalancedBuffer(max_bytes=budget, seed=1)
    for start in range(0, len(labels), batch):
        buffer.add(*tagged(labels[start:start + batch], start, dim))
        assert buffer.nbytes <= budget
        assert len(buffer) <= buffer.capacity
    assert buffer.capacity == max_fit  # the budget is used, not only respected
    assert len(buffer) == min(len(labels), max_fit)
    assert_faithful(buffer, labels)


@settings(max_examples=50, deadline=None)
@given(labels=label_streams, batch=st.integers(1, 16), capacity=st.integers(1, 40))
def test_size_never_exceeds_max_samples(labels: list[int], batch: int, capacity: int) -> None:
    buffer = ClassBalancedBuffer(max_samples=capacity, seed=2)
    for start in range(0, len(labels), batch):
        buffer.add(*tagged(labels[start:start + batch], start, 3))
        assert len(buffer) <= capacity
    assert buffer.capacity == capacity
    assert len(buffer) == min(len(labels), capacity)
    assert_faithful(buffer, labels)


@settings(max_examples=50, deadline=None)
@given(labels=label_streams, batch=st.integers(1, 16), capacity=st.integers(1, 40))
def test_a_class_below_the_largest_minus_one_keeps_everything_it_was_offered(
        labels: list[int], batch: int, capacity: int) -> None:
    # What the eviction rule promises: a class only loses samples (or has them refused) while it
    # is the largest, so a class that ends two or more below the largest lost nothing.
    buffer = ClassBalancedBuffer(max_samples=capacity, seed=3)
    stream(buffer, labels, batch=batch)
    counts = buffer.class_counts()
    offered = Counter(labels)
    largest = max(counts.values())
    for c, n in offered.items():
        assert counts.get(c, 0) == n or counts.get(c, 0) >= largest - 1, (c, counts, offered)


@pytest.mark.parametrize("order", ["shuffled", "one class after another"])
def test_classes_offered_more_than_their_share_end_balanced(order: str) -> None:
    # 5 classes with uneven frequencies, each offered more than capacity // 5 = 8 samples.
    labels = [c for c, n in enumerate([300, 120, 60, 25, 12]) for _ in range(n)]
    if order == "shuffled":
        labels = np.random.default_rng(0).permutation(labels).tolist()
    buffer = ClassBalancedBuffer(max_samples=40, seed=0)

    stream(buffer, labels, batch=10)

    assert buffer.class_counts() == {0: 8, 1: 8, 2: 8, 3: 8, 4: 8}
    assert_faithful(buffer, labels)


def test_rare_classes_keep_all_their_samples_and_frequent_ones_share_the_rest() -> None:
    # capacity 30: class 3 (5 samples) and class 4 (1 sample) keep everything; classes 0..2
    # split the remaining 24 within one of each other, however unevenly they were offered.
    labels = [0] * 400 + [1] * 100 + [2] * 40 + [3] * 5 + [4]
    labels = np.random.default_rng(1).permutation(labels).tolist()
    buffer = ClassBalancedBuffer(max_samples=30, seed=0)

    stream(buffer, labels, batch=8)

    counts = buffer.class_counts()
    assert counts[3] == 5 and counts[4] == 1
    assert sorted(counts[c] for c in (0, 1, 2)) == [8, 8, 8]


def test_a_class_seen_once_keeps_its_sample_until_there_are_more_classes_than_slots() -> None:
    buffer = ClassBalancedBuffer(max_samples=4, seed=0)
    buffer.add(*tagged([9], 0, 3))  # class 9, the sample with id 0
    labels = [9] + [0, 1, 2] * 100
    for i in range(1, len(labels), 5):
        buffer.add(*tagged(labels[i:i + 5], i, 3))
        assert 0 in stored_ids(buffer)  # 4 slots, 4 classes: the lone sample stays
    assert buffer.class_counts() == {0: 1, 1: 1, 2: 1, 9: 1}

    # A fifth class must take a slot from a class that holds only one: balance now evicts.
    buffer.add(*tagged([5], len(labels), 3))
    assert len(buffer) == 4 and buffer.class_counts()[5] == 1
    assert list(buffer.class_counts().values()) == [1, 1, 1, 1]


def test_each_class_keeps_a_uniform_sample_of_its_stream() -> None:
    # Reservoir sampling within a class: early and late samples are kept equally often.
    kept = np.zeros(100)
    for seed in range(200):
        buffer = ClassBalancedBuffer(max_samples=10, seed=seed)
        stream(buffer, [0] * 100, batch=10)
        kept[stored_ids(buffer)] += 1
    rate = kept / 200
    assert rate[:50].mean() == pytest.approx(0.1, abs=0.01)
    assert rate[50:].mean() == pytest.approx(0.1, abs=0.01)


def test_sample_returns_stored_latents_with_their_labels() -> None:
    buffer = ClassBalancedBuffer(max_samples=12, seed=0)
    labels = stream(buffer, [0, 1, 2, 3] * 10, dim=6)
    stored = set(stored_ids(buffer))

    latents, sampled_labels = buffer.sample(50, torch.Generator().manual_seed(0))

    assert latents.shape == (50, 6) and latents.dtype == torch.float32
    assert sampled_labels.shape == (50,) and sampled_labels.dtype == torch.long
    ids = [int(v) for v in latents[:, 0]]
    assert set(ids) <= stored
    assert sampled_labels.tolist() == [labels[i] for i in ids]


def test_image_latents_come_back_flattened() -> None:
    buffer = ClassBalancedBuffer(max_samples=5, seed=0)
    latents = torch.randn(3, 2, 4, 4)
    buffer.add(latents, torch.tensor([0, 1, 1]))
    stored, _ = buffer.all()
    assert torch.equal(stored, latents.reshape(3, 32))
    assert buffer.sample(4)[0].shape == (4, 32)


def test_same_seed_gives_the_same_buffer_and_samples() -> None:
    labels = np.random.default_rng(0).integers(0, 4, 300).tolist()

    def run(seed: int) -> tuple[list[int], torch.Tensor, torch.Tensor]:
        buffer = ClassBalancedBuffer(max_samples=20, seed=seed)
        stream(buffer, labels)
        return stored_ids(buffer), *buffer.sample(30, torch.Generator().manual_seed(5))

    first, second, other = run(7), run(7), run(8)
    assert first[0] == second[0]
    assert torch.equal(first[1], second[1]) and torch.equal(first[2], second[2])
    assert first[0] != other[0]  # the seed, not luck, decides which samples stay


def test_byte_budget_too_small_for_one_latent_raises_budget_error() -> None:
    buffer = ClassBalancedBuffer(max_bytes=4 * 10 + 1, seed=0)  # one latent needs 42 bytes
    with pytest.raises(BudgetError, match=r"41 bytes holds no latent of 10 values \(42 bytes"):
        buffer.add(torch.zeros(2, 10), torch.tensor([0, 1]))
    # Exactly one latent's worth is enough for one.
    buffer = ClassBalancedBuffer(max_bytes=42, seed=0)
    buffer.add(torch.zeros(2, 10), torch.tensor([0, 1]))
    assert len(buffer) == 1 and buffer.nbytes == 42


def test_stats_report_fp32_latent_bytes_plus_an_int16_label() -> None:
    buffer = ClassBalancedBuffer(max_samples=8, seed=0)
    assert buffer.stats()["n_stored"] == 0 and buffer.nbytes == 0
    buffer.add(torch.randn(5, 16), torch.tensor([0, 1, 2, 0, 1]))
    assert buffer.stats() == {
        "buffer_bytes": 8 * (4 * 16 + 2),  # allocated at full capacity at the first insert
        "bytes_per_sample": 4 * 16 + 2,
        "n_stored": 5,
        "capacity": 8,
        "codec": "fp32",
        "buffer": "class-balanced",
    }
    assert buffer.nbytes == 8 * 66


def test_sampling_an_empty_buffer_raises_usage_error() -> None:
    buffer = ClassBalancedBuffer(max_samples=4, seed=0)
    with pytest.raises(UsageError, match="empty replay buffer"):
        buffer.sample(1)


@pytest.mark.parametrize("options", [{}, {"max_samples": -1}, {"max_bytes": -5}])
def test_missing_or_negative_limits_raise_usage_error(options: dict[str, int]) -> None:
    with pytest.raises(UsageError, match="max_samples|max_bytes"):
        ClassBalancedBuffer(**options)


def test_latents_of_another_size_are_refused() -> None:
    buffer = ClassBalancedBuffer(max_samples=4, seed=0)
    buffer.add(torch.zeros(2, 8), torch.tensor([0, 1]))
    with pytest.raises(UsageError, match="latent has 9 values, buffer holds 8"):
        buffer.add(torch.zeros(2, 9), torch.tensor([0, 1]))
    assert len(buffer) == 2


def test_labels_beyond_int16_are_refused_rather_than_corrupted() -> None:
    buffer = ClassBalancedBuffer(max_samples=4, seed=0)
    try:
        buffer.add(torch.zeros(1, 3), torch.tensor([40000]))
    except UsageError:
        return
    assert buffer.all()[1].tolist() == [40000]


def test_zero_sample_capacity_error_names_the_sample_limit() -> None:
    buffer = ClassBalancedBuffer(max_samples=0, seed=0)
    with pytest.raises(BudgetError) as err:
        buffer.add(torch.zeros(1, 3), torch.tensor([0]))
    assert "None" not in str(err.value) and "max_samples" in str(err.value)
