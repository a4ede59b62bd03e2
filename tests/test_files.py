"""Files written whole (report, ONNX, saved backbone) honour the umask, as checkpoints do."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgecl import Learner, LearnerConfig
from edgecl._files import atomic_path
from edgecl.backbones.onnx import export_onnx
from edgecl.cli import _write_json_atomically
from edgecl.runtime.checkpoint import save_checkpoint


@pytest.fixture(params=[0o022, 0o027, 0o002])
def umask(request):
    before = os.umask(request.param)
    yield request.param
    os.umask(before)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _pretrained_learner() -> Learner:
    rng = np.random.default_rng(0)
    y = np.arange(30) % 3
    x = rng.normal(size=(30, 6)).astype(np.float32)
    learner = Learner(strategy="naive", input_shape=(6,), n_classes=3,
                      config=LearnerConfig(pretrain_epochs=1, epochs=1), seed=0)
    learner.learn_many(x, y)
    return learner


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_every_file_written_whole_gets_the_mode_open_would_give(tmp_path, umask):
    expected = 0o666 & ~umask  # what open(path, "w") makes
    _write_json_atomically(tmp_path / "report.json", {"a": 1})
    _pretrained_learner().save_backbone(tmp_path / "backbone.pt")
    export_onnx(nn.Linear(4, 2), tmp_path / "model.onnx", input_shape=(4,))
    checkpoint = save_checkpoint(tmp_path / "ck", tensors={"w": torch.zeros(2)}, meta={},
                                 step=1)
    for path in (tmp_path / "report.json", tmp_path / "backbone.pt", tmp_path / "model.onnx",
                 checkpoint / "tensors.pt", checkpoint / "manifest.json"):
        assert _mode(path) == expected, (path.name, oct(_mode(path)), oct(expected))


def test_a_failed_write_leaves_the_old_file_and_no_temporary_one(tmp_path):
    path = tmp_path / "report.json"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]
