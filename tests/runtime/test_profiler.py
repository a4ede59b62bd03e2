"""``edgecl profile``: measured figures here, predicted ones for the device, each labelled."""

from __future__ import annotations

import json

from click.testing import CliRunner

from edgecl.cli import cli
from edgecl.runtime import profiler
from edgecl.runtime.cost import Roofline
from edgecl.runtime.profiler import roofline_warnings


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


def _row(ratio, *, stage="backbone forward", backend="torch", batch=32, device_ms=3.8):
    host_ms = None if ratio is None else 4.0
    return {"stage": stage, "backend": backend, "batch": batch,
            "measured_here_ms": {"p50": 4.0 * (ratio or 1), "p95": 0.0, "max": 0.0},
            "predicted_host_ms": host_ms, "host_measured_over_predicted": ratio,
            "predicted_device_ms": device_ms}


def test_roofline_warns_when_it_misses_its_own_measurement_by_more_than_2x():
    rows = [_row(5.27), _row(1.9, batch=1), _row(0.51, backend="ort"), _row(None),
            _row(0.3, backend="ort", batch=1)]
    warnings = roofline_warnings(rows, "rpi4")
    assert len(warnings) == 2, warnings
    slow, fast = warnings
    assert "backbone forward (torch, batch 32)" in slow and "5.27x" in slow
    assert "rpi4 (3.800 ms) is likely too low" in slow
    assert "(ort, batch 1)" in fast and "0.30x" in fast and "likely too high" in fast


def test_profile_json_and_table_carry_the_roofline_warnings(monkeypatch):
    # A host roofline 1000x too fast: every timed fp32 stage misses its prediction.
    fast = Roofline(gflops=1e5, bandwidth_gbs=1e5, overhead_ms=1e-6, grouped_gflops=1e5)
    monkeypatch.setattr(profiler, "measure_host_rates", lambda **_: fast)
    args = ["profile", "--repeats", "3", "--warmup", "0", "--batch", "2", "--backend",
            "torch", "--threads", "1", "--strategy", "naive"]
    as_json = CliRunner().invoke(cli, [*args, "--json"])
    assert as_json.exit_code == 0, as_json.output
    warnings = json.loads(as_json.stdout)["warnings"]
    assert any(w.startswith("backbone forward (torch, batch 2) took") for w in warnings)
    assert all("likely too low" in w for w in warnings), warnings
    table = CliRunner().invoke(cli, args)
    assert table.exit_code == 0, table.output
    assert "warning: backbone forward (torch, batch 2) took" in table.stderr
