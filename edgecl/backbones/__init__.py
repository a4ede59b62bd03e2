"""Backbones: model definitions, splitting at a latent layer, Batch Renormalization."""

from edgecl.backbones.batch_renorm import BatchRenorm, replace_batchnorm_with_renorm
from edgecl.backbones.models import (
    Backbone,
    create_backbone,
    default_backbone_name,
    list_backbones,
)
from edgecl.backbones.onnx import (
    OrtRunner,
    Parity,
    check_parity,
    export_onnx,
    file_sha256,
    quantize_int8,
)
from edgecl.backbones.split import SplitModel, freeze, split_model

__all__ = [
    "Backbone",
    "BatchRenorm",
    "OrtRunner",
    "Parity",
    "SplitModel",
    "check_parity",
    "create_backbone",
    "default_backbone_name",
    "export_onnx",
    "file_sha256",
    "freeze",
    "list_backbones",
    "quantize_int8",
    "replace_batchnorm_with_renorm",
    "split_model",
]
