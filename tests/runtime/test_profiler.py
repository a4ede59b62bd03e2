"""``edgecl profile``: measured figures here, predicted ones for the device, each labelled."""

from __future__ import annotations

import json

from click.testing import CliRunner

from edgecl.cli import cli


def test_profile_json_on_a_gpu_profile_without_a_gpu_labels_every_figure():
    result = CliRunner().invoke(cli, ["profile", "--profile", "jetson-orin-nano", "--json",
                                      "--repeats", "3", "--warmup", "1", "--batch", "4",
                                      "--threads", "1", "--strategy", "latent-replay"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["profile"] == "jetson-orin-nano"
    assert set(report["labels"]) == {"measured_here_ms", "predicted_host_ms",
                                     "predicted_device_ms"}
    assert "jetson-orin-nano" in report["labels"]["predicted_device_ms"]
    stages = {(s["stage"], s.get("backend"), s["batch"]): s for s in report["stages"]}
    for backend in ("torch", "ort", "ort-int8"):
        for batch in (1, 4):
            row = stages[("backbone forward", backend, batch)]
            assert 0 < row["measured_here_ms"]["p50"] <= row["measured_here_ms"]["max"]
    fp32 = stages[("backbone forward", "torch", 4)]
    # The device (512 GFLOP/s) is predicted faster than this host's roofline.
    assert 0 < fp32["predicted_device_ms"] < fp32["predicted_host_ms"]
    assert stages[("backbone forward", "ort-int8", 1)]["predicted_device_ms"] is None
    assert {"replay encode", "replay decode", "predict"} <= {s["stage"]
                                                             for s in report["stages"]}
    assert report["model"]["backbone_flops_per_sample"] > 0
    assert report["memory"]["replay_bytes_at_profile_budget"]["latents_that_fit"] > 0
    assert any("cuda" in note for note in report["notes"])


def test_profile_table_and_bad_flags():
    runner = CliRunner()
    table = runner.invoke(cli, ["profile", "--repeats", "3", "--warmup", "0", "--batch", "2",
                                "--backend", "torch", "--threads", "1",
                                "--strategy", "naive"])
    assert table.exit_code == 0, table.output
    assert "measured here" in table.output and "predicted_device_ms" in table.output
    bad = runner.invoke(cli, ["profile", "--repeats", "1"])
    assert bad.exit_code == 2 and "repeats" in bad.output
    unknown = runner.invoke(cli, ["profile", "--strategy", "nope"])
    assert unknown.exit_code == 2 and "nope" in unknown.output
