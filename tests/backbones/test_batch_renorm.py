"""Batch Renormalization: a drop-in for BatchNorm that corrects batch statistics (Ioffe 2017)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from edgecl.backbones import BatchRenorm, replace_batchnorm_with_renorm


def trained_model() -> nn.Sequential:
    """BatchNorm1d and BatchNorm2d (one nested) with non-default affine params and statistics."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1),
        nn.Sequential(nn.BatchNorm2d(3), nn.ReLU()),
        nn.Flatten(),
        nn.Linear(3 * 4 * 4, 5),
        nn.BatchNorm1d(5),
    )
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, 2, 4, 4) * 3 + 1)
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.weight.uniform_(0.5, 2.0)
                module.bias.uniform_(-1.0, 1.0)
    return model.eval()


def test_replacement_keeps_the_eval_mode_function() -> None:
    original = trained_model()
    renormed = replace_batchnorm_with_renorm(copy.deepcopy(original))
    x = torch.randn(6, 2, 4, 4)

    kinds = [type(m) for m in renormed.modules()]
    assert kinds.count(BatchRenorm) == 2
    assert not any(issubclass(k, nn.modules.batchnorm._BatchNorm) for k in kinds)
    with torch.no_grad():
        assert torch.allclose(renormed.eval()(x), original(x), atol=1e-6)


def test_batchnorm_state_dict_loads_into_the_renormed_model() -> None:
    original = trained_model()
    renormed = replace_batchnorm_with_renorm(trained_model())
    for p in renormed.parameters():
        p.data.zero_()
    renormed.load_state_dict(original.state_dict())  # strict: the keys match BatchNorm's
    x = torch.randn(6, 2, 4, 4)
    with torch.no_grad():
        assert torch.allclose(renormed.eval()(x), original(x), atol=1e-6)


@pytest.mark.parametrize("shape", [(16, 3), (4, 3, 5, 5)])
def test_with_running_stats_equal_to_batch_stats_it_is_batchnorm(shape: tuple[int, ...]) -> None:
    # r = batch_std / running_std = 1 and d = 0: the renormalised output is BatchNorm's.
    torch.manual_seed(0)
    x = torch.randn(*shape) * 2 + 0.5
    dims = [0] + list(range(2, x.dim()))
    bn = nn.BatchNorm1d(3) if x.dim() == 2 else nn.BatchNorm2d(3)
    renorm = BatchRenorm(3)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.5, 0.5, 2.0]))
        bn.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
        renorm.weight.copy_(bn.weight)
        renorm.bias.copy_(bn.bias)
        renorm.running_mean.copy_(x.mean(dim=dims))
        renorm.running_var.copy_(x.var(dim=dims, unbiased=False))

    assert torch.allclose(renorm.train()(x), bn.train()(x), atol=1e-5)


def test_r_and_d_are_clipped_at_r_max_and_d_max() -> None:
    # Running stats (0, 1); eps = 0 so the numbers are exact. N = 2: each channel's batch
    # normalises to (-1, +1), then x_hat = -/+1 * r + d.
    renorm = BatchRenorm(3, eps=0.0, r_max=1.5, d_max=2.5).train()
    with torch.no_grad():
        renorm.weight.copy_(torch.tensor([2.0, 1.0, 1.0]))
        renorm.bias.copy_(torch.tensor([0.0, 0.0, 1.0]))
    x = torch.tensor([[10.0, 0.99, -25.0],
                      [30.0, 1.01, -15.0]])
    # channel 0: mean 20, std 10  -> r = 10  clipped to 1.5,   d = 20  clipped to 2.5
    #            x_hat = (-1.5 + 2.5, 1.5 + 2.5) = (1, 4);    * 2 + 0 -> (2, 8)
    # channel 1: mean 1, std 0.01 -> r = 0.01 clipped to 1/1.5, d = 1 (inside the clip)
    #            x_hat = (-2/3 + 1, 2/3 + 1) = (1/3, 5/3);    * 1 + 0 -> (1/3, 5/3)
    # channel 2: mean -20, std 5  -> r = 5   clipped to 1.5,   d = -20 clipped to -2.5
    #            x_hat = (-1.5 - 2.5, 1.5 - 2.5) = (-4, -1);  * 1 + 1 -> (-3, 0)
    expected = torch.tensor([[2.0, 1 / 3, -3.0],
                             [8.0, 5 / 3, 0.0]])
    assert torch.allclose(renorm(x), expected, atol=1e-4)


def test_running_stats_move_by_momentum_towards_the_batch() -> None:
    x = torch.tensor([[10.0, 0.0], [30.0, 4.0]])
    renorm = BatchRenorm(2, momentum=0.1).train()
    bn = nn.BatchNorm1d(2, momentum=0.1).train()

    renorm(x)
    bn(x)

    # batch means (20, 2); unbiased variances (200, 8); running starts at mean 0, var 1:
    # mean: 0.9 * 0 + 0.1 * (20, 2) = (2, 0.2); var: 0.9 * 1 + 0.1 * (200, 8) = (20.9, 1.7)
    assert torch.allclose(renorm.running_mean, torch.tensor([2.0, 0.2]))
    assert torch.allclose(renorm.running_var, torch.tensor([20.9, 1.7]))
    assert int(renorm.num_batches_tracked) == 1
    # ... which is exactly how BatchNorm (momentum 0.1) updates its statistics.
    assert torch.allclose(renorm.running_mean, bn.running_mean)
    assert torch.allclose(renorm.running_var, bn.running_var)


def test_single_sample_in_train_mode_uses_running_statistics() -> None:
    # BatchNorm1d raises on one sample per channel; a continual stream (learn_one) sends those.
    renorm = BatchRenorm(2).train()
    with torch.no_grad():
        renorm.running_mean.copy_(torch.tensor([1.0, -2.0]))
        renorm.running_var.copy_(torch.tensor([4.0, 0.25]))
        renorm.weight.copy_(torch.tensor([2.0, 1.0]))
        renorm.bias.copy_(torch.tensor([0.5, 0.0]))
    x = torch.tensor([[3.0, -1.0]])

    out = renorm(x)

    std = (torch.tensor([4.0, 0.25]) + renorm.eps).sqrt()
    expected = (x - torch.tensor([1.0, -2.0])) / std * torch.tensor([2.0, 1.0]) + torch.tensor(
        [0.5, 0.0])
    assert torch.allclose(out, expected)  # about (2.5, 2.0)
    # No batch statistics exist, so nothing is folded into the running ones.
    assert torch.equal(renorm.running_mean, torch.tensor([1.0, -2.0]))
    assert torch.equal(renorm.running_var, torch.tensor([4.0, 0.25]))
    assert int(renorm.num_batches_tracked) == 0


def test_replacing_batchnorm1d_on_sequences_keeps_the_model_working() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(2, 3, 3, padding=1), nn.BatchNorm1d(3)).eval()
    x = torch.randn(4, 2, 7)
    with torch.no_grad():
        expected = model(x)
        renormed = replace_batchnorm_with_renorm(copy.deepcopy(model))
        assert torch.allclose(renormed(x), expected, atol=1e-6)
