"""``edgecl export``: write a backbone's frozen part, a learned head or the whole inference
model as ONNX, check it against PyTorch, and optionally quantize it to int8.

Parity is scale-free: the largest difference between ONNX Runtime's and PyTorch's outputs
must be at most 1e-4 of the largest |PyTorch output| (``check_parity``), so a model whose
outputs are 1e-9 (random MobileNet weights) is checked as strictly as one whose outputs are
in the hundreds.
"""

from __future__ import annotations

import os
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

    module, shape = _part(learner, part)
    check_x = _check_inputs(learner, data, seed)
    with torch.no_grad():
        samples = check_x if part != "head" else learner._latents(torch.from_numpy(check_x))
        samples = np.asarray(samples, dtype=np.float32)
        reference = module.eval()(torch.from_numpy(samples))
    fp32_path = out if quantize is None else out.with_name(out.stem + "-fp32.onnx")
    export_onnx(module, fp32_path, input_shape=shape)
    parity = check_parity(module, fp32_path, samples=samples, rtol=PARITY_RTOL)
    if not parity.ok:
        fp32_path.unlink(missing_ok=True)
        raise EdgeclError(f"exported model disagrees with PyTorch: {parity.describe()}; "
                          "the file was removed")
    result = ExportResult(path=fp32_path, part=part, input_shape=shape, parity=parity,
                          fp32_path=fp32_path, notes=notes)
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
        result.accuracy_fp32 = _accuracy(learner, part, fp32_path, data)
        if quantize == "int8":
            result.accuracy_int8 = _accuracy(learner, part, out, data)
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


def _part(learner: Learner, part: str) -> tuple[nn.Module, tuple[int, ...]]:
    if part == "frozen":
        return learner.frozen, learner.input_shape
    if part == "head":
        return learner.head, learner.latent_shape
    return nn.Sequential(learner.frozen, learner.head), learner.input_shape


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


def _accuracy(learner: Learner, part: str, path: Path, data) -> float:
    """Test accuracy with the exported ``part`` in place of its PyTorch counterpart."""
    runner = OrtRunner(path)
    x = data.x_test.astype(np.float32)
    with torch.no_grad():
        if part == "full":
            scores = torch.from_numpy(runner(x))
        elif part == "frozen":
            latents = torch.from_numpy(runner(x))
            learner.head.eval()
            scores = learner.head(learner._through_codec(latents))
        else:
            scores = torch.from_numpy(runner(learner._latents(torch.from_numpy(x)).numpy()))
    return float((scores.argmax(1).numpy() == data.y_test).mean())
