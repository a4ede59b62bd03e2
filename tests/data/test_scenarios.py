"""Scenario builders: how a dataset is cut into experiences."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgecl.data import (
    Dataset,
    Scenario,
    build_scenario,
    class_incremental,
    list_scenarios,
    load_dataset,
    new_instances_and_classes,
    online_stream,
)
from edgecl.errors import DataError, UsageError


def toy(y_train, y_test=None, *, name: str = "toy") -> Dataset:
    """A dataset whose x holds each sample's index, so tests can track where samples go."""
    y_train = np.asarray(y_train, dtype=np.int64)
    y_test = np.asarray(y_train if y_test is None else y_test, dtype=np.int64)
    k = int(max(y_train.max(), y_test.max())) + 1
    x_train = np.arange(len(y_train), dtype=np.float32)[:, None]
    x_test = -1.0 - np.arange(len(y_test), dtype=np.float32)[:, None]  # negative: test ids
    return Dataset(name, x_train, y_train, x_test, y_test, tuple(range(k)))


@pytest.fixture(scope="module")
def ten_classes() -> Dataset:
    rng = np.random.default_rng(0)
    return toy(rng.permutation(np.repeat(np.arange(10), 40)), np.repeat(np.arange(10), 7))


def train_ids(s: Scenario) -> np.ndarray:
    return np.concatenate([e.x[:, 0] for e in s.experiences]).astype(int)


def assert_each_training_sample_once(s: Scenario) -> None:
    assert sorted(train_ids(s)) == list(range(len(s.dataset.y_train)))


def assert_consistent(s: Scenario) -> None:
    """Labels follow their samples; each test set is exactly the test data of its classes."""
    d = s.dataset
    for i, e in enumerate(s.experiences):
        assert e.index == i
        np.testing.assert_array_equal(e.y, d.y_train[e.x[:, 0].astype(int)])
        assert e.classes == tuple(sorted(set(e.y.tolist())))
        expected_test = np.flatnonzero(np.isin(d.y_test, e.classes))
        np.testing.assert_array_equal(np.sort(-1 - e.x_test[:, 0].astype(int)), expected_test)
        np.testing.assert_array_equal(e.y_test, d.y_test[-1 - e.x_test[:, 0].astype(int)])


# -------------------------------------------------------------------------- class-incremental


def test_class_incremental_gives_disjoint_class_groups_covering_all_classes(ten_classes) -> None:
    s = class_incremental(ten_classes, n_experiences=4, seed=0)
    assert s.name == "class-incremental" and not s.online
    groups = [set(e.classes) for e in s.experiences]
    assert [len(g) for g in groups] == [3, 3, 2, 2]  # as equal as possible
    assert set().union(*groups) == set(range(10)) and sum(map(len, groups)) == 10
    assert all(e.new_classes == e.classes for e in s.experiences)
    assert sorted(s.class_order) == list(range(10))
    order = s.class_order  # experiences follow the shuffled class order
    assert [e.classes for e in s.experiences] == [
        tuple(sorted(order[a:b])) for a, b in ((0, 3), (3, 6), (6, 8), (8, 10))
    ]
    assert_each_training_sample_once(s)
    assert_consistent(s)


def test_class_incremental_needs_as_many_classes_as_experiences(ten_classes) -> None:
    with pytest.raises(DataError, match="has 10 classes.*use at most 10"):
        class_incremental(ten_classes, n_experiences=11)


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "3"])
def test_n_experiences_must_be_a_positive_whole_number(ten_classes, bad) -> None:
    with pytest.raises(UsageError, match="n_experiences"):
        class_incremental(ten_classes, n_experiences=bad)


def test_experience_training_data_is_shuffled_not_sorted_by_class(ten_classes) -> None:
    e = class_incremental(ten_classes, n_experiences=2, seed=0).experiences[0]
    assert not np.all(np.diff(e.y) >= 0)


@settings(max_examples=60, deadline=None)
@given(
    labels=st.lists(st.integers(0, 5), min_size=1, max_size=40),
    n_experiences=st.integers(1, 6),
    seed=st.integers(0, 2**16),
)
def test_class_incremental_partitions_the_training_set_exactly(labels, n_experiences, seed):
    y = np.asarray(labels)
    present = np.unique(y)
    y = np.searchsorted(present, y)  # contiguous labels 0..K-1, every class present
    k = len(present)
    d = toy(y)
    if n_experiences > k:
        with pytest.raises(DataError):
            class_incremental(d, n_experiences=n_experiences, seed=seed)
        return
    s = class_incremental(d, n_experiences=n_experiences, seed=seed)
    assert len(s.experiences) == n_experiences
    assert_each_training_sample_once(s)
    seen: set[int] = set()
    for e in s.experiences:
        assert not seen & set(e.classes)
        seen |= set(e.classes)
    assert seen == set(range(k))
    assert_consistent(s)


# -------------------------------------------------------------------------------------- nic


