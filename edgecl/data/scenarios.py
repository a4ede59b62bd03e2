"""Scenarios: a dataset cut into a sequence of experiences that a learner sees one by one.

Every builder is deterministic under ``seed`` (one ``np.random.default_rng(seed)`` drives the
class order and every shuffle), uses each training sample exactly once, and gives each
experience the test samples of the classes present in its training data, so that row i of
an accuracy matrix measures what the learner knows after experience i.

``class-incremental``
    The classes are shuffled (``rng.permutation``) and cut into ``n_experiences`` groups as
    equal as possible (earlier groups get the extra class); experience i holds every training
    sample of group i. Needs ``n_classes >= n_experiences``.

``nic`` (new instances and classes, in the spirit of CORe50 NICv2; Lomonaco & Maltoni 2017)
    1. Shuffle the classes. The first ``max(1, n_classes // 2)`` form the first experience's
       classes; the remaining ones are cut into ``g = min(n_remaining, n_experiences - 1)``
       groups as equal as possible, and group j is introduced in experience
       ``1 + (j * (n_experiences - 1)) // g`` (spread evenly, one group per experience at most).
    2. Each class's training samples are shuffled. The experience that introduces the class
       gets ``max(1, round(first_fraction * n))`` of its n samples; the rest are split as
       evenly as possible over every later experience, as new instances of a known class.
       A class introduced in the last experience puts all its samples there.
    So every later experience mixes new instances of classes already seen with, in some
    experiences, classes never seen before. Needs ``n_experiences >= 2`` and 2+ classes.

``online``
    The same experiences as ``class-incremental`` (so accuracy matrices are comparable), with
    ``online=True``: the runtime consumes the training samples of each experience in order, one
    mini-batch of ``batch_size`` (1 by default) at a time, in a single pass, testing on each
    mini-batch before training on it (test-then-train, prequential accuracy).
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from edgecl.data.datasets import Dataset
from edgecl.errors import DataError, UsageError

DEFAULT_FIRST_FRACTION = 0.5  # half of a class's samples arrive with it, half come back later


@dataclass(frozen=True, eq=False)  # eq=False: comparing arrays elementwise has no single truth
class Experience:
    """One step of a scenario: training data to learn, and the test set to measure it on."""

    index: int
    x: np.ndarray  # training inputs of this experience, shuffled, (n, *input_shape)
    y: np.ndarray  # int64 (n,)
    x_test: np.ndarray  # test inputs of the classes in `classes`, (m, *input_shape)
    y_test: np.ndarray  # int64 (m,)
    classes: tuple[int, ...]  # sorted classes present in y
    new_classes: tuple[int, ...]  # classes that no earlier experience contained

    def __repr__(self) -> str:
        return (
            f"Experience(index={self.index}, n_train={len(self.y)}, n_test={len(self.y_test)}, "
            f"classes={self.classes}, new_classes={self.new_classes})"
        )


@dataclass(frozen=True, eq=False)
class Scenario:
    """A dataset cut into experiences, plus how the runtime should feed them."""

    name: str  # "class-incremental" | "nic" | "online"
    dataset: Dataset
    experiences: tuple[Experience, ...]
    class_order: tuple[int, ...]  # classes in the order they are introduced
    online: bool = False  # True: single pass, mini-batches of `batch_size`, test-then-train
    batch_size: int = 1  # used only when online; offline batch size is a training setting

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise UsageError(f"batch_size must be at least 1, got {self.batch_size}")

    @property
    def n_classes(self) -> int:
        return self.dataset.n_classes

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.dataset.input_shape

    @property
    def n_experiences(self) -> int:
        return len(self.experiences)

    def __repr__(self) -> str:
        return (
            f"Scenario(name={self.name!r}, dataset={self.dataset.name!r}, "
            f"n_experiences={self.n_experiences}, online={self.online}, "
            f"batch_size={self.batch_size})"
        )


def _check_count(value: object, *, what: str, minimum: int) -> int:
    try:
        if isinstance(value, bool):
            raise TypeError
        n = operator.index(value)  # accepts numpy ints, refuses floats
    except TypeError:
        raise UsageError(f"{what} must be a whole number, got {value!r}") from None
    if n < minimum:
        raise UsageError(f"{what} must be at least {minimum}, got {value!r}")
    return n


def _experiences(
    dataset: Dataset, parts: list[np.ndarray], rng: np.random.Generator
) -> tuple[Experience, ...]:
    """Build experiences from training-index sets, shuffling each and attaching its test set."""
    seen: set[int] = set()
    out = []
    for i, idx in enumerate(parts):
        if len(idx) == 0:
            raise DataError(
                f"dataset {dataset.name!r}: experience {i} would get no training samples; "
                "use fewer experiences"
            )
        idx = rng.permutation(idx)
        y = dataset.y_train[idx]
        classes = tuple(int(c) for c in np.unique(y))
        new = tuple(c for c in classes if c not in seen)
        seen.update(classes)
        in_test = np.isin(dataset.y_test, classes)
        out.append(
            Experience(
                i,
                dataset.x_train[idx],
                y,
                dataset.x_test[in_test],
                dataset.y_test[in_test],
                classes,
                new,
            )
        )
    return tuple(out)


def class_incremental(dataset: Dataset, *, n_experiences: int, seed: int = 0) -> Scenario:
    """Disjoint groups of classes, one group per experience (see the module docstring)."""
    n_experiences = _check_count(n_experiences, what="n_experiences", minimum=1)
    if dataset.n_classes < n_experiences:
        raise DataError(
            f"dataset {dataset.name!r} has {dataset.n_classes} classes, too few for "
            f"{n_experiences} class-incremental experiences; use at most {dataset.n_classes}"
        )
    rng = np.random.default_rng(seed)
    order = rng.permutation(dataset.n_classes)
    parts = [
        np.flatnonzero(np.isin(dataset.y_train, g)) for g in np.array_split(order, n_experiences)
    ]
    return Scenario(
        "class-incremental",
        dataset,
        _experiences(dataset, parts, rng),
        tuple(int(c) for c in order),
    )


def new_instances_and_classes(
    dataset: Dataset,
    *,
    n_experiences: int,
    seed: int = 0,
    first_fraction: float = DEFAULT_FIRST_FRACTION,
) -> Scenario:
    """New instances of known classes mixed with new classes (NICv2-like; module docstring).

    ``first_fraction`` is the share of a class's training samples given to the experience
    that introduces it; the rest return as new instances in the experiences after it.
    """
    n_experiences = _check_count(n_experiences, what="n_experiences", minimum=2)
    if not 0.0 < first_fraction < 1.0:
        raise UsageError(
            f"first_fraction must be between 0 and 1 (exclusive), got {first_fraction}"
        )
    k = dataset.n_classes
    if k < 2:
        raise DataError(f"dataset {dataset.name!r} has {k} class; the nic scenario needs 2 or more")
    rng = np.random.default_rng(seed)
    order = rng.permutation(k)
    n_first = max(1, k // 2)
    n_later = n_experiences - 1
    remaining = order[n_first:]
    n_groups = min(len(remaining), n_later)
    intro = np.zeros(k, dtype=np.int64)  # experience that introduces each class
    for j, group in enumerate(np.array_split(remaining, n_groups)):
        intro[group] = 1 + (j * n_later) // n_groups

    parts: list[list[np.ndarray]] = [[] for _ in range(n_experiences)]
    for c in order:
        idx = rng.permutation(np.flatnonzero(dataset.y_train == c))
        first = int(intro[c])
        n_after = n_experiences - 1 - first
        n_intro = (
            len(idx) if n_after == 0 else min(len(idx), max(1, round(first_fraction * len(idx))))
        )
        parts[first].append(idx[:n_intro])
        for j, chunk in enumerate(np.array_split(idx[n_intro:], n_after) if n_after else []):
            parts[first + 1 + j].append(chunk)
    merged = [np.concatenate(p) if p else np.empty(0, dtype=np.int64) for p in parts]
    return Scenario(
        "nic",
        dataset,
        _experiences(dataset, merged, rng),
        tuple(int(c) for c in order),
    )


def online_stream(
    dataset: Dataset, *, n_experiences: int, seed: int = 0, batch_size: int = 1
) -> Scenario:
    """The class-incremental experiences, fed once, ``batch_size`` samples at a time."""
    batch_size = _check_count(batch_size, what="batch_size", minimum=1)
    base = class_incremental(dataset, n_experiences=n_experiences, seed=seed)
    return replace(base, name="online", online=True, batch_size=batch_size)


_BUILDERS: dict[str, Callable[..., Scenario]] = {
    "class-incremental": class_incremental,
    "nic": new_instances_and_classes,
    "online": online_stream,
}


def list_scenarios() -> list[str]:
    """Names accepted by :func:`build_scenario`."""
    return sorted(_BUILDERS)


def build_scenario(
    name: str, dataset: Dataset, *, n_experiences: int, seed: int = 0, batch_size: int = 1
) -> Scenario:
    """Build a scenario by name; ``batch_size`` applies to ``online`` only."""
    builder = _BUILDERS.get(name)
    if builder is None:
        raise UsageError(f"unknown scenario {name!r}; use one of {', '.join(list_scenarios())}")
    if name == "online":
        return online_stream(dataset, n_experiences=n_experiences, seed=seed, batch_size=batch_size)
    if batch_size != 1:
        # Refuse rather than ignore: an offline scenario has no stream batch size to set.
        raise UsageError(
            f"batch_size applies only to the 'online' scenario, not {name!r}; drop it or use online"
        )
    return builder(dataset, n_experiences=n_experiences, seed=seed)
