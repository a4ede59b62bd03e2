"""How a streaming step weighs its new samples against replayed ones (``new_share``), and the
scheduler's default growth of replay with a generous budget."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_learner import _data  # three noisy blobs in 12 dimensions

from edgecl import Learner, LearnerConfig, UsageError
from edgecl.runtime import learner as learner_module
from edgecl.runtime.learner import GROWTH_FACTOR, _weighted_loss


def _learner(strategy: str = "latent-replay", **config) -> Learner:
    settings = {"pretrain_epochs": 2, "epochs": 1, **config}
    return Learner(strategy=strategy, input_shape=(12,), n_classes=3,
                   config=LearnerConfig(**settings), seed=0)


def _loss_and_grad(n_replay: int, share: float | None) -> tuple[float, torch.Tensor]:
    """A step's loss and gradient on one new sample and ``n_replay`` copies of one replayed
    sample: the replay term's estimate is exact whatever its size. ``share`` None: the
    plain mean."""
    generator = torch.Generator().manual_seed(0)
    layer = torch.nn.Linear(4, 3)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(3, 4, generator=generator))
        layer.bias.zero_()
    new, old = torch.randn(1, 4, generator=generator), torch.randn(1, 4, generator=generator)
    batch = torch.cat([new, old.expand(n_replay, 4)])
    targets = torch.tensor([0] + [2] * n_replay)
    loss = (F.cross_entropy(layer(batch), targets) if share is None
            else _weighted_loss(layer(batch), targets, n_new=1, new_share=share))
    loss.backward()
    return float(loss.detach()), layer.weight.grad.clone()


def test_the_share_of_new_data_does_not_depend_on_how_many_are_replayed():
    loss_8, grad_8 = _loss_and_grad(8, share=0.2)
    loss_64, grad_64 = _loss_and_grad(64, share=0.2)
    assert loss_8 == pytest.approx(loss_64, rel=1e-6)
    torch.testing.assert_close(grad_8, grad_64)
    # The plain mean, by contrast, gives the new sample 1/9 of the step, then 1/65.
    plain_8, plain_grad_8 = _loss_and_grad(8, share=None)
    plain_64, plain_grad_64 = _loss_and_grad(64, share=None)
    assert plain_8 != pytest.approx(plain_64, rel=1e-3)
    assert not torch.allclose(plain_grad_8, plain_grad_64)


def test_weighted_loss_is_the_share_weighted_sum_of_the_two_means():
    logits = torch.randn(5, 3, generator=torch.Generator().manual_seed(1))
    targets = torch.tensor([1, 0, 2, 2, 1])
    per_sample = F.cross_entropy(logits, targets, reduction="none")
    expected = 0.3 * per_sample[:2].mean() + 0.7 * per_sample[2:].mean()
    assert float(_weighted_loss(logits, targets, n_new=2, new_share=0.3)) == pytest.approx(
        float(expected))
    # No replayed samples: the new ones keep their share alone.
    assert float(_weighted_loss(logits[:2], targets[:2], n_new=2, new_share=0.3)) == (
        pytest.approx(0.3 * float(per_sample[:2].mean())))


@pytest.mark.parametrize("share", [0, 1, -0.5, 1.5, float("nan")])
def test_new_share_outside_zero_one_is_refused(share):
    with pytest.raises(UsageError, match="new_share"):
        LearnerConfig(new_share=share)


def test_share_defaults_follow_the_strategy_then_the_fixed_plan():
    replay = _learner("latent-replay")  # fixed plan: 1 new + 32 replayed
    assert replay._new_share(1, 32) is None  # the plain mean: fixed runs are unchanged
    assert replay._new_share(1, 128) == pytest.approx(1 / 33)
    assert replay._new_share(1, 0) == pytest.approx(1 / 33)
    assert replay.stream_new_share() == pytest.approx(1 / 33)
    assert replay.stream_new_share(8) == pytest.approx(8 / 40)
    ar1 = _learner("ar1*")
    assert ar1._new_share(1, 32) == ar1.strategy.step_plan.stream_new_share
    assert _learner("ar1*", new_share=0.5)._new_share(1, 32) == 0.5
    assert _learner("naive")._new_share(1, 0) is None  # nothing replayed, nothing to weigh


def test_scheduled_streaming_steps_use_the_share_as_replay_grows(monkeypatch):
    calls = []
    original = learner_module._weighted_loss

    def spy(logits, targets, *, n_new, new_share):
        calls.append((n_new, len(targets) - n_new, new_share))
        return original(logits, targets, n_new=n_new, new_share=new_share)

    monkeypatch.setattr(learner_module, "_weighted_loss", spy)
    x, y = _data()
    learner = _learner("latent-replay", update_budget_ms=1e6, replay_samples=96)
    learner.learn_many(x[:48], y[:48])  # experience mode: the plain mean, no spy call
    assert calls == []
    for i in range(48, 56):
        learner.learn_many(x[i:i + 1], y[i:i + 1], epochs=1)
    # A budget nothing reaches: the scheduler replays its cap, 4x the fixed plan's 32
    # (capped by what the buffer holds), and the new sample keeps its 1/33.
    assert learner.scheduler.max_replay_per_step == GROWTH_FACTOR * 32
    assert len(calls) == 8
    assert all(n_new == 1 and replayed > 32 and share == pytest.approx(1 / 33)
               for n_new, replayed, share in calls)


def test_a_replay_cap_in_the_config_replaces_the_growth_default():
    x, y = _data()
    learner = _learner("latent-replay", update_budget_ms=1e6, max_replay_per_step=16)
    learner.learn_many(x[:48], y[:48])
    assert learner.scheduler.max_replay_per_step == 16
