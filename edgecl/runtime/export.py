"""``edgecl export``: write a backbone's frozen part, a learned head or the whole inference
model as ONNX, check it against PyTorch, and optionally quantize it to int8.

Parity is scale-free: the largest difference between ONNX Runtime's and PyTorch's outputs
must be at most 1e-4 of the largest |PyTorch output| (``check_parity``), so a model whose
outputs are 1e-9 (random MobileNet weights) is checked as strictly as one whose outputs are
in the hundreds.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgecl.backbones.onnx import (
    PARITY_RTOL,
    OrtRunner,
    Parity,
    check_parity,
    export_onnx,
    quantize_int8,
)
from edgecl.data import load_dataset
from edgecl.errors import EdgeclError, UsageError
from edgecl.labels import ONNX_LABELS_KEY
from edgecl.runtime.learner import Learner

PARTS = ("frozen", "head", "full")
_MAX_CHECK_SAMPLES = 256  # inputs used for the parity check and for int8 calibration


@dataclass
class ExportResult:
    path: Path                      # the model written (the int8 one when quantized)
    part: str
    input_shape: tuple[int, ...]
    parity: Parity                  # fp32 ONNX against PyTorch (Parity.describe: one line)
    fp32_path: Path
    accuracy_fp32: float | None = None  # on the test set, through the exported fp32 model
    accuracy_int8: float | None = None  # the same through the int8 model
    int8_relative_error: float | None = None  # mean |int8 - fp32| / mean |fp32| of outputs
    labels: list[int | str] | None = None  # the class of each output column (head, full)
    notes: list[str] = field(default_factory=list)


def export_model(*, out: str | os.PathLike[str], part: str = "frozen",
                 backbone: str | None = None, backbone_weights: str | None = None,
                 from_checkpoint: str | None = None, dataset: str | None = None,
                 input_shape: tuple[int, ...] | None = None, n_classes: int | None = None,
                 quantize: str | None = None, seed: int = 0) -> ExportResult:
    """Export, verify and (``quantize="int8"``) quantize; see the module docstring."""
    if part not in PARTS:
        raise UsageError(f"unknown part {part!r}; choose one of {', '.join(PARTS)}")
    if quantize not in (None, "int8"):
        raise UsageError(f"unknown quantization {quantize!r}; only int8 is offered")
    if (backbone is None) == (from_checkpoint is None):
        raise UsageError("give either --backbone NAME or --from-checkpoint DIR")
    out = Path(out)
    if out.suffix != ".onnx":
        raise UsageError(f"--out must name a .onnx file, got {out}")
    notes: list[str] = []
    if from_checkpoint is not None:
        learner, dataset_name, trained = _from_checkpoint(from_checkpoint, dataset, notes)
    else:
        learner, dataset_name, trained = _from_backbone(backbone, backbone_weights, dataset,
                                                        input_shape, n_classes, notes)
    data = load_dataset(dataset_name, seed=seed) if dataset_name is not None else None
    if data is not None and tuple(data.x_test.shape[1:]) != learner.input_shape:
        raise UsageError(f"dataset {dataset_name} has inputs of shape "
                         f"{tuple(data.x_test.shape[1:])}, the model takes {learner.input_shape}")

    head, labels = _inference_head(learner, trained_on_stream=from_checkpoint is not None,
                                   data=data)
    module, shape = _part(learner, head, part)
    check_x = _check_inputs(learner, data, seed)
    with torch.no_grad():
        samples = check_x if part != "head" else learner._latents(torch.from_numpy(check_x))
        samples = np.asarray(samples, dtype=np.float32)
        reference = module.eval()(torch.from_numpy(samples))
    fp32_path = out if quantize is None else out.with_name(out.stem + "-fp32.onnx")
    metadata = {ONNX_LABELS_KEY: json.dumps(labels)} if part != "frozen" else None
    export_onnx(module, fp32_path, input_shape=shape, metadata=metadata)
    parity = check_parity(module, fp32_path, samples=samples, rtol=PARITY_RTOL)
    if not parity.ok:
        fp32_path.unlink(missing_ok=True)
        raise EdgeclError(f"exported model disagrees with PyTorch: {parity.describe()}; "
                          "the file was removed")
    result = ExportResult(path=fp32_path, part=part, input_shape=shape, parity=parity,
                          fp32_path=fp32_path,
                          labels=labels if part != "frozen" else None, notes=notes)
    if quantize == "int8":
        if data is None:
            raise UsageError("int8 calibration needs samples from the stream: add --dataset")
        calibration = _calibration(learner, data, part)
        quantize_int8(fp32_path, out, calibration=calibration)
        result.path = out
        q_out = OrtRunner(out)(samples)
        result.int8_relative_error = float(np.abs(q_out - reference.numpy()).mean()
                                           / max(np.abs(reference.numpy()).mean(), 1e-12))
    if data is not None and trained:
        result.accuracy_fp32 = _accuracy(learner, head, labels, part, fp32_path, data)
        if quantize == "int8":
            result.accuracy_int8 = _accuracy(learner, head, labels, part, out, data)
    elif quantize == "int8":
        notes.append("the network is untrained (random weights), so no accuracy is reported; "
                     "pass --backbone-weights or --from-checkpoint for the accuracy change")
    return result


def _from_checkpoint(directory: str, dataset: str | None, notes: list[str]
                     ) -> tuple[Learner, str | None, bool]:
    from edgecl.runtime.checkpoint import load_checkpoint

    meta = load_checkpoint(directory).meta
    learner = Learner.from_checkpoint(directory)
    if not learner.is_pretrained:
        raise UsageError(f"the checkpoint in {directory} was taken before the backbone was "
                         "trained: nothing to export yet")
    if learner.quantizes_eval:
        notes.append(f"{learner.strategy.name} passes latents through its {learner.codec_name}"
                     " codec before the head; the exported model leaves the codec out")
    return learner, dataset or meta.get("dataset"), True


def _from_backbone(name: str, weights: str | None, dataset: str | None,
                   input_shape: tuple[int, ...] | None, n_classes: int | None,
                   notes: list[str]) -> tuple[Learner, str | None, bool]:
    data = None
    if input_shape is None:
        data = load_dataset(dataset or "digits")
        input_shape = tuple(data.x_train.shape[1:])
        dataset = data.name if dataset is None else dataset
    if n_classes is None:
        n_classes = len(data.classes) if data is not None else 10
    learner = Learner(strategy="naive", backbone=name, input_shape=input_shape,
                      n_classes=n_classes, pretrained=weights is None)
    if weights is not None:
        learner.load_backbone(weights)
    else:
        notes.append("no --backbone-weights: the model has random weights (fine for timing "
                     "and deployment tests, not for predictions)")
    return learner, dataset, weights is not None


def _inference_head(learner: Learner, *, trained_on_stream: bool, data
                    ) -> tuple[nn.Sequential, list[int | str]]:
    """The head to deploy and the label of each of its output columns.

    What a run learned keeps only the rows of classes with a learned sample: a class never
    learned must not be predicted, so it gets no column. A bare backbone keeps every row
    (the dataset's labels, else 0..K-1): nothing was learned on a stream to tell them apart.
    """
    if not trained_on_stream:
        k = learner.n_classes
        fits = data is not None and len(data.classes) == k
        return learner.head, list(data.classes) if fits else list(range(k))
    rows = learner.learned_rows
    if not len(rows):
        raise UsageError("the checkpoint has learned no class yet: no head to export")
    children = list(learner.head.named_children())
    name, output = children[-1]
    kept = nn.Linear(output.in_features, len(rows), bias=output.bias is not None)
    with torch.no_grad():
        kept.weight.copy_(output.weight[rows])
        if output.bias is not None:
            kept.bias.copy_(output.bias[rows])
    head = nn.Sequential(OrderedDict([*children[:-1], (name, kept)]))
    return head, [learner.classes[r] for r in rows]


def _part(learner: Learner, head: nn.Module, part: str) -> tuple[nn.Module, tuple[int, ...]]:
    if part == "frozen":
        return learner.frozen, learner.input_shape
    if part == "head":
        return head, learner.latent_shape
    return nn.Sequential(learner.frozen, head), learner.input_shape


def _check_inputs(learner: Learner, data, seed: int) -> np.ndarray:
    if data is not None:
        return data.x_test[:_MAX_CHECK_SAMPLES].astype(np.float32)
    rng = np.random.default_rng(seed)
    return rng.normal(size=(64, *learner.input_shape)).astype(np.float32)


def _calibration(learner: Learner, data, part: str) -> np.ndarray:
    """Up to 256 training inputs (latents for the head), a fixed stride through the stream."""
    stride = max(1, len(data.x_train) // _MAX_CHECK_SAMPLES)
    x = data.x_train[::stride][:_MAX_CHECK_SAMPLES].astype(np.float32)
    if part == "head":
        with torch.no_grad():
            x = learner._latents(torch.from_numpy(x)).numpy()
    return x


def _accuracy(learner: Learner, head: nn.Module, labels: list[int | str], part: str,
              path: Path, data) -> float:
    """Test accuracy with the exported ``part`` in place of its PyTorch counterpart, its
    output columns read as ``labels`` and compared with the dataset's own labels."""
    runner = OrtRunner(path)
    x = data.x_test.astype(np.float32)
    with torch.no_grad():
        if part == "full":
            scores = torch.from_numpy(runner(x))
        elif part == "frozen":
            latents = torch.from_numpy(runner(x))
            head.eval()
            scores = head(learner._through_codec(latents))
        else:
            scores = torch.from_numpy(runner(learner._latents(torch.from_numpy(x)).numpy()))
    predicted = np.asarray(labels)[scores.argmax(1).numpy()]
    return float((predicted == np.asarray(data.classes)[data.y_test]).mean())
