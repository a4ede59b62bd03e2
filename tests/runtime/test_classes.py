"""The learner's classes: the user's labels, output rows that grow, classes never learned.

Four Gaussian blobs in 16-d; the user's labels are 7, 107, 207, 307 or "cat", "dog", ...
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from edgecl import BudgetError, CheckpointError, DataError, Learner, LearnerConfig, UsageError

CONFIG = LearnerConfig(pretrain_epochs=3, epochs=2, replay_samples=20)
INTS = np.array([7, 107, 207, 307])
STRINGS = np.array(["cat", "dog", "owl", "emu"])


def blobs(classes: list[int], n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    centers = np.random.default_rng(123).normal(0.0, 3.0, size=(4, 16))
    y = np.repeat(np.asarray(classes), n)
    x = centers[y] + np.random.default_rng(seed).normal(0.0, 1.0, size=(len(y), 16))
    return x.astype(np.float32), y


def growing(strategy: str = "latent-replay", names: np.ndarray = STRINGS, **config) -> Learner:
    """A learner without n_classes, past a first batch of the first two classes."""
    learner = Learner(strategy=strategy, input_shape=(16,), seed=0,
                      config=dataclasses.replace(CONFIG, **config))
    x, y = blobs([0, 1], 30, seed=0)
    learner.learn_many(x, names[y])
    return learner


def snapshot(learner: Learner) -> dict[str, torch.Tensor]:
    return {k: v for k, v in learner.state_dict().items() if not k.startswith("timer.")}


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_the_first_batch_pretrains_with_only_its_classes_and_predicts_the_users_labels():
    learner = growing()
    assert learner.classes == ["cat", "dog"] and learner.head[-1].weight.shape == (2, 128)
    x, y = blobs([0, 1], 10, seed=5)
    predicted = learner.predict_many(x)
    assert predicted.dtype.kind == "U" and set(predicted) <= {"cat", "dog"}
    assert learner.evaluate(x, STRINGS[y]) >= 0.9
    assert learner.predict_one(x[0]) in ("cat", "dog") and type(learner.predict_one(x[0])) is str
    ints = growing(names=INTS)
    assert ints.predict_many(x).dtype == np.int64 and type(ints.predict_one(x[0])) is int


@pytest.mark.parametrize("strategy", ["cwr", "cwr*"])  # no replay: old classes sit out
def test_cwr_state_grows_a_zero_row_and_keeps_the_consolidated_ones(strategy):
    learner = growing(strategy)
    cw_before = learner.strategy.consolidated.weight.clone()
    past_before = learner.strategy.consolidated.past.clone()
    x, _ = blobs([2], 1, seed=1)
    learner.learn_one(x[0], "owl")
    cw, past = learner.strategy.consolidated.weight, learner.strategy.consolidated.past
    assert cw.shape == (3, 128) and learner.head[-1].weight.shape == (3, 128)
    # Classes outside the batch keep their consolidated rows and counts; the new one has
    # its first sample counted and a row consolidated from it.
    assert torch.equal(cw[:2], cw_before) and torch.equal(past[:2], past_before)
    assert past[2] == 1 and cw[2].abs().sum() > 0


def test_a_growth_beyond_the_memory_budget_fails_cleanly_and_changes_nothing():
    probe = growing("ar1*")
    used = sum(probe.planned_state_bytes.values()) + probe.buffer.nbytes
    # Room for the two classes there are and not for a third.
    learner = growing("ar1*", memory_bytes=used + 100)
    before, predictions = snapshot(learner), learner.predict_many(blobs([0, 1], 5, 9)[0])
    x, _ = blobs([2], 4, seed=1)
    with pytest.raises(BudgetError, match=r"new class 'owl'.*output layer.*memory budget"):
        learner.learn_many(x, np.array(["owl", "owl", "cat", "owl"]))
    assert learner.classes == ["cat", "dog"]
    assert_same(snapshot(learner), before)
    assert np.array_equal(learner.predict_many(blobs([0, 1], 5, 9)[0]), predictions)
    # Known labels still learn within the budget; a budget with room lets the class in.
    learner.learn_many(x[:2], np.array(["cat", "dog"]))
    roomy = growing("ar1*", memory_bytes=used + 10_000)
    roomy.learn_many(x, np.array(["owl"] * 4))
    assert roomy.classes == ["cat", "dog", "owl"]


def test_a_call_that_grew_and_then_failed_leaves_the_classes_it_had(monkeypatch):
    learner = growing("cwr*")
    before = snapshot(learner)
    monkeypatch.setattr(learner, "_latents", lambda x: torch.full((len(x), 128), np.nan))
    x, _ = blobs([2], 3, seed=1)
    with pytest.raises(DataError, match="NaN or infinite latents"):
        learner.learn_many(x, np.array(["owl"] * 3))
    assert learner.classes == ["cat", "dog"]
    assert_same(snapshot(learner), before)


def test_a_fixed_learner_refuses_labels_outside_its_classes_and_wrong_kinds():
    x, y = blobs([0, 1], 5, seed=0)
    old = Learner(strategy="naive", input_shape=(16,), n_classes=4, config=CONFIG)
    with pytest.raises(DataError, match=r"labels must be in 0\.\.3, got 0\.\.4"):
        old.learn_many(x, np.where(y == 1, 4, 0))
    named = Learner(strategy="naive", input_shape=(16,), n_classes=2, classes=[7, 107],
                    config=CONFIG)
    with pytest.raises(DataError, match=r"label 207 is not one of this learner's 2 classes"):
        named.learn_many(x, np.where(y == 1, 207, 7))
    with pytest.raises(DataError, match="strings"):
        named.learn_many(x, STRINGS[y])
    named.learn_many(x, INTS[y])
    with pytest.raises(DataError, match="label 207"):
        named.evaluate(x, np.full(len(x), 207))


def test_a_growing_learner_scores_a_label_it_does_not_know_as_wrong():
    learner = growing()
    x, _ = blobs([2], 5, seed=3)
    assert learner.evaluate(x, np.array(["owl"] * 5)) == 0.0
    assert learner.classes == ["cat", "dog"]  # evaluating learns nothing, grows nothing


def test_no_class_is_predicted_before_it_has_a_learned_sample():
    """Classes given up front have rows from the start; until one has a learned sample,
    no prediction may be that class, whatever its row scores."""
    learner = Learner(strategy="cwr*", input_shape=(16,), classes=["cat", "dog", "owl"],
                      config=CONFIG, seed=0)
    x, y = blobs([0, 1], 30, seed=0)
    learner.learn_many(x, STRINGS[y])
    with torch.no_grad():
        learner.head[-1].weight[2] = 100.0  # the unlearned row wins every raw argmax
    x_all = blobs([0, 1, 2, 3], 10, seed=4)[0]
    assert set(learner.predict_many(x_all)) <= {"cat", "dog"}
    assert list(learner.learned_rows) == [0, 1]


@pytest.mark.parametrize("names", [INTS, STRINGS], ids=["ints", "strings"])
def test_a_grown_learner_restores_bit_for_bit_and_refuses_another_learners_classes(
        tmp_path, names):
    learner = growing("ar1*", names=names)
    x, y = blobs([2, 3], 6, seed=1)
    for xi, yi in zip(x, names[y], strict=True):
        learner.learn_one(xi, yi)
    learner.save_checkpoint(tmp_path)
    restored = Learner.from_checkpoint(tmp_path)  # built with no rows, regrown before loading
    assert restored.classes == learner.classes == list(names)
    assert_same(snapshot(restored), snapshot(learner))
    x_test = blobs([0, 1, 2, 3], 5, seed=7)[0]
    assert np.array_equal(restored.predict_many(x_test), learner.predict_many(x_test))
    # Both keep learning the same way.
    for lr in (learner, restored):
        lr.learn_one(x[0], names[2])
    assert_same(snapshot(restored), snapshot(learner))
    other = Learner(strategy="ar1*", input_shape=(16,), n_classes=4, classes=list(names[::-1]),
                    config=CONFIG, seed=0)
    before = snapshot(other)
    with pytest.raises(CheckpointError):
        other.load_checkpoint(tmp_path)
    assert_same(snapshot(other), before)


@pytest.mark.filterwarnings("ignore:update budget too small")
def test_a_scheduled_stream_grows_too():
    learner = growing("latent-replay", update_budget_ms=50.0)
    x, _ = blobs([2], 10, seed=2)
    for xi in x:
        learner.learn_one(xi, "owl")
    assert learner.classes == ["cat", "dog", "owl"]
    stats = learner.scheduler.stats()
    assert stats["n_plans"] == 10 and stats["n_observed"] >= 1


@pytest.mark.filterwarnings("ignore:update budget too small")
def test_a_pretrained_learner_starts_with_no_class_and_grows_one_sample_at_a_time():
    learner = Learner(strategy="cwr*", input_shape=(16,), pretrained=True, seed=0,
                      config=dataclasses.replace(CONFIG, update_budget_ms=50.0))
    assert learner.head[-1].weight.shape == (0, 128)  # the scheduler prices it anyway
    x, y = blobs([0, 1, 2], 4, seed=0)
    for xi, yi in zip(x, STRINGS[y], strict=True):
        learner.learn_one(xi, yi)
    assert learner.classes == ["cat", "dog", "owl"]


def test_backbone_weights_load_into_a_growing_learner_that_names_their_rows(tmp_path):
    fixed = Learner(strategy="naive", input_shape=(16,), n_classes=3, config=CONFIG)
    x, y = blobs([0, 1, 2], 10, seed=0)
    fixed.learn_many(x, y)
    fixed.save_backbone(tmp_path / "net.pt")
    with pytest.raises(UsageError, match=r"pass classes=\[\.\.\.\]"):
        Learner(strategy="naive", input_shape=(16,)).load_backbone(tmp_path / "net.pt")
    named = Learner(strategy="naive", input_shape=(16,), classes=["cat", "dog", "owl"])
    named.load_backbone(tmp_path / "net.pt")
    named.learn_one(x[0], "emu")  # and it still grows
    assert named.classes == ["cat", "dog", "owl", "emu"]
