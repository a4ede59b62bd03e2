"""The user's labels through the command line: an npz of labels 7, 107, ... or "cat", "dog",
learned, reported, checkpointed, exported to ONNX and read back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgecl import Learner, LearnerConfig, read_onnx_labels
from edgecl.backbones import OrtRunner
from edgecl.cli import cli

INTS = [7, 107, 207, 307]
STRINGS = ["cat", "dog", "owl", "emu"]


def _blobs(n: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    centers = np.random.default_rng(123).normal(0.0, 3.0, size=(4, 16))
    idx = np.repeat(np.arange(4), n)
    x = centers[idx] + np.random.default_rng(seed).normal(0.0, 1.0, size=(len(idx), 16))
    return x.astype(np.float32), idx


def _npz(tmp_path: Path, names: list) -> tuple[str, np.ndarray, np.ndarray]:
    x, idx = _blobs()
    y = np.asarray(names)[idx]
    path = tmp_path / "data.npz"
    np.savez(path, x=x, y=y)
    return f"npz:{path}", x, y


def _invoke(*args: str):
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 0, result.stderr + result.stdout
    return result


@pytest.mark.parametrize("names", [INTS, STRINGS], ids=["ints", "strings"])
def test_the_users_labels_go_end_to_end_through_the_command_line(tmp_path, names):
    dataset, x, y = _npz(tmp_path, names)
    ck, report_path = tmp_path / "ck", tmp_path / "r.json"
    result = _invoke("learn", "--dataset", dataset, "--experiences", "2", "--strategy",
                     "latent-replay", "--checkpoint", str(ck), "--report", str(report_path))
    report = json.loads(report_path.read_text())
    assert report["labels"] == sorted(names)  # output rows: the file's classes, sorted
    assert sorted(report["class_order"]) == sorted(names)
    # The table names each experience's classes as the user wrote them, in class order.
    rows = [line.split() for line in result.stdout.splitlines()
            if line[:3].strip() in ("0", "1")]
    assert [set(row[1].split(",")) for row in rows] == [
        {str(c) for c in report["class_order"][:2]}, {str(c) for c in report["class_order"][2:]}]
    assert report["accuracy_matrix"][0][1] == 0.0  # classes not learned yet: no credit

    learner = Learner.from_checkpoint(ck)
    predicted = learner.predict_many(x)
    assert predicted.dtype.kind == ("U" if isinstance(names[0], str) else "i")
    assert (predicted == y).mean() > 0.9

    out = tmp_path / "m.onnx"
    exported = _invoke("export", "--from-checkpoint", str(ck), "--part", "full", "--out",
                       str(out))
    assert "output columns (labels)" in exported.stdout
    labels = read_onnx_labels(out)
    assert labels == report["labels"]
    onnx_predicted = np.asarray(labels)[OrtRunner(out)(x).argmax(1)]
    assert np.array_equal(onnx_predicted, predicted)


def test_a_backbone_that_knows_every_class_gets_no_credit_for_those_not_learned(tmp_path):
    """The first row of a class-incremental accuracy matrix used to credit classes still to
    come when the network had seen them before (--backbone-weights)."""
    dataset, x, y = _npz(tmp_path, INTS)
    teacher = Learner(strategy="naive", input_shape=(16,), n_classes=4,
                      config=LearnerConfig(pretrain_epochs=20))
    teacher.learn_many(x, np.searchsorted(INTS, y))
    teacher.save_backbone(tmp_path / "all.pt")
    report_path = tmp_path / "r.json"
    _invoke("learn", "--dataset", dataset, "--experiences", "2", "--strategy", "naive",
            "--backbone-weights", str(tmp_path / "all.pt"), "--report", str(report_path))
    matrix = json.loads(report_path.read_text())["accuracy_matrix"]
    assert matrix[0][1] == 0.0


def test_string_labels_of_another_kind_in_y_test_are_a_one_line_error(tmp_path):
    x, idx = _blobs(10)
    path = tmp_path / "mixed.npz"
    np.savez(path, x=x, y=np.asarray(STRINGS)[idx], x_test=x[:4], y_test=np.arange(4))
    result = CliRunner().invoke(cli, ["learn", "--dataset", f"npz:{path}"])
    assert result.exit_code == 2
    assert "y_test' holds integers but 'y' holds strings" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