def test_nic_starts_with_some_classes_and_mixes_new_instances_and_classes(ten_classes) -> None:
    s = new_instances_and_classes(ten_classes, n_experiences=6, seed=0)
    assert s.name == "nic"
    first, later = s.experiences[0], s.experiences[1:]
    assert len(first.classes) == 5  # about half, a proper subset
    assert_each_training_sample_once(s)
    assert_consistent(s)
    # Every later experience brings back instances of classes already seen...
    assert all(set(e.classes) - set(e.new_classes) for e in later)
    # ...and the remaining classes arrive one group per experience, in class_order.
    assert all(len(e.new_classes) == 1 for e in later)
    assert [c for e in s.experiences for c in e.new_classes] == sorted(s.class_order[:5]) + list(
        s.class_order[5:]
    )
    assert set().union(*(e.classes for e in s.experiences)) == set(range(10))


def test_nic_first_experience_gets_first_fraction_of_its_classes(ten_classes) -> None:
    s = new_instances_and_classes(ten_classes, n_experiences=3, seed=1, first_fraction=0.25)
    first = s.experiences[0]
    assert np.all(np.bincount(first.y, minlength=10)[list(first.classes)] == 10)  # 25% of 40


def test_nic_spreads_class_introductions_when_experiences_outnumber_them() -> None:
    d = toy(np.repeat(np.arange(4), 30))  # 2 first classes, 2 to introduce over 5 experiences
    s = new_instances_and_classes(d, n_experiences=6, seed=0)
    introducing = [e.index for e in s.experiences[1:] if e.new_classes]
    assert introducing == [1, 3]
    assert_each_training_sample_once(s)
    assert all(len(e.y) > 0 for e in s.experiences)


def test_nic_refuses_a_single_experience_and_bad_fraction(ten_classes) -> None:
    with pytest.raises(UsageError, match="n_experiences must be at least 2"):
        new_instances_and_classes(ten_classes, n_experiences=1)
    with pytest.raises(UsageError, match="first_fraction"):
        new_instances_and_classes(ten_classes, n_experiences=3, first_fraction=1.0)


def test_too_many_experiences_for_the_data_is_a_data_error() -> None:
    d = toy([0, 0, 1, 1])
    with pytest.raises(DataError, match="would get no training samples; use fewer experiences"):
        new_instances_and_classes(d, n_experiences=4)


# ----------------------------------------------------------------------------------- online


def test_online_is_class_incremental_fed_in_mini_batches(ten_classes) -> None:
    s = online_stream(ten_classes, n_experiences=5, seed=3, batch_size=4)
    ci = class_incremental(ten_classes, n_experiences=5, seed=3)
    assert s.name == "online" and s.online and s.batch_size == 4
    assert s.class_order == ci.class_order
    for a, b in zip(s.experiences, ci.experiences, strict=True):
        np.testing.assert_array_equal(a.x, b.x)
        np.testing.assert_array_equal(a.y_test, b.y_test)
    assert online_stream(ten_classes, n_experiences=5).batch_size == 1


def test_online_batch_size_must_be_positive(ten_classes) -> None:
    with pytest.raises(UsageError, match="batch_size must be at least 1"):
        online_stream(ten_classes, n_experiences=2, batch_size=0)


# --------------------------------------------------------------------------- build_scenario


def test_list_scenarios() -> None:
    assert list_scenarios() == ["class-incremental", "nic", "online"]


@pytest.mark.parametrize("name", ["class-incremental", "nic", "online"])
def test_same_seed_same_arrays_other_seed_other_split(ten_classes, name: str) -> None:
    a, b, c = (build_scenario(name, ten_classes, n_experiences=3, seed=s) for s in (7, 7, 8))
    assert a.name == name and a.n_classes == 10 and a.input_shape == (1,)
    for ea, eb in zip(a.experiences, b.experiences, strict=True):
        np.testing.assert_array_equal(ea.x, eb.x)
        np.testing.assert_array_equal(ea.y, eb.y)
        np.testing.assert_array_equal(ea.x_test, eb.x_test)
    assert not all(
        np.array_equal(ea.x, ec.x) for ea, ec in zip(a.experiences, c.experiences, strict=True)
    )


def test_unknown_scenario_lists_the_names(ten_classes) -> None:
    with pytest.raises(UsageError, match="unknown scenario 'nicv2'; use one of class-incremental"):
        build_scenario("nicv2", ten_classes, n_experiences=2)


def test_batch_size_is_refused_for_offline_scenarios(ten_classes) -> None:
    with pytest.raises(UsageError, match="only to the 'online' scenario"):
        build_scenario("nic", ten_classes, n_experiences=2, batch_size=8)


def test_real_dataset_class_incremental_test_sets_cover_the_test_set_once() -> None:
    d = load_dataset("digits", seed=0)
    s = build_scenario("class-incremental", d, n_experiences=5, seed=0)
    assert sum(len(e.y_test) for e in s.experiences) == len(d.y_test)
    assert sum(len(e.y) for e in s.experiences) == len(d.y_train)
    assert all(e.x.shape[1:] == (1, 8, 8) and e.x.dtype == np.float32 for e in s.experiences)
