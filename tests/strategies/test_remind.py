"""REMIND's own mechanisms: one new sample and 50 replayed per step, mixup of replayed latents."""

from __future__ import annotations

import torch

from edgecl.strategies.remind import Remind


def test_one_new_sample_and_fifty_replayed_per_step_in_one_pass():
    plan = Remind().step_plan
    assert (plan.new_per_step, plan.replay_per_step, plan.epochs) == (1, 50, 1)


def test_mixup_mixes_only_replayed_latents_into_matching_soft_targets():
    strategy = Remind(mixup_alpha=0.4)
    strategy.configure(torch.nn.Sequential(torch.nn.Linear(11, 5, bias=False)))
    # Latent i is the unit vector e_i, so a mixed row shows which rows it mixes, and how.
    latents = torch.eye(11)
    labels = torch.tensor([4, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1])
    mixed, targets = strategy.augment(latents, labels, n_new=1,
                                      generator=torch.Generator().manual_seed(0))
    assert targets.shape == (11, 5)
    assert torch.allclose(targets.sum(dim=1), torch.ones(11))
    # The new sample is untouched, with a one-hot target.
    assert torch.equal(mixed[0], latents[0]) and targets[0, 4] == 1
    expected = torch.zeros(10, 5)
    for i, row in enumerate(mixed[1:]):
        assert row[0] == 0  # never mixed with the new sample
        assert (row >= 0).all() and torch.isclose(row.sum(), torch.tensor(1.0))
        # row = lam * e_a + (1 - lam) * e_b: the same weights go to the labels of a and b.
        for j in torch.nonzero(row).flatten():
            expected[i, labels[j]] += row[j]
    assert torch.allclose(targets[1:], expected, atol=1e-6)
    assert not torch.equal(mixed[1:], latents[1:])  # something was mixed


def test_mixup_off_leaves_the_batch_alone():
    strategy = Remind()
    strategy.configure(torch.nn.Sequential(torch.nn.Linear(6, 5, bias=False)))
    latents, labels = torch.randn(5, 6), torch.tensor([0, 1, 2, 3, 4])
    mixed, targets = strategy.augment(latents, labels, n_new=1,
                                      generator=torch.Generator().manual_seed(0))
    assert mixed is latents and targets is labels
