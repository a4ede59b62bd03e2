"""Backbones: model definitions, splitting at a latent layer, Batch Renormalization."""

from edgecl.backbones.batch_renorm import BatchRenorm, replace_batchnorm_with_renorm
from edgecl.backbones.models import (
    Backbone,
    create_backbone,
    default_backbone_name,
    list_backbones,
)
from edgecl.backbones.split import SplitModel, freeze, split_model

__all__ = [
    "Backbone",
    "BatchRenorm",
    "SplitModel",
    "create_backbone",
    "default_backbone_name",
    "freeze",
    "list_backbones",
    "replace_batchnorm_with_renorm",
    "split_model",
]
