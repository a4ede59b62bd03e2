"""``edgecl export`` and the ONNX Runtime backends of the learning loop."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from edgecl import CheckpointError, Learner, LearnerConfig
from edgecl.backbones import OrtRunner
from edgecl.cli import cli
from edgecl.runtime.export import export_model
from edgecl.runtime.run import RunSpec, run

_CONFIG = LearnerConfig(pretrain_epochs=3, epochs=2)


def _blobs(classes, n, seed):
    centers = np.random.default_rng(123).normal(0.0, 3.0, size=(4, 16))
    y = np.repeat(np.asarray(classes, dtype=np.int64), n)
    x = centers[y] + np.random.default_rng(seed).normal(0.0, 1.0, size=(len(y), 16))
    return x.astype(np.float32), y


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("run") / "ck"
    run(RunSpec(dataset="digits", n_experiences=2, strategy="ar1*", config=_CONFIG,
                checkpoint_dir=str(directory), threads=1))
    return directory


@pytest.mark.parametrize("part", ["frozen", "head", "full"])
def test_export_from_a_checkpoint_matches_pytorch_and_int8_keeps_accuracy(
        tmp_path, checkpoint_dir, part):
    result = export_model(out=tmp_path / f"{part}.onnx", part=part,
                          from_checkpoint=str(checkpoint_dir), quantize="int8")
    assert result.parity.ok and result.parity.error <= result.parity.limit == 1e-4
    assert result.path.exists() and result.fp32_path.exists()
    assert result.accuracy_fp32 > 0.5  # a trained model, not chance (0.1)
    assert abs(result.accuracy_int8 - result.accuracy_fp32) <= 0.01
    # frozen: the cnn's latent (64 maps of 4x4); head and full: the 10 class scores
    expected = {"frozen": (64, 4, 4), "head": (10,), "full": (10,)}[part]
    assert OrtRunner(result.path).output_shape == expected


def test_export_cli_prints_parity_and_refuses_bad_arguments(tmp_path):
    runner = CliRunner()
    out = tmp_path / "m.onnx"
    ok = runner.invoke(cli, ["export", "--backbone", "mobilenet", "--input-shape", "3,32,32",
                             "--out", str(out)])
    assert ok.exit_code == 0, ok.output
    assert out.exists()
    # One line, one unit: the difference and the limit are both fractions of the output scale.
    parity = next(line for line in ok.stdout.splitlines() if "parity vs PyTorch" in line)
    assert "of the largest |torch output|" in parity and "limit 1.0e-04" in parity
    assert parity.endswith(": ok") and "tolerance" not in parity
    assert OrtRunner(out).input_shape == (3, 32, 32)
    both = runner.invoke(cli, ["export", "--backbone", "cnn", "--from-checkpoint", "x",
                               "--out", str(out)])
    assert both.exit_code == 2 and "either --backbone" in both.output
    shape = runner.invoke(cli, ["export", "--backbone", "cnn", "--input-shape", "a,b",
                                "--out", str(out)])
    assert shape.exit_code == 2 and "--input-shape" in shape.output
    missing = runner.invoke(cli, ["export", "--from-checkpoint", str(tmp_path / "none"),
                                  "--out", str(out)])
    assert missing.exit_code == 1 and "no checkpoint" in missing.output


def test_ort_backend_learns_like_torch():
    results = {}
    for backend in ("torch", "ort"):
        learner = Learner(strategy="ar1*", input_shape=(16,), n_classes=4, config=_CONFIG,
                          backend=backend)
        for i, classes in enumerate([[0, 1], [2, 3]]):
            learner.learn_many(*_blobs(classes, 40, seed=i))
        x_test, _ = _blobs([0, 1, 2, 3], 20, seed=9)
        with np.errstate(all="ignore"):
            results[backend] = (learner.predict_many(x_test),
                                learner.head[-1].weight.detach().clone(),
                                learner.backend_info())
    torch_pred, torch_w, _ = results["torch"]
    ort_pred, ort_w, info = results["ort"]
    # Same generator draws; only the backbone's float rounding differs.
    assert (torch_pred == ort_pred).mean() >= 0.99
    assert float((torch_w - ort_w).abs().max()) < 1e-3
    assert info["backend"] == "ort" and info["execution_provider"] == "CPUExecutionProvider"
    assert len(info["onnx_sha256"]) == 64


def test_ort_int8_run_reports_backend_and_provider(tmp_path):
    report = run(RunSpec(dataset="digits", n_experiences=2, strategy="latent-replay",
                         config=_CONFIG, backend="ort-int8", threads=1))
    assert report["backend"] == "ort-int8"
    assert report["backend_info"]["execution_provider"] == "CPUExecutionProvider"
    assert report["backend_info"]["onnx_file"].endswith("-int8.onnx")
    assert report["final_accuracy"] > 0.8


def test_resume_refuses_a_changed_onnx_backbone(tmp_path):
    spec = RunSpec(dataset="digits", n_experiences=2, strategy="naive", config=_CONFIG,
                   backend="ort", checkpoint_dir=str(tmp_path / "ck"), threads=1)
    run(spec)
    (onnx_file,) = (tmp_path / "ck" / "backbone").glob("*.onnx")
    data = bytearray(onnx_file.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte inside the weights
    onnx_file.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="SHA-256"):
        run(RunSpec(**{**spec.__dict__, "resume": True}))


def test_learn_cli_records_the_backend(tmp_path):
    report_path = tmp_path / "r.json"
    result = CliRunner().invoke(cli, ["learn", "--dataset", "digits", "--experiences", "2",
                                      "--strategy", "naive", "--backend", "ort",
                                      "--report", str(report_path)])
    assert result.exit_code == 0, result.output
    report = json.loads(report_path.read_text())
    assert report["backend"] == "ort"
    assert report["backend_info"]["execution_provider"] == "CPUExecutionProvider"
    assert "backbone runs on" in result.output
