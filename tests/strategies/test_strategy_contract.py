"""The contract every registered strategy keeps, and each strategy's own mechanism.

The stream: 4 Gaussian blobs in 16-d, learned class-incrementally in 2 experiences of 2 classes
({0, 1}, then {2, 3}). Tiny, so the whole file runs in a few seconds.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn

from edgecl import (
    BudgetError,
    CheckpointError,
    DataError,
    Learner,
    LearnerConfig,
    UsageError,
    list_strategies,
)
from edgecl.backbones import OrtRunner, check_parity, export_onnx
from edgecl.strategies.ar1 import AR1Star
from edgecl.strategies.baselines import Cumulative
from edgecl.strategies.synaptic_intelligence import SynapticIntelligence

LATENT_BYTES = 4 * 256 + 2  # mlp latent (relu1, 256 values) as fp32 plus an int16 label
CONFIG = LearnerConfig(pretrain_epochs=3, epochs=2, replay_samples=30,
                       replay_bytes=20 * LATENT_BYTES + 100)  # the byte limit binds: 20 latents


@dataclass(frozen=True)
class Experience:
    x: np.ndarray
    y: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def blobs(classes: list[int], n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    centers = np.random.default_rng(123).normal(0.0, 3.0, size=(4, 16))
    y = np.repeat(np.asarray(classes, dtype=np.int64), n)
    x = centers[y] + np.random.default_rng(seed).normal(0.0, 1.0, size=(len(y), 16))
    return x.astype(np.float32), y


STREAM = [Experience(*blobs(c, 40, seed=i), *blobs(c, 20, seed=10 + i))
          for i, c in enumerate([[0, 1], [2, 3]])]
LABELS = np.array([7, 107, 207, 307])  # the user's own labels for blobs 0..3


def make_learner(name: str, *, seed: int = 0) -> Learner:
    return Learner(strategy=name, input_shape=(16,), n_classes=4, config=CONFIG, seed=seed)


def learned(name: str, n_experiences: int = 2, *, seed: int = 0) -> Learner:
    learner = make_learner(name, seed=seed)
    for exp in STREAM[:n_experiences]:
        learner.learn_many(exp.x, exp.y)
    return learner


@pytest.fixture(scope="module")
def backbone_of_every_class(tmp_path_factory) -> str:
    """A network trained on all four classes: its output rows score every one of them."""
    teacher = make_learner("naive")
    teacher.learn_many(np.concatenate([e.x for e in STREAM]),
                       np.concatenate([e.y for e in STREAM]))
    path = tmp_path_factory.mktemp("backbone") / "all.pt"
    teacher.save_backbone(path)
    return str(path)


def accuracy(learner: Learner, exp: Experience) -> float:
    return learner.evaluate(exp.x_test, exp.y_test)


def head_state(learner: Learner) -> dict[str, torch.Tensor]:
    return copy.deepcopy(learner.head.state_dict())


def assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def with_value(x: np.ndarray, value: float) -> np.ndarray:
    x = x.copy()
    x[3, 5] = value
    return x


def with_label(y: np.ndarray, label: int) -> np.ndarray:
    y = y.copy()
    y[3] = label
    return y


BAD_INPUT: dict[str, Callable[[Learner, Experience], None]] = {
    "NaN input": lambda lr, e: lr.learn_many(with_value(e.x, np.nan), e.y),
    "infinite input": lambda lr, e: lr.learn_many(with_value(e.x, np.inf), e.y),
    "wrong shape": lambda lr, e: lr.learn_many(e.x[:, :15], e.y),
    "label out of range": lambda lr, e: lr.learn_many(e.x, with_label(e.y, 4)),
    "negative label": lambda lr, e: lr.learn_many(e.x, with_label(e.y, -1)),
    "float labels": lambda lr, e: lr.learn_many(e.x, e.y.astype(np.float32)),
    "string labels for integer classes": lambda lr, e: lr.learn_many(e.x, e.y.astype(str)),
    "one label short": lambda lr, e: lr.learn_many(e.x, e.y[:-1]),
    "empty batch": lambda lr, e: lr.learn_many(e.x[:0], e.y[:0]),
    "learn_one label out of range": lambda lr, e: lr.learn_one(e.x[0], 4),
    "learn_one NaN": lambda lr, e: lr.learn_one(with_value(e.x, np.nan)[3], 0),
}


@pytest.mark.parametrize("name", list_strategies())
class TestStrategyContract:
    def test_learns_each_experience_well_above_chance(self, name: str) -> None:
        learner = make_learner(name)
        for exp in STREAM:
            learner.learn_many(exp.x, exp.y)
            # Chance is 1/4; always answering one of the experience's classes gets 1/2.
            assert accuracy(learner, exp) >= 0.8

    def test_respects_the_replay_budget(self, name: str) -> None:
        learner = learned(name)
        buffer = learner.buffer
        if not learner.strategy.uses_replay:
            assert buffer is None
            assert learner.memory_stats()["buffer_bytes"] == 0
            return
        # fp32 latents fill the byte limit at 20; compact codecs hit the 30-sample cap.
        expected = 20 if learner.codec_name == "fp32" and name != "exstream" else None
        assert len(buffer) <= buffer.capacity <= CONFIG.replay_samples
        if expected is not None:
            assert buffer.capacity == expected
        assert buffer.nbytes <= CONFIG.replay_bytes
        assert learner.memory_stats()["buffer_bytes"] == buffer.nbytes
        # The memory holds the old experience's classes as much as the new one's.
        counts = buffer.class_counts()
        assert sorted(counts) == [0, 1, 2, 3]
        assert max(counts.values()) - min(counts.values()) <= 1

    def test_same_seed_gives_the_same_learner(self, name: str) -> None:
        first, second = learned(name), learned(name)
        x_test = np.concatenate([e.x_test for e in STREAM])
        assert np.array_equal(first.predict_many(x_test), second.predict_many(x_test))
        assert_same_state(first.head.state_dict(), second.head.state_dict())
        if first.buffer is not None:
            for a, b in zip(first.buffer.all(), second.buffer.all(), strict=True):
                assert torch.equal(a, b)

    @pytest.mark.parametrize("bad", BAD_INPUT)
    def test_bad_input_raises_data_error_and_changes_nothing(self, name: str, bad: str) -> None:
        learner = learned(name, 1)
        state, n_updates, n_steps = head_state(learner), learner.n_updates, learner.n_steps
        stored = learner.buffer.all() if learner.buffer is not None else None
        predictions = learner.predict_many(STREAM[0].x_test)

        with pytest.raises(DataError):
            BAD_INPUT[bad](learner, STREAM[1])

        assert_same_state(head_state(learner), state)
        assert (learner.n_updates, learner.n_steps) == (n_updates, n_steps)
        if stored is not None:
            for a, b in zip(learner.buffer.all(), stored, strict=True):
                assert torch.equal(a, b)
        assert np.array_equal(learner.predict_many(STREAM[0].x_test), predictions)

    def test_checkpoint_and_resume_continue_exactly(self, name: str, tmp_path) -> None:
        """Stopped after the first experience and resumed from disk in a new learner, it
        ends bitwise where an uninterrupted learner does."""
        reference = learned(name)
        first = learned(name, 1)
        first.save_checkpoint(tmp_path)
        resumed = make_learner(name)
        resumed.load_checkpoint(tmp_path)
        resumed.learn_many(STREAM[1].x, STREAM[1].y)
        want, got = reference.state_dict(), resumed.state_dict()
        assert want.keys() == got.keys()
        for key in want:
            if not key.startswith("timer."):
                assert torch.equal(want[key], got[key]), key

    def test_a_checkpoint_of_another_strategy_is_refused(self, name: str, tmp_path) -> None:
        other = "naive" if name != "naive" else "ar1*"
        learned(other, 1).save_checkpoint(tmp_path)
        learner = make_learner(name)
        before = learner.state_dict()
        with pytest.raises(CheckpointError, match="strategy"):
            learner.load_checkpoint(tmp_path)
        assert_same_state(learner.state_dict(), before)

    def test_exports_its_inference_path_to_onnx(self, name: str, tmp_path) -> None:
        learner = learned(name)
        full = nn.Sequential(learner.frozen, learner.head)
        path = export_onnx(full, tmp_path / "full.onnx", input_shape=learner.input_shape)
        parity = check_parity(full, path, samples=STREAM[1].x_test)
        assert parity.ok, parity
        onnx_pred = OrtRunner(path)(STREAM[1].x_test).argmax(1)
        if not learner.quantizes_eval:  # the codec is not part of the exported model
            assert np.array_equal(onnx_pred, learner.predict_many(STREAM[1].x_test))

    def test_never_predicts_a_class_it_has_not_learned(self, name: str,
                                                      backbone_of_every_class: str) -> None:
        """From a backbone whose output layer knows every class, after learning only the
        first experience, no prediction is a later class: their accuracy is exactly 0."""
        learner = make_learner(name)
        learner.load_backbone(backbone_of_every_class)
        learner.learn_many(STREAM[0].x, STREAM[0].y)
        x_all = np.concatenate([e.x_test for e in STREAM])
        assert set(learner.predict_many(x_all).tolist()) <= {0, 1}
        assert accuracy(learner, STREAM[1]) == 0.0

    def test_grows_a_row_for_a_label_that_arrives_mid_stream(
            self, name: str, monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
        """Without n_classes, a label first seen one sample at a time gets a new output row:
        the old rows bit for bit, the strategy's per-class state grown with them, the new
        class learned, and a checkpoint of the grown learner restored exactly."""
        learner = Learner(strategy=name, input_shape=(16,), config=CONFIG, seed=0)
        learner.learn_many(STREAM[0].x, LABELS[STREAM[0].y])
        assert learner.classes == [7, 107]
        old_rows = learner.head[-1].weight.detach().clone()
        at_growth: dict[str, torch.Tensor] = {}
        resized = learner.strategy.output_resized

        def spy(head: nn.Sequential) -> None:
            at_growth["rows"] = head[-1].weight.detach().clone()
            resized(head)

        monkeypatch.setattr(learner.strategy, "output_resized", spy)
        exp = STREAM[1]
        for x in exp.x[exp.y == 2]:
            learner.learn_one(x, 207)
        assert learner.classes == [7, 107, 207]
        assert torch.equal(at_growth["rows"][:2], old_rows)
        assert not at_growth["rows"][2].any()  # a new class starts at zero
        new = exp.y_test == 2
        assert learner.evaluate(exp.x_test[new], LABELS[exp.y_test[new]]) >= 0.6
        learner.save_checkpoint(tmp_path)
        restored = Learner.from_checkpoint(tmp_path)
        want, got = learner.state_dict(), restored.state_dict()
        assert want.keys() == got.keys()
        for key in want:
            if not key.startswith("timer."):
                assert torch.equal(want[key], got[key]), key

    def test_streaming_updates_fit_a_budget_and_report_it(self, name: str) -> None:
        learner = Learner(strategy=name, input_shape=(16,), n_classes=4, seed=0,
                          config=dataclasses.replace(CONFIG, update_budget_ms=50.0))
        learner.learn_many(STREAM[0].x, STREAM[0].y)
        for x, y in zip(STREAM[1].x[:20], STREAM[1].y[:20], strict=True):
            learner.learn_one(x, int(y))
        stats = learner.scheduler.stats()
        assert stats["n_plans"] == 20 and sum(stats["by_category"].values()) == 20
        # Every update either ran (and was measured) or was deferred, and says so.
        # (cumulative retrains on all it has seen: its updates outgrow the budget.)
        skipped = stats["by_category"]["nothing fits"]
        assert stats["n_observed"] + skipped == 20
        assert stats["n_deferred_total"] >= skipped
        if learner.buffer is None:
            assert stats["mean_replay_per_step"] == 0
        else:  # a generous budget is spent on replay
            assert stats["mean_replay_per_step"] > 0

    def test_a_memory_budget_too_small_for_its_state_refuses_to_start(self, name: str
                                                                      ) -> None:
        probe = make_learner(name)
        planned = probe.planned_state_bytes
        config = dataclasses.replace(CONFIG, memory_bytes=max(sum(planned.values()) - 1, 0))
        if not planned and not probe.strategy.uses_replay:
            return  # no state planned (cumulative's grows with an unknown stream), no replay
        with pytest.raises(BudgetError) as error:
            Learner(strategy=name, input_shape=(16,), n_classes=4, config=config)
        if planned:
            assert next(iter(planned)) in str(error.value)


def test_naive_forgets_the_first_experience_far_more_than_replay_and_ar1() -> None:
    def forgetting(name: str) -> float:
        learner = learned(name, 1)
        before = accuracy(learner, STREAM[0])
        # The blobs are far apart: with only 2 passes naive sometimes has not yet overwritten
        # the old classes; 4 passes make its forgetting reliable across seeds (0.5 to 0.85).
        learner.learn_many(STREAM[1].x, STREAM[1].y, epochs=4)
        return before - accuracy(learner, STREAM[0])

    assert forgetting("naive") >= 0.4
    for name in ("latent-replay", "ar1*"):
        assert forgetting(name) <= 0.1, name


@pytest.mark.parametrize("name", ["cwr", "cwr*"])
def test_cwr_family_only_changes_the_output_layer_after_the_first_update(name: str) -> None:
    learner = learned(name, 1)
    before = head_state(learner)

    learner.learn_many(STREAM[1].x, STREAM[1].y)

    after = head_state(learner)
    hidden = [k for k in before if not k.startswith("output.")]
    assert hidden, "the mlp head has hidden layers"
    assert_same_state({k: after[k] for k in hidden}, {k: before[k] for k in hidden})
    # Rows of classes outside the batch keep their consolidated weights; the batch's change.
    w0, w1 = before["output.weight"], after["output.weight"]
    assert torch.equal(w1[[0, 1]], w0[[0, 1]])
    assert not torch.equal(w1[[2, 3]], w0[[2, 3]])


def test_ar1_si_penalty_is_zero_until_consolidated_then_pulls_moved_params_back(
        monkeypatch: pytest.MonkeyPatch) -> None:
    learner = make_learner("ar1*")
    strategy: AR1Star = learner.strategy
    penalties: list[list[float]] = []
    real_penalty = strategy.penalty

    def recording_penalty(head: nn.Sequential) -> torch.Tensor | None:
        value = real_penalty(head)
        penalties[-1].append(float(value.detach()))
        return value

    monkeypatch.setattr(strategy, "penalty", recording_penalty)
    for exp in STREAM:
        penalties.append([])
        learner.learn_many(exp.x, exp.y)

    first, second = penalties
    # No importance before the first consolidation, however far the hidden params move.
    assert first and all(p == 0.0 for p in first)
    # The first step of the second update starts at the anchor; later ones have moved.
    assert second[0] == pytest.approx(0.0, abs=1e-12)
    assert max(second) > 0.0
    assert any(bool((imp > 0).any()) for imp in strategy.si.importance.values())


def test_cumulative_trains_on_everything_seen_so_far() -> None:
    strategy = Cumulative()
    x1, y1 = torch.randn(3, 4), torch.tensor([0, 1, 0])
    x2, y2 = torch.randn(2, 4), torch.tensor([2, 2])
    x1_before = x1.clone()

    first = strategy.training_data(x1, y1)
    second = strategy.training_data(x2, y2)

    assert torch.equal(first[0], x1) and torch.equal(first[1], y1)
    assert torch.equal(second[0], torch.cat([x1, x2]))
    assert torch.equal(second[1], torch.tensor([0, 1, 0, 2, 2]))
    assert torch.equal(x1, x1_before)
    assert strategy.state_bytes() == 5 * 4 * 4 + 5 * 8  # float32 latents, int64 labels


def test_si_importance_is_non_negative_and_clipped_at_max_importance() -> None:
    p = nn.Parameter(torch.zeros(4))
    si = SynapticIntelligence({"p": p}, strength=2.0, xi=1e-3, max_importance=1.0)
    si.begin()
    # One optimizer-like step: gradient g, then a move delta.
    p.grad = torch.tensor([1.0, -1.0, 1.0, 0.1])
    with torch.no_grad():
        p.add_(torch.tensor([-0.1, 0.1, 0.1, -0.001]))
    si.after_step()
    si.end()
    # path = -g * delta = (0.1, 0.1, -0.1, 1e-4); change = delta
    # gain = max(path, 0) / (change**2 + xi):
    #   p0, p1: 0.1 / (0.01 + 0.001) = 9.09 -> clipped at 1
    #   p2: moved against its gradient: path < 0 -> 0, never negative
    #   p3: 1e-4 / (1e-6 + 1e-3) = 0.0999
    expected = torch.tensor([1.0, 1.0, 0.0, 1e-4 / (1e-6 + 1e-3)])
    assert torch.allclose(si.importance["p"], expected)

    # The penalty anchors at the params the update ended with.
    assert float(si.penalty().detach()) == 0.0
    with torch.no_grad():
        p.add_(0.5)
    # strength * sum(I * 0.5**2) = 2 * 0.25 * (1 + 1 + 0 + 0.0999)
    assert float(si.penalty().detach()) == pytest.approx(2 * 0.25 * float(expected.sum()))

    # A second update cannot push importance past the clip.
    si.begin()
    p.grad = torch.ones(4)
    with torch.no_grad():
        p.sub_(0.1)
    si.after_step()
    si.end()
    assert float(si.importance["p"].max()) == 1.0
    assert float(si.importance["p"].min()) >= 0.0


def test_ar1_importances_stay_within_the_clip_on_a_real_stream() -> None:
    learner = learned("ar1*")
    importances = torch.cat([imp.flatten() for imp in learner.strategy.si.importance.values()])
    assert float(importances.min()) >= 0.0
    assert float(importances.max()) <= learner.strategy.si_max_importance


# -- runtime edge cases -------------------------------------------------------------------


@pytest.mark.parametrize("call", ["learn_one", "33 samples: 32 + 1"])
def test_plain_batchnorm_head_learns_a_one_sample_mini_batch(call: str) -> None:
    config = dataclasses.replace(CONFIG, batch_renorm=False)
    learner = Learner(strategy="naive", input_shape=(16,), n_classes=4, config=config, seed=0)
    learner.learn_many(STREAM[0].x, STREAM[0].y)
    exp = STREAM[1]
    if call == "learn_one":
        learner.learn_one(exp.x[0], int(exp.y[0]))
    else:
        pick = np.random.default_rng(0).permutation(len(exp.y))[:33]
        learner.learn_many(exp.x[pick], exp.y[pick])
    assert learner.n_updates == 2


def test_predicting_before_learning_is_a_usage_error() -> None:
    with pytest.raises(UsageError):
        make_learner("naive").predict_many(STREAM[0].x_test)


def test_a_replay_budget_too_small_fails_before_training() -> None:
    config = dataclasses.replace(CONFIG, replay_bytes=100)  # one latent needs 1026
    with pytest.raises(BudgetError, match="1026 bytes"):
        Learner(strategy="latent-replay", input_shape=(16,), n_classes=4, config=config,
                seed=0)


def test_zero_epochs_is_refused() -> None:
    learner = learned("naive", 1)
    with pytest.raises(UsageError, match="epochs"):
        learner.learn_many(STREAM[1].x, STREAM[1].y, epochs=0)
