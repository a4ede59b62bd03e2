"""Model definitions written here (no torchvision): MLP, a small CNN, a MobileNet-style net.

Every model is an ``nn.Sequential`` with named layers, so it can be split at any layer by
name or index (see :mod:`edgecl.backbones.split`). The last layer is always a bias-free
``nn.Linear`` named ``output``: CWR-family consolidation acts on its rows, one per class,
and a bias would shift every class at once, which those rules do not average.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from edgecl._registry import Registry
from edgecl.errors import UsageError


@dataclass
class Backbone:
    """A full network and the layer whose output is the latent (the default cut)."""

    name: str
    model: nn.Sequential
    latent_layer: str


BACKBONES: Registry[Backbone] = Registry("backbone")


def _conv_bn_relu(prefix: str, c_in: int, c_out: int, *, stride: int = 1, groups: int = 1,
                  kernel: int = 3) -> list[tuple[str, nn.Module]]:
    return [
        (f"{prefix}_conv", nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2,
                                     groups=groups, bias=False)),
        (f"{prefix}_bn", nn.BatchNorm2d(c_out)),
        (f"{prefix}_relu", nn.ReLU(inplace=False)),
    ]


@BACKBONES.register("mlp")
def mlp(*, input_shape: tuple[int, ...], n_classes: int, hidden: tuple[int, ...] = (256, 128)
        ) -> Backbone:
    """Fully connected network for vector inputs (any input shape is flattened)."""
    if not hidden:
        raise UsageError("mlp needs at least one hidden layer")
    layers: list[tuple[str, nn.Module]] = [("flatten", nn.Flatten())]
    width = math.prod(input_shape)
    for i, h in enumerate(hidden, start=1):
        layers += [(f"fc{i}", nn.Linear(width, h)), (f"bn{i}", nn.BatchNorm1d(h)),
                   (f"relu{i}", nn.ReLU())]
        width = h
    layers.append(("output", nn.Linear(width, n_classes, bias=False)))
    # Cut after the first hidden layer: the rest stays trainable on the device.
    return Backbone("mlp", nn.Sequential(OrderedDict(layers)), latent_layer="relu1")


@BACKBONES.register("cnn")
def small_cnn(*, input_shape: tuple[int, ...], n_classes: int, width: int = 32) -> Backbone:
    """Three conv blocks and a hidden FC layer; for small images (8x8 digits, 28x28 MNIST)."""
    if len(input_shape) != 3:
        raise UsageError(f"cnn needs (C, H, W) inputs, got shape {input_shape}")
    c, h, w = input_shape
    if min(h, w) < 4:
        raise UsageError(f"cnn needs images of at least 4x4 pixels, got {h}x{w}")
    layers: list[tuple[str, nn.Module]] = []
    # Larger images are pooled early so the latent stays a few KB per sample.
    if min(h, w) >= 16:
        layers += _conv_bn_relu("block1", c, width) + [("block1_pool", nn.MaxPool2d(2))]
        h, w = h // 2, w // 2
    else:
        layers += _conv_bn_relu("block1", c, width)
    layers += _conv_bn_relu("block2", width, 2 * width) + [("block2_pool", nn.MaxPool2d(2))]
    h, w = h // 2, w // 2
    layers += _conv_bn_relu("block3", 2 * width, 2 * width) + [("block3_pool", nn.MaxPool2d(2))]
    h, w = h // 2, w // 2
    layers += [
        ("flatten", nn.Flatten()),
        ("fc", nn.Linear(2 * width * h * w, 128)),
        ("fc_bn", nn.BatchNorm1d(128)),
        ("fc_relu", nn.ReLU()),
        ("output", nn.Linear(128, n_classes, bias=False)),
    ]
    return Backbone("cnn", nn.Sequential(OrderedDict(layers)), latent_layer="block2_pool")


# MobileNetV1 (Howard et al. 2017) body: (output channels, stride) of each
# depthwise-separable block, before the width multiplier.
_MOBILENET_BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
                     (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))


@BACKBONES.register("mobilenet")
def mobilenet(*, input_shape: tuple[int, ...], n_classes: int, width_mult: float = 1.0,
              latent_block: int = 11) -> Backbone:
    """MobileNetV1-style network of depthwise-separable blocks; any input resolution."""
    if len(input_shape) != 3:
        raise UsageError(f"mobilenet needs (C, H, W) inputs, got shape {input_shape}")
    if not 1 <= latent_block <= len(_MOBILENET_BLOCKS):
        raise UsageError(f"mobilenet latent_block must be in 1..{len(_MOBILENET_BLOCKS)}")

    def ch(n: int) -> int:
        return max(8, int(n * width_mult))

    c_in = ch(32)
    layers = _conv_bn_relu("stem", input_shape[0], c_in, stride=2)
    for i, (c_out, stride) in enumerate(_MOBILENET_BLOCKS, start=1):
        layers += _conv_bn_relu(f"dw{i}", c_in, c_in, stride=stride, groups=c_in)
        layers += _conv_bn_relu(f"pw{i}", c_in, ch(c_out), kernel=1)
        c_in = ch(c_out)
    layers += [("pool", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten()),
               ("output", nn.Linear(c_in, n_classes, bias=False))]
    # Cutting late keeps most compute frozen (as AR1* does on CORe50) and the head small.
    return Backbone("mobilenet", nn.Sequential(OrderedDict(layers)),
                    latent_layer=f"pw{latent_block}_relu")


def create_backbone(name: str, *, input_shape: tuple[int, ...], n_classes: int,
                    options: Mapping[str, Any] | None = None) -> Backbone:
    """Build a registered backbone by name (``mlp``, ``cnn``, ``mobilenet``).

    ``options`` are the builder's own keyword arguments, e.g. ``{"width_mult": 0.5}``.
    """
    return BACKBONES.create(name, input_shape=tuple(input_shape), n_classes=n_classes,
                            **dict(options or {}))


def default_backbone_name(input_shape: tuple[int, ...]) -> str:
    """The backbone that suits an input shape: vectors → mlp, small images → cnn, else mobilenet."""
    if len(input_shape) == 1:
        return "mlp"
    if len(input_shape) == 3 and max(input_shape[1:]) <= 64:
        return "cnn"
    return "mobilenet"


def list_backbones() -> list[str]:
    return BACKBONES.names()
