"""Splitting a backbone at its latent layer: the two parts compute the model, share its weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgecl.backbones import freeze, list_backbones, split_model
from edgecl.backbones.models import BACKBONES, Backbone
from edgecl.errors import UsageError

# (backbone, input shape, builder options, a layer to cut at by name, one by index).
CASES = {
    "mlp": ("mlp", (40,), {}, "fc2", 1),
    "cnn-8x8": ("cnn", (1, 8, 8), {"width": 8}, "block3_pool", 2),
    "cnn-28x28": ("cnn", (1, 28, 28), {"width": 8}, "block1_pool", -2),
    # width_mult 0.25 keeps every block at 8..256 channels: the full depth, but fast.
    "mobilenet": ("mobilenet", (3, 32, 32), {"width_mult": 0.25}, "pw5_relu", 10),
}


def build(case: str) -> tuple[Backbone, torch.Tensor]:
    """A backbone with non-trivial BatchNorm statistics, and an input batch for it."""
    name, shape, options, _, _ = CASES[case]
    torch.manual_seed(0)
    backbone = BACKBONES.create(name, input_shape=shape, n_classes=5, **options)
    x = torch.randn(4, *shape)
    backbone.model.train()
    with torch.no_grad():
        backbone.model(x * 2 + 1)  # moves running stats away from (0, 1)
    backbone.model.eval()
    return backbone, x


def layer_names(model: nn.Module) -> list[str]:
    return [name for name, _ in model.named_children()]


def test_cases_cover_every_registered_backbone() -> None:
    assert {name for name, *_ in CASES.values()} == set(list_backbones())


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("cut", ["default", "name", "index"])
def test_head_of_frozen_part_computes_the_model(case: str, cut: str) -> None:
    backbone, x = build(case)
    names = layer_names(backbone.model)
    _, _, _, by_name, by_index = CASES[case]
    latent = {"default": backbone.latent_layer, "name": by_name, "index": by_index}[cut]
    expected_name = names[latent] if isinstance(latent, int) else latent

    split = split_model(backbone.model, latent)

    assert split.latent_layer == expected_name
    assert layer_names(split.frozen)[-1] == expected_name
    assert layer_names(split.frozen) + layer_names(split.head) == names
    with torch.no_grad():
        assert torch.allclose(split.head(split.frozen(x)), backbone.model(x), atol=1e-6)


@pytest.mark.parametrize("case", CASES)
def test_parts_share_parameters_with_the_model(case: str) -> None:
    backbone, x = build(case)
    split = split_model(backbone.model, backbone.latent_layer)

    model_ids = {id(p) for p in backbone.model.parameters()}
    frozen_ids = {id(p) for p in split.frozen.parameters()}
    head_ids = {id(p) for p in split.head.parameters()}
    assert frozen_ids | head_ids == model_ids
    assert not frozen_ids & head_ids

    # Editing the model's weights in place changes what the parts compute: nothing was copied.
    with torch.no_grad():
        backbone.model.output.weight.mul_(3.0)
        assert torch.allclose(split.head(split.frozen(x)), backbone.model(x), atol=1e-6)


@pytest.mark.parametrize("case", CASES)
def test_head_ends_in_a_bias_free_output_layer(case: str) -> None:
    # CWR-family consolidation averages rows of this layer, one per class.
    backbone, _ = build(case)
    head = split_model(backbone.model, backbone.latent_layer).head
    assert layer_names(head)[-1] == "output"
    assert isinstance(head[-1], nn.Linear) and head[-1].bias is None
    assert head[-1].out_features == 5


def test_user_defined_sequential_splits_by_index_and_by_child_name() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 4), nn.ReLU(),
                          nn.Linear(4, 3)).eval()
    x = torch.randn(7, 6)
    with torch.no_grad():
        expected = model(x)
    for latent in (1, "1", -4):  # child "1" is the Tanh; -4 counts from the end
        split = split_model(model, latent)
        assert split.latent_layer == "1"
        assert len(split.frozen) == 2 and len(split.head) == 3
        with torch.no_grad():
            assert torch.allclose(split.head(split.frozen(x)), expected)


@pytest.mark.parametrize(
    ("latent", "message"),
    [
        ("nope", r"no layer named 'nope'; layers: flatten, fc1, .*, output"),
        ("output", r"cannot cut at the last layer 'output'"),
        (7, r"latent layer index 7 out of range: the model has 8 layers"),  # the last layer
        (-1, r"latent layer index -1 out of range"),
        (8, r"latent layer index 8 out of range"),
        (-9, r"latent layer index -9 out of range"),
    ],
)
def test_bad_latent_layer_raises_usage_error_naming_the_problem(latent: str | int,
                                                                 message: str) -> None:
    backbone, _ = build("mlp")  # 8 layers: flatten ... output
    with pytest.raises(UsageError, match=message):
        split_model(backbone.model, latent)


def test_model_without_two_children_cannot_be_split() -> None:
    with pytest.raises(UsageError, match="at least two layers"):
        split_model(nn.Linear(3, 2), 0)


def test_freeze_stops_gradients_and_statistics_below_the_cut() -> None:
    backbone, x = build("cnn-8x8")
    split = split_model(backbone.model, backbone.latent_layer)
    split.head.train()
    frozen = freeze(split.frozen)
    bn = frozen.block1_bn
    running_mean = bn.running_mean.clone()

    loss = split.head(frozen(x * 5 - 2)).sum()
    loss.backward()

    assert frozen is split.frozen
    assert all(not p.requires_grad and p.grad is None for p in frozen.parameters())
    assert all(p.grad is not None for p in split.head.parameters())
    # Eval mode: a training-style forward pass does not move the frozen BatchNorm statistics.
    assert not frozen.training
    assert torch.equal(bn.running_mean, running_mean)
