"""Exported heads carry the user's labels, one per output column, learned classes only."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from edgecl import Learner, LearnerConfig, UsageError, read_onnx_labels
from edgecl.backbones import OrtRunner
from edgecl.labels import ONNX_LABELS_KEY
from edgecl.runtime.export import export_model

NAMES = np.array([7, 107, 207, 307])


def _blobs(classes, n, seed):
    centers = np.random.default_rng(123).normal(0.0, 3.0, size=(4, 16))
    idx = np.repeat(np.asarray(classes), n)
    x = centers[idx] + np.random.default_rng(seed).normal(0.0, 1.0, size=(len(idx), 16))
    return x.astype(np.float32), NAMES[idx]


@pytest.fixture(scope="module")
def half_learned(tmp_path_factory):
    """A checkpoint of a learner that knows four labels and has learned two of them, and
    an npz of all four for calibration."""
    root = tmp_path_factory.mktemp("half")
    learner = Learner(strategy="latent-replay", input_shape=(16,), n_classes=4,
                      classes=[307, 207, 107, 7], config=LearnerConfig(pretrain_epochs=5),
                      seed=0)
    learner.learn_many(*_blobs([0, 1], 40, seed=0))
    learner.save_checkpoint(root / "ck")
    x, y = _blobs([0, 1, 2, 3], 30, seed=1)
    np.savez(root / "data.npz", x=x, y=y)
    return root, learner


@pytest.mark.parametrize("part", ["head", "full"])
def test_only_learned_classes_are_exported_with_their_labels(tmp_path, half_learned, part):
    root, learner = half_learned
    result = export_model(out=tmp_path / "m.onnx", part=part, from_checkpoint=str(root / "ck"),
                          dataset=f"npz:{root / 'data.npz'}", quantize="int8")
    # Rows 0 and 1 (labels 307 and 207) were never learned: they get no column; the
    # columns keep the row order of the learned ones (rows 2 and 3: 107, 7).
    assert result.labels == [107, 7]
    for path in (result.fp32_path, result.path):  # the int8 model keeps the metadata too
        assert read_onnx_labels(path) == [107, 7]
        assert OrtRunner(path).output_shape == (2,)
    # onnxruntime alone reads the same list, as the README shows.
    meta = ort.InferenceSession(str(result.path)).get_modelmeta().custom_metadata_map
    assert json.loads(meta[ONNX_LABELS_KEY]) == [107, 7]
    x, _ = _blobs([0, 1, 2, 3], 10, seed=2)
    runner_input = x if part == "full" else learner._latents(torch.from_numpy(x))
    columns = OrtRunner(result.fp32_path)(np.asarray(runner_input)).argmax(1)
    assert np.array_equal(np.asarray(result.labels)[columns], learner.predict_many(x))


def test_the_frozen_part_carries_no_labels(tmp_path, half_learned):
    root, _ = half_learned
    result = export_model(out=tmp_path / "f.onnx", part="frozen",
                          from_checkpoint=str(root / "ck"))
    assert result.labels is None
    with pytest.raises(UsageError, match="no edgecl.labels"):
        read_onnx_labels(result.path)
